"""Where a run's logs go."""

from __future__ import annotations

from dataclasses import dataclass
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
