"""Per-worker cgroups: a pids cap and a memory cap around a worker's whole sandbox.

rlimits are per process (and ``RLIMIT_NPROC`` is ignored for uid 0); a cgroup bounds the sum over
everything a worker's jobs fork. Groups are created below this process's own cgroups (never at a
hierarchy's root, so the machine's limits on us still apply), one directory per pool holding one
per worker. cgroup v1 (``pids`` and ``memory`` hierarchies) and v2 (a delegated subtree with both
controllers enabled) are supported; anything else means the layer is reported as unavailable.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_PREFIX = "azr-executor-"
_counter = itertools.count()


@dataclass(frozen=True)
class CgroupSupport:
    version: int  # 0 = unavailable
    pids_base: str = ""
    memory_base: str = ""  # v2: the same directory as pids_base
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.version > 0


def _own_paths() -> dict[str, str]:
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path
    return paths


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root within the hierarchy, fs type, super options) of cgroup mounts."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        fields, rfields = left.split(), right.split()
        if rfields[0] in ("cgroup", "cgroup2"):
            out.append((fields[4], fields[3], rfields[0], set(rfields[2].split(","))))
    return out


def _join(mount: str, root: str, own: str) -> str:
    rel = os.path.relpath(own, root) if own.startswith(root) else own
    return os.path.normpath(os.path.join(mount, rel.lstrip("/")) if rel != "." else mount)


def _writable_dir(path: str) -> bool:
    probe = os.path.join(path, f"{_PREFIX}probe-{os.getpid()}")
    try:
        os.mkdir(probe)
        os.rmdir(probe)
        return True
    except OSError:
        return False


def detect() -> CgroupSupport:
    try:
        own, mounts = _own_paths(), _mounts()
    except OSError as e:
        return CgroupSupport(0, reason=f"cannot read /proc: {e}")
    v1 = {}
    for mount, root, fstype, opts in mounts:
        for controller in ("pids", "memory"):
            if fstype == "cgroup" and controller in opts and controller in own:
                v1[controller] = _join(mount, root, own[controller])
    if len(v1) == 2:
        if all(_writable_dir(p) for p in v1.values()):
            return CgroupSupport(1, v1["pids"], v1["memory"])
        return CgroupSupport(0, reason=f"cgroup v1 {sorted(v1.values())} not writable")
    for mount, root, fstype, _ in mounts:
        if fstype == "cgroup2" and "" in own:
            base = _join(mount, root, own[""])
            try:
                enabled = Path(base, "cgroup.subtree_control").read_text().split()
            except OSError:
                continue
            if {"pids", "memory"} <= set(enabled) and _writable_dir(base):
                return CgroupSupport(2, base, base)
            reason = f"cgroup v2 at {base}: pids/memory not delegated (subtree_control: {enabled})"
            return CgroupSupport(0, reason=reason)
    return CgroupSupport(0, reason="no pids+memory cgroup hierarchy found")


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _read_counter(path: str, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


class WorkerCgroup:
    """The pids + memory groups of one worker."""

    def __init__(self, support: CgroupSupport, pool_dir: str, index: int) -> None:
        self.support = support
        self.dirs = sorted({os.path.join(b, pool_dir, f"w{index}") for b in self._bases()})

    def _bases(self) -> list[str]:
        return [self.support.pids_base, self.support.memory_base]

    def create(self, pids_max: int, memory_bytes: int) -> None:
        for d in self.dirs:
            os.makedirs(d, exist_ok=True)
        v1 = self.support.version == 1
        pids_dir = self._dir(self.support.pids_base)
        mem_dir = self._dir(self.support.memory_base)
        _write(os.path.join(pids_dir, "pids.max"), str(pids_max))
        if v1:
            _write(os.path.join(mem_dir, "memory.limit_in_bytes"), str(memory_bytes))
            memsw = os.path.join(mem_dir, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                _write(memsw, str(memory_bytes))  # no escaping the cap through swap
        else:
            _write(os.path.join(mem_dir, "memory.max"), str(memory_bytes))
            with contextlib.suppress(OSError):
                _write(os.path.join(mem_dir, "memory.swap.max"), "0")

    def _dir(self, base: str) -> str:
        return next(d for d in self.dirs if d.startswith(base.rstrip("/") + "/"))

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def oom_kills(self) -> int:
        mem_dir = self._dir(self.support.memory_base)
        if self.support.version == 1:
            return _read_counter(os.path.join(mem_dir, "memory.oom_control"), "oom_kill")
        return _read_counter(os.path.join(mem_dir, "memory.events"), "oom_kill")

    def pids(self) -> list[int]:
        found: set[int] = set()
        for f in self.procs_files:
            with contextlib.suppress(OSError):
                found |= {int(p) for p in Path(f).read_text().split()}
        return sorted(found)

    def kill_all(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def remove(self) -> None:
        self.kill_all()
        for d in self.dirs:
            for _ in range(100):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
            else:
                log.warning("could not remove cgroup %s", d)


class PoolCgroups:
    """The pool's directory in each hierarchy; removes leftovers of pools that died."""

    def __init__(self, support: CgroupSupport) -> None:
        self.support = support
        self.name = f"{_PREFIX}{os.getpid()}-{next(_counter)}"
        self.workers: list[WorkerCgroup] = []
        self._remove_stale()

    def worker(self, index: int) -> WorkerCgroup:
        group = WorkerCgroup(self.support, self.name, index)
        self.workers.append(group)
        return group

    def remove(self) -> None:
        for group in self.workers:
            group.remove()
        for base in {self.support.pids_base, self.support.memory_base}:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(base, self.name))

    def _remove_stale(self) -> None:
        for base in {self.support.pids_base, self.support.memory_base}:
            with contextlib.suppress(OSError):
                for entry in os.scandir(base):
                    if not entry.name.startswith(_PREFIX) or not entry.is_dir():
                        continue
                    pid = entry.name[len(_PREFIX) :].split("-")[0]
                    if pid.isdigit() and not _alive(int(pid)):
                        _remove_tree(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _remove_tree(path: str) -> None:
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            with contextlib.suppress(OSError):
                for pid in Path(root, d, "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                os.rmdir(os.path.join(root, d))
    with contextlib.suppress(OSError):
        os.rmdir(path)
