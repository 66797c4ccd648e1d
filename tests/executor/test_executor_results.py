"""Turning a fork server's raw answer into a result (pure functions, no sandbox needed)."""

from __future__ import annotations

import json
import signal

from megatron_azr.azr.protocols import ExecResult
from megatron_azr.executor.results import combine_validation, interpret

TASK = {"n_items": 2}


def answer(lines: list[dict | str], wait: int = 0, timed_out: bool = False) -> dict:
    out = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
    return {"tid": 1, "wait": wait, "timed_out": timed_out, "time": 0.5, "out": out, "err": ""}


def test_complete_answer():
    items = [{"i": 0, "status": "ok", "output": "1", "match": True},
             {"i": 1, "status": "ok", "output": "2", "match": False}, {"done": True}]  # fmt: skip
    r = interpret(TASK, answer(items))
    assert (r["status"], r["outputs"], r["matches"]) == ("ok", ["1", "2"], [True, False])
    assert r["time"] == 0.5


def test_exit_without_done_or_with_garbage_is_an_error():
    one = [{"i": 0, "status": "ok", "output": "1"}]
    assert interpret(TASK, answer(one))["error_type"] == "NoResult"  # e.g. os._exit(0) mid-job
    forged = [*one, {"i": 1, "status": "ok", "output": "2"}, "{not json", {"done": True}]
    assert interpret(TASK, answer(forged))["error_type"] == "NoResult"
    bogus = [{"i": 0, "status": "great"}, {"i": 1, "status": "ok"}, {"done": True}]
    assert interpret(TASK, answer(bogus))["status"] == "error"


def test_signals_and_timeouts():
    assert interpret(TASK, answer([], timed_out=True))["status"] == "timeout"
    killed = interpret(TASK, answer([], wait=signal.SIGSEGV))
    assert (killed["status"], killed["error_type"]) == ("killed", "SIGSEGV")
    assert interpret(TASK, answer([], wait=signal.SIGXCPU))["status"] == "timeout"


def test_program_failure_fills_every_item():
    r = interpret(TASK, answer([{"i": -1, "status": "invalid", "error_type": "BannedImport",
                                 "message": "banned imports: os"}, {"done": True}]))  # fmt: skip
    assert (r["status"], r["outputs"], r["matches"]) == ("invalid", ["", ""], [False, False])
    assert r["stderr"].endswith("banned imports: os")


def test_validation_verdict_precedence():
    ok = ExecResult("j", "ok", outputs=["['a', 'b']"], time_s=1.0)
    other = ExecResult("j", "ok", outputs=["['b', 'a']"], time_s=1.0)
    v = combine_validation("j", ok, other)
    assert (v.status, v.error_type, v.time_s) == ("invalid", "NonDeterministic", 2.0)
    cut = ExecResult("j", "invalid", outputs=["'x...y'"], error_type="NoRoundTrip")
    assert combine_validation("j", cut, other).error_type == "NonDeterministic"
    rand = ExecResult("j", "invalid", outputs=["'q'"], error_type="NonDeterministic",
                      stderr_tail="two calls in one process returned different values")  # fmt: skip
    assert combine_validation("j", rand, other) is rand  # the more specific reason stands
    same = ExecResult("j", "ok", outputs=["['a', 'b']"])
    assert combine_validation("j", ok, same) is ok
    failed = ExecResult("j", "error", outputs=[""], error_type="NameError")
    assert combine_validation("j", ok, failed) is failed
