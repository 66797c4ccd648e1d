"""Each isolation layer, verified from inside real jobs (one layer per test)."""

from __future__ import annotations

import ast
import contextlib
import os
import socket
import threading
from pathlib import Path

import pytest
from executor_helpers import (
    JOB_UID_BASE,
    ROOT,
    executor_config,
    require_sandbox,
    run1,
    seen,
    src,
)

from megatron_azr.azr.protocols import Job
from megatron_azr.executor import SandboxExecutor
from megatron_azr.executor.runtime.zygote import ONE_THREAD

pytestmark = pytest.mark.sandbox


def test_fresh_process_per_job(clean):
    tamper = src("""
        import builtins, collections, os
        def f(x):
            builtins.TAMPERED = True
            collections.Counter = None
            builtins.sorted = None
            return os.getpid()
    """)
    check = src("""
        import builtins, collections, os
        def f(x):
            return os.getpid(), hasattr(builtins, 'TAMPERED'), collections.Counter is None, \\
                sorted([2, 1])
    """)
    jobs = [Job(f"t{i}", "run", tamper, ("1",)) for i in range(4)]
    jobs += [Job(f"c{i}", "run", check, ("1",)) for i in range(4)]
    results = clean.run(jobs)
    servers = {facts["pid"] for facts in clean.worker_facts()}
    pids = [seen(r) for r in results[:4]] + [seen(r)[0] for r in results[4:]]  # type: ignore[index]
    assert not servers & set(pids)  # a forked child, never the server itself
    for r in results[4:]:
        assert seen(r)[1:] == (False, False, [1, 2])  # type: ignore[index]


def test_no_inherited_environment(monkeypatch):
    require_sandbox()
    monkeypatch.setenv("AZR_TEST_SECRET", "hunter2")
    with SandboxExecutor(executor_config(workers=2)) as ex:
        env = seen(run1(ex, "import os\ndef f(x):\n    return dict(os.environ)"))
    assert env == ONE_THREAD  # nothing inherited; only the one-thread settings of BLAS/OpenMP


def test_private_working_directory(clean):
    program = src("""
        import os
        def f(x):
            cwd = os.getcwd()
            st = os.stat(cwd)
            before = os.listdir(cwd)
            open('mine.txt', 'w').write('x')
            return cwd, oct(st.st_mode & 0o777), st.st_uid, before, sorted(os.listdir('/tmp'))
    """)
    results = clean.run([Job(f"d{i}", "run", program, ("1",)) for i in range(6)])
    dirs = set()
    for r in results:
        cwd, mode, uid, before, tmp = seen(r)  # type: ignore[misc]
        assert mode == "0o700" and uid >= JOB_UID_BASE
        assert before == []  # nothing from earlier jobs (each wrote mine.txt)
        assert tmp == [os.path.basename(cwd)]  # every earlier job directory is gone
        dirs.add(cwd)
    assert len(dirs) == 6


def test_rlimits(clean):
    probe = src("""
        import resource as r
        def f(x):
            names = ('AS', 'FSIZE', 'NOFILE', 'NPROC', 'CORE', 'CPU')
            return [r.getrlimit(getattr(r, 'RLIMIT_' + n))[0] for n in names]
    """)
    limits = seen(run1(clean, probe, timeout_s=3.0))
    cfg = clean.cfg
    expect = [cfg.memory_mb << 20, cfg.max_file_mb << 20, cfg.max_open_files, cfg.max_processes]
    assert limits == [*expect, 0, 4]  # no core dumps; CPU: the job's budget (3 s) + 1
    big = run1(clean, "def f(x):\n    open('big', 'wb').write(b'0' * (32 << 20))")
    assert big.status == "error" and "File too large" in big.stderr_tail
    fds = run1(clean, "def f(x):\n    return [open('/dev/null') for _ in range(200)]")
    assert fds.status == "error" and "Too many open files" in fds.stderr_tail


def test_unprivileged_uid_without_capabilities(clean):
    probe = src("""
        import os
        def f(x):
            out = [os.getuid(), os.geteuid(), os.getgid(), os.getgroups()]
            for op in (lambda: os.setuid(0), lambda: os.chown('.', 0, 0), lambda: os.kill(1, 9)):
                try:
                    op()
                    out.append('allowed')
                except OSError as e:
                    out.append(e.errno)
            return out
    """)
    uid, euid, gid, groups, *denied = seen(run1(clean, probe))  # type: ignore[misc]
    assert uid == euid == gid and uid >= JOB_UID_BASE and groups == []
    assert denied == [1, 1, 1]  # EPERM: no CAP_SETUID, CAP_CHOWN, CAP_KILL


