"""The fork server: one per worker, started inside the worker's sandbox.

It starts once (interpreter, stdlib modules programs use, the preloaded packages, the harness,
the seccomp filter, a warm-up) and then forks a fresh process per task, so a job pays for a
``fork``, not for an interpreter start. Per task it:

* makes a private working directory (owned by the job's uid, mode 0700),
* forks; the child gets its own process group, stdin and stdout on /dev/null, stderr on a
  capped in-memory file, the result pipe on fd 3 and no other descriptor, an environment that
  holds only the one-thread settings of BLAS/OpenMP (``ONE_THREAD``),
  rlimits (address space, CPU, file size, open files, processes, no core dumps), the worker's
  unprivileged uid with no supplementary groups and no capabilities, and dies with this server,
* waits for it: each item has its own alarm inside the job; this server's deadline (the sum of
  the item budgets plus a second) kills a job that swallows its alarms or hangs in C code,
* kills whatever the job left running (it is the subreaper of everything the job forks) and
  removes the working directory,

and answers the pool with one frame per task. Tasks run one at a time, so a worker's job
processes never overlap. Config comes as JSON in ``argv[1]``; see ``SandboxSpec.zygote_config``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import importlib
import json
import math
import os
import resource
import select
import signal
import sys
import time
from typing import Any

from . import harness, protocol

ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_RESULT_FD = 3

# Trusted code run once at start so the server's allocator and caches look like they do after
# real work: children forked from a warm server touch far fewer fresh pages.
_WARMUP = [
    ("def f(s):\n    return ''.join(sorted(set(s.lower())))[::-1]", ["'Hello World'"]),
    ("def f(xs):\n    d = {}\n    for x in xs:\n        d[x % 3] = d.get(x % 3, 0) + x\n"
     "    return sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))", ["[1, 2, 3, 4, 5, 6, 7]"]),
    ("from collections import Counter, defaultdict, deque\nimport math, re, itertools\n"
     "def f(text, k):\n    c = Counter(re.findall(r'\\w+', text))\n    q = deque(maxlen=k)\n"
     "    for w, n in c.most_common():\n        q.append((w, math.sqrt(n)))\n"
     "    pairs = list(itertools.combinations(range(k), 2))\n"
     "    return [w for w, _ in q], len(pairs), {i: str(i) * 2 for i in range(k)}",
     ["'a b a c b a', 3"]),
    ("class Node:\n    def __init__(self, v, nxt=None):\n        self.v, self.nxt = v, nxt\n"
     "def f(n):\n    head = None\n    for i in range(n):\n        head = Node(i, head)\n"
     "    out = []\n    while head:\n        out.append(head.v ** 2)\n        head = head.nxt\n"
     "    try:\n        return tuple(out), 1 / 0\n    except ZeroDivisionError as e:\n"
     "        return tuple(out), str(e)", ["8"]),
    ("def f(m):\n    def rec(i):\n        return 0 if i <= 0 else i + rec(i - 1)\n"
     "    return [[rec(r * c) for c in range(len(m))] for r, row in enumerate(m)], 3.5 * 2, "
     "f'{m!r:>20}', None, True", ["[[1, 2], [3, 4]]"]),
]  # fmt: skip


class Zygote:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.uid: int | None = cfg["uid"]
        self.gid: int | None = cfg["gid"]
        self.workdir: str = cfg["workdir"]
        self.pid_namespace: bool = cfg["pid_namespace"]
        self.output_cap: int = cfg["output_cap"]
        self.counter = 0
        self.pid = os.getpid()
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.errfd = os.memfd_create("job-stderr", os.MFD_CLOEXEC)
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.poller = select.poll()
        r: dict[str, int] = cfg["rlimits"]
        self.limits = [
            (resource.RLIMIT_AS, (r["as"], r["as"])),
            (resource.RLIMIT_FSIZE, (r["fsize"], r["fsize"])),
            (resource.RLIMIT_NOFILE, (r["nofile"], r["nofile"])),
            (resource.RLIMIT_NPROC, (r["nproc"], r["nproc"])),
            (resource.RLIMIT_CORE, (0, 0)),
        ]

    # ---------------------------------------------------------------- per task

    def run(self, task: dict[str, Any]) -> tuple[bytes, bool]:
        """Run one task; returns its answer frame and whether its directory was removed.

        The answer is raw: exit status, timing, the job's result lines and stderr tail. Making
        sense of them is the pool's business (``executor/results.py``); this server only runs
        things, with as few objects touched per task as it can (each costs a page per fork).
        """
        self.counter += 1
        jobdir = f"{self.workdir}/job{self.counter}"
        os.mkdir(jobdir, 0o700)
        if self.uid is not None:
            os.chown(jobdir, self.uid, self.gid if self.gid is not None else -1)
        r, w = os.pipe()
        os.set_blocking(r, False)
        n_items = max(1, int(task["n_items"]))
        if n_items > 8:  # room for every item's line, so an honest job never blocks on it
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        # Items time out inside the job (SIGALRM there); this deadline is the backstop for a
        # job that swallows its alarms: the sum of the item budgets plus a second.
        budget = float(task["timeout"]) * n_items + 1.0
        cpu = math.ceil(budget)
        prepared = harness.prepare(task)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            self._child(prepared, r, w, jobdir, cpu)  # never returns
        status, timed_out = self._wait(pid, budget)
        elapsed = time.monotonic() - start
        os.close(w)
        try:
            out = os.read(r, self.output_cap)
        except BlockingIOError:
            out = b""
        os.close(r)
        self._sweep()
        clean = self._remove(jobdir)
        err = b""
        size = os.fstat(self.errfd).st_size
        if size:
            err = os.pread(self.errfd, protocol.STDERR_TAIL, max(0, size - protocol.STDERR_TAIL))
            os.ftruncate(self.errfd, 0)
            os.lseek(self.errfd, 0, os.SEEK_SET)
        answer = protocol.encode_answer(task["tid"], status, timed_out, elapsed, out, err)
        return answer, clean

    def _child(self, prepared: dict[str, Any], r: int, w: int, jobdir: str, cpu: int) -> None:
        # Everything here runs in a fresh copy of the server, where each page written costs a
        # copy: anything that can be computed before the fork is (see harness.prepare).
        code = 70
        try:
            os.close(r)
            os.setpgid(0, 0)
            os.dup2(self.devnull, 0)
            os.dup2(self.devnull, 1)
            os.dup2(self.errfd, 2)
            if w != _RESULT_FD:
                os.dup2(w, _RESULT_FD)
            os.closerange(_RESULT_FD + 1, 1 << 16)
            os.umask(0o077)
            for which, value in self.limits:
                resource.setrlimit(which, value)
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            self._become_job_user()
            if not self.pid_namespace:
                # In a pid namespace the kernel ends the jobs with the server; outside one, ask
                # for it (after setuid: a credential change clears the parent-death signal).
                self.libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if os.getppid() != self.pid:
                    os._exit(code)
            os.chdir(jobdir)  # as the job's uid: the server itself cannot enter it
            out = harness.Emitter(_RESULT_FD)
            harness.execute(prepared, out)
            out.emit({"done": True})
            code = 0
        except BaseException as e:
            with contextlib.suppress(BaseException):
                os.write(2, f"executor harness: {type(e).__name__}: {e}\n".encode())
        finally:
            os._exit(code)

    def _wait(self, pid: int, budget: float) -> tuple[int, bool]:
        """Sleep until the job exits or its budget is spent. Few objects touched on purpose:
        while the child lives, every page the server writes is copied."""
        pidfd = os.pidfd_open(pid)
        self.poller.register(pidfd, select.POLLIN)
        try:
            timed_out = not self.poller.poll(budget * 1000)
            if timed_out:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1], timed_out
        finally:
            self.poller.unregister(pidfd)
            os.close(pidfd)

    def _sweep(self) -> None:
        """Kill and reap everything the job left behind (daemons, stragglers)."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return  # no descendant left: the common case costs one syscall
            if pid == 0:
                break
        for _ in range(1000):
            if self.pid_namespace:
                # Alone in this pid namespace with its jobs: -1 reaches exactly what they left.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(-1, signal.SIGKILL)
            else:
                for child in self._children():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
            try:
                while True:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                    if pid == 0:
                        time.sleep(0.001)
                        break
            except ChildProcessError:
                return
        raise RuntimeError("could not reap what a job left behind")

    def _children(self) -> list[int]:
        with open(f"/proc/self/task/{self.pid}/children") as fh:
            return [int(p) for p in fh.read().split()]

    def _become_job_user(self) -> None:
        """In a child: drop to the jobs' uid (no supplementary groups), for good."""
        if self.uid is not None:
            os.setgroups([])
            if self.gid is not None:
                os.setgid(self.gid)
            os.setuid(self.uid)

    def _remove(self, jobdir: str) -> bool:
        try:
            os.rmdir(jobdir)
            return True
        except OSError:
            pass
        # Not empty: delete as the job's uid (this server holds no DAC override), in a child.
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._become_job_user()
                _scrub(jobdir)
                code = 0
            finally:
                os._exit(code)
        os.waitpid(pid, 0)
        try:
            os.rmdir(jobdir)
            return True
        except OSError:
            return False

    # ---------------------------------------------------------------- start-up

    def warm_up(self) -> None:
        sink = harness.Emitter(self.devnull)
        for program, inputs in _WARMUP * 3:
            task = {"kind": "validate", "program": program, "inputs": inputs,
                    "expected": [], "banned": ["os"], "round_trip": True}  # fmt: skip
            harness.run_task(task, sink)
        gc.collect()
        gc.freeze()  # the children's collector then never walks (and dirties) these objects


