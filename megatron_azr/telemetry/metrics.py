"""Per-step metrics to a plain JSONL file and to wandb (offline unless configured otherwise)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from megatron_azr.telemetry.config import LoggingConfig

logger = logging.getLogger(__name__)


class MetricsLogger:
    """Writes one JSON line per step to ``metrics.jsonl`` and mirrors it to wandb.

    The JSONL file is the record of truth (greppable, survives without wandb); wandb is
    optional: a missing package or ``wandb_mode: disabled`` only turns the mirror off.
    """

    def __init__(
        self, cfg: LoggingConfig, out_dir: str | Path, run_name: str, config: dict[str, Any]
    ) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._wandb: Any = None
        if cfg.wandb_mode != "disabled":
            # Set in the environment, not only in wandb.init: with just mode="offline" wandb
            # still makes a DNS lookup, which hangs on clusters without egress.
            os.environ.setdefault("WANDB_MODE", cfg.wandb_mode)
            try:
                import wandb
            except ImportError:
                logger.warning(
                    "wandb is not installed (pip install wandb): logging to %s only", self.path
                )
            else:
                self._wandb = wandb.init(
                    project=cfg.wandb_project,
                    name=run_name,
                    dir=str(out_dir),
                    config=config,
                    resume="allow",
                )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, "time": time.time(), **metrics}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
