"""Turning what a fork server saw (exit status, result lines, stderr) into results.

This is policy, kept out of the sandbox: the server reports raw facts, the pool decides. Result
lines come from the job process and are untrusted data: parsed as JSON (never evaluated), bounded
in size by the server, and any line that does not parse makes the task an error.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from megatron_azr.azr.protocols import ExecResult
from megatron_azr.executor.runtime.protocol import STDERR_TAIL


def interpret(task: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """Status, outputs, matches, error type, stderr tail and time of one task."""
    n_items = int(task["n_items"])
    items: dict[int, dict[str, Any]] = {}
    done, garbled = False, False
    for line in str(answer.get("out", "")).split("\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if rec.get("done") is True:
                done = True
            else:
                items[int(rec["i"])] = rec
        except (ValueError, KeyError, TypeError, AttributeError):
            garbled = True
    wait = int(answer.get("wait", 0))
    signum = os.WTERMSIG(wait) if os.WIFSIGNALED(wait) else 0
    head = items.get(-1)  # the program failed before any item ran
    failed = head or next(
        (items[i] for i in range(n_items) if items.get(i, {}).get("status", "ok") != "ok"), None
    )
    status, error_type, message = "ok", "", ""  # message: at most ~600 chars (harness)
    if answer.get("timed_out"):
        status, error_type = "timeout", "Timeout"
    elif signum:
        status = "timeout" if signum == signal.SIGXCPU else "killed"
        error_type = (
            signal.Signals(signum).name if signum in signal.valid_signals() else str(signum)
        )
    elif failed is not None:
        status = str(failed.get("status", "error"))
        error_type, message = str(failed.get("error_type", "")), str(failed.get("message", ""))
    elif garbled or not done or len(items) < n_items or os.WEXITSTATUS(wait) != 0:
        status, error_type = "error", "NoResult"
        message = f"the job exited (status {os.WEXITSTATUS(wait)}) without a complete result"
    if status not in ("ok", "error", "timeout", "memory", "killed", "invalid"):
        status, error_type = "error", "NoResult"
    if head is None:
        outputs = [str(items.get(i, {}).get("output", "")) for i in range(n_items)]
        matches = [items.get(i, {}).get("match") is True for i in range(n_items)]
    else:
        outputs, matches = [""] * n_items, [False] * n_items
    # The job's own stderr, then what went wrong last, where a traceback puts it.
    err = str(answer.get("err", ""))[-(STDERR_TAIL - len(message) - 1) :] if message else ""
    stderr = (err + "\n" + message).strip() if message else str(answer.get("err", "")).strip()
    return {
        "status": status,
        "outputs": outputs,
        "matches": matches,
        "error_type": error_type,
        "stderr": stderr,
        "time": float(answer.get("time", 0.0)),
        "signal": signum,
    }


def lost(why: str, status: str = "killed") -> dict[str, Any]:
    """The result of a task whose worker died or hung under it."""
    return {"status": status, "outputs": [], "matches": [], "error_type": why,
            "stderr": f"the job's worker was lost ({why})", "time": 0.0, "signal": 0}  # fmt: skip


def to_exec_result(job_id: str, r: dict[str, Any], with_matches: bool) -> ExecResult:
    return ExecResult(
        id=job_id,
        status=r["status"],
        outputs=list(r["outputs"]),
        matches=list(r["matches"]) if with_matches else [],
        error_type=r["error_type"],
        stderr_tail=r["stderr"],
        time_s=r["time"],
    )


def combine_validation(job_id: str, a: ExecResult, b: ExecResult) -> ExecResult:
    """Spec §5.2.3 across processes: both runs (two hash seeds) ok with identical outputs.

    When both runs produced their outputs and passed everything but the round trip, outputs
    that differ between the seeds are the verdict: the more fundamental reason the proposal
    cannot be a task. Other rejections (randomness seen within one run, a memory address, NaN)
    are more specific and stand.
    """
    time_s = a.time_s + b.time_s
    ran = all(
        (r.ok or r.error_type == "NoRoundTrip") and r.outputs and all(r.outputs) for r in (a, b)
    )
    if ran and a.outputs != b.outputs:
        i = next(k for k, (x, y) in enumerate(zip(a.outputs, b.outputs, strict=True)) if x != y)
        return ExecResult(
            job_id,
            "invalid",
            outputs=a.outputs,
            matches=a.matches,
            error_type="NonDeterministic",
            stderr_tail=f"input {i}: {a.outputs[i][:300]!r} under one hash seed, "
            f"{b.outputs[i][:300]!r} under another",
            time_s=time_s,
        )
    verdict = b if a.ok and not b.ok else a
    verdict.time_s = time_s
    return verdict
