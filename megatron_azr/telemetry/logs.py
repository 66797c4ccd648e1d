"""Plain-text logging with the distributed rank in every line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

_FORMAT = "%(asctime)s [rank %(rank)s] %(levelname)s %(name)s: %(message)s"


def current_rank() -> int:
    """Global rank from the launcher's environment (torchrun, then Slurm), 0 when alone."""
    for var in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(var)
        if value is not None and value.isdigit():
            return int(value)
    return 0


class _RankFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logging(
    level: str = "INFO", log_file: str | Path | None = None, rank: int | None = None
) -> None:
    """Route the root logger to stderr and, if given, a file; each line carries the rank.

    Idempotent: calling it again replaces the handlers it installed before.
    """
    rank = current_rank() if rank is None else rank
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_megatron_azr", False):
            root.removeHandler(h)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(logging.Formatter(_FORMAT))
        h.addFilter(_RankFilter(rank))
        h._megatron_azr = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)
