"""Token log-probs and entropy from vocab-parallel logits, without gathering the vocabulary.

Each TP rank holds logits for its slice of the vocabulary. Each rank reduces its rows to a few
per-token statistics (:mod:`kernels.logprob_entropy`, torch or a fused Triton kernel); two
all-reduces of per-token scalars (the max, then the rescaled sums packed in one tensor) give
exact global results, and the backward pass is local. For token logits ``z`` (global softmax
``p``, target ``t``, entropy ``H = -sum p log p``):

    d log p_t / dz = onehot(t) - p
    d H / dz       = -p * (log p + H)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from kernels.logprob_entropy import (
    Backend,
    logits_grad,
    logprob_entropy_from_sums,
    resolve_backend,
    row_stats,
    shard_sums,
)


def _all_reduce(t: torch.Tensor, op: Any, group: Any) -> None:
    if group is not None:
        dist.all_reduce(t, op=op, group=group)


class _LogProbEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        target: torch.Tensor,
        vocab_start: int,
        group: Any,
        backend: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        backend = resolve_backend(backend, logits)
        stats = row_stats(logits, backend)
        row_max = stats.max.clone()
        _all_reduce(row_max, dist.ReduceOp.MAX, group)

        local = target - vocab_start
        in_range = (local >= 0) & (local < logits.shape[-1])
        idx = local.clamp(0, logits.shape[-1] - 1)
        target_logit = logits.gather(1, idx[:, None]).squeeze(1).to(row_max.dtype)
        # One all-reduce for sum exp, sum exp * z and the target logit.
        sums = shard_sums(stats, target_logit, in_range, row_max)
        _all_reduce(sums, dist.ReduceOp.SUM, group)
        logprob, entropy, log_norm = logprob_entropy_from_sums(sums)

        ctx.save_for_backward(logits, torch.where(in_range, local, -1), row_max, log_norm, entropy)
        ctx.backend = backend
        return logprob, entropy

    @staticmethod
    def backward(
        ctx: Any, g_logprob: torch.Tensor, g_entropy: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, None, None, None]:
        logits, target, row_max, log_norm, entropy = ctx.saved_tensors
        grad = logits_grad(
            logits, target, row_max, log_norm, entropy, g_logprob, g_entropy, ctx.backend
        )
        return grad, None, None, None, None


def logprob_and_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    vocab_start: int = 0,
    group: Any = None,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p(target)`` and the entropy of every row of ``logits`` [N, V_local].

    ``vocab_start`` is the global index of this rank's first vocabulary entry, ``group`` the
    tensor-parallel process group (None when the vocabulary is not split) and ``backend`` the
    implementation of the per-row work (see :func:`kernels.logprob_entropy.resolve_backend`).
    """
    lp, ent = _LogProbEntropy.apply(logits, target, vocab_start, group, backend)
    return lp, ent


def reference_logprob_and_entropy(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch over the full vocabulary: the semantics :func:`logprob_and_entropy` has."""
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    return logp.gather(1, target[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)
