"""The HF <-> megatron mapping: pure tensor functions, checked against first principles."""

import pytest

torch = pytest.importorskip("torch")

from megatron_azr.models import mapping  # noqa: E402

DIMS = mapping.AttnDims(num_heads=8, num_groups=4, head_dim=3)
H = 5


def _qkv_hf(bias=False):
    shape = lambda n: (n,) if bias else (n, H)  # noqa: E731
    d = DIMS
    q = torch.randn(shape(d.num_heads * d.head_dim))
    k = torch.randn(shape(d.num_groups * d.head_dim))
    v = torch.randn(shape(d.num_groups * d.head_dim))
    return q, k, v


@pytest.mark.parametrize("bias", [False, True])
def test_qkv_layout_is_grouped_by_kv_head(bias):
    q, k, v = _qkv_hf(bias)
    fused = mapping.qkv_from_hf(q, k, v, DIMS)
    d, per = DIMS.head_dim, DIMS.heads_per_group
    block = (per + 2) * d
    for g in range(DIMS.num_groups):
        rows = fused[g * block : (g + 1) * block]
        assert torch.equal(rows[: per * d], q[g * per * d : (g + 1) * per * d])
        assert torch.equal(rows[per * d : per * d + d], k[g * d : (g + 1) * d])
        assert torch.equal(rows[per * d + d :], v[g * d : (g + 1) * d])
    back = mapping.qkv_to_hf(fused, DIMS)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, k, v), strict=True))


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_qkv_shards_hold_whole_groups(tp):
    q, k, v = _qkv_hf()
    fused = mapping.qkv_from_hf(q, k, v, DIMS)
    shards = [mapping.shard("qkv", fused, r, tp, DIMS) for r in range(tp)]
    g_per = DIMS.num_groups // tp
    d, per = DIMS.head_dim, DIMS.heads_per_group
    local = mapping.AttnDims(DIMS.num_heads // tp, g_per, d)
    for r, s in enumerate(shards):
        # Rank r's shard is the fused QKV of exactly its KV groups (and their query heads).
        expect = mapping.qkv_from_hf(
            q[r * g_per * per * d : (r + 1) * g_per * per * d],
            k[r * g_per * d : (r + 1) * g_per * d],
            v[r * g_per * d : (r + 1) * g_per * d],
            local,
        )
        assert torch.equal(s, expect)
    assert torch.equal(mapping.unshard("qkv", shards, DIMS), fused)
    with pytest.raises(ValueError):
        mapping.shard("qkv", fused, 0, 8, DIMS)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_fc1_shards_chunk_gate_and_up_separately(tp):
    gate, up = torch.randn(8, H), torch.randn(8, H)
    fc1 = mapping.fc1_from_hf(gate, up)
    shards = [mapping.shard("fc1", fc1, r, tp, DIMS) for r in range(tp)]
    for r, s in enumerate(shards):
        assert torch.equal(s, torch.cat([gate.chunk(tp)[r], up.chunk(tp)[r]]))
    assert torch.equal(mapping.unshard("fc1", shards, DIMS), fc1)
    assert all(torch.equal(a, b) for a, b in zip(mapping.fc1_to_hf(fc1), (gate, up), strict=True))


@pytest.mark.parametrize("kind,dim", [("row", 1), ("vocab", 0), ("norm", None)])
def test_row_vocab_norm(kind, dim):
    assert mapping.partition_dim(kind) == dim
    full = torch.randn(8, 12)
    shards = [mapping.shard(kind, full, r, 4, DIMS) for r in range(4)]
    if dim is None:
        assert all(s is full for s in shards)
    else:
        assert all(s.shape[dim] == full.shape[dim] // 4 and s.is_contiguous() for s in shards)
    assert torch.equal(mapping.unshard(kind, shards, DIMS), full)


def test_layer_placement_interleaved():
    # 8 layers, pp=2, vpp=2: virtual stage v*pp + p holds 2 consecutive layers.
    want = {(0, 0): [0, 1], (1, 0): [2, 3], (0, 1): [4, 5], (1, 1): [6, 7]}
    for (pp_rank, vp), layers in want.items():
        got = [mapping.local_to_global(i, 8, 2, pp_rank, 2, vp) for i in range(2)]
        assert got == layers
        for i, g in enumerate(layers):
            assert mapping.global_to_local(g, 8, 2, 2) == (pp_rank, vp, i)
    assert mapping.layer_offset(24, 4, 3) == 18
    with pytest.raises(ValueError):
        mapping.layers_per_chunk(6, 4)


def test_names_cover_the_model_and_te_names_round_trip():
    maps = mapping.param_maps(2, qkv_bias=True, tie_word_embeddings=False)
    hf = [n for m in maps for n in m.hf]
    assert len(hf) == len(set(hf)) == 2 + 1 + 2 * 12  # embed, norm, head + 12 per layer
    assert mapping.param_maps(2, False, True)[-1].mcore == "decoder.final_layernorm.weight"
    local = "decoder.layers.3.input_layernorm.weight"
    te = "decoder.layers.3.self_attention.linear_qkv.layer_norm_weight"
    assert mapping.te_name(local) == te and mapping.canonical_name(te) == local
    assert mapping.canonical_name("decoder.layers.3.mlp.linear_fc1.layer_norm_weight") == (
        "decoder.layers.3.pre_mlp_layernorm.weight"
    )
    m = next(m for m in maps if m.mcore.endswith("linear_qkv.bias"))
    assert mapping.hf_shapes(m, 64, 128, 512, mapping.AttnDims(4, 2, 16)) == ((64,), (32,), (32,))


def test_param_kind_by_name():
    assert mapping.param_kind("embedding.word_embeddings.weight") == "vocab"
    assert mapping.param_kind("decoder.layers.7.self_attention.linear_qkv.bias") == "qkv"
    assert mapping.param_kind("decoder.layers.7.mlp.linear_fc1.layer_norm_weight") == "norm"
    assert mapping.param_kind("decoder.layers.0.mlp.linear_fc2.weight") == "row"
    assert mapping.partition_dim(mapping.param_kind("output_layer.weight")) == 0
    for m in mapping.param_maps(3, qkv_bias=True, tie_word_embeddings=False):
        assert mapping.param_kind(m.mcore) == m.kind
    with pytest.raises(KeyError):
        mapping.param_kind("decoder.layers.0.mlp.router.weight")