def test_network_namespace_alone_blocks_the_host():
    """seccomp off, so that only the namespace stands between the job and the listener."""
    require_sandbox()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(3)
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(srv.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    program = src("""
        import socket
        def f(port):
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(('127.0.0.1', port))
                return 'connected'
            except OSError as e:
                return type(e).__name__, socket.if_nameindex()
    """)
    with SandboxExecutor(executor_config(workers=2, seccomp=False)) as ex:
        outcome = seen(run1(ex, program, str(srv.getsockname()[1])))
    thread.join()
    srv.close()
    assert outcome[0] != "connected" and outcome[1] == [(1, "lo")]  # type: ignore[index]
    assert accepted == []


def test_minimal_read_only_filesystem(clean):
    probe = src("""
        import os
        def f(project):
            stdlib = os.path.dirname(os.__file__)
            site = os.path.join(stdlib, 'site-packages')
            out = [sorted(os.listdir('/')), os.path.exists(project), os.path.exists('/proc'),
                   os.path.exists('/etc'), os.path.exists('/home'),
                   os.listdir(site) if os.path.isdir(site) else []]
            for path in ('/usr/x', '/x', '/tmp/x', os.__file__, '/packages/numpy/x.py',
                         '/packages/x'):
                try:
                    open(path, 'a').close()
                    out.append('wrote')
                except OSError as e:
                    out.append(e.errno)
            return out
    """)
    root, project, proc, etc, home, site, *writes = seen(run1(clean, probe, repr(str(ROOT))))  # type: ignore[misc]
    allowed = {"azr", "bin", "dev", "lib", "lib64", "packages", "root", "sbin", "tmp", "usr"}
    assert set(root) <= allowed
    assert (project, proc, etc, home, site) == (False, False, False, False, [])
    assert "wrote" not in writes  # read-only mounts (EROFS) or not writable (EACCES)
    assert writes[-2:] == [30, 13]  # the exposed packages: a read-only bind, a root-owned dir


def test_seccomp_filter_in_every_job(clean):
    probe = src("""
        import ctypes, socket
        def f(x):
            out = []
            try:
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                out.append('inet6')
            except OSError as e:
                out.append(e.errno)
            libc = ctypes.CDLL(None, use_errno=True)
            out.append((libc.unshare(0x40000000), ctypes.get_errno()))
            return out
    """)
    assert seen(run1(clean, probe)) == [13, (-1, 1)]  # EACCES; unshare(NEWNET): EPERM
    assert all(facts["seccomp"] > 0 for facts in clean.worker_facts())


def test_cgroup_caps_the_whole_worker():
    require_sandbox()
    cfg = executor_config(workers=2, memory_mb=512, tmpfs_mb=16)
    with SandboxExecutor(cfg) as ex:
        support = ex.spec.platform.cgroups
        if not support.available:
            pytest.fail(f"cgroups unavailable: {support.reason}")
        group = ex.workers[0].group
        assert group is not None
        mem = Path(group._dir(support.memory_base))
        limit_file = mem / ("memory.limit_in_bytes" if support.version == 1 else "memory.max")
        assert int(limit_file.read_text()) == (512 + 16 + 256) << 20
        pids_max = Path(group._dir(support.pids_base), "pids.max").read_text()
        assert int(pids_max) == cfg.max_processes + 8
        assert ex.workers[0].proc is not None and ex.workers[0].proc.pid in group.pids()
        # Each of three processes stays under its own 512 MiB address-space limit; together
        # they pass the worker's 784 MiB memory cap, and the cgroup's OOM killer steps in.
        hog = src("""
            import os
            def f(n):
                kids = []
                for _ in range(n):
                    pid = os.fork()
                    if pid == 0:
                        b = bytearray(400 << 20)
                        for i in range(0, len(b), 4096):
                            b[i] = 1
                        os._exit(0)
                    kids.append(pid)
                return [os.waitpid(p, 0)[1] & 0x7f for p in kids]
        """)
        r = ex.run([Job("hog", "run", hog, ("3",), timeout_s=30.0)])[0]
        assert r.ok and 9 in ast.literal_eval(r.outputs[0]), (r.outputs, r.stderr_tail)
        assert group.oom_kills() >= 1
