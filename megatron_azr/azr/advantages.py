"""Task-Relative REINFORCE++ (TRR++, spec §8): one baseline per (task type, role) sub-batch.

``A = (r - mean) / sqrt(var + 1e-8)`` with mean and variance taken over one sub-batch only; the
same advantage applies to every token of the response. ``token`` whitening is what the original
ran (veRL's ``masked_whiten`` over all response tokens: each response counts once per token, the
variance is the unbiased token-level one); ``response`` whitening is the paper's per-response
statistics (unbiased as well). Equal rewards, or fewer than two samples, give zero advantages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

EPS = 1e-8


def trr_advantages(
    rewards: Sequence[float],
    lengths: Sequence[int],
    whitening: Literal["token", "response"] = "token",
) -> list[float]:
    """Advantages of one sub-batch; ``lengths`` are response token counts (used by ``token``)."""
    if len(rewards) != len(lengths):
        raise ValueError(f"{len(rewards)} rewards but {len(lengths)} lengths")
    if any(n < 0 for n in lengths):
        raise ValueError("response lengths must be >= 0")
    if not rewards or all(r == rewards[0] for r in rewards):
        return [0.0] * len(rewards)
    weights = [float(n) for n in lengths] if whitening == "token" else [1.0] * len(rewards)
    total = sum(weights)
    if total <= 1:  # the unbiased variance needs two tokens (or two responses)
        return [0.0] * len(rewards)
    mean = math.fsum(w * r for w, r in zip(weights, rewards, strict=True)) / total
    var = math.fsum(w * (r - mean) ** 2 for w, r in zip(weights, rewards, strict=True)) / total
    var *= total / (total - 1)  # Bessel's correction over the counted units
    scale = 1.0 / math.sqrt(var + EPS)
    return [(r - mean) * scale for r in rewards]