def _scrub(top: str) -> None:
    for root, dirs, _ in os.walk(top):
        for d in dirs:
            path = os.path.join(root, d)
            if not os.path.islink(path):
                os.chmod(path, 0o700)
    for root, dirs, files in os.walk(top, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            path = os.path.join(root, name)
            (os.unlink if os.path.islink(path) else os.rmdir)(path)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    os.environ.clear()
    # Before any import: a BLAS or OpenMP pool started here would not survive the forks, and in
    # a job it would be ncpu threads against the process limit. Jobs inherit this environment.
    os.environ.update(ONE_THREAD)
    if cfg["package_path"]:
        sys.path.append(cfg["package_path"])
    for name in cfg["preload"]:
        # One that fails is reported by the pool's check at start (a job that imports it).
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    sys.path[:] = [p for p in sys.path if p != cfg["runtime_root"]]
    zygote = Zygote(cfg)
    if zygote.libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_CHILD_SUBREAPER")
    facts: dict[str, Any] = {"pid": zygote.pid, "uid": os.getuid(), "seccomp": 0}
    if cfg["seccomp"]:
        from . import seccomp

        facts["seccomp"] = seccomp.install(allow_unix_sockets=cfg["allow_unix_sockets"])
    zygote.warm_up()
    protocol.write_frame(1, {"ready": facts})
    while True:
        request = protocol.read_frame(0)
        if request is None:
            break
        for task in request["tasks"]:
            answer, clean = zygote.run(task)
            if not clean:
                # Unanswered, so the pool fails this task, the one that left the directory, and
                # requeues the rest; answering first would make it fail the next one instead.
                sys.exit("executor: a job directory could not be removed; restarting the worker")
            protocol.write_all(1, answer)
    zygote._sweep()


if __name__ == "__main__":
    main()
