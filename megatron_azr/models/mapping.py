"""HF (Qwen2 / Llama) <-> megatron-core weight mapping: the single source of truth.

Everything here is a small pure function on tensors and names, with no process groups, so the
same code serves the checkpoint converter, loading HF weights into any TP/PP layout, export, and
the rollout weight resharding (training layout -> inference layout).

Megatron local-spec layout (the TE spec differs only in where the two pre-norms live, see
:func:`canonical_name`):

===========================================  ==========================================  ========
megatron (per model chunk, local layer i)    HF (global layer g)                          kind
===========================================  ==========================================  ========
embedding.word_embeddings.weight             model.embed_tokens.weight                    vocab
decoder.layers.i.input_layernorm.weight      model.layers.g.input_layernorm.weight        norm
decoder.layers.i.self_attention.linear_qkv   model.layers.g.self_attn.{q,k,v}_proj        qkv
decoder.layers.i.self_attention.linear_proj  model.layers.g.self_attn.o_proj              row
decoder.layers.i.pre_mlp_layernorm.weight    model.layers.g.post_attention_layernorm      norm
decoder.layers.i.mlp.linear_fc1.weight       model.layers.g.mlp.{gate,up}_proj            fc1
decoder.layers.i.mlp.linear_fc2.weight       model.layers.g.mlp.down_proj                 row
decoder.final_layernorm.weight               model.norm.weight                            norm
output_layer.weight                          lm_head.weight                               vocab
===========================================  ==========================================  ========

The fused QKV is grouped by KV head: for each of the G query groups, its ``H/G`` query heads,
then its key head, then its value head, each ``head_dim`` rows (the same for the Qwen2 bias).
TP shards QKV by whole groups, and fc1's gate and up halves separately.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from megatron_azr.models.config import ModelConfig

Kind = Literal["vocab", "norm", "qkv", "row", "fc1"]

# TP partition dim of each kind (None = replicated on every TP rank).
_PARTITION_DIM: dict[Kind, int | None] = {
    "vocab": 0,
    "norm": None,
    "qkv": 0,
    "row": 1,
    "fc1": 0,
}


@dataclass(frozen=True)
class AttnDims:
    num_heads: int
    num_groups: int
    head_dim: int

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_groups


def attn_dims(arch: ModelConfig) -> AttnDims:
    return AttnDims(arch.num_attention_heads, arch.num_query_groups, arch.head_dim)


@dataclass(frozen=True)
class ParamMap:
    """One megatron parameter (canonical local-spec suffix, global layer) and its HF tensors."""

    mcore: str  # name within a chunk, with the *global* layer index
    hf: tuple[str, ...]
    kind: Kind
    layer: int | None  # global layer index, None for embedding / final norm / output layer


def partition_dim(kind: Kind) -> int | None:
    return _PARTITION_DIM[kind]


# -- name mapping --------------------------------------------------------------------------

_LAYER_SUFFIXES: tuple[tuple[str, tuple[str, ...], Kind], ...] = (
    ("input_layernorm.weight", ("input_layernorm.weight",), "norm"),
    (
        "self_attention.linear_qkv.weight",
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
        "qkv",
    ),
    (
        "self_attention.linear_qkv.bias",
        ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
        "qkv",
    ),
    ("self_attention.linear_proj.weight", ("self_attn.o_proj.weight",), "row"),
    ("pre_mlp_layernorm.weight", ("post_attention_layernorm.weight",), "norm"),
    ("mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), "fc1"),
    ("mlp.linear_fc2.weight", ("mlp.down_proj.weight",), "row"),
)

# Transformer Engine fuses the pre-norms into the following linear layer.
_TE_RENAMES = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}
_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def canonical_name(name: str) -> str:
    """Map a TE-spec parameter name to its local-spec equivalent (identity otherwise)."""
    m = _LAYER_RE.match(name)
    if m and m.group(2) in _TE_RENAMES:
        return f"decoder.layers.{m.group(1)}.{_TE_RENAMES[m.group(2)]}"
    return name


def te_name(name: str) -> str:
    """The inverse of :func:`canonical_name` for the two fused norms."""
    m = _LAYER_RE.match(name)
    if m:
        for te, local in _TE_RENAMES.items():
            if m.group(2) == local:
                return f"decoder.layers.{m.group(1)}.{te}"
    return name


def param_maps(num_layers: int, qkv_bias: bool, tie_word_embeddings: bool) -> list[ParamMap]:
    """Every parameter of the full model in canonical order (embedding, layers, norm, head)."""
    maps = [
        ParamMap("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab", None)
    ]
    for g in range(num_layers):
        for suffix, hf_suffixes, kind in _LAYER_SUFFIXES:
            if suffix.endswith("bias") and not qkv_bias:
                continue
            hf = tuple(f"model.layers.{g}.{s}" for s in hf_suffixes)
            maps.append(ParamMap(f"decoder.layers.{g}.{suffix}", hf, kind, g))
    maps.append(ParamMap("decoder.final_layernorm.weight", ("model.norm.weight",), "norm", None))
    if not tie_word_embeddings:
        maps.append(ParamMap("output_layer.weight", ("lm_head.weight",), "vocab", None))
    return maps


def param_kind(name: str) -> Kind:
    """The kind (hence TP partitioning) of a megatron parameter, local- or TE-spec name."""
    name = canonical_name(name)
    if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        return "vocab"
    if name == "decoder.final_layernorm.weight":
        return "norm"
    parts = split_layer_name(name)
    if parts is not None:
        for suffix, _, kind in _LAYER_SUFFIXES:
            if parts[1] == suffix:
                return kind
    raise KeyError(f"no mapping for megatron parameter {name!r}")


def split_layer_name(name: str) -> tuple[int, str] | None:
    """``decoder.layers.3.mlp...`` -> (3, ``mlp...``); None for non-layer names."""
    m = _LAYER_RE.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def with_layer(name: str, layer: int) -> str:
    parts = split_layer_name(name)
    if parts is None:
        return name
    return f"decoder.layers.{layer}.{parts[1]}"


# -- pipeline layer placement --------------------------------------------------------------


def layers_per_chunk(num_layers: int, pp: int, vpp: int = 1) -> int:
    if num_layers % (pp * vpp):
        raise ValueError(f"{num_layers} layers cannot be split evenly over pp={pp} x vpp={vpp}")
    return num_layers // (pp * vpp)


def layer_offset(num_layers: int, pp: int, pp_rank: int, vpp: int = 1, vp_stage: int = 0) -> int:
    """Global index of the first layer of chunk ``vp_stage`` on pipeline rank ``pp_rank``.

    Interleaved schedules place virtual stage ``vp_stage * pp + pp_rank`` on that chunk.
    """
    return (vp_stage * pp + pp_rank) * layers_per_chunk(num_layers, pp, vpp)


def local_to_global(
    local: int, num_layers: int, pp: int, pp_rank: int, vpp: int = 1, vp_stage: int = 0
) -> int:
    return layer_offset(num_layers, pp, pp_rank, vpp, vp_stage) + local


def global_to_local(g: int, num_layers: int, pp: int, vpp: int = 1) -> tuple[int, int, int]:
    """Global layer -> (pp_rank, vp_stage, local index within that chunk)."""
    n = layers_per_chunk(num_layers, pp, vpp)
    virtual_stage, local = divmod(g, n)
    vp_stage, pp_rank = divmod(virtual_stage, pp)
    return pp_rank, vp_stage, local


def owner_stage(m: ParamMap, num_layers: int, pp: int, vpp: int = 1) -> tuple[int, int]:
    """(pp_rank, vp_stage) of the chunk holding ``m`` (the output layer lives on the last)."""
    if m.layer is not None:
        pp_rank, vp_stage, _ = global_to_local(m.layer, num_layers, pp, vpp)
        return pp_rank, vp_stage
    if m.mcore.startswith("embedding."):
        return 0, 0
    return pp - 1, vpp - 1


# -- full megatron tensor <-> HF tensors ---------------------------------------------------


def qkv_from_hf(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: AttnDims) -> torch.Tensor:
    """HF q/k/v (weights [out, in] or biases [out]) -> megatron's group-interleaved fused QKV."""
    g, d = dims.num_groups, dims.head_dim
    rest = q.shape[1:]
    q = q.reshape(g, dims.heads_per_group * d, *rest)
    k = k.reshape(g, d, *rest)
    v = v.reshape(g, d, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def qkv_split(qkv: torch.Tensor, dims: AttnDims) -> tuple[torch.Tensor, ...]:
    """q, k, v of a fused QKV tensor as ``[groups, rows per group, ...]`` (views of it when it
    is contiguous)."""
    d = dims.head_dim
    grouped = qkv.reshape(dims.num_groups, (dims.heads_per_group + 2) * d, *qkv.shape[1:])
    return grouped.split([dims.heads_per_group * d, d, d], dim=1)


def qkv_to_hf(qkv: torch.Tensor, dims: AttnDims) -> tuple[torch.Tensor, ...]:
    return tuple(p.reshape(-1, *qkv.shape[1:]).contiguous() for p in qkv_split(qkv, dims))


def fc1_from_hf(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.cat([gate, up], dim=0)


def fc1_to_hf(fc1: torch.Tensor) -> tuple[torch.Tensor, ...]:
    gate, up = fc1.chunk(2, dim=0)
    return gate.contiguous(), up.contiguous()


def from_hf(kind: Kind, tensors: tuple[torch.Tensor, ...], dims: AttnDims) -> torch.Tensor:
    """HF tensors of one parameter -> the full (unsharded) megatron tensor."""
    if kind == "qkv":
        q, k, v = tensors
        return qkv_from_hf(q, k, v, dims)
    if kind == "fc1":
        gate, up = tensors
        return fc1_from_hf(gate, up)
    (t,) = tensors
    return t


def to_hf(kind: Kind, full: torch.Tensor, dims: AttnDims) -> tuple[torch.Tensor, ...]:
    if kind == "qkv":
        return qkv_to_hf(full, dims)
    if kind == "fc1":
        return fc1_to_hf(full)
    return (full,)


# -- full megatron tensor <-> TP shards ----------------------------------------------------


def shard(kind: Kind, full: torch.Tensor, tp_rank: int, tp: int, dims: AttnDims) -> torch.Tensor:
    """The slice of ``full`` that TP rank ``tp_rank`` of ``tp`` holds (contiguous)."""
    if tp == 1:
        return full
    if kind == "qkv":
        if dims.num_groups % tp:
            raise ValueError(f"{dims.num_groups} KV groups cannot be split over tp={tp}")
        grouped = full.reshape(dims.num_groups, -1, *full.shape[1:])
        return grouped.chunk(tp, dim=0)[tp_rank].reshape(-1, *full.shape[1:]).contiguous()
    if kind == "fc1":
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, 0)[tp_rank], up.chunk(tp, 0)[tp_rank]]).contiguous()
    dim = partition_dim(kind)
    if dim is None:
        return full
    if full.shape[dim] % tp:
        raise ValueError(f"dim {dim} of a {kind} tensor {tuple(full.shape)} not divisible by {tp}")
    return full.chunk(tp, dim=dim)[tp_rank].contiguous()


