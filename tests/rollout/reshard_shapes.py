"""vLLM's TP shard shapes of a Qwen2/Llama model, from vLLM's own rules (an independent reference
for the shard layout; a GPU engine reports the same through ``weight_shard_shapes()``)."""

from __future__ import annotations

import torch

from megatron_azr.models.config import ModelConfig

VOCAB_PADDING = 64  # vllm.model_executor.layers.vocab_parallel_embedding


def vllm_shard_shapes(arch: ModelConfig, tp: int) -> dict[str, torch.Size]:
    h, d = arch.hidden_size, arch.head_dim
    q, kv = arch.num_attention_heads * d // tp, arch.num_query_groups * d // tp
    padded = -(-arch.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
    shapes = {"model.embed_tokens.weight": (padded // tp, h)}
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "self_attn.qkv_proj.weight"] = (q + 2 * kv, h)
        if arch.qkv_bias:
            shapes[p + "self_attn.qkv_proj.bias"] = (q + 2 * kv,)
        shapes[p + "self_attn.o_proj.weight"] = (h, q)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.gate_up_proj.weight"] = (2 * arch.ffn_hidden_size // tp, h)
        shapes[p + "mlp.down_proj.weight"] = (h, arch.ffn_hidden_size // tp)
    shapes["model.norm.weight"] = (h,)
    if not arch.tie_word_embeddings:
        shapes["lm_head.weight"] = (padded // tp, h)
    return {k: torch.Size(v) for k, v in shapes.items()}


def vllm_shard(hf: dict[str, torch.Tensor], name: str, tp: int, rank: int) -> torch.Tensor:
    """vLLM's shard ``name`` of TP rank ``rank``, cut from the full HF tensors by vLLM's rules."""

    def split(t: torch.Tensor, dim: int) -> torch.Tensor:
        return t.chunk(tp, dim=dim)[rank]

    for fused, parts in (
        ("qkv_proj", ("q_proj", "k_proj", "v_proj")),
        ("gate_up_proj", ("gate_proj", "up_proj")),
    ):
        if f".{fused}." in name:
            return torch.cat([split(hf[name.replace(fused, p)], 0) for p in parts])
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        return split(hf[name], 1)
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        full = hf[name]
        padded = -(-full.shape[0] // VOCAB_PADDING) * VOCAB_PADDING
        rows = padded // tp
        out = full.new_zeros(rows, full.shape[1])
        real = full[rank * rows : (rank + 1) * rows]
        out[: real.shape[0]] = real
        return out
    return hf[name]


def hf_from_vllm_shards(
    shards: list[dict[str, torch.Tensor]], arch: ModelConfig
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`vllm_shard`: full HF tensors from every TP rank's vLLM shards."""
    tp, d = len(shards), arch.head_dim
    q, kv = arch.num_attention_heads * d // tp, arch.num_query_groups * d // tp
    out: dict[str, torch.Tensor] = {}
    for name in shards[0]:
        parts = [s[name] for s in shards]
        if ".qkv_proj." in name:
            split = [p.split([q, kv, kv]) for p in parts]
            for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out[name.replace("qkv_proj", proj)] = torch.cat([s[i] for s in split])
        elif ".gate_up_proj." in name:
            halves = [p.chunk(2) for p in parts]
            out[name.replace("gate_up_proj", "gate_proj")] = torch.cat([h[0] for h in halves])
            out[name.replace("gate_up_proj", "up_proj")] = torch.cat([h[1] for h in halves])
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            out[name] = torch.cat(parts, dim=1)
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            out[name] = torch.cat(parts)[: arch.vocab_size]
        else:
            assert all(torch.equal(p, parts[0]) for p in parts), name  # replicated
            out[name] = parts[0]
    return out
