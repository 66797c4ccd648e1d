"""Shared by the kernel tests: the full-vocabulary float64 reference (forward and autograd
backward) and a tensor-parallel split simulated in one process."""

from __future__ import annotations

import torch

from kernels.logprob_entropy import (
    logits_grad,
    logprob_entropy_from_sums,
    row_stats,
    shard_sums,
)
from megatron_azr.train.logprobs import reference_logprob_and_entropy


def make_case(n: int, v: int, dtype: torch.dtype, scale: float = 3.0, offset: float = 0.0, seed=0):
    """Logits [n, v], targets anywhere in the vocabulary, upstream grads of both outputs."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, v, generator=g) * scale + offset).to(dtype)
    target = torch.randint(0, v, (n,), generator=g)
    g_lp, g_ent = torch.randn(2, n, generator=g)
    return logits, target, g_lp, g_ent


def reference(logits, target, g_lp, g_ent):
    """(log-prob, entropy, d(g_lp . lp + g_ent . H)/dlogits) over the full vocabulary, float64."""
    z = logits.detach().double().requires_grad_(True)
    lp, ent = reference_logprob_and_entropy(z, target)
    (grad,) = torch.autograd.grad((lp * g_lp.double() + ent * g_ent.double()).sum(), z)
    return lp.detach(), ent.detach(), grad


def sharded(logits, target, shards: int, backend: str, g_lp, g_ent):
    """The vocabulary split into ``shards`` contiguous (ragged) slices, each reduced by
    ``backend``, the slices' terms combined as the TP all-reduces do (max, then sum), and each
    slice's gradient computed locally: (log-prob, entropy, gradient over the full vocabulary)."""
    parts = torch.tensor_split(logits, shards, dim=1)
    starts = [0]
    for p in parts[:-1]:
        starts.append(starts[-1] + p.shape[1])
    stats = [row_stats(p, backend) for p in parts]
    row_max = torch.stack([s.max for s in stats]).amax(0)
    sums = torch.zeros(3, logits.shape[0], dtype=row_max.dtype, device=logits.device)
    local_targets = []
    for part, start, st in zip(parts, starts, stats, strict=True):
        local = target - start
        in_range = (local >= 0) & (local < part.shape[1])
        t_logit = part.gather(1, local.clamp(0, part.shape[1] - 1)[:, None]).squeeze(1)
        sums += shard_sums(st, t_logit.to(row_max.dtype), in_range, row_max)
        local_targets.append(torch.where(in_range, local, -1))
    lp, ent, log_norm = logprob_entropy_from_sums(sums)
    grads = [
        logits_grad(p, t, row_max, log_norm, ent, g_lp, g_ent, backend)
        for p, t in zip(parts, local_targets, strict=True)
    ]
    return lp, ent, torch.cat(grads, 1)
