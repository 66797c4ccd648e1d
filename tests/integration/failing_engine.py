"""Child process of test_faults (under torchrun, 2 ranks): `azr train` whose rollout engine, the
real one on rank 0, raises on its first generate.

Usage: failing_engine.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from processes import ROOT
from tiny_run import FAST

from megatron_azr.config import load_config
from megatron_azr.rollout.build import build_rollout_engine
from megatron_azr.trainer import train


class FailingEngine:
    """The real engine, except that generating fails."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("rollout engine failed on purpose")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def main() -> None:
    out = Path(sys.argv[1])
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", [f"run.output_dir={out}", *FAST])
    train(cfg, build_engine=lambda *a: FailingEngine(build_rollout_engine(*a)))


if __name__ == "__main__":
    main()
