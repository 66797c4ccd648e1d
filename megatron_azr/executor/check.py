"""``azr executor check``: run (or validate) the programs of a JSONL file in the sandbox.

Records carry ``program`` (or ``snippet`` / ``code``) and ``input`` (or a list ``inputs``), and
optionally ``output`` (or ``outputs``) and ``imports``: the official AZR seed buffers and CRUXEval
as they are. Each record becomes one job; a recorded output is compared by value inside the
sandbox, as a literal without the program's names (``literal(output) == f(input)``), never by
evaluating anything here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from megatron_azr.azr.protocols import ExecResult, Executor, Job
from megatron_azr.executor.config import ExecutorConfig

PROGRAM_KEYS = ("program", "snippet", "code")


@dataclass
class Record:
    index: int
    job: Job | None  # None: the line is not a usable record
    has_output: bool = False
    multi: bool = False
    problem: str = ""


def parse_record(
    index: int, line: str, cfg: ExecutorConfig, banned: Sequence[str] | None
) -> Record:
    """``banned``: the import ban list for full proposal validation (``--validate``); None runs
    the program on its input."""
    try:
        rec = json.loads(line)
    except ValueError as e:
        return Record(index, None, problem=f"not JSON: {e}")
    if not isinstance(rec, dict):
        return Record(index, None, problem="not a JSON object")
    program = next((rec[k] for k in PROGRAM_KEYS if isinstance(rec.get(k), str)), None)
    multi = "inputs" in rec
    inputs = rec.get("inputs") if multi else [rec.get("input")]
    outputs = rec.get("outputs") if multi else ([rec["output"]] if "output" in rec else None)
    imports = rec.get("imports") or []
    if program is None:
        return Record(index, None, problem="no program (keys: program, snippet or code)")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        return Record(index, None, problem="no input (a string 'input' or a list 'inputs')")
    if outputs is not None and (
        not isinstance(outputs, list)
        or len(outputs) != len(inputs)
        or not all(isinstance(o, str) for o in outputs)
    ):
        return Record(index, None, problem="outputs do not match the inputs one to one")
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        return Record(index, None, problem="imports must be a list of strings")
    job = Job(
        id=str(rec.get("id", index)),
        kind="validate" if banned is not None else "run",
        program=program,
        inputs=tuple(inputs),
        expected=tuple(outputs or ()),
        imports=tuple(imports),
        banned_imports=tuple(banned or ()),
        timeout_s=cfg.timeout_s,
    )
    return Record(index, job, has_output=outputs is not None, multi=multi)


def result_line(record: Record, result: ExecResult | None) -> dict[str, Any]:
    if record.job is None or result is None:
        return {"index": record.index, "status": "invalid", "error_type": "BadRecord",
                "detail": record.problem}  # fmt: skip
    line: dict[str, Any] = {"index": record.index, "id": result.id, "status": result.status}
    if record.multi:
        line["outputs"] = result.outputs
    else:
        line["output"] = result.outputs[0] if result.outputs else ""
    if record.has_output:
        line["match"] = bool(result.matches) and all(result.matches)
        if record.multi:
            line["matches"] = result.matches
    if not result.ok:
        line["error_type"] = result.error_type
        line["detail"] = result.stderr_tail[-500:]
    line["time_s"] = round(result.time_s, 6)
    return line


def run_records(executor: Executor, records: Sequence[Record]) -> list[dict[str, Any]]:
    """One result line per record, in order: the records that parsed run as one batch, the
    others get their :func:`result_line` without running."""
    results = iter(executor.run([r.job for r in records if r.job is not None]))
    return [result_line(r, next(results) if r.job is not None else None) for r in records]


@dataclass
class Summary:
    records: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    with_output: int = 0
    matched: int = 0

    def add(self, line: dict[str, Any]) -> None:
        self.records += 1
        self.statuses[line["status"]] += 1
        if "match" in line:
            self.with_output += 1
            self.matched += bool(line["match"])

    def all_ok(self) -> bool:
        """Every record ran ok and reproduced its recorded output (if it had one)."""
        return self.statuses["ok"] == self.records and self.matched == self.with_output

    def text(self) -> str:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        out = f"{self.records} records: {statuses}"
        if self.with_output:
            pct = 100.0 * self.matched / self.with_output
            out += f"; reproduced {self.matched}/{self.with_output} recorded outputs ({pct:.2f}%)"
        return out


def chunks(lines: IO[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        if line.strip():
            chunk.append(line)
            if len(chunk) == size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk
