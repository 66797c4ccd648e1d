"""Code benchmarks graded in the real sandbox: canonical solutions pass, broken ones fail, gold
CRUXEval answers score 100% and shuffled ones ~0%, and user files in the HumanEval+ and
LiveCodeBench layouts are read and tested."""

import base64
import json
import pickle
import zlib
from collections.abc import Iterator

import pytest

from megatron_azr.eval.benchmarks import BENCHMARKS, Benchmark, resolve
from megatron_azr.eval.code import extract_program
from megatron_azr.eval.runner import grade
from megatron_azr.executor import ExecutorConfig, SandboxExecutor

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def executor() -> Iterator[SandboxExecutor]:
    # What `azr eval` runs code benchmarks with (eval/cli.py): EvalPlus's 4 GiB memory cap.
    with SandboxExecutor(ExecutorConfig(workers=2, memory_mb=4096, max_program_kb=4096)) as ex:
        yield ex


def _rate(verdicts) -> float:
    flat = [v.passed for vs in verdicts for v in vs]
    return sum(flat) / len(flat)


def _broken(bench: Benchmark, problem) -> str:
    """A completion that defines the entry point but returns nothing useful."""
    return f"```python\ndef {problem.record['entry_point']}(*args):\n    return None\n```"


def test_humaneval_canonical_solutions_pass_and_broken_ones_fail(executor):
    bench = BENCHMARKS["humaneval"]
    problems = bench.load()
    canonical = [[p.record["canonical_solution"]] for p in problems]
    assert _rate(grade(bench, problems, canonical, executor, continuation=True)) == 1.0
    broken = [[_broken(bench, p)] for p in problems]
    assert _rate(grade(bench, problems, broken, executor)) == 0.0
    [[v]] = grade(bench, problems[:1], [["```python\ndef g():\n    pass\n```"]], executor)
    assert "the program defines no function 'has_close_elements'" in v.detail


def test_mbpp_plus_canonical_solutions_pass_and_broken_ones_fail(executor):
    """The first 30 problems here (the slow test below runs all 378)."""
    bench = BENCHMARKS["mbpp+"]
    problems = bench.load()[:30]
    canonical = grade(
        bench, problems, [[p.record["canonical_solution"]] for p in problems], executor
    )
    assert [v.detail for vs in canonical for v in vs if not v.passed] == []
    assert _rate(grade(bench, problems, [[_broken(bench, p)] for p in problems], executor)) == 0.0


@pytest.mark.slow
def test_mbpp_plus_every_canonical_solution_passes(executor):
    bench = BENCHMARKS["mbpp+"]
    problems = bench.load()
    canonical = grade(
        bench, problems, [[p.record["canonical_solution"]] for p in problems], executor
    )
    assert [
        (p.id, v.detail)
        for p, vs in zip(problems, canonical, strict=True)
        for v in vs
        if not v.passed
    ] == []


def test_evalplus_special_oracles_and_float_tolerance(executor):
    bench = BENCHMARKS["mbpp+"]
    by_id = {p.id: p for p in bench.load()}
    # Mbpp/2 compares as sets (EvalPlus's oracle): any order of the shared elements passes.
    reordered = (
        "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), key=str)[::-1])"
    )
    missing_one = "def similar_elements(a, b):\n    return tuple(set(a) & set(b))[1:]"
    problem = by_id["Mbpp/2"]
    [[ok], [bad]] = grade(bench, [problem] * 2, [[reordered], [missing_one]], executor)
    assert ok.passed and ok.base_passed
    assert not bad.passed and "wrong output" in bad.detail


@pytest.mark.slow
def test_evalplus_preempts_an_endless_loop_at_the_per_input_limit(executor):
    bench = BENCHMARKS["mbpp+"]
    problem = bench.load()[0]
    loop = f"def {problem.record['entry_point']}(*args):\n    while True:\n        pass"
    [[v]] = grade(bench, [problem], [[loop]], executor)
    assert not v.passed and "took over 10 s" in v.detail


@pytest.mark.parametrize("name", ["cruxeval-i", "cruxeval-o"])
def test_cruxeval_gold_answers_score_100_and_shuffled_ones_near_0(executor, name):
    bench = BENCHMARKS[name]
    problems = bench.load()[:200]
    gold = [[p.answer] for p in problems]
    assert _rate(grade(bench, problems, gold, executor)) == 1.0
    shuffled = [[q.answer] for q in problems[1:] + problems[:1]]
    verdicts = grade(bench, problems, shuffled, executor)
    assert _rate(verdicts) < 0.05
    assert any(v.detail.startswith("wrong answer: got ") for [v] in verdicts)


def test_cruxeval_answers_need_the_answer_block_under_the_azr_template(executor):
    bench = BENCHMARKS["cruxeval-o"]
    problem = bench.load()[0]
    untagged = f"I think so.\n```output\n{problem.answer}\n```"
    tagged = f"x</think> <answer>```output\n{problem.answer}\n```</answer>"
    verdicts = grade(bench, [problem] * 3, [[untagged], [untagged], [tagged]], executor)
    assert [v.passed for [v] in verdicts] == [True, True, True]  # plain templates, predictions
    strict = grade(bench, [problem] * 2, [[untagged], [tagged]], executor, tagged=True)
    assert [v.passed for [v] in strict] == [False, True]
    assert strict[0][0].detail == "no answer found"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cruxeval-i", "cruxeval-o"])
def test_cruxeval_all_gold_answers_score_100(executor, name):
    bench = BENCHMARKS[name]
    problems = bench.load()
    r1 = "<think>...</think> <answer>\n```{tag}\n{answer}\n```\n</answer>"
    tag = "input" if name == "cruxeval-i" else "output"
    gold = [[r1.format(tag=tag, answer=p.answer)] for p in problems]
    assert _rate(grade(bench, problems, gold, executor)) == 1.0


