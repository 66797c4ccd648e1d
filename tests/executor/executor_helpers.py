"""Helpers shared by the executor tests (imported by bare name, as pytest puts this directory
on sys.path).

Tests marked ``sandbox`` need bubblewrap and root (CI has both). Without them they fail with the
reason rather than skip: a green run must mean the sandbox was exercised. Deselect them
explicitly with ``-m "not sandbox"`` on a machine that cannot run them.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from megatron_azr.azr.protocols import ExecResult, Job
from megatron_azr.executor import ExecutorConfig, SandboxExecutor, sandbox

ROOT = Path(__file__).resolve().parents[2]
# This session's job uids. Another azr process on the host (a training run, a second test
# session) runs its jobs as the default uids: the leak checks below must see only ours.
JOB_UID_BASE = ExecutorConfig().job_uid_base + 1000 * (1 + os.getpid() % 1000)


def executor_config(**fields: object) -> ExecutorConfig:
    """An executor config whose jobs run as this session's uids."""
    return ExecutorConfig(job_uid_base=JOB_UID_BASE, **fields)  # type: ignore[arg-type]


def sandbox_problem() -> str:
    plat = sandbox.detect(ExecutorConfig())
    if not plat.root:
        return "not running as root"
    if not plat.bwrap_ok:
        return plat.bwrap_error
    return ""


def require_sandbox() -> None:
    problem = sandbox_problem()
    if problem:
        pytest.fail(
            f"sandbox tests need bubblewrap and root ({problem}); CI has both. "
            'Deselect them with -m "not sandbox" where they cannot run.'
        )


def job_processes(base: int = JOB_UID_BASE, span: int = 1000) -> list[tuple[int, int]]:
    """(pid, uid) of every live process running as one of this session's job uids."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        uid = int(status.split("Uid:")[1].split()[0])
        state = status.split("State:")[1].split()[0]
        if base <= uid < base + span and state != "Z":
            found.append((int(entry.name), uid))
    return found


def src(text: str) -> str:
    """A test program written as an indented triple-quoted string."""
    return textwrap.dedent(text).strip("\n")


def run1(ex: SandboxExecutor, program: str, *inputs: str, **kw: object) -> ExecResult:
    """One job; ``kind`` defaults to "run" with the given inputs (default: one input "1")."""
    kind = kw.pop("kind", "run")
    job = Job(id="t", kind=kind, program=program, inputs=inputs or ("1",), **kw)  # type: ignore[arg-type]
    [result] = ex.run([job])
    return result


def seen(result: ExecResult) -> object:
    """The value a probe job printed (a literal of our own, parsed, never evaluated)."""
    assert result.ok, (result.status, result.error_type, result.stderr_tail)
    return ast.literal_eval(result.outputs[0])


def serves(ex: SandboxExecutor) -> bool:
    """The pool still answers correctly (on every worker: a validation uses both)."""
    result = run1(ex, "def f(x):\n    return sorted({x, 'b', 'a'})", "'c'", kind="validate")
    return result.ok and result.outputs == ["['a', 'b', 'c']"]


def azr(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "megatron_azr.cli", "executor", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
