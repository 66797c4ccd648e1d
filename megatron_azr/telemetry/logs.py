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


def _not_a_python_warning(record: logging.LogRecord) -> bool:
    return record.name != "py.warnings"


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

    With a file, Python warnings (``warnings.warn``: megatron's "Apex/Transformer Engine not
    installed, falling back" at import, library deprecations) go to the file only: on a CPU
    machine they are expected, and before the progress bar they read as errors.

    Idempotent: calling it again replaces the handlers it installed before.
    """
    rank = current_rank() if rank is None else rank
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_megatron_azr", False):
            root.removeHandler(h)
    terminal = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [terminal]
    logging.captureWarnings(log_file is not None)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
        terminal.addFilter(_not_a_python_warning)
    for h in handlers:
        h.setFormatter(logging.Formatter(_FORMAT))
        h.addFilter(_RankFilter(rank))
        h._megatron_azr = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)
