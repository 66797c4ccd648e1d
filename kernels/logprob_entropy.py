"""Local pieces of vocab-parallel token log-prob and entropy: a torch reference and a Triton
backend of identical semantics.

Each tensor-parallel rank holds logits ``z`` [N, V_local] for its slice of the vocabulary. One
pass over a row gives its statistics relative to the local maximum ``m``::

    s = sum_j exp(z_j - m)                  (sum_exp)
    w = sum_j exp(z_j - m) * (z_j - m)      (sum_exp_z)

Under the global maximum ``M`` (one MAX all-reduce), a rank's share of the global sums is
``exp(m - M) * s`` and ``exp(m - M) * (w + (m - M) * s)``; one SUM all-reduce of those and of the
shifted target logit gives, with ``S`` the global sum of ``exp(z - M)``::

    log p(t) = (z_t - M) - log S
    H        = log S - sum_j exp(z_j - M) (z_j - M) / S

The gradient is local again, row by row, from ``M``, ``log S`` and ``H`` (``log p = z - M -
log S``):  ``g_logprob * (onehot(t) - p) - g_entropy * p * (log p + H)``.

Everything is computed in ``promote_types(logits.dtype, float32)`` (bf16 logits are read as
fp32); the gradient is returned in the logits' dtype. The torch backend materialises that
precision over the whole shard; the Triton kernels stream each row once per pass and keep only
per-row scalars, so their only full-shard allocation is the gradient itself.
"""

from __future__ import annotations

import functools
import os
from typing import Literal, NamedTuple

import torch

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[Backend, ...] = ("auto", "torch", "triton")
# Logit dtypes the kernels accept (they accumulate in fp32); fp64 stays on the torch backend.
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class RowStats(NamedTuple):
    """Statistics of each row of one vocabulary shard, relative to the row's own maximum."""

    max: torch.Tensor  # m = max_j z_j
    sum_exp: torch.Tensor  # s = sum_j exp(z_j - m)
    sum_exp_z: torch.Tensor  # w = sum_j exp(z_j - m) * (z_j - m)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, logits: torch.Tensor) -> Literal["torch", "triton"]:
    """``auto``: Triton for CUDA logits of a kernel dtype when triton imports, torch otherwise.
    ``triton`` insists, with a clear error when it cannot run (CPU tensors run only under
    ``TRITON_INTERPRET=1``, Triton's interpreter)."""
    if backend == "torch":
        return "torch"
    if backend == "auto":
        ok = logits.is_cuda and logits.dtype in KERNEL_DTYPES and triton_available()
        return "triton" if ok else "torch"
    if backend != "triton":
        raise ValueError(f"unknown log-prob backend {backend!r}; choose one of {BACKENDS}")
    if not triton_available():
        raise ImportError(
            "log-prob backend 'triton' needs the triton package (shipped with CUDA builds of "
            "torch; otherwise `pip install triton`), or use backend 'torch'"
        )
    if logits.dtype not in KERNEL_DTYPES:
        raise ValueError(f"the Triton log-prob kernels take {KERNEL_DTYPES}, not {logits.dtype}")
    if not logits.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "the Triton log-prob kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)"
        )
    return "triton"


# -- forward: per-row statistics ----------------------------------------------------------------


def row_stats_torch(logits: torch.Tensor) -> RowStats:
    z = logits.to(compute_dtype(logits.dtype))
    m = z.amax(-1)
    zs = z - m[:, None]
    e = zs.exp()
    return RowStats(m, e.sum(-1), (e * zs).sum(-1))


def row_stats(logits: torch.Tensor, backend: str = "auto") -> RowStats:
    """:class:`RowStats` of every row of ``logits`` [N, V_local]."""
    if resolve_backend(backend, logits) == "torch":
        return row_stats_torch(logits)
    from kernels import logprob_entropy_triton

    return logprob_entropy_triton.row_stats(logits)


def shard_sums(
    stats: RowStats, target_logit: torch.Tensor, in_range: torch.Tensor, row_max: torch.Tensor
) -> torch.Tensor:
    """This shard's terms of the global sums [3, N] under the global maximum ``row_max``:
    ``sum exp(z - M)``, ``sum exp(z - M) (z - M)`` and ``z_t - M`` (0 where the target lies in
    another shard). Summed over shards they give :func:`logprob_entropy_from_sums`."""
    delta = stats.max - row_max
    scale = delta.exp()
    return torch.stack(
        [
            stats.sum_exp * scale,
            (stats.sum_exp_z + delta * stats.sum_exp) * scale,
            torch.where(in_range, target_logit - row_max, 0),
        ]
    )


def logprob_entropy_from_sums(
    sums: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p(target), entropy, log S) from the global sums of :func:`shard_sums`."""
    sum_exp, sum_exp_z, target = sums.unbind(0)
    log_norm = sum_exp.log()
    return target - log_norm, log_norm - sum_exp_z / sum_exp, log_norm


# -- backward: gradient of g_logprob * log p(t) + g_entropy * H w.r.t. this shard's logits ------


def logits_grad_torch(
    logits: torch.Tensor,
    target: torch.Tensor,
    row_max: torch.Tensor,
    log_norm: torch.Tensor,
    entropy: torch.Tensor,
    g_logprob: torch.Tensor,
    g_entropy: torch.Tensor,
) -> torch.Tensor:
    z = logits.to(compute_dtype(logits.dtype))
    g_logprob, g_entropy = g_logprob.to(z.dtype), g_entropy.to(z.dtype)
    log_p = (z - row_max[:, None]) - log_norm[:, None]
    p = log_p.exp()
    grad = -p * (g_logprob[:, None] + g_entropy[:, None] * (log_p + entropy[:, None]))
    hit = target >= 0
    grad.scatter_add_(1, target.clamp(min=0)[:, None], (g_logprob * hit)[:, None])
    return grad.to(logits.dtype)


def logits_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    row_max: torch.Tensor,
    log_norm: torch.Tensor,
    entropy: torch.Tensor,
    g_logprob: torch.Tensor,
    g_entropy: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    """d(g_logprob * log p(t) + g_entropy * H) / d logits, in the logits' dtype.

    ``target`` [N] is the target's index in this shard, -1 where it lies in another one;
    ``row_max``, ``log_norm`` and ``entropy`` are the global ``M``, ``log S`` and ``H``.
    """
    args = (logits, target, row_max, log_norm, entropy, g_logprob, g_entropy)
    if resolve_backend(backend, logits) == "torch":
        return logits_grad_torch(*args)
    from kernels import logprob_entropy_triton

    return logprob_entropy_triton.logits_grad(*args)
