"""Resharding's pure parts: per-parameter conversion and the bucket plan (single process)."""

import pytest
import torch
from reshard_shapes import vllm_shard_shapes

from megatron_azr.models import mapping
from megatron_azr.models.config import ModelConfig
from megatron_azr.rollout import reshard

DIMS = mapping.AttnDims(num_heads=8, num_groups=4, head_dim=3)
H, FFN, VOCAB = 6, 12, 20
L0 = "decoder.layers.0."
M = {
    "qkv": mapping.ParamMap(L0 + "self_attention.linear_qkv.weight", ("q", "k", "v"), "qkv", 0),
    "qkv_bias": mapping.ParamMap(L0 + "self_attention.linear_qkv.bias", ("q", "k", "v"), "qkv", 0),
    "row": mapping.ParamMap(L0 + "self_attention.linear_proj.weight", ("o",), "row", 0),
    "fc2": mapping.ParamMap(L0 + "mlp.linear_fc2.weight", ("down",), "row", 0),
    "fc1": mapping.ParamMap(L0 + "mlp.linear_fc1.weight", ("gate", "up"), "fc1", 0),
    "vocab": mapping.ParamMap("embedding.word_embeddings.weight", ("e",), "vocab", None),
    "norm": mapping.ParamMap("decoder.final_layernorm.weight", ("n",), "norm", None),
}


def _hf(m: mapping.ParamMap) -> tuple[torch.Tensor, ...]:
    shapes = mapping.hf_shapes(m, H, FFN, VOCAB, DIMS)
    return tuple(torch.randn(s) for s in shapes)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("key", sorted(M))
def test_hf_from_shards_is_to_hf_of_unshard(key, tp):
    m = M[key]
    full = mapping.from_hf(m.kind, _hf(m), DIMS)
    shards = [mapping.shard(m.kind, full, r, tp, DIMS) for r in range(tp)]
    expect = mapping.to_hf(m.kind, mapping.unshard(m.kind, shards, DIMS), DIMS)
    got = reshard.hf_from_shards(m.kind, shards, DIMS)
    assert len(got) == len(expect) == len(m.hf)
    for g, e in zip(got, expect, strict=True):
        assert g.is_contiguous() and torch.equal(g, e)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("key", ["qkv", "qkv_bias", "fc1", "row", "fc2", "norm"])
def test_engine_shard_is_vllms_slice_of_the_hf_tensors(key, tp):
    """vLLM's TP shard, from first principles: q/k/v and gate/up each split evenly by rank and
    stacked, row-parallel weights split along the input dim, norms replicated."""
    m = M[key]
    hf = _hf(m)
    full = mapping.from_hf(m.kind, hf, DIMS)
    for r in range(tp):
        got = reshard.engine_shard(m.kind, mapping.shard(m.kind, full, r, tp, DIMS), tp, DIMS)
        dim = {"row": 1, "norm": None}.get(m.kind, 0)
        parts = [t if dim is None else t.chunk(tp, dim=dim)[r] for t in hf]
        assert torch.equal(got, torch.cat(parts, dim=dim or 0)), (key, r)


def test_padded_vocab_shard_matches_vllms_split():
    full = torch.randn(500, 4)
    p = 256  # vLLM: 500 padded to 512, split in two
    r0 = reshard.padded_vocab_shard(full, 0, torch.Size([p, 4]))
    r1 = reshard.padded_vocab_shard(full, 1, torch.Size([p, 4]))
    assert torch.equal(r0, full[:p])
    assert torch.equal(r1[: 500 - p], full[p:]) and not r1[500 - p :].any()
    assert torch.equal(torch.cat([r0, r1])[:500], full)


def _arch(**kw) -> ModelConfig:
    base = dict(
        name="t",
        family="qwen2",
        num_layers=4,
        hidden_size=16,
        ffn_hidden_size=24,
        num_attention_heads=4,
        num_query_groups=2,
        vocab_size=500,
        qkv_bias=True,
    )
    base.update(kw)
    return ModelConfig(**base)


def test_plan_owners_and_shapes():
    arch = _arch()
    entries = reshard.plan_entries(arch, tp=2, pp=2, vpp=2)
    names = [e.m.mcore for e in entries]
    maps = mapping.param_maps(arch.num_layers, True, False)
    assert names == [m.mcore for m in maps]  # HF order
    owner = {e.m.mcore: e.owner for e in entries}
    # interleaved: layers 0, 2 on stage 0 and 1, 3 on stage 1; head on the last stage
    assert [owner[f"decoder.layers.{g}.mlp.linear_fc1.weight"] for g in range(4)] == [0, 1, 0, 1]
    assert owner["embedding.word_embeddings.weight"] == 0 and owner["output_layer.weight"] == 1
    shape = {e.m.mcore: e.shape for e in entries}
    assert shape["decoder.layers.0.self_attention.linear_qkv.weight"] == (16 * 2 // 2, 16)
    assert shape["decoder.layers.0.mlp.linear_fc2.weight"] == (16, 12)
    assert shape["output_layer.weight"] == (250, 16)
    assert all(e.gather for e in entries)


@pytest.mark.parametrize("budget", [1, 300, 1000, 10**9])
def test_buckets_are_bounded_ordered_and_single_owner(budget):
    arch = _arch()
    tp = 2
    entries = reshard.plan_entries(arch, tp=tp, pp=2)
    buckets = reshard.plan_buckets(entries, budget, tp, full_slots=False)
    flat = [e for b in buckets for e in b.entries]
    assert [e.m.mcore for e in flat] == [e.m.mcore for e in entries]
    for b in buckets:
        assert {e.owner for e in b.entries} == {b.owner}
        offsets = [e.offset for e in b.entries]
        assert offsets == [sum(e.numel for e in b.entries[:i]) for i in range(len(offsets))]
        assert b.numel == sum(e.numel for e in b.entries)
        assert len(b.entries) == 1 or b.numel * tp <= budget
    if budget == 10**9:
        assert len(buckets) == 2  # one per pipeline stage


def test_engine_plan_gathers_only_a_repadded_vocab():
    arch = _arch()
    shapes = vllm_shard_shapes(arch, tp=2)
    entries = reshard.plan_entries(arch, tp=2, pp=1, shard_shapes=shapes)
    gather = {e.m.mcore for e in entries if e.gather}
    # 500 rows: megatron 250 per rank, vLLM pads to 512 and takes 256
    assert gather == {"embedding.word_embeddings.weight", "output_layer.weight"}
    even = vllm_shard_shapes(_arch(vocab_size=512), tp=2)
    assert not any(e.gather for e in reshard.plan_entries(_arch(vocab_size=512), 2, 1, 1, even))


def test_engine_plan_rejects_a_foreign_layout():
    arch = _arch()
    shapes = dict(vllm_shard_shapes(arch, tp=2))
    with pytest.raises(ValueError, match="re-laid out"):
        reshard.plan_entries(arch, tp=1, pp=1, shard_shapes=shapes)  # engine TP 2, actor TP 1
    shapes["model.layers.9.mlp.down_proj.weight"] = torch.Size([16, 12])
    with pytest.raises(KeyError, match="no parameter for engine"):
        reshard.plan_entries(arch, tp=2, pp=1, shard_shapes=shapes)
    shapes = dict(vllm_shard_shapes(arch, tp=2))
    del shapes["model.norm.weight"]
    with pytest.raises(KeyError, match=r"model\.norm\.weight"):
        reshard.plan_entries(arch, tp=2, pp=1, shard_shapes=shapes)
