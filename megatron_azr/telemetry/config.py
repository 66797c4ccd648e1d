"""Where a run's logs go."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # wandb is offline unless asked otherwise: clusters often have no egress, and CI never has.
    # WANDB_MODE in the environment, when set, wins over this (telemetry/metrics.py).
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "megatron-azr"
    # How long an online start may try to reach the server before logging offline instead.
    wandb_init_timeout_s: float = 90.0
    log_every: int = 1
    # Every proposer and solver response of a step, parsed and graded, as JSONL under
    # <run>/rollouts/ (telemetry/rollouts.py); big runs keep a share of the lines.
    rollout_dump: bool = True
    rollout_dump_rate: float = 1.0

    def __post_init__(self) -> None:
        if self.log_every < 1:
            raise ValueError("log_every must be >= 1")
        if not 0.0 < self.rollout_dump_rate <= 1.0:
            raise ValueError("rollout_dump_rate must be in (0, 1]")


@dataclass
class ProfileConfig:
    """What a run measures about itself beyond its metrics (README "Profiling").

    Communication accounting, per-rank phase times (straggler report) and NVML GPU stats are
    cheap and on by default; traces (torch.profiler, nsys capture range) cover only ``steps``.
    """

    # Steps traced by torch.profiler and bracketed for nsys (cudaProfilerStart at the first,
    # cudaProfilerStop after the last); [] traces nothing.
    steps: list[int] = field(default_factory=list)
    # Global ranks that trace; None = every rank.
    ranks: list[int] | None = None
    # A torch.profiler trace per traced rank and step: <output_dir>/profile/torch/.
    torch_trace: bool = False
    # Count, bytes and time of every torch.distributed collective, per phase, group and op.
    comm_accounting: bool = True
    # NVML samples (memory, utilisation, power, clocks) every this many seconds; 0 = off.
    gpu_sample_s: float = 0.2
    # Timeout of every process group (torch.distributed and megatron's): a collective stuck for
    # this long aborts the job (and dumps the NCCL flight recorder when the launch enables it).
    pg_timeout_minutes: int = 30

    def __post_init__(self) -> None:
        if any(s < 1 for s in self.steps):
            raise ValueError("steps are numbered from 1")
        if self.ranks is not None and any(r < 0 for r in self.ranks):
            raise ValueError("ranks must be >= 0")
        if self.gpu_sample_s < 0 or self.pg_timeout_minutes < 1:
            raise ValueError("gpu_sample_s must be >= 0 and pg_timeout_minutes >= 1")

    def traces(self, rank: int, step: int) -> bool:
        return step in self.steps and (self.ranks is None or rank in self.ranks)
