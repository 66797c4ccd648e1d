"""The pool's handle on one worker: a fork server in its sandbox, spoken to over two pipes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import deque
from typing import Any

from megatron_azr.executor import cgroups
from megatron_azr.executor.runtime import protocol
from megatron_azr.executor.sandbox import SandboxSpec, cgroup_limits

# Attach the shell to the worker's cgroups, then become bwrap: everything the sandbox ever
# forks is born inside the caps (moving a process later would not move its children).
_ATTACH = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; exec "$@"'  # noqa: E501


class Worker:
    def __init__(self, index: int, spec: SandboxSpec, group: cgroups.WorkerCgroup | None) -> None:
        self.index = index
        self.spec = spec
        self.group = group
        self.proc: subprocess.Popen[bytes] | None = None
        self.hostdir = ""
        self.ready = False
        self.facts: dict[str, Any] = {}
        self.inflight: deque[Any] = deque()  # tasks sent, in the order the server runs them
        self.messages: deque[int] = deque()  # unanswered tasks of each message in flight
        self.outbuf = bytearray()
        self.frames = protocol.FrameBuffer()
        self.started = 0.0
        self.last_progress = 0.0
        self.oom_seen = 0

    def start(self) -> None:
        workdir = self.spec.workdir()
        if not workdir:
            # Unconfined: job directories live in a host temp dir only this worker uses.
            self.hostdir = tempfile.mkdtemp(prefix="azr-executor-")
            os.chmod(self.hostdir, 0o711)
            workdir = self.hostdir
            self.spec.link_packages(workdir)
        argv = self.spec.argv(self.index, workdir)
        if self.group is not None:
            self.group.create(*cgroup_limits(self.spec.cfg))
            self.oom_seen = self.group.oom_kills()
            files = self.group.procs_files
            argv = ["/bin/sh", "-c", _ATTACH, "sh", str(len(files)), *files, *argv]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.spec.env(self.index),
            cwd=workdir,
            start_new_session=True,  # its own process group: one killpg ends the sandbox
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        os.set_blocking(self.proc.stdin.fileno(), False)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.ready = False
        self.inflight.clear()
        self.messages.clear()
        self.outbuf.clear()
        self.frames = protocol.FrameBuffer()
        self.started = self.last_progress = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rfd(self) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def wfd(self) -> int:
        assert self.proc is not None and self.proc.stdin is not None
        return self.proc.stdin.fileno()

    def send(self, tasks: list[Any]) -> None:
        if not self.inflight:
            self.last_progress = time.monotonic()
        self.outbuf += protocol.encode({"tasks": [t.payload for t in tasks]})
        self.inflight.extend(tasks)
        self.messages.append(len(tasks))
        self.flush()

    def answered(self) -> Any:
        """The task whose result just arrived (results come back in the order sent)."""
        self.last_progress = time.monotonic()
        self.messages[0] -= 1
        if not self.messages[0]:
            self.messages.popleft()
        return self.inflight.popleft()

    def flush(self) -> None:
        """Write what the pipe takes now (never blocks: the server may be busy writing to us)."""
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            while self.outbuf:
                del self.outbuf[: os.write(self.wfd(), self.outbuf)]

    def read(self) -> list[Any] | None:
        """Frames available now; None once the server is gone."""
        try:
            data = os.read(self.rfd(), 1 << 20)
        except BlockingIOError:
            return []
        except OSError:
            return None
        if not data:
            return None
        return self.frames.feed(data)

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self._close_pipes()
        if self.group is not None:
            self.group.kill_all()
        elif not self.spec.pid_namespace:
            self._sweep_uid()
        self._remove_hostdir()

    def _sweep_uid(self) -> None:
        """Unconfined and no cgroup: kill whatever still runs as this worker's job uid."""
        uid = self.spec.job_uid(self.index)
        if uid is None:
            return  # not root: nothing to separate by (one reason unconfined is opt-in)
        pid = os.fork()
        if pid == 0:
            try:
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)  # as that uid: reaches only that uid's processes
            finally:
                os._exit(0)
        os.waitpid(pid, 0)

    def oom_killed(self) -> bool:
        """Whether the memory cgroup's OOM killer struck since the last look."""
        if self.group is None:
            return False
        ooms = self.group.oom_kills()
        struck = ooms > self.oom_seen
        self.oom_seen = ooms
        return struck

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the server to finish (end of its input), then make sure nothing is left."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()  # its cgroup goes with the pool's (PoolCgroups.remove)

    def _close_pipes(self) -> None:
        assert self.proc is not None
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()

    def _remove_hostdir(self) -> None:
        if self.hostdir:
            shutil.rmtree(self.hostdir, ignore_errors=True)
            self.hostdir = ""
