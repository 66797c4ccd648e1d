"""Weight resharding: the actor's TP/PP shards -> HF full tensors, or a rollout engine's own shards.

One collective generator serves every consumer of the actor's weights: rollout engine updates
(``engine.update_weights``), checkpoint export (``hf_io.save_hf``) and
``Actor.state_dict_for_rollout``. Every rank of the job iterates it, in step, to the end.

How a pass runs. The model's parameters, in HF order (embedding, layer by layer, final norm,
head), are cut into buckets of consecutive parameters owned by one pipeline stage, at most
``bucket_bytes`` each. For each bucket the owning stage's TP ranks pack their shards into one
flat slot and the slots travel together (:mod:`megatron_azr.rollout.transport`: an all-gather
over TP and a broadcast over PP on one flat buffer, or sends to a single reader, or a
shared-memory window for CPU ranks on one host). The readers convert each parameter with
:mod:`megatron_azr.models.mapping` (split fused QKV and gate/up, concatenate TP shards) straight
into its output tensors, allocated one at a time, and yield them. Staging memory is reused from
bucket to bucket, and yielded tensors never alias it.

Memory above the actor's own, on a reader whose consumer copies each tensor and lets it go (an
engine update, an export): the staging of one bucket, ``max(bucket_bytes, largest parameter)``,
plus the tensor being built (and, for QKV, the split of its shards). The shared-memory transport
splits ``bucket_bytes`` into two half-size buckets that alternate, so its staging stays within
``bucket_bytes`` too. A consumer that keeps tensors (vLLM buffers a layer) adds what it keeps.

Targets:
* HF (:func:`hf_tensors`): ``(HF name, full tensor)``, on every rank or only on ``dst`` (export:
  other ranks then send what they own and materialise nothing).
* Engine shards (:func:`engine_shards`): for an engine whose TP equals the actor's, each rank
  gets its own TP rank's shards in the engine's layout, as ``weight_shard_shapes()`` reports it
  (vLLM: ``qkv_proj`` = [q; k; v] of the local heads, ``gate_up_proj`` = [gate; up] of the
  local columns, vocabulary padded to a multiple of 64 and split evenly). Only pipeline
  broadcasts move data, no TP gather; a vocabulary whose padded split differs from the actor's
  is gathered and re-split.

Yielded tensors may alias the actor's parameters (when no conversion is needed): consumers must
not keep them past the update, and the actor must not step while one is in progress.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from megatron_azr.models import mapping
from megatron_azr.models.config import ModelConfig
from megatron_azr.rollout.transport import (
    CollectiveTransport,
    LocalTransport,
    Move,
    ShardLayout,
    SharedMemoryTransport,
    Transport,
    TransportName,
    peers,
    shm_unavailable,
)

if TYPE_CHECKING:
    from megatron_azr.rollout.config import RolloutConfig

logger = logging.getLogger(__name__)

DEFAULT_BUCKET_BYTES = 512 << 20


def local_dims(dims: mapping.AttnDims, tp: int) -> mapping.AttnDims:
    """The attention dims of one TP rank's heads (megatron shards whole KV groups)."""
    return mapping.AttnDims(dims.num_heads // tp, dims.num_groups // tp, dims.head_dim)


# -- per-parameter conversion (pure tensor functions) ---------------------------------------


def iter_hf_from_shards(
    kind: mapping.Kind, shards: Sequence[torch.Tensor], dims: mapping.AttnDims
) -> Iterator[torch.Tensor]:
    """The full HF tensors of one parameter from all its TP shards (in rank order), one at a
    time: ``mapping.to_hf(kind, mapping.unshard(kind, shards, dims), dims)``.

    Each HF tensor is the concatenation, along its partition dim, of the HF tensors of the
    shards converted with the local heads (megatron shards whole KV groups, gate and up
    separately), written straight into the output: no full-size intermediate, and each output
    is allocated only once the previous one has been handed over. With one shard (or a
    replicated parameter) the tensors may be views of it.
    """
    tp = len(shards)
    dim = mapping.partition_dim(kind)
    if tp == 1 or dim is None:
        yield from mapping.to_hf(kind, shards[0], dims)
        return
    pieces = [_hf_views(kind, s, local_dims(dims, tp)) for s in shards]
    for j in range(len(pieces[0])):
        piece = pieces[0][j]
        shape = (
            [piece.shape[0] * piece.shape[1], *piece.shape[2:]]
            if kind == "qkv"
            else list(piece.shape)
        )
        rows = shape[dim]
        shape[dim] *= tp
        out = shards[0].new_empty(shape)
        for r in range(tp):
            out.narrow(dim, r * rows, rows).view(pieces[r][j].shape).copy_(pieces[r][j])
        yield out
        del out  # hold nothing while the next one is allocated


def _hf_views(
    kind: mapping.Kind, shard: torch.Tensor, dims: mapping.AttnDims
) -> tuple[torch.Tensor, ...]:
    """The HF pieces of one shard as views of it: QKV's as ``[groups, rows per group, ...]``
    (flattening them, as ``mapping.to_hf`` does, would copy the shard once more)."""
    if kind != "qkv":
        return mapping.to_hf(kind, shard, dims)  # views: fc1's halves are contiguous already
    return mapping.qkv_split(shard, dims)


def hf_from_shards(
    kind: mapping.Kind, shards: Sequence[torch.Tensor], dims: mapping.AttnDims
) -> tuple[torch.Tensor, ...]:
    """All of :func:`iter_hf_from_shards` at once."""
    return tuple(iter_hf_from_shards(kind, shards, dims))


def engine_name(m: mapping.ParamMap) -> str:
    """vLLM's parameter name for ``m``: fused ``qkv_proj`` and ``gate_up_proj``, else HF's."""
    if m.kind == "qkv":
        return m.hf[0].replace(".q_proj.", ".qkv_proj.")
    if m.kind == "fc1":
        return m.hf[0].replace(".gate_proj.", ".gate_up_proj.")
    return m.hf[0]


def engine_shard(
    kind: mapping.Kind, shard: torch.Tensor, tp: int, dims: mapping.AttnDims
) -> torch.Tensor:
    """The engine's shard of one parameter from the actor's shard of the same TP rank: the HF
    pieces of the local heads/columns stacked ([q; k; v], [gate; up]); others as they are.

    Megatron's fc1 shard is [gate; up] of the local columns already, so only QKV (interleaved
    by KV group in megatron) is rewritten, from views of the shard into one new tensor."""
    if kind != "qkv":
        return shard
    out = shard.new_empty(shard.shape)
    row = 0
    for piece in mapping.qkv_split(shard, local_dims(dims, tp)):
        rows = piece.shape[0] * piece.shape[1]
        out.narrow(0, row, rows).view(piece.shape).copy_(piece)
        row += rows
    return out


def padded_vocab_shard(full: torch.Tensor, tp_rank: int, shape: torch.Size) -> torch.Tensor:
    """Rows ``[r * P, (r + 1) * P)`` of a vocabulary tensor, zero rows past its end (vLLM pads
    the vocabulary, then splits it evenly into ``P``-row shards)."""
    rows = shape[0]
    start = min(tp_rank * rows, full.shape[0])
    real = full[start : start + rows]
    out = full.new_zeros(shape)
    out[: real.shape[0]].copy_(real)
    return out


# -- the plan: parameters in HF order, cut into buckets ---------------------------------------


@dataclass(frozen=True)
class Entry:
    m: mapping.ParamMap
    owner: int  # pipeline rank holding it
    shape: torch.Size  # the actor's TP shard
    gather: bool  # readers need every TP rank's shard (else only their own)
    offset: int = 0  # in its bucket's slot, elements

    @property
    def numel(self) -> int:
        return self.shape.numel()


@dataclass
class Bucket:
    owner: int
    gather: bool
    entries: list[Entry] = field(default_factory=list)
    numel: int = 0  # per slot


def _meta_shard_shape(m: mapping.ParamMap, arch: ModelConfig, tp: int) -> torch.Size:
    """The actor's TP shard shape of ``m``, computed by the mapping itself on meta tensors."""
    dims = mapping.attn_dims(arch)
    shapes = mapping.hf_shapes(m, arch.hidden_size, arch.ffn_hidden_size, arch.vocab_size, dims)
    full = mapping.from_hf(m.kind, tuple(torch.empty(s, device="meta") for s in shapes), dims)
    return mapping.shard(m.kind, full, 0, tp, dims).shape


def plan_entries(
    arch: ModelConfig,
    tp: int,
    pp: int,
    vpp: int = 1,
    shard_shapes: Mapping[str, torch.Size] | None = None,
) -> list[Entry]:
    """Every parameter in HF order with its owner and shard shape. With ``shard_shapes`` (an
    engine's own layout) checks the engine expects exactly these parameters, and marks the ones
    whose engine shard cannot be cut from the actor's shard of the same rank (padded vocab)."""
    maps = mapping.param_maps(arch.num_layers, arch.qkv_bias, arch.tie_word_embeddings)
    out = []
    for m in maps:
        owner, _ = mapping.owner_stage(m, arch.num_layers, pp, vpp)
        shape = _meta_shard_shape(m, arch, tp)
        gather = True
        if shard_shapes is not None:
            name = engine_name(m)
            if name not in shard_shapes:
                raise KeyError(
                    f"the engine has no parameter {name!r} (it has e.g. "
                    f"{next(iter(shard_shapes), '?')!r})"
                )
            own = engine_shard(
                m.kind, torch.empty(shape, device="meta"), tp, mapping.attn_dims(arch)
            ).shape
            gather = own != shard_shapes[name]
            if gather and (m.kind != "vocab" or shard_shapes[name][1:] != own[1:]):
                raise ValueError(
                    f"{name}: the engine's shard {tuple(shard_shapes[name])} is not the "
                    f"actor's {tuple(own)} re-laid out (does the engine's TP equal the actor's?)"
                )
        out.append(Entry(m, owner, shape, gather))
    if shard_shapes is not None:
        extra = set(shard_shapes) - {engine_name(e.m) for e in out}
        if extra:
            raise KeyError(f"the actor has no parameter for engine parameters {sorted(extra)}")
    return out


def plan_buckets(entries: Sequence[Entry], budget: int, tp: int, full_slots: bool) -> list[Bucket]:
    """Consecutive entries of one owner (and one gather flag) in buckets whose staging (elements,
    all slots a reader holds) stays within ``budget``; an entry larger than that gets its own."""
    buckets: list[Bucket] = []
    for e in entries:
        width = tp if (e.gather or full_slots) else 1
        b = buckets[-1] if buckets else None
        if (
            b is None
            or (b.owner, b.gather) != (e.owner, e.gather)
            or ((b.numel + e.numel) * width > budget)
        ):
            b = Bucket(e.owner, e.gather)
            buckets.append(b)
        b.entries.append(replace(e, offset=b.numel))
        b.numel += e.numel
    return buckets


# -- the collective generator -------------------------------------------------------------------


def _needs_exchange(layout: ShardLayout, gather: bool) -> bool:
    return layout.pp > 1 or (gather and layout.tp > 1)


def _choose_transport(
    name: TransportName,
    layout: ShardLayout,
    entries: list[Entry],
    bucket_bytes: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Transport, list[Bucket]]:
    """The transport and bucket plan of this pass (the same on every member of the group)."""
    table, me = peers(layout, dtype, device)
    if len({p.dtype for p in table}) > 1:
        raise TypeError(f"parameters of the model-parallel group differ in dtype: {table}")
    elem = dtype.itemsize

    def plan(buffers: int, full_slots: bool) -> tuple[list[Bucket], int]:
        buckets = plan_buckets(entries, bucket_bytes // buffers // elem, layout.tp, full_slots)
        staged = [
            b.numel * (layout.tp if (b.gather or full_slots) else 1)
            for b in buckets
            if _needs_exchange(layout, b.gather)
        ]
        return buckets, max(staged, default=0)

    if layout.mp_size == 1:
        return LocalTransport(layout, table, me), plan(1, False)[0]
    if name in ("auto", "shm"):
        buckets, cap = plan(SharedMemoryTransport.buffers, SharedMemoryTransport.full_slots)
        why = shm_unavailable(table, 2 * cap * elem)
        if why is None:
            return SharedMemoryTransport(layout, table, me, dtype, cap), buckets
        if name == "shm":
            raise RuntimeError(f"reshard transport 'shm' is unavailable: {why}")
        logger.debug("reshard: collective transport (%s)", why)
    buckets, cap = plan(CollectiveTransport.buffers, CollectiveTransport.full_slots)
    return CollectiveTransport(layout, table, me, dtype, device, cap), buckets


@torch.no_grad()
def reshard(
    local: Mapping[str, torch.Tensor],
    arch: ModelConfig,
    layout: ShardLayout,
    *,
    vpp: int = 1,
    shard_shapes: Mapping[str, torch.Size] | None = None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    dst: int | None = None,
    transport: TransportName = "auto",
    progress: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """The resharding pass over this rank's shards ``local`` (canonical megatron names with
    global layer indices -> this rank's TP shard; see ``hf_io.global_named_parameters``).

    Yields ``(HF name, full tensor)``, or with ``shard_shapes`` ``(engine name, engine shard)``
    of this rank's TP rank. ``dst``: the global rank that reads (HF target only; None: all).
    ``progress``: a progress bar on the first reader. Collective over the model-parallel group:
    every member iterates to the end, in step.
    """
    if bucket_bytes < 1:
        raise ValueError("bucket_bytes must be >= 1")
    if dst is not None and shard_shapes is not None:
        raise ValueError("engine shards go to every rank's own engine: dst must be None")
    entries = plan_entries(arch, layout.tp, layout.pp, vpp, shard_shapes)
    owned = [e for e in entries if e.owner == layout.pp_rank]
    for e in owned:
        t = local.get(e.m.mcore)
        if t is None:
            raise KeyError(f"pipeline rank {layout.pp_rank} should hold {e.m.mcore!r}")
        if t.shape != e.shape:
            raise ValueError(f"{e.m.mcore}: shard {tuple(t.shape)}, expected {tuple(e.shape)}")
    first = local[owned[0].m.mcore]
    chosen, buckets = _choose_transport(
        transport, layout, entries, bucket_bytes, first.dtype, first.device
    )
    if dst is not None and dst not in {p.rank for p in chosen.table}:
        return  # another data-parallel replica serves dst
    reading = dst is None or dst == chosen.me.rank
    dims = mapping.attn_dims(arch)
    started, nbytes = time.perf_counter(), 0

    def pack(bucket: Bucket, flat: torch.Tensor) -> None:
        for e in bucket.entries:
            flat[e.offset : e.offset + e.numel].view(e.shape).copy_(local[e.m.mcore])

    first_reader = chosen.me.rank == (dst if dst is not None else chosen.table[0].rank)
    bar = tqdm(total=len(buckets), desc="resharding", disable=not (progress and first_reader))
    try:
        for b in buckets:
            bar.update()
            slots: Mapping[int, torch.Tensor] = {}
            if _needs_exchange(layout, b.gather):
                moved = chosen.move(Move(b.owner, b.gather, b.numel, dst), partial(pack, b))
                slots = moved or {}
            if not reading:
                continue
            staging = {s.untyped_storage().data_ptr() for s in slots.values()}
            for e in b.entries:
                own = e.owner == layout.pp_rank
                ranks = range(layout.tp) if e.gather else [layout.tp_rank]
                shards = [
                    local[e.m.mcore]
                    if own and r == layout.tp_rank
                    else slots[r][e.offset : e.offset + e.numel].view(e.shape)
                    for r in ranks
                ]
                for name, t in _convert(e, shards, dims, layout, shard_shapes):
                    if t.untyped_storage().data_ptr() in staging:
                        t = t.clone()  # staging is overwritten by the next bucket
                    nbytes += t.numel() * t.element_size()
                    yield name, t
                    del t  # hold nothing while the next tensor is built
    finally:
        bar.close()
        chosen.close()
    if reading:
        dt = time.perf_counter() - started
        logger.log(
            logging.INFO if first_reader else logging.DEBUG,
            "resharded %.3f GB in %.2f s (%.2f GB/s; %d buckets, %s transport, %s)",
            nbytes / 1e9,
            dt,
            nbytes / 1e9 / max(dt, 1e-9),
            len(buckets),
            chosen.name,
            "engine shards" if shard_shapes is not None else "HF tensors",
        )


def _convert(
    e: Entry,
    shards: list[torch.Tensor],
    dims: mapping.AttnDims,
    layout: ShardLayout,
    shard_shapes: Mapping[str, torch.Size] | None,
) -> Iterator[tuple[str, torch.Tensor]]:
    if shard_shapes is None:
        # Not zip(): it keeps its last tuple (and tensor) alive until the next one exists.
        names = iter(e.m.hf)
        for t in iter_hf_from_shards(e.m.kind, shards, dims):
            yield next(names), t
            del t
        return
    name = engine_name(e.m)
    if e.gather:  # a padded vocabulary: re-split the full tensor the engine's way
        (full,) = hf_from_shards(e.m.kind, shards, dims)
        yield name, padded_vocab_shard(full, layout.tp_rank, shard_shapes[name])
    else:
        yield name, engine_shard(e.m.kind, shards[0], layout.tp, dims)


# -- megatron-core models ----------------------------------------------------------------------


def megatron_layout() -> tuple[ShardLayout, int]:
    """This rank's layout from megatron's parallel state, and the virtual pipeline size."""
    from megatron.core import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size()
    pp = ps.get_pipeline_model_parallel_world_size()
    layout = ShardLayout(
        tp=tp,
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp=pp,
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        tp_group=ps.get_tensor_model_parallel_group() if tp > 1 else None,
        pp_group=ps.get_pipeline_model_parallel_group() if pp > 1 else None,
        mp_group=ps.get_model_parallel_group() if tp * pp > 1 else None,
    )
    return layout, ps.get_virtual_pipeline_model_parallel_world_size() or 1


def _local_shards(chunks: Sequence[torch.nn.Module], arch: ModelConfig) -> dict[str, Any]:
    from megatron_azr.models.hf_io import global_named_parameters

    return {name: p.detach() for name, p in global_named_parameters(list(chunks), arch)}


def hf_tensors(
    chunks: Sequence[torch.nn.Module],
    arch: ModelConfig,
    *,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    dst: int | None = None,
    transport: TransportName = "auto",
    progress: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(HF name, full tensor)`` of a megatron model (this rank's chunks), in HF order, on every
    rank or only on global rank ``dst``. Collective: every rank iterates to the end."""
    layout, vpp = megatron_layout()
    return reshard(
        _local_shards(chunks, arch),
        arch,
        layout,
        vpp=vpp,
        bucket_bytes=bucket_bytes,
        dst=dst,
        transport=transport,
        progress=progress,
    )


def engine_shards(
    chunks: Sequence[torch.nn.Module],
    arch: ModelConfig,
    shard_shapes: Mapping[str, torch.Size],
    *,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    transport: TransportName = "auto",
) -> Iterator[tuple[str, torch.Tensor]]:
    """This rank's engine shards (``shard_shapes``: the engine's ``weight_shard_shapes()``) of a
    megatron model whose TP equals the engine's. Collective: every rank iterates to the end."""
    layout, vpp = megatron_layout()
    return reshard(
        _local_shards(chunks, arch),
        arch,
        layout,
        vpp=vpp,
        shard_shapes=shard_shapes,
        bucket_bytes=bucket_bytes,
        transport=transport,
    )


def push_weights(
    engine: Any,
    chunks: Sequence[torch.nn.Module],
    arch: ModelConfig,
    cfg: RolloutConfig,
    *,
    dst: int | None = None,
) -> None:
    """Stream the actor's current weights into the rollout ``engine`` (collective: every rank
    calls it). ``dst=None``: every rank hosts an engine; else only global rank ``dst`` does and
    the others pass ``engine=None``. A colocated vLLM engine whose TP equals the actor's gets
    its own shards (no TP gather), others get HF tensors."""
    import torch.distributed as dist

    layout, _ = megatron_layout()
    bucket = cfg.update_bucket_mb << 20
    rank = dist.get_rank() if dist.is_initialized() else 0
    if (engine is None) != (dst is not None and dst != rank):
        raise ValueError(f"rank {rank}: pass an engine exactly on the ranks that read (dst={dst})")
    if dst is None and cfg.engine == "vllm" and cfg.tensor_parallel_size == layout.tp:
        # vLLM's external launcher makes global rank % tp the engine's TP rank.
        if rank % layout.tp != layout.tp_rank:
            raise RuntimeError(
                f"rank {rank} is actor TP rank {layout.tp_rank} but engine TP rank "
                f"{rank % layout.tp}: megatron's rank order must put TP innermost"
            )
        shards = engine_shards(
            chunks,
            arch,
            engine.weight_shard_shapes(),
            bucket_bytes=bucket,
            transport=cfg.reshard_transport,
        )
        engine.update_weights(shards, layout="shards")
        return
    tensors = hf_tensors(
        chunks, arch, bucket_bytes=bucket, dst=dst, transport=cfg.reshard_transport
    )
    if engine is None:
        for _ in tensors:
            pass
    else:
        engine.update_weights(tensors)
