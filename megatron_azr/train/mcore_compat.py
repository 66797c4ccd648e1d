"""Differences between megatron-core versions (0.16.1 on CPU CI, 0.19.x on clusters), and
fixes for its optimizer checkpoint bugs, guarded in one place."""

from __future__ import annotations

from typing import Any


def prepare_optimizer_for_load(optimizer: Any) -> None:
    return None


def fix_optimizer_after_load(optimizer: Any) -> None:
    return None
