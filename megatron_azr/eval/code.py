"""Code benchmarks on the executor: the program a response stands for, and the sandboxed jobs
that test it (HumanEval's ``check``, EvalPlus's differential tests, LiveCodeBench's tests,
CRUXEval's input/output checks).

Nothing here runs model code: jobs carry it to the executor, whose results are data. The tests
themselves run inside the sandbox as :mod:`megatron_azr.eval.sandbox_tests`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_azr.azr.parsing import (
    CODE_TAGS,
    extract_answer,
    extract_solver_answer,
    fences,
    first_turn,
)
from megatron_azr.azr.protocols import ExecResult, Job, TaskType
from megatron_azr.eval.benchmarks import Benchmark, Problem

_RUNNER = (Path(__file__).parent / "sandbox_tests.py").read_text()
PASS = "'pass'"  # the repr a passing test run returns
# EvalPlus's time rule as AZR ran it (spec §11): a call may take max(10 s, 8 x canonical).
EVALPLUS_MIN_TIME_S = 10.0
EVALPLUS_TIME_FACTOR = 8.0


@dataclass(frozen=True)
class CodeAnswer:
    code: str  # "" = nothing to run
    how: str  # "fence", "program" or "continuation": which rule found it


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def _prompt_imports(prompt: str) -> str:
    return "\n".join(
        line for line in prompt.splitlines() if re.match(r"(?:import|from)\s+\w", line)
    )


def extract_program(
    problem: Problem, bench: Benchmark, response: str, continuation: bool
) -> CodeAnswer:
    """The program a response stands for.

    ``continuation``: the prompt ended inside the code (a base model continuing HumanEval's
    function), so prompt + response is the program. Otherwise: the last python block of the
    ``<answer>`` (else of the whole response, else a block cut off by the length limit); else the
    response itself if it defines the entry point; else it is taken as a continuation. A full
    program gets the prompt's imports put back (HumanEval signatures use ``List`` from
    ``typing``)."""
    entry = str(problem.record.get("entry_point", ""))
    prefix = problem.question if bench.fmt in ("tests", "evalplus") else ""
    if continuation:
        return CodeAnswer(_continued(problem, bench) + response, "continuation")
    text = first_turn(response)
    answer = extract_answer(text)
    block = None
    for scope in (answer, text):
        if scope is not None and block is None:
            block = next((b.body for b in reversed(fences(scope)) if b.tag in CODE_TAGS), None)
    if block is None:
        block = _unclosed_fence(text)
    if block is None and entry and _defines(text, entry):
        block = text
    if block is not None:
        imports = _prompt_imports(prefix)
        how = "fence" if block is not text else "program"
        return CodeAnswer(f"{imports}\n{block}" if imports else block, how)
    if not text.strip():
        return CodeAnswer("", "continuation")
    return CodeAnswer(prefix + text, "continuation")


_OPEN_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*)\Z", re.DOTALL)


def _unclosed_fence(text: str) -> str | None:
    """The code of a block the response opened and never closed (cut at max_tokens)."""
    if text.count("```") % 2 == 0:
        return None
    m = _OPEN_FENCE.search(text[text.rfind("```") :])
    return m.group(1).strip() if m else None


def _continued(problem: Problem, bench: Benchmark) -> str:
    if bench.fmt == "lcb":
        return str(problem.record.get("starter_code") or "")
    return problem.question


def _program(spec: dict[str, Any]) -> str:
    return _RUNNER + "\nSPEC = json.loads(" + repr(json.dumps(spec)) + ")\n"


def test_job(job_id: str, bench: Benchmark, problem: Problem, code: str) -> Job:
    """One sandboxed run of ``code`` against the problem's tests; the result passes when every
    item returned ``'pass'`` (:func:`passed`)."""
    r = problem.record
    parts: tuple[str, ...] = ("'all'",)
    if bench.fmt == "tests":
        spec = {"format": "tests", "code": code, "test": r["test"], "entry_point": r["entry_point"]}
    elif bench.fmt == "evalplus":
        spec = {
            "format": "evalplus",
            "code": code,
            "canonical": problem.question + r["canonical_solution"],
            "entry_point": r["entry_point"],
            "task_id": str(r["task_id"]),
            "base_input": r["base_input"],
            "plus_input": r.get("plus_input") or [],
            "atol": float(r.get("atol") or 0),
            "min_time_s": EVALPLUS_MIN_TIME_S,
            "time_factor": EVALPLUS_TIME_FACTOR,
        }
        parts = ("'base'", "'plus'")
    elif bench.fmt == "lcb":
        spec = {"format": "lcb", "code": code, "tests": r["tests"], "func_name": r["func_name"],
                "test_time_s": bench.time_limit_s}  # fmt: skip
    else:
        raise ValueError(f"{bench.name} is not a code benchmark with tests")
    budget = bench.time_limit_s if bench.fmt == "tests" else bench.timeout_s
    return Job(job_id, "run", _program(spec), parts, (PASS,) * len(parts), timeout_s=budget)


def passed(result: ExecResult) -> bool:
    return bool(result.matches) and all(result.matches)


def base_passed(result: ExecResult) -> bool:
    """EvalPlus: the base tests alone (the original HumanEval/MBPP verdict)."""
    return bool(result.matches) and result.matches[0]


def failure(result: ExecResult) -> str:
    """Why a test run failed, in one line."""
    if passed(result):
        return ""
    if result.ok:  # it ran; the value differs
        return f"wrong answer: got {result.outputs[-1] if result.outputs else ''}"[:300]
    tail = result.stderr_tail.strip().splitlines()
    return f"{result.status}: {result.error_type}: {tail[-1] if tail else ''}"[:300]


# ----------------------------------------------------------------------------------- CRUXEval


def cruxeval_task(bench: Benchmark) -> TaskType:
    return TaskType.ABDUCTION if bench.fmt == "cruxeval-i" else TaskType.DEDUCTION


def cruxeval_answer(bench: Benchmark, response: str, tagged: bool = False) -> str | None:
    """The predicted input (I) or output (O). ``tagged`` (the AZR templates): only an
    ``<answer>`` block counts, as in the training solver check (spec §6.1). Otherwise a response
    without one (a plain prompt, a bare answer in a predictions file) is read as the answer."""
    text = first_turn(response)
    if "<answer>" not in text and not tagged:
        text = "<answer>" + text
    return extract_solver_answer(cruxeval_task(bench), text)


def cruxeval_job(job_id: str, bench: Benchmark, problem: Problem, answer: str) -> Job:
    """CRUXEval-I as the benchmark grades it: ``f(<answer>)`` evaluated in the program's scope
    must equal the gold output (inputs may be expressions: ``'-'.join(...)``, lambdas).
    CRUXEval-O as AZR's deduction check: the answer, a literal, must equal the gold value."""
    output = str(problem.record["output"])
    if bench.fmt == "cruxeval-i":
        return Job(job_id, "run", problem.question, (answer,), (output,), timeout_s=bench.timeout_s)
    return Job(
        job_id, "deduction", problem.question, expected=(output,), prediction=answer,
        timeout_s=bench.timeout_s,
    )  # fmt: skip
