import math

import pytest

from megatron_azr.azr.advantages import trr_advantages
from megatron_azr.azr.rewards import learnability, proposer_reward, solver_reward


@pytest.mark.parametrize(
    "formatted, acc, reward",
    [(True, 1.0, 1.0), (True, 0.6, 0.6), (True, 0.0, -0.5), (False, 1.0, -1.0), (False, 0.0, -1.0)],
)
def test_solver_reward(formatted, acc, reward):
    assert solver_reward(formatted, acc) == reward


@pytest.mark.parametrize(
    "rate, value", [(0.0, 0.0), (1.0, 0.0), (0.125, 0.875), (0.5, 0.5), (7 / 8, 0.125)]
)
def test_learnability(rate, value):
    assert learnability(rate) == pytest.approx(value)


def test_proposer_reward_cases_and_zero_switch():
    assert proposer_reward(False, True, 0.5) == -1.0  # invalid
    assert proposer_reward(True, False, 0.5) == -1.0  # valid but think/answer format broken
    assert proposer_reward(True, True, 0.25) == 0.75
    # Solved 0/n or n/n: -0.5 in the original code, 0 in the paper's equations.
    for rate in (0.0, 1.0):
        assert proposer_reward(True, True, rate) == -0.5
        assert proposer_reward(True, True, rate, zero_reward=0.0) == 0.0
    assert proposer_reward(False, True, 0.0, zero_reward=0.0) == -1.0


def test_trr_token_weighted_by_hand():
    # mean = (1*1 + 3*(-0.5)) / 4 = -0.125; biased var = (1.125^2 + 3 * 0.375^2) / 4 = 0.421875;
    # unbiased over 4 tokens: * 4/3 = 0.5625 -> std 0.75; A = (1.125, -0.375) / 0.75.
    adv = trr_advantages([1.0, -0.5], [1, 3], "token")
    assert adv == pytest.approx([1.5, -0.5], rel=1e-6)


def test_trr_response_whitening_by_hand():
    # mean 0.25, unbiased var = 2 * 0.75^2 / 1 = 1.125
    adv = trr_advantages([1.0, -0.5], [1, 3], "response")
    s = math.sqrt(1.125)
    assert adv == pytest.approx([0.75 / s, -0.75 / s], rel=1e-6)


def test_token_weighting_matters_and_centres_per_token():
    rewards, lengths = [1.0, -0.5, -1.0, 0.5], [100, 10, 30, 5]
    token, response = trr_advantages(rewards, lengths), trr_advantages(rewards, lengths, "response")
    assert token != pytest.approx(response)
    assert sum(a * n for a, n in zip(token, lengths, strict=True)) == pytest.approx(0, abs=1e-9)
    assert sum(response) == pytest.approx(0, abs=1e-9)
    # Unit unbiased variance over tokens.
    total = sum(lengths)
    var = sum(n * a * a for a, n in zip(token, lengths, strict=True)) / (total - 1)
    assert var == pytest.approx(1.0, rel=1e-6)


def test_trr_degenerate_cases():
    assert trr_advantages([], []) == []
    assert trr_advantages([-0.5] * 5, [3, 1, 4, 1, 5]) == [0.0] * 5
    assert trr_advantages([1.0, 0.125], [1, 0]) == [0.0, 0.0]  # one token in all
    assert trr_advantages([1.0], [7], "response") == [0.0]
    with pytest.raises(ValueError, match="lengths"):
        trr_advantages([1.0, 2.0], [1])
