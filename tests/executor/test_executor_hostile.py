"""Hostile programs: each is contained, gets the right status, leaves nothing behind, and the
pool keeps serving (the ``clean`` fixture checks the last two after every test)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from executor_helpers import ROOT, run1, src

from megatron_azr.azr.protocols import Job
from megatron_azr.executor.runtime.zygote import ONE_THREAD

pytestmark = pytest.mark.sandbox


def job(name: str, program: str, *inputs: str, timeout_s: float = 10.0) -> Job:
    return Job(name, "run", src(program), inputs or ("1",), timeout_s=timeout_s)


def test_network_to_a_local_listener(clean):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    accepted: list[object] = []

    def accept() -> None:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                accepted.append(srv.accept())
            except OSError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    port = str(srv.getsockname()[1])
    results = clean.run([
        job("tcp", """
            import socket
            def f(p):
                return socket.create_connection(('127.0.0.1', p), 2)
        """, port),
        job("udp", """
            import socket
            def f(p):
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', p))
        """, port),
        job("dns", "import socket\ndef f(p):\n    return socket.getaddrinfo('example.com', 80)"),
    ])  # fmt: skip
    thread.join()
    srv.close()
    assert [r.status for r in results] == ["error"] * 3
    assert accepted == []


def test_writes_outside_the_job_directory(clean):
    marker = f"azr-hostile-{os.getpid()}"
    stdlib = os.path.dirname(os.__file__)
    targets = [f"/tmp/{marker}", f"/usr/{marker}", f"/{marker}", f"/dev/shm/{marker}",
               f"/dev/{marker}", str(ROOT / marker), f"{stdlib}/{marker}"]  # fmt: skip
    program = "def f(path):\n    with open(path, 'w') as fh:\n        fh.write('pwned')"
    results = clean.run([Job(t, "run", program, (repr(t),)) for t in targets])
    assert [r.status for r in results] == ["error"] * len(targets)
    assert not any(Path(t).exists() for t in targets)  # nothing on the host either


def test_secrets_stay_out_of_reach(clean, project_secret, monkeypatch):
    monkeypatch.setenv("AZR_HOSTILE_SECRET", "TOP-SECRET-7f3a")
    host_secret = Path(f"/tmp/azr-secret-{os.getpid()}")
    host_secret.write_text("TOP-SECRET-7f3a")
    host_secret.chmod(0o600)
    reads = [str(project_secret), str(host_secret), "/etc/shadow", "/root/.bashrc",
             str(ROOT / "megatron_azr" / "config.py"), "/proc/1/environ"]  # fmt: skip
    try:
        program = "def f(path):\n    return open(path).read()"
        results = clean.run([Job(p, "run", program, (repr(p),)) for p in reads])
        [env] = clean.run([job("env", "import os\ndef f(x):\n    return str(dict(os.environ))")])
    finally:
        host_secret.unlink()
    assert [r.status for r in results] == ["error"] * len(reads)
    assert env.outputs == [repr(str(ONE_THREAD))]  # nothing of ours: only the BLAS settings
    assert not any("TOP-SECRET" in "".join(r.outputs) + r.stderr_tail for r in [*results, env])


def test_fork_bomb(clean):
    r = clean.run([job("bomb", """
        import os
        def f(x):
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
    """, timeout_s=2.0)])[0]  # fmt: skip
    assert r.status == "timeout"  # bounded by the uid's process limit, then swept


def test_memory_bombs(clean):
    grow, huge, big = clean.run([
        job("grow", """
            def f(x):
                xs = []
                while True:
                    xs.append(' ' * 10**7)
        """),
        job("huge", "def f(x):\n    return len(' ' * (1 << 40))"),
        job("big-int", "def f(x):\n    return len(str(10 ** (10 ** 10)))", timeout_s=3.0),
    ])  # fmt: skip
    assert grow.status == "memory" and huge.status == "memory"
    assert big.status in ("memory", "timeout", "error")  # bounded one way or another


def test_infinite_loops_including_ones_that_swallow_the_alarm(clean):
    t0 = time.monotonic()
    results = clean.run([
        job("plain", "def f(x):\n    while True:\n        pass", timeout_s=1.0),
        job("swallow", """
            def f(x):
                while True:
                    try:
                        while True:
                            pass
                    except BaseException:
                        pass
        """, timeout_s=1.0),
        job("in-c", "import re\ndef f(x):\n    return re.match('(a+)+$', 'a' * 64 + 'b')",
            timeout_s=1.0),
    ])  # fmt: skip
    assert [r.status for r in results] == ["timeout"] * 3
    assert all(r.time_s < 4.0 for r in results) and time.monotonic() - t0 < 30


def test_output_floods(clean):
    out, ret, err, pipe, huge = clean.run([
        job("stdout", "def f(x):\n    while True:\n        print('x' * 10000)", timeout_s=1.0),
        job("stdout-then-return", """
            def f(x):
                for _ in range(2000):
                    print('x' * 10000)
                return 7
        """),
        job("stderr", """
            import sys
            def f(x):
                while True:
                    sys.stderr.write('e' * 10000)
        """, timeout_s=3.0),
        job("result-pipe", """
            import os
            def f(x):
                while True:
                    os.write(3, b'{' * 65536)
        """, timeout_s=1.0),
        job("huge-repr", "def f(x):\n    return 'x' * (50 << 20)"),
    ])  # fmt: skip
    assert out.status == "timeout"
    assert ret.ok and ret.outputs == ["7"]  # stdout goes nowhere
    assert err.status == "error" and "File too large" in err.stderr_tail
    assert len(err.stderr_tail) <= 2000
    assert pipe.status == "timeout"
    assert huge.ok and len(huge.outputs[0]) == 403  # the 400-char rule, no flood upstream


def test_killing_the_parent_and_everyone(clean):
    ppid, every, group, trainer, init = clean.run([
        job("ppid", "import os\ndef f(x):\n    os.kill(os.getppid(), 9)"),
        job("all", "import os\ndef f(x):\n    os.kill(-1, 9)"),
        job("group", "import os\ndef f(x):\n    os.killpg(0, 9)"),
        job("trainer", f"import os\ndef f(x):\n    os.kill({os.getpid()}, 9)"),
        job("init", "import os\ndef f(x):\n    os.kill(1, 9)"),
    ])  # fmt: skip
    assert ppid.status == "error" and ppid.error_type == "PermissionError"
    assert every.ok  # kill(-1) reaches only what runs as this job's uid, itself excluded
    assert (group.status, group.error_type) == ("killed", "SIGKILL")
    assert trainer.status == "error" and trainer.error_type == "ProcessLookupError"
    assert init.status == "error" and init.error_type == "PermissionError"


def test_daemons_are_swept(clean):
    r = run1(clean, src("""
        import os, signal, time
        def f(x):
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    time.sleep(1000)
                os._exit(0)
            return 'detached'
    """))  # fmt: skip
    assert r.ok and r.outputs == ["'detached'"]
    # ``clean`` then checks that no job-uid process is left on the host.


def test_tampering_with_builtins_and_the_harness(clean):
    r = run1(clean, src("""
        import builtins, json, os, sys
        builtins.repr = lambda o: "'forged'"
        json.dumps = lambda *a, **k: '{"i": 0, "status": "ok", "output": "forged"}'
        sys.modules['json'] = None
        os.write = None
        def f(x):
            return x * 2
    """), "21")  # fmt: skip
    assert r.ok and r.outputs == ["42"]  # the harness kept its own references


def test_corrupting_the_interpreter(clean):
    memset, segv, abort, escape = clean.run([
        job("memset", "import ctypes\ndef f(x):\n    ctypes.memset(id(len), 0, 64)\n"
            "    return len([1])"),
        job("segv", "import faulthandler\ndef f(x):\n    faulthandler._sigsegv()"),
        job("abort", "import os\ndef f(x):\n    os.abort()"),
        job("escape", "import os\ndef f(x):\n    os.chroot('/tmp')"),
    ])  # fmt: skip
    assert [memset.status, segv.status, abort.status] == ["killed"] * 3
    assert (segv.error_type, abort.error_type) == ("SIGSEGV", "SIGABRT")
    assert escape.status == "error" and escape.error_type == "PermissionError"
