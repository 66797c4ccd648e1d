"""The policy loss: PPO-clip surrogate on token log-probs, entropy bonus, optional KL.

Per response token ``t`` with importance ratio ``r = exp(logp - old_logp)`` and advantage ``A``:

    pg_t   = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))
    loss_t = pg_t - entropy_coeff * H_t + kl_coef * KL_t        (KL_t: k3 estimator vs reference)

Aggregation (``actor.loss_aggregation``) over the *global* batch (all micro-batches, all
data-parallel ranks), with ``T`` its response tokens:

- ``subbatch`` (default): the mean over the non-empty (task type, role) sub-batches of the token
  mean inside each, ``1/K sum_g 1/N_g sum_{t in g} loss_t``: each of AZR's six sub-batches
  weighs the same, however long its responses. The original (veRL) processed each sub-batch in
  its own micro-batches, token means inside them, averaged (spec §7/§8).
- ``token``: one token mean, ``1/T sum_t loss_t``; long responses dominate.

Both are ``1/T sum_t w_t loss_t`` with a per-token weight ``w_t`` (:func:`token_weights`: 1, or
``T / (K N_g)``) computed from the global sample list. The loss function returns weighted token
sums and megatron divides the gradients by the global token count ``T``
(``calculate_per_token_loss``). The result therefore does not depend on how the batch is split
across micro-batches or ranks, which is what makes layouts comparable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from megatron_azr.train.config import LossAggregation

# Order of the per-micro-batch sums reported for metrics: weighted like the loss, except the
# plain token count.
METRICS = ("loss", "pg_loss", "entropy", "clip_frac", "kl", "ratio", "tokens")


@dataclass(frozen=True)
class PolicyLossConfig:
    clip_low: float = 0.2
    clip_high: float = 0.2
    entropy_coeff: float = 0.001
    kl_coef: float = 0.0


def token_weights(
    groups: Sequence[Hashable], lengths: Sequence[int], mode: LossAggregation
) -> list[float]:
    """The weight ``w`` of each sample's response tokens: ``groups[i]`` is sample ``i``'s
    sub-batch (task type, role), ``lengths[i]`` its response length. The weights of all tokens
    sum to the token count ``T``."""
    if mode == "token":
        return [1.0] * len(lengths)
    if mode != "subbatch":
        raise ValueError(f"unknown loss aggregation {mode!r}; choose 'subbatch' or 'token'")
    tokens: Counter[Hashable] = Counter()
    for g, n in zip(groups, lengths, strict=True):
        tokens[g] += n
    total = sum(tokens.values())
    nonempty = sum(1 for n in tokens.values() if n > 0)
    return [total / (nonempty * tokens[g]) if tokens[g] else 0.0 for g in groups]


def policy_loss_sums(
    logprob: torch.Tensor,
    entropy: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    weight: torch.Tensor,
    cfg: PolicyLossConfig,
    ref_logprob: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of per-token loss times ``weight``, detached sums in :data:`METRICS` order)."""
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
    total = (loss * weight).sum()
    with torch.no_grad():
        sums = torch.stack(
            [
                total.detach(),
                (pg * weight).sum(),
                (entropy * weight).sum(),
                ((clipped > unclipped).float() * weight).sum(),
                (kl * weight).sum(),
                (ratio * weight).sum(),
                torch.tensor(float(weight.numel()), dtype=weight.dtype, device=weight.device),
            ]
        )
    return total, sums
