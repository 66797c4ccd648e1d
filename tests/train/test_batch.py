import random

import pytest

torch = pytest.importorskip("torch")

from megatron_azr.train.batch import SeqSpec, collate, pack, partition_dp  # noqa: E402


def _specs(n, seed=0):
    rng = random.Random(seed)
    return [SeqSpec(i, rng.randint(1, 30), rng.randint(1, 60)) for i in range(n)]


def test_partition_is_complete_balanced_and_deterministic():
    specs = _specs(50)
    parts = partition_dp(specs, 4)
    assert sorted(s.index for p in parts for s in p) == list(range(50))
    loads = [sum(s.length for s in p) for p in parts]
    assert max(loads) - min(loads) <= max(s.length for s in specs)
    assert partition_dp(list(reversed(specs)), 4) == parts


def test_pack_respects_budget_and_keeps_everything(caplog):
    specs = _specs(40, seed=1)
    bins = pack(specs, 128)
    assert sorted(s.index for b in bins for s in b) == list(range(40))
    assert all(sum(s.length for s in b) <= 128 for b in bins)
    # First-fit decreasing wastes little: at most one bin more than the lower bound + 1.
    lower = -(-sum(s.length for s in specs) // 128)
    assert len(bins) <= lower + 1
    long = [SeqSpec(0, 10, 300)]
    assert pack(long, 128) == [long] and "micro-batch of its own" in caplog.text
    assert pack([], 128, min_bins=3) == [[], [], []]


def test_collate_positions_targets_and_masks():
    prompts = [[1, 2, 3], [4], [5, 6]]
    responses = [[7, 8], [9, 10, 11], [12]]
    specs = [
        SeqSpec(i, len(p), len(r)) for i, (p, r) in enumerate(zip(prompts, responses, strict=True))
    ]
    old = [[-1.0, -2.0], [-3.0, -4.0, -5.0], [-6.0]]
    weights = [0.25, 3.0, 1.0]
    mb = collate(specs, prompts, responses, [0.5, -1.0, 2.0], weights, old, None, 4, min_length=13)
    assert mb.num_tokens == 16 and mb.seq_lens == [5, 4, 3, 4]
    assert mb.tokens[0, :12].tolist() == [1, 2, 3, 7, 8, 4, 9, 10, 11, 5, 6, 12]
    assert mb.position_ids[0, :12].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]
    # Position i predicts token i + 1: the response tokens, and only those, are targets.
    pos = mb.response_pos
    assert mb.targets[0][pos].tolist() == [7, 8, 9, 10, 11, 12]
    assert pos.tolist() == [2, 3, 5, 6, 7, 10]
    assert mb.old_logprobs[0][pos].tolist() == [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
    assert mb.advantages[0][pos].tolist() == [0.5, 0.5, -1.0, -1.0, -1.0, 2.0]
    assert mb.weights[0][pos].tolist() == [0.25, 0.25, 3.0, 3.0, 3.0, 1.0]
    assert mb.weights[0].sum().item() == 0.5 + 9 + 1  # zero on prompts and padding
    assert mb.cu_seqlens().tolist() == [0, 5, 9, 12, 16]
