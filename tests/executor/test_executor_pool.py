"""The pool's life: start, serve, survive its workers, refuse to run unconfined, clean up."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from executor_helpers import (
    JOB_UID_BASE,
    executor_config,
    job_processes,
    require_sandbox,
    run1,
    serves,
    src,
)

from megatron_azr.azr.protocols import Job
from megatron_azr.config import ConfigError, load_config
from megatron_azr.executor import (
    ExecutorConfig,
    ExecutorError,
    SandboxExecutor,
    SandboxUnavailable,
    sandbox,
)
from megatron_azr.executor.runtime.zygote import ONE_THREAD

SLEEPY = "import time\ndef f(x):\n    time.sleep(x)\n    return x"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"


def test_config_validation_and_overrides():
    with pytest.raises(ValueError, match="workers"):
        ExecutorConfig(workers=1)
    with pytest.raises(ValueError, match="memory_mb"):
        ExecutorConfig(memory_mb=16)
    cfg = load_config(None, ["executor.workers=3", "executor.timeout_s=2.5"]).executor
    assert (cfg.workers, cfg.timeout_s) == (3, 2.5)
    with pytest.raises(ConfigError, match=r"executor\.sandbox"):
        load_config(None, ["executor.sandbox=docker"])


def test_unconfined_is_refused_without_explicit_opt_in():
    plat = sandbox.detect(ExecutorConfig())
    with pytest.raises(SandboxUnavailable, match="allow_unconfined"):
        sandbox.resolve(ExecutorConfig(sandbox="unconfined"), plat)
    broken = ExecutorConfig(bwrap="/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable, match="refusing"):
        sandbox.resolve(broken)
    with pytest.raises(SandboxUnavailable, match="bwrap"):
        sandbox.resolve(ExecutorConfig(sandbox="bwrap", bwrap="/nonexistent/bwrap"))
    opt_in = ExecutorConfig(bwrap="/nonexistent/bwrap", allow_unconfined=True,
                            python="/usr/bin/python3")  # fmt: skip
    spec = sandbox.resolve(opt_in)
    assert spec.mode == "unconfined"
    assert any("UNCONFINED" in detail for _, detail in spec.layers())


@pytest.mark.sandbox
def test_unconfined_mode_keeps_the_per_job_layers():
    require_sandbox()
    cfg = executor_config(workers=2, sandbox="unconfined", allow_unconfined=True)
    stdlib = sandbox.find_interpreter("").stdlib
    if not sandbox._readable_by_others(stdlib):
        # Job uids cannot read this interpreter outside a mount namespace: refused, with the fix.
        with pytest.raises(SandboxUnavailable, match=r"executor\.python"):
            SandboxExecutor(cfg)
        # Debian's python3-sympy declares no requirements: mpmath must be listed.
        cfg = executor_config(workers=2, sandbox="unconfined", allow_unconfined=True,
                             python="/usr/bin/python3",
                             packages=["numpy", "sympy", "mpmath"])  # fmt: skip
    with SandboxExecutor(cfg) as ex:
        assert ex.spec.mode == "unconfined"
        probe = src("""
            import os, socket
            import numpy, sympy
            def f(x):
                out = [os.getuid(), dict(os.environ) == ONE_THREAD]
                for family in (socket.AF_INET, socket.AF_UNIX):
                    try:
                        socket.socket(family)
                        out.append('socket')
                    except OSError as e:
                        out.append(e.errno)
                return out + [int(numpy.int64(2) * 3), str(sympy.sqrt(8))]
        """)
        r = run1(ex, f"ONE_THREAD = {ONE_THREAD!r}\n" + probe)
        assert r.ok and r.outputs[0].startswith(f"[{JOB_UID_BASE}")
        # Nothing inherited; seccomp: no sockets at all; the exposed packages import.
        assert r.outputs[0].endswith("True, 13, 13, 6, '2*sqrt(2)']")
        r = run1(ex, "import yaml\ndef f(x):\n    return x")  # installed, not listed
        assert r.error_type == "ModuleNotFoundError"
        daemon = src("""
            import os, time
            def f(x):
                if os.fork() == 0:
                    os.setsid()
                    time.sleep(1000)
                return 1
        """)
        assert run1(ex, daemon).ok
        assert serves(ex)
        assert job_processes() == []  # swept without a pid namespace, from /proc
        hostdirs = [w.hostdir for w in ex.workers]
    assert not any(os.path.exists(d) for d in hostdirs)


@pytest.mark.sandbox
def test_close_leaves_nothing_behind():
    require_sandbox()
    ex = SandboxExecutor(executor_config(workers=2))
    assert serves(ex)
    pids = [w.proc.pid for w in ex.workers if w.proc is not None]
    groups = [d for w in ex.workers if w.group is not None for d in w.group.dirs]
    ex.close()
    assert pids and not any(alive(p) for p in pids)
    assert not any(os.path.exists(d) for d in groups)
    assert job_processes() == []
    with pytest.raises(ExecutorError, match="closed"):
        ex.run([Job("x", "run", "def f(x):\n    return x", ("1",))])


@pytest.mark.sandbox
def test_a_forgotten_pool_is_cleaned_up_by_the_collector():
    require_sandbox()
    ex = SandboxExecutor(executor_config(workers=2))
    pids = [w.proc.pid for w in ex.workers if w.proc is not None]
    del ex
    gc.collect()
    assert not any(alive(p) for p in pids)


@pytest.mark.sandbox
def test_worker_killed_mid_batch(pool):
    before = [w.proc.pid for w in pool.workers if w.proc is not None]
    victim = pool.workers[0]

    def kill_soon() -> None:
        time.sleep(0.6)
        assert victim.proc is not None
        os.killpg(victim.proc.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    results = pool.run([Job(f"s{i}", "run", SLEEPY, ("0.3",)) for i in range(12)])
    killer.join()
    lost = [r for r in results if not r.ok]
    assert len(lost) == 1 and lost[0].status == "killed" and lost[0].error_type == "WorkerDied"
    assert all(r.outputs == ["0.3"] for r in results if r.ok)  # the rest ran elsewhere
    assert [w.proc.pid for w in pool.workers if w.proc is not None] != before
    assert serves(pool) and job_processes() == []


@pytest.mark.sandbox
def test_hung_worker_is_replaced(pool):
    victim = pool.workers[1]
    assert victim.proc is not None
    sandboxed = [int(p) for p in Path(f"/proc/{victim.proc.pid}/task/{victim.proc.pid}/children")
                 .read_text().split()]  # fmt: skip
    for pid in sandboxed:  # freeze the sandbox (bwrap's init and the server below it)
        os.kill(pid, signal.SIGSTOP)
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            os.kill(int(child), signal.SIGSTOP)
    t0 = time.monotonic()
    results = pool.run([Job(f"h{i}", "run", SLEEPY, ("0",), timeout_s=1.0) for i in range(6)])
    assert time.monotonic() - t0 < 30
    assert sum(r.status == "timeout" and r.error_type == "WorkerUnresponsive" for r in results) == 1
    assert sum(r.ok for r in results) == 5
    assert serves(pool)


@pytest.mark.sandbox
def test_concurrent_callers_are_serialized(pool):
    out: dict[int, list[str]] = {}

    def call(k: int) -> None:
        program = f"def f(x):\n    return x * {k}"
        jobs = [Job(f"{k}-{i}", "run", program, (str(i),)) for i in range(20)]
        out[k] = [r.outputs[0] for r in pool.run(jobs)]

    threads = [threading.Thread(target=call, args=(k,)) for k in (2, 3, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {k: [str(i * k) for i in range(20)] for k in (2, 3, 5)}


@pytest.mark.sandbox
def test_workers_that_cannot_start_fail_fast(monkeypatch):
    require_sandbox()
    monkeypatch.setattr(sandbox, "RUNTIME_DIR", "/nonexistent-runtime")
    t0 = time.monotonic()
    with pytest.raises(ExecutorError, match="failed to start"):
        SandboxExecutor(executor_config(workers=2))
    assert time.monotonic() - t0 < 60
    assert job_processes() == []