# ------------------------------------------------------------------------------ user files


def _humaneval_plus_file(tmp_path) -> str:
    """Three HumanEval problems in the EvalPlus layout (base and plus inputs)."""
    problems = {p.id: p.record for p in BENCHMARKS["humaneval"].load()[:3]}
    inputs = {
        "HumanEval/0": ([[[1.0, 2.0, 3.0], 0.5], [[1.0, 2.8, 3.0], 0.3]], [[[], 1.0]]),
        "HumanEval/1": ([["(()) ()"]], [["((()))(())()"], [""]]),
        "HumanEval/2": ([[3.5]], [[1.33], [123.456]]),
    }
    path = tmp_path / "humanevalplus.jsonl"
    with path.open("w") as fh:
        for task_id, (base, plus) in inputs.items():
            r = problems[task_id]
            row = {k: r[k] for k in ("task_id", "prompt", "entry_point", "canonical_solution")}
            fh.write(json.dumps({**row, "base_input": base, "plus_input": plus, "atol": 0}) + "\n")
    return str(path)


def test_a_humaneval_plus_file_is_a_benchmark(executor, tmp_path):
    bench = resolve(f"humaneval+:{_humaneval_plus_file(tmp_path)}")
    problems = bench.load()
    canonical = [[p.record["canonical_solution"]] for p in problems]
    assert _rate(grade(bench, problems, canonical, executor, continuation=True)) == 1.0
    # HumanEval/2 (truncate_number): off by a rounding error passes under EvalPlus's tolerance,
    # a wrong answer does not.
    near = "    return number % 1.0 + 1e-9\n"
    wrong = "    return number - int(number) + 0.01\n"
    [[v_near], [v_wrong]] = grade(bench, [problems[2]] * 2, [[near], [wrong]], executor, True)
    assert v_near.passed and not v_wrong.passed


def _lcb_file(tmp_path) -> str:
    stdin_private = [{"input": "10 20\n", "output": "30\n", "testtype": "stdin"}]
    packed = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(stdin_private)))).decode()
    rows = [
        {
            "question_id": "sum2",
            "question_content": "Read two integers and print their sum.",
            "starter_code": "",
            "public_test_cases": json.dumps(
                [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
            ),
            "private_test_cases": packed,
            "metadata": "{}",
        },
        {
            "question_id": "twice",
            "question_content": "Return twice the sum of a list.",
            "starter_code": "class Solution:\n    def twice(self, nums: List[int]) -> int:\n",
            "public_test_cases": json.dumps(
                [{"input": "[1, 2]", "output": "6", "testtype": "functional"}]
            ),
            "private_test_cases": json.dumps(
                [{"input": "[5]", "output": "10", "testtype": "functional"}]
            ),
            "metadata": json.dumps({"func_name": "twice"}),
        },
    ]
    path = tmp_path / "lcb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_livecodebench_file_is_a_benchmark(executor, tmp_path):
    bench = resolve(f"livecodebench:{_lcb_file(tmp_path)}")
    sum2, twice = bench.load()
    assert len(sum2.record["tests"]) == 2  # public + decompressed private
    good_stdin = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    bad_stdin = "```python\na, b = map(int, input().split())\nprint(a * b)\n```"
    good_func = (
        "```python\nclass Solution:\n    def twice(self, nums):\n        return 2 * sum(nums)\n```"
    )
    bad_func = (
        "```python\nclass Solution:\n    def twice(self, nums):\n        return sum(nums) + 3\n```"
    )
    verdicts = grade(bench, [sum2, sum2, twice, twice],
                     [[good_stdin], [bad_stdin], [good_func], [bad_func]], executor)  # fmt: skip
    assert [v.passed for [v] in verdicts] == [True, False, True, False]
    # `bad_func` passes the public test (1 + 2 + 3 = 6) and fails the private one.
    assert "test 1" in verdicts[3][0].detail


def test_a_livecodebench_file_cannot_smuggle_objects_through_pickle(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    packed = base64.b64encode(zlib.compress(pickle.dumps(Boom()))).decode()
    row = {"question_id": "x", "question_content": "q", "public_test_cases": "[]",
           "private_test_cases": packed}  # fmt: skip
    path = tmp_path / "evil.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(pickle.UnpicklingError):
        resolve(f"livecodebench:{path}").load()


# ------------------------------------------------------------------------------ extraction


def test_the_program_of_a_response():
    bench = BENCHMARKS["humaneval"]
    problem = bench.load()[0]  # has_close_elements, prompt imports `List` from typing
    r1 = (
        "<think>x</think> <answer>```python\nprint('draft')\n```\nfinal:\n```python\n"
        "def has_close_elements(numbers: List[float], t: float) -> bool:\n    return False\n```"
        "</answer>"
    )
    got = extract_program(problem, bench, r1, continuation=False)
    assert got.how == "fence"
    assert got.code.startswith("from typing import List\n") and "return False" in got.code
    body = "    return True\n"
    assert extract_program(problem, bench, body, continuation=True).code == problem.question + body
    bare = "def has_close_elements(numbers, threshold):\n    return True\n"
    assert extract_program(problem, bench, bare, continuation=False).how == "program"
    assert extract_program(problem, bench, "", continuation=False).code == ""
    # A block cut off by the length limit still counts as the program.
    cut = "Here:\n```python\ndef has_close_elements(numbers, threshold):\n    return True"
    assert extract_program(problem, bench, cut, continuation=False).code.endswith("return True")
