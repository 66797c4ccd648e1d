"""Typed config of the training engine: the parallel layout and the actor (optimizer, loss).

Defaults reproduce the AZR paper's actor (spec §8): AdamW, constant lr 1e-6, betas
(0.9, 0.999), weight decay 0.01, grad-norm clip 1.0, PPO clip 0.2, entropy bonus 0.001, no KL,
each (task, role) sub-batch weighing the same in the loss, bf16. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Precision = Literal["fp32", "bf16"]
# Transformer Engine FP8 recipes: "delayed" = DelayedScaling (amax history), "tensorwise" =
# Float8CurrentScaling (per-tensor current scaling, Hopper+), "mxfp8" = MXFP8BlockScaling
# (Blackwell+). "none" trains in `precision` only.
FP8Recipe = Literal["none", "delayed", "tensorwise", "mxfp8"]
LossAggregation = Literal["subbatch", "token"]


@dataclass
class ParallelConfig:
    """Parallel layout; the data-parallel size is implied: world size / (tp * pp)."""

    tp: int = 1
    pp: int = 1
    # Virtual pipeline stages per pipeline rank (interleaved 1F1B); 1 = plain 1F1B.
    vpp: int = 1
    # Shard activations along the sequence between TP regions (ignored when tp == 1).
    sequence_parallel: bool = False
    # Shard optimizer state (and the fp32 master weights) across data-parallel ranks.
    distributed_optimizer: bool = False

    def __post_init__(self) -> None:
        if min(self.tp, self.pp, self.vpp) < 1:
            raise ValueError("tp, pp and vpp must be >= 1")
        if self.vpp > 1 and self.pp == 1:
            raise ValueError("vpp > 1 (interleaved schedule) needs pp > 1")


@dataclass
class ActorConfig:
    # Optimizer (AdamW through megatron-core's get_megatron_optimizer).
    lr: float = 1e-6
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # Policy loss: PPO-clip surrogate on token log-probs.
    clip_ratio: float = 0.2
    # Upper clip (DAPO's clip-higher, 0.28 on the original's master branch); None = clip_ratio.
    clip_ratio_high: float | None = None
    entropy_coeff: float = 0.001
    # KL penalty to a reference policy (k3 estimator); needs reference log-probs when > 0.
    kl_coef: float = 0.0
    # Aggregation of the per-token loss (entropy and KL included) over the global batch:
    # "subbatch" = mean over the (task, role) sub-batches of the token mean inside each (the
    # original: each of the six sub-batches weighs 1/6), "token" = one token mean over all.
    loss_aggregation: LossAggregation = "subbatch"
    # Dynamic batching: responses are packed into micro-batches of at most this many tokens.
    micro_batch_tokens: int = 8192
    precision: Precision = "bf16"
    fp8: FP8Recipe = "none"
    fp8_amax_history_len: int = 1024  # delayed scaling only
    # "auto": Transformer Engine layers when CUDA and TE are present, megatron's local spec else.
    transformer_impl: Literal["auto", "local", "transformer_engine"] = "auto"
    # Activation recomputation: "full" recomputes each layer in backward (long responses).
    recompute: Literal["none", "full"] = "none"
    # Per-token log-prob/entropy over the vocab shard: "triton" = fused kernels (no fp32 copies
    # of the logits), "chunked" = torch on blocks of rows (the logits and their gradient are the
    # only full-size tensors), "torch" = the reference (several fp32 copies), "auto" = triton on
    # CUDA when it imports, chunked otherwise.
    logprob_kernel: Literal["auto", "torch", "chunked", "triton"] = "auto"
    # Distributed-optimizer state in checkpoints: "dp_reshardable" = each rank writes its own
    # shard (host memory = what it writes; loads at the same TP/PP, any DP); "fully_reshardable"
    # = loads at any layout, but saving gathers DP x a rank's optimizer bytes on every rank.
    # `azr convert reshardable` turns the first into the second (train/checkpoint.py).
    checkpoint_format: Literal["dp_reshardable", "fully_reshardable"] = "dp_reshardable"
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError("lr and grad_clip must be > 0")
        if not 0 < self.clip_ratio < 1:
            raise ValueError("clip_ratio must be in (0, 1)")
        if self.clip_ratio_high is not None and self.clip_ratio_high <= 0:
            raise ValueError("clip_ratio_high must be > 0")
        if self.entropy_coeff < 0 or self.kl_coef < 0:
            raise ValueError("entropy_coeff and kl_coef must be >= 0")
        if self.micro_batch_tokens < 16:
            raise ValueError("micro_batch_tokens must be >= 16")
        if self.fp8 != "none" and self.transformer_impl == "local":
            raise ValueError("fp8 needs transformer_impl 'transformer_engine' (or 'auto' on GPU)")
