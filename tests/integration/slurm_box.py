"""Slurm in a box: a real slurmctld and slurmd on this host, configured under one directory.

No systemd, no munge (``auth/none``), no accounting daemon: the job states come from
``scontrol show job``. Ports are picked free, so a box can run next to another Slurm. Every
wait is bounded. ``stop()`` cancels what is left, stops both daemons and checks that no
process of the box (daemon, slurmstepd or job task, all found by the ``SLURM_CONF`` in their
environment) survives.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from megatron_azr.train.dist import free_port

BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "squeue")
# The daemons live in sbin, which is not on every user's PATH.
PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b, path=PATH) is None]


@contextlib.contextmanager
def running_box(directory: Path, **kw) -> Iterator[SlurmBox]:
    """A started box for a pytest fixture: skips when Slurm is not installed, and fails the
    teardown if any process of the box survives it."""
    import pytest

    missing = missing_binaries()
    if missing:
        pytest.skip(
            f"Slurm binaries missing ({', '.join(missing)}): apt-get install slurmctld slurmd "
            "slurm-client (scripts/setup.sh --tests does it as root)"
        )
    box = SlurmBox(directory, **kw)
    try:
        box.start()
        yield box
    finally:
        leftovers = box.stop()
        assert not leftovers, f"processes of the Slurm box survived its teardown: {leftovers}"


def _conf(d: Path, nodes: list[str], cpus: int, user: str) -> str:
    host = nodes[0]
    # One slurmd per node, all on this host (each with its own port, spool, pid and log):
    # a heterogeneous job needs a node per component.
    node_lines = "\n".join(
        f"NodeName={n} NodeAddr=127.0.0.1 Port={free_port()} CPUs={cpus} State=UNKNOWN"
        for n in nodes
    )
    return f"""\
ClusterName=azrbox
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
AuthType=auth/none
CredType=cred/none
# A requeued job may start again after cred_expire + 1 s (default 120 s).
AuthInfo=cred_expire=5
SlurmUser={user}
SlurmdUser={user}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool-%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# The node is declared with the CPUs the tests need, whatever this machine has.
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=2
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
{node_lines}
PartitionName=box Nodes={",".join(nodes)} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmBox:
    def __init__(self, directory: Path, cpus: int = 2, nodes: int = 1) -> None:
        self.dir = directory
        self.conf = directory / "slurm.conf"
        # Jobs resolve a node name as MASTER_ADDR, as on a cluster: the nodes are named after
        # this host and, for a second one, localhost.
        self.host = socket.gethostname().split(".")[0]
        self.nodes = [self.host, "localhost"][:nodes]
        self.cpus = max(cpus, os.cpu_count() or 1)
        self.daemons: list[subprocess.Popen[bytes]] = []

    # -- life cycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        try:
            socket.gethostbyname(self.host)
        except OSError as e:
            raise RuntimeError(f"this host's name {self.host!r} does not resolve: {e}") from e
        for sub in ("state", *(f"spool-{n}" for n in self.nodes)):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(_conf(self.dir, self.nodes, self.cpus, getpass.getuser()))
        env = self.env()
        daemons = [("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])]
        daemons += [(f"slurmd-{n}", ["slurmd", "-D", "-N", n, "-f", str(self.conf)])
                    for n in self.nodes]  # fmt: skip
        for name, cmd in daemons:
            log = (self.dir / f"{name}.out").open("wb")
            self.daemons.append(
                subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
        self.wait_for(
            lambda: all(self.node_state(n) == "idle" for n in self.nodes),
            timeout,
            f"nodes {', '.join(self.nodes)} to become idle",
        )

    def stop(self, timeout: float = 60) -> list[str]:
        """Cancel every job, stop the daemons; return the processes of the box that had to be
        killed afterwards (an empty list is the expected outcome)."""
        if self.daemons and self.daemons[0].poll() is None:
            self.run("scancel", "--full", "--partition=box", check=False)
            # The daemons are stopped next either way.
            with contextlib.suppress(TimeoutError, RuntimeError):
                self.wait_for(lambda: not self.run("squeue", "-h").stdout.strip(), timeout, "")
        for p in reversed(self.daemons):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.daemons:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        leftovers = []
        deadline = time.monotonic() + 10
        while (procs := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid, cmdline in procs:
            leftovers.append(f"{pid} {cmdline}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return leftovers

    def processes(self) -> list[tuple[int, str]]:
        """Live processes carrying this box's SLURM_CONF in their environment."""
        marker = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                if marker not in environ:
                    continue
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:  # gone, or a zombie
                continue
            if cmdline:
                found.append((int(entry.name), cmdline.strip()))
        return found

    # -- queries -------------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        # A test running inside a real Slurm job or under torchrun must not leak that context
        # into the box's jobs.
        drop = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")
        dist = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in dist}
        return {**env, "PATH": PATH, "SLURM_CONF": str(self.conf), **extra}

    def run(self, *cmd: str, check: bool = True, timeout: float = 30, **kw):
        return subprocess.run(
            cmd, env=kw.pop("env", self.env()), capture_output=True, text=True,
            timeout=timeout, check=check, **kw,
        )  # fmt: skip

    def node_state(self, node: str) -> str:
        r = self.run("sinfo", "-h", "-N", "-n", node, "-o", "%T", check=False)
        return r.stdout.strip().rstrip("*~#")

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` of one job (an array task: ``<array id>_<index>``)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout.strip()
        return dict(re.findall(r"(\w+)=(\S*)", out.splitlines()[0]))

    def wait_for(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            for p in self.daemons:
                if p.poll() is not None:
                    name = p.args[0] if p.args[0] == "slurmctld" else f"slurmd-{p.args[3]}"
                    log = (self.dir / f"{name}.out").read_text()[-3000:]
                    raise RuntimeError(f"{name} exited ({p.returncode}):\n{log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for {what}")
            time.sleep(0.2)
