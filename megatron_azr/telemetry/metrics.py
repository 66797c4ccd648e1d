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


def wandb_mode(cfg: LoggingConfig) -> str:
    """The mode wandb runs in: ``WANDB_MODE`` from the environment when it is set (a cluster's
    or CI's policy, such as offline on nodes without egress), else ``logging.wandb_mode``."""
    env = os.environ.get("WANDB_MODE", "")
    if env and env != cfg.wandb_mode:
        logger.info(
            "wandb: WANDB_MODE=%s from the environment overrides logging.wandb_mode=%s",
            env,
            cfg.wandb_mode,
        )
    return env or cfg.wandb_mode


class MetricsLogger:
    """Writes one JSON line per step to ``metrics.jsonl`` and mirrors it to wandb.

    The JSONL file is the record of truth (greppable, survives without wandb); wandb is
    optional: a missing package or ``wandb_mode: disabled`` only turns the mirror off, and an
    online start that cannot reach the server (no network, no API key) logs offline instead.
    """

    def __init__(
        self, cfg: LoggingConfig, out_dir: str | Path, run_name: str, config: dict[str, Any]
    ) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._wandb: Any = None
        mode = wandb_mode(cfg)
        if mode != "disabled":
            try:
                import wandb
            except ImportError:
                logger.warning(
                    "wandb is not installed (pip install wandb): logging to %s only", self.path
                )
            else:
                run = {"project": cfg.wandb_project, "name": run_name, "dir": str(out_dir)}
                self._wandb = _start_wandb(wandb, mode, cfg.wandb_init_timeout_s, run, config)

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


def _start_wandb(
    wandb: Any, mode: str, timeout_s: float, run: dict[str, Any], config: dict[str, Any]
) -> Any:
    """``wandb.init`` in ``mode``; an online start that fails falls back to offline (the run
    is kept on disk for ``wandb sync``) rather than stopping the training."""

    def init(mode: str) -> Any:
        # In the environment too, not only in wandb.init: with just mode="offline" wandb
        # still makes a DNS lookup, which hangs on clusters without egress.
        os.environ["WANDB_MODE"] = mode
        settings = wandb.Settings(init_timeout=timeout_s)
        return wandb.init(**run, config=config, resume="allow", mode=mode, settings=settings)

    if mode == "offline":
        return init(mode)
    try:
        return init(mode)
    except Exception as e:  # wandb raises its own errors, timeouts, auth and network errors
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        logger.warning(
            "wandb: %s start failed (%s); logging offline under %s/wandb instead "
            "(upload it later with `wandb sync`)",
            mode,
            reason,
            run["dir"],
        )
        return init("offline")
