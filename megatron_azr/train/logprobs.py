"""Token log-probs and entropy from vocab-parallel logits, without gathering the vocabulary.

Each TP rank holds logits for its slice of the vocabulary. Three all-reduces of per-token
scalars (max, sum of exp, and the target logit / expected logit) give exact global results;
the backward pass is local. For token logits ``z`` (global softmax ``p``, target ``t``, entropy
``H = -sum p log p``):

    d log p_t / dz = onehot(t) - p
    d H / dz       = -p * (log p + H)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32
        zmax = z.max(dim=-1).values
        _all_reduce(zmax, dist.ReduceOp.MAX, group)
        z = z - zmax[:, None]
        sum_exp = z.exp().sum(-1)
        _all_reduce(sum_exp, dist.ReduceOp.SUM, group)
        lse = sum_exp.log()
        p = (z - lse[:, None]).exp()

        local = target - vocab_start
        in_range = (local >= 0) & (local < z.shape[-1])
        idx = local.clamp(0, z.shape[-1] - 1)
        # Packed into one tensor: one all-reduce for the target logit and E_p[z].
        red = torch.stack([z.gather(1, idx[:, None]).squeeze(1) * in_range, (p * z).sum(-1)])
        _all_reduce(red, dist.ReduceOp.SUM, group)
        logprob = red[0] - lse
        entropy = lse - red[1]

        ctx.save_for_backward(z, lse, entropy, idx, in_range)
        ctx.in_dtype = logits.dtype
        return logprob, entropy

    @staticmethod
    def backward(
        ctx: Any, g_logprob: torch.Tensor, g_entropy: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, None, None]:
        z, lse, entropy, idx, in_range = ctx.saved_tensors
        log_p = z - lse[:, None]
        p = log_p.exp()
        grad = -p * (g_logprob[:, None] + g_entropy[:, None] * (log_p + entropy[:, None]))
        grad.scatter_add_(1, idx[:, None], (g_logprob * in_range)[:, None])
        return grad.to(ctx.in_dtype), None, None, None


def logprob_and_entropy(
    logits: torch.Tensor, target: torch.Tensor, vocab_start: int = 0, group: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p(target)`` and the entropy of every row of ``logits`` [N, V_local].

    ``vocab_start`` is the global index of this rank's first vocabulary entry and ``group`` the
    tensor-parallel process group (None when the vocabulary is not split).
    """
    lp, ent = _LogProbEntropy.apply(logits, target, vocab_start, group)
    return lp, ent


def reference_logprob_and_entropy(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch over the full vocabulary: the semantics :func:`logprob_and_entropy` has."""
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    return logp.gather(1, target[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)
