"""Scalar rewards of one response (spec §6.4, §6.5); one number per response, placed on its last
token by the trainer (with gamma = lambda = 1 every token sees it)."""

from __future__ import annotations

# Format-aware penalties shared by both roles (paper eq. 6).
FORMAT_ERROR = -1.0
WRONG_BUT_FORMATTED = -0.5


def solver_reward(well_formatted: bool, accuracy: float) -> float:
    """+accuracy (1 for a correct binary answer) when formatted and right, -0.5 when formatted
    but wrong, -1 when the think/answer format is broken (the answer is then not graded)."""
    if not well_formatted:
        return FORMAT_ERROR
    return accuracy if accuracy > 0 else WRONG_BUT_FORMATTED


def learnability(solve_rate: float) -> float:
    """Paper eq. 4: 1 - r for 0 < r < 1, else 0 (tasks always or never solved teach nothing)."""
    return 1.0 - solve_rate if 0.0 < solve_rate < 1.0 else 0.0


def proposer_reward(
    valid: bool, well_formatted: bool, solve_rate: float, zero_reward: float = -0.5
) -> float:
    """An invalid proposal (unparsable, failed validation) and a valid one with a broken format
    both get -1. A valid, well-formatted proposal gets its learnability, or ``zero_reward`` when
    that is 0: -0.5 in the original code (the paper's numbers), 0 in the paper's equations
    (``azr.proposer_zero_reward``, GitHub issue #37)."""
    if not (valid and well_formatted):
        return FORMAT_ERROR
    r = learnability(solve_rate)
    return r if r > 0 else zero_reward
