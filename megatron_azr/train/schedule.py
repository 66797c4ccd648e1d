"""Run packed micro-batches through megatron's forward-backward schedule.

``get_forward_backward_func`` picks no-pipelining, 1F1B or interleaved 1F1B from the parallel
state. This module supplies the forward step: each micro-batch is one packed row of sequences
described to the attention by THD ``PackedSeqParams`` (``cu_seqlens``), so attention and RoPE
positions stay within each sequence, for both layer specs.

The output layer computes logits only for the rows the loss reads (``MicroBatch.response_pos``):
a forward pre-hook selects those hidden states, so the [tokens, vocab / tp] logits of the prompt
positions are never materialised (about half the logits of a self-play batch, forward and
backward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from megatron.core import parallel_state as ps
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import (
    gather_from_sequence_parallel_region,
    scatter_to_sequence_parallel_region,
)

from megatron_azr.train.batch import MicroBatch

# (micro-batch, logits [1, R, V/tp] of its rows ``response_pos``) -> (loss sum, tokens, payload)
LossFn = Callable[[MicroBatch, torch.Tensor], tuple[torch.Tensor, torch.Tensor, Any]]


class _OutputRows:
    """Forward pre-hook of the output layer: keep the hidden states of ``rows`` only.

    Under sequence parallelism the layer takes a sequence shard and all-gathers it itself, so the
    rows are picked from the gathered states (padded to a multiple of the TP size) and handed back
    as a shard. Backward: the layer's reduce-scatter and the scatter's all-gather leave every rank
    the complete gradient of the picked rows, so the gather's backward only splits
    (``tensor_parallel_output_grad=False``).
    """

    def __init__(self) -> None:
        self.rows = torch.empty(0, dtype=torch.long)  # set by each forward step

    def __call__(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hidden, rows = args[0], self.rows
        if not module.sequence_parallel:
            return (hidden.index_select(0, rows), *args[1:]), kwargs
        tp = ps.get_tensor_model_parallel_world_size()
        rows = torch.cat([rows, rows.new_zeros(-len(rows) % tp)])
        full = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
        picked = scatter_to_sequence_parallel_region(full.index_select(0, rows))
        return (picked, *args[1:]), kwargs

    @contextlib.contextmanager
    def attached(self, chunks: Sequence[torch.nn.Module]) -> Iterator[None]:
        """Hook the output layer of every chunk that has one (the last pipeline stage's)."""
        handles = [
            layer.register_forward_pre_hook(self, with_kwargs=True)
            for layer in _output_layers(chunks)
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def _output_layers(chunks: Sequence[torch.nn.Module]) -> Iterator[torch.nn.Module]:
    for chunk in chunks:
        model: Any = chunk
        while hasattr(model, "module"):  # megatron DDP
            model = model.module
        if getattr(model, "post_process", False):
            yield model.output_layer


def _packed_params(mb: MicroBatch, device: torch.device) -> PackedSeqParams:
    cu = mb.cu_seqlens().to(device)
    max_len = max(mb.seq_lens)
    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu,
        cu_seqlens_kv=cu,
        max_seqlen_q=max_len,
        max_seqlen_kv=max_len,
    )


def run_schedule(
    chunks: Sequence[torch.nn.Module],
    micro_batches: Sequence[MicroBatch],
    loss_fn: LossFn,
    *,
    forward_only: bool,
    device: torch.device,
) -> list[Any]:
    """Forward (and backward unless ``forward_only``) over ``micro_batches``.

    ``loss_fn`` receives the logits of the micro-batch's ``response_pos`` rows, in that order.
    Returns the payloads of ``loss_fn`` in micro-batch order on the last pipeline stage, an
    empty list elsewhere. Gradients accumulate in the DDP buffers; megatron's
    ``finalize_model_grads`` (set on the config) syncs and scales them at the end.
    """

    # On the device once: every model chunk (virtual pipeline stage) reads each micro-batch.
    inputs = [(mb.to(device), _packed_params(mb, device)) for mb in micro_batches]
    selected = _OutputRows()

    def forward_step(data_iterator: Any, model: torch.nn.Module) -> tuple[torch.Tensor, Any]:
        mb, packed = next(data_iterator)
        selected.rows = mb.response_pos
        logits = model(mb.tokens, mb.position_ids, None, packed_seq_params=packed)
        n = mb.response_pos.numel()
        return logits, lambda out: loss_fn(mb, out[:, :n])

    max_len = max(mb.num_tokens for mb in micro_batches)
    fwd_bwd = get_forward_backward_func()
    with selected.attached(chunks):
        return list(
            fwd_bwd(
                forward_step_func=forward_step,
                data_iterator=[iter(inputs) for _ in chunks],
                model=list(chunks),
                num_microbatches=len(micro_batches),
                seq_length=max_len,
                micro_batch_size=1,
                forward_only=forward_only,
            )
        )