def unshard(kind: Kind, shards: list[torch.Tensor], dims: AttnDims) -> torch.Tensor:
    """Inverse of :func:`shard` given all TP shards in rank order."""
    if len(shards) == 1:
        return shards[0]
    if kind == "fc1":
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    if kind == "qkv":
        # Each shard holds whole groups, in order: concatenation restores the group order.
        return torch.cat(shards, dim=0)
    dim = partition_dim(kind)
    if dim is None:
        return shards[0]
    return torch.cat(shards, dim=dim)


def hf_shapes(
    m: ParamMap, hidden: int, ffn: int, vocab: int, dims: AttnDims
) -> tuple[tuple[int, ...], ...]:
    """Shapes of the HF tensors of ``m`` (to receive them from another pipeline stage)."""
    q, kv = dims.num_heads * dims.head_dim, dims.num_groups * dims.head_dim
    if m.kind == "vocab":
        return ((vocab, hidden),)
    if m.kind == "norm":
        return ((hidden,),)
    if m.kind == "qkv":
        if m.mcore.endswith("bias"):
            return ((q,), (kv,), (kv,))
        return ((q, hidden), (kv, hidden), (kv, hidden))
    if m.kind == "fc1":
        return ((ffn, hidden), (ffn, hidden))
    if m.mcore.endswith("linear_proj.weight"):
        return ((hidden, q),)
    return ((hidden, ffn),)
