import logging
from collections import Counter

from azr_scripted import IDENTITY, InProcessExecutor, ScriptedRollout, answer, fence, prompt_kind

from megatron_azr.azr.config import AZRConfig
from megatron_azr.azr.seeding import Seeder
from megatron_azr.azr.tasks import InductionTask


class SeedPolicy:
    """Proposes `x + i` programs with a docstring, a comment and a global; every third proposal
    repeats an earlier one and every fourth is broken, to exercise dedup and validation."""

    def __init__(self) -> None:
        self.count = Counter[str]()

    def __call__(self, prompt: str, i: int) -> str:
        kind = prompt_kind(prompt)
        n = self.count[kind]
        self.count[kind] += 1
        if kind == "propose_induction":
            inputs = [str(n * 10 + j) for j in range(4)]
            body = "".join(fence("input", x) for x in inputs) + fence("message", f"Task {n}.")
            return answer(body)
        if n % 4 == 3:
            return answer(fence("python", "def f(x):\n    return x / 0") + fence("input", "1"))
        k = n - 1 if n % 3 == 2 else n  # a duplicate of the previous proposal
        code = (
            f"OFFSET = {k}\n\ndef add_{k}(x):\n"
            f'    """Adds {k}."""\n    # the global is inlined at seeding\n    return x + {k}'
        )
        return answer(fence("python", code) + fence("input", "1"))


def test_seeding_from_the_identity_triplet():
    cfg = AZRConfig(batch_size=2, seed_batch_factor=3, k_references=2, n_induction_inputs=4)
    rollout = ScriptedRollout(SeedPolicy())
    buffers = Seeder(cfg, rollout, InProcessExecutor(), seed=1).run()

    triplets = buffers.deduction.entries
    assert len(triplets) == 6 and triplets[0].snippet == IDENTITY
    assert [t.to_json() for t in buffers.abduction] == [t.to_json() for t in triplets]
    assert len({t.snippet for t in triplets}) == 6  # duplicates dropped
    for t in triplets[1:]:
        # Comments, docstrings and the global are gone from the program; kept in the original.
        assert t.snippet.startswith("def f(x):") and "#" not in t.snippet and '"""' not in t.snippet
        assert "OFFSET" not in t.snippet and "OFFSET" in t.original_snippet
        assert int(t.output) == 1 + int(t.snippet.rsplit("+ ", 1)[1])
        assert t.step == 0
    # Proposer prompts carry the seeding-only rule; references only come from the seed set.
    proposer_prompts = [p for ps, _ in rollout.calls for p in ps if "Write a New" in p]
    assert all("variables declared outside functions are removed" in p for p in proposer_prompts)
    assert "<snippet_0>" in proposer_prompts[0] and "<snippet_1>" not in proposer_prompts[0]

    induction = buffers.induction.entries
    assert len(induction) == 6 and induction[0].snippet == IDENTITY
    assert all(isinstance(t, InductionTask) and len(t.inputs) == 4 for t in induction[1:])
    programs = {t.snippet for t in triplets}
    for task in induction[1:]:
        assert task.snippet in programs and task.step == 0
        ns: dict = {}
        exec(task.snippet, ns)
        assert task.outputs == [repr(ns["f"](int(x))) for x in task.inputs]


def test_seeding_gives_up_after_max_rounds_with_what_it_has(caplog):
    cfg = AZRConfig(batch_size=2, seed_batch_factor=3)
    rollout = ScriptedRollout(lambda prompt, i: "nothing valid")
    with caplog.at_level(logging.WARNING):
        buffers = Seeder(cfg, rollout, InProcessExecutor(), max_rounds=3).run()
    assert len(buffers.deduction) == 1 and len(buffers.induction) == 1
    assert "1/6 triplets" in caplog.text and "1/6 tasks" in caplog.text
    assert len(rollout.calls) == 6
