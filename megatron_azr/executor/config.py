"""Configuration of the sandboxed executor (the ``executor`` section of a run config)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

SandboxMode = Literal["auto", "bwrap", "unconfined"]


@dataclass
class ExecutorConfig:
    # Fork-server workers, each in its own sandbox; 0 = one per CPU. Never fewer than 2:
    # proposal validation runs every program under two hash seeds, on two different workers.
    workers: int = 0
    # Default budget per input (jobs carry their own ``timeout_s``; this is what the CLI uses).
    timeout_s: float = 10.0
    # Per job process: address space, largest file, open descriptors, processes (rlimits).
    memory_mb: int = 1024
    max_file_mb: int = 16
    max_open_files: int = 64
    max_processes: int = 32
    # Size of each worker's private /tmp (job directories live there; bwrap only).
    tmpfs_mb: int = 64
    # "auto" picks the strongest stack this machine supports (bwrap namespaces + uid + seccomp +
    # rlimits + cgroups); "unconfined" runs jobs without namespaces or a private filesystem
    # view. Starting the executor unconfined is refused unless ``allow_unconfined`` is set
    # (then "auto" also falls back to it when bwrap is unusable).
    sandbox: SandboxMode = "auto"
    allow_unconfined: bool = False
    bwrap: str = "bwrap"
    # The interpreter jobs run under ("" = the one running the executor), >= 3.11.
    python: str = ""
    # Installed distributions jobs may import besides the standard library, with what they
    # require (sympy: mpmath), bound read-only on the jobs' sys.path; a missing one stops the
    # pool at start. [] = the standard library only. Default: what the original's environment
    # had and the official seed programs import (issue 9, fix 4).
    packages: list[str] = field(default_factory=lambda: ["numpy", "sympy"])
    # Modules of those packages imported once in each fork server, so that a job's import costs
    # nothing; each makes every fork dearer. Measured on 2 vCPUs (benchmarks/RESULTS.md): numpy
    # preloaded costs every job ~+1 ms of CPU (a ~30% slower pool), sympy ~+3 ms, while a job
    # that imports them itself pays ~70 ms (numpy) or ~600 ms (sympy): preloading numpy pays
    # once more than ~1.3% of jobs import it. Default: none. Skipped when not exposed.
    preload: list[str] = field(default_factory=list)
    # The seccomp filter (on wherever the architecture is supported); off only to diagnose a
    # program the filter breaks, never to gain speed (it costs nothing per job).
    seccomp: bool = True
    # First of the unprivileged uids jobs run as (worker k uses uid_base + k; root only).
    job_uid_base: int = 990000
    # Proposal validation (spec §5.2): whether the output must evaluate back to an equal value
    # (a truncated or custom repr is a gold answer no solver can match). The import ban list
    # travels with each job (``azr.banned_imports``).
    validate_round_trip: bool = True
    # Programs (with imports and prediction) larger than this are invalid without running.
    max_program_kb: int = 256
    # Tasks sent to a worker per message, and messages kept in flight per worker.
    tasks_per_message: int = 8
    # The farm (issue 11): jobs go to `azr executor serve` servers instead of a local pool when
    # `endpoints` (URLs) or `rendezvous` (a directory where servers announce themselves; relative
    # to run.output_dir in `azr train`, to the working directory elsewhere) names any. Default:
    # neither, the local pool. The Slurm launch of a heterogeneous job sets rendezvous and
    # token_file (a 0600 file with the servers' bearer token).
    endpoints: list[str] = field(default_factory=list)
    rendezvous: str = ""
    token_file: str = ""
    # Client side: jobs in flight over the whole farm, requests in flight per server, jobs per
    # request at least (a server runs a request as one pool run, whose tail idles workers:
    # small requests cost throughput) and at most; a request times out at its jobs' budget
    # plus farm_margin_s; retries and health probes back off from farm_backoff_s, doubling to
    # farm_backoff_max_s, with jitter; the step fails when no server has answered for
    # farm_deadline_s.
    farm_max_inflight: int = 8192
    farm_requests_per_server: int = 2
    farm_min_jobs_per_request: int = 64
    farm_max_jobs_per_request: int = 512
    farm_margin_s: float = 30.0
    farm_backoff_s: float = 0.5
    farm_backoff_max_s: float = 30.0
    farm_deadline_s: float = 300.0

    def __post_init__(self) -> None:
        if self.workers < 0 or self.workers == 1:
            raise ValueError("workers must be 0 (one per CPU) or >= 2")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        for name in ("memory_mb", "max_file_mb", "max_open_files", "max_processes", "tmpfs_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_open_files < 16:
            raise ValueError("max_open_files must be >= 16 (the interpreter needs a few)")
        if self.memory_mb < 64:
            raise ValueError("memory_mb must be >= 64 (the interpreter itself needs ~30 MiB)")
        if self.job_uid_base < 1000:
            raise ValueError("job_uid_base must be >= 1000 (keep clear of system accounts)")
        if self.max_program_kb < 1 or self.tasks_per_message < 1:
            raise ValueError("max_program_kb and tasks_per_message must be >= 1")
        self._check_farm()

    def _check_farm(self) -> None:
        bad = [u for u in self.endpoints if not u.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"endpoints must be http(s):// URLs, got {bad}")
        ints = ("farm_max_inflight", "farm_requests_per_server", "farm_min_jobs_per_request",
                "farm_max_jobs_per_request")  # fmt: skip
        floats = ("farm_margin_s", "farm_backoff_s", "farm_backoff_max_s", "farm_deadline_s")
        for name in (*ints, *floats):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")

    @property
    def farm(self) -> bool:
        """Whether jobs go to farm servers rather than a local pool."""
        return bool(self.endpoints or self.rendezvous)

    @property
    def n_workers(self) -> int:
        return self.workers or max(2, os.cpu_count() or 2)
