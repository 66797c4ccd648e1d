"""The policy loss: PPO-clip surrogate on token log-probs, entropy bonus, optional KL.

Per response token ``t`` with importance ratio ``r = exp(logp - old_logp)`` and advantage ``A``:

    pg_t   = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))
    loss_t = pg_t - entropy_coeff * H_t + kl_coef * KL_t        (KL_t: k3 estimator vs reference)

Aggregation is the token mean over the *global* batch (all micro-batches, all data-parallel
ranks): the loss function returns token sums and megatron divides the gradients by the global
token count (``calculate_per_token_loss``). The result therefore does not depend on how the
batch is split across micro-batches or ranks, which is what makes layouts comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Order of the per-micro-batch sums reported for metrics.
METRICS = ("loss", "pg_loss", "entropy", "clip_frac", "kl", "ratio", "tokens")


@dataclass(frozen=True)
class PolicyLossConfig:
    clip_low: float = 0.2
    clip_high: float = 0.2
    entropy_coeff: float = 0.001
    kl_coef: float = 0.0


def policy_loss_sums(
    logprob: torch.Tensor,
    entropy: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: PolicyLossConfig,
    ref_logprob: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of per-token loss over masked tokens, detached sums in :data:`METRICS` order)."""
    log_ratio = logprob - old_logprob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    pg = torch.maximum(unclipped, clipped)
    loss = pg - cfg.entropy_coeff * entropy
    kl = torch.zeros_like(logprob)
    if cfg.kl_coef > 0:
        if ref_logprob is None:
            raise ValueError("kl_coef > 0 needs reference log-probs")
        # k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 >= 0, low variance.
        d = ref_logprob - logprob
        kl = torch.exp(d) - d - 1.0
        loss = loss + cfg.kl_coef * kl
    total = (loss * mask).sum()
    with torch.no_grad():
        sums = torch.stack(
            [
                total.detach(),
                (pg * mask).sum(),
                (entropy * mask).sum(),
                ((clipped > unclipped).float() * mask).sum(),
                (kl * mask).sum(),
                (ratio * mask).sum(),
                mask.sum(),
            ]
        )
    return total, sums
