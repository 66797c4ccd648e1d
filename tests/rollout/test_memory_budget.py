"""The colocated engine's GPU budget beside the actor (rollout/build.py): pure arithmetic, the
line the trainer logs before vLLM starts, and the refusal when vLLM could not start."""

import pytest

from megatron_azr.rollout.build import GiB, memory_budget

# 14B recipe, one H100 (80 GiB reported as ~79.2 by CUDA): TP 4 x DP 2, distributed optimizer,
# bf16 weights 3.7B x 2 B, fp32 grads 3.7B x 4 B, fp32 master + moments 3.7B x 12 B / 2.
ACTOR = {"weights": int(7.4e9), "grads": int(14.8e9), "optimizer": int(22.2e9)}
TOTAL = int(79.2 * GiB)


def test_fits_and_says_by_how_much():
    free = TOTAL - sum(ACTOR.values()) - int(0.6 * GiB)  # CUDA context, NCCL
    line = memory_budget(ACTOR, free, TOTAL, 0.35)
    assert "optimizer 20.68" in line and "= 41.35 GiB resident" in line
    assert "0.35 x 79.20 = 27.72 GiB" in line
    assert "9.53 GiB left beside both" in line


def test_an_engine_that_cannot_start_is_refused_with_the_largest_utilization_that_fits():
    free = TOTAL - sum(ACTOR.values())
    with pytest.raises(MemoryError, match=r"gpu_memory_utilization to at most 0\.48"):
        memory_budget(ACTOR, free, TOTAL, 0.6)
