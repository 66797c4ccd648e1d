"""Run packed micro-batches through megatron's forward-backward schedule.

``get_forward_backward_func`` picks no-pipelining, 1F1B or interleaved 1F1B from the parallel
state. This module supplies the forward step: each micro-batch is one packed row of sequences
described to the attention by THD ``PackedSeqParams`` (``cu_seqlens``), so attention and RoPE
positions stay within each sequence, for both layer specs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_azr.train.batch import MicroBatch

# (micro-batch, logits [1, S, V/tp]) -> (token-summed loss, token count, payload)
LossFn = Callable[[MicroBatch, torch.Tensor], tuple[torch.Tensor, torch.Tensor, Any]]


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

    Returns the payloads of ``loss_fn`` in micro-batch order on the last pipeline stage, an
    empty list elsewhere. Gradients accumulate in the DDP buffers; megatron's
    ``finalize_model_grads`` (set on the config) syncs and scales them at the end.
    """

    # On the device once: every model chunk (virtual pipeline stage) reads each micro-batch.
    inputs = [(mb.to(device), _packed_params(mb, device)) for mb in micro_batches]

    def forward_step(data_iterator: Any, model: torch.nn.Module) -> tuple[torch.Tensor, Any]:
        mb, packed = next(data_iterator)
        logits = model(mb.tokens, mb.position_ids, None, packed_seq_params=packed)
        return logits, partial(loss_fn, mb)

    max_len = max(mb.num_tokens for mb in micro_batches)
    fwd_bwd = get_forward_backward_func()
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
