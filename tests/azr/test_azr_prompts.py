from megatron_azr.azr.config import ORIGINAL_BANNED
from megatron_azr.azr.parsing import fences
from megatron_azr.azr.prompts import (
    INDUCTION_SUFFIX,
    program_proposer_body,
    proposer_prompt,
    solver_prompt,
)
from megatron_azr.azr.protocols import TaskType
from megatron_azr.azr.tasks import InductionTask, Triplet

ABD, DED, IND = TaskType.ABDUCTION, TaskType.DEDUCTION, TaskType.INDUCTION
TRI = Triplet(
    "import re\ndef f(s):\n    return re.sub('a', 'b', s)", "'banana'", "'bbnbnb'", ["import re"]
)
IND_TASK = InductionTask(
    "def f(a):\n    return a * 2", ["1", "2", "'x'", "[3]"], ["2", "4", "'xx'", "[3, 3]"], "Twice."
)


def user(prompt: str) -> str:
    head, body = prompt.split("\nUser: ", 1)
    assert "<think>" in head and "<answer>" in head
    assert body.endswith("\nAssistant: <think>")
    return body


def test_program_proposers_show_references_and_banned_list():
    for task in (ABD, DED):
        p = user(proposer_prompt(task, references=[TRI, TRI], banned=ORIGINAL_BANNED))
        assert p.count("<snippet_") == 2 and "<snippet_1>" in p
        assert ", ".join(ORIGINAL_BANNED) in p
        blocks = [(b.tag, b.body) for b in fences(p.split("### Reference Code Snippets:")[1])]
        assert blocks[:3] == [("python", TRI.snippet), ("input", TRI.input), ("output", TRI.output)]
        assert "10 seconds" in p
    ded = user(proposer_prompt(DED, references=[TRI]))
    abd = user(proposer_prompt(ABD, references=[TRI]))
    assert "predict the output" in ded and "predict the output" not in abd
    assert "find any input" in abd


def test_no_references_ablation_keeps_an_empty_reference_section_by_default():
    # Paper Table 2's "w/o references" row ran the full prompt with nothing under the header.
    p = program_proposer_body(DED, [], ["os"])
    assert p.rstrip().endswith("### Reference Code Snippets:") and "<snippet_" not in p
    assert "different from the reference snippets" in p
    with_refs = program_proposer_body(DED, [TRI], ["os"])
    head = "### Reference Code Snippets:"
    assert p.rstrip() == with_refs.split(head)[0] + head


def test_no_references_without_the_section():
    p = user(proposer_prompt(DED, references=[], banned=["os"], empty_reference_section=False))
    assert "Reference" not in p and "<snippet_" not in p and "reference" not in p


def test_induction_proposer_shows_program_with_plug_suffix():
    p = user(proposer_prompt(IND, program=TRI.snippet, n_inputs=7))
    assert "7 Inputs" in p
    code = [b.body for b in fences(p) if b.tag == "python"][-1]
    assert code == TRI.snippet + "\n" + INDUCTION_SUFFIX


def test_solver_prompts_show_only_what_the_solver_may_see():
    abd = user(solver_prompt(ABD, TRI))
    assert TRI.output in abd and TRI.input not in abd
    ded = user(solver_prompt(DED, TRI))
    assert TRI.input in ded and TRI.output not in ded
    ind = user(solver_prompt(IND, IND_TASK))
    tags = {b.tag: b.body for b in fences(ind)}
    assert tags["input_1"] == "1" and tags["output_2"] == "4" and "input_3" not in tags
    assert "'xx'" not in ind and "[3, 3]" not in ind and IND_TASK.snippet not in ind
    assert tags["message"] == "Twice." and ind.endswith("`f`!\nAssistant: <think>")
