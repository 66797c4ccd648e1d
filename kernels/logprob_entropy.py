"""Local pieces of vocab-parallel token log-prob and entropy: a torch reference, the reference's
operations on blocks of rows, and a Triton backend, all of identical semantics.

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
fp32); the gradient is returned in the logits' dtype. Backends:

- ``torch``: the reference; materialises that precision over the whole shard, several times
  (8k tokens x 152k fp32 logits = 5 GB per copy).
- ``chunked``: the reference's operations, in the same order, on one block of rows at a time
  (:data:`CHUNK_ELEMENTS` logits) in reused scratch buffers, the gradient written block by block
  into one buffer: the logits and their gradient are the only full-shard tensors. What ``auto``
  runs off CUDA.
- ``triton``: fused kernels that stream each row once per pass and keep only per-row scalars,
  so their only full-shard allocation is the gradient itself.
"""

from __future__ import annotations

import functools
import os
from typing import Literal, NamedTuple

import torch

Backend = Literal["auto", "torch", "chunked", "triton"]
Resolved = Literal["torch", "chunked", "triton"]
BACKENDS: tuple[Backend, ...] = ("auto", "torch", "chunked", "triton")
# Logit dtypes the kernels accept (they accumulate in fp32); fp64 stays on the torch backend.
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Logits per block of the chunked backend: 4M = 16 MiB per fp32 scratch buffer (27 rows of a 152k
# vocabulary; two or three buffers); large enough that the per-block overhead is noise.
CHUNK_ELEMENTS = 1 << 22


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


def resolve_backend(backend: str, logits: torch.Tensor) -> Resolved:
    """``auto``: Triton for CUDA logits of a kernel dtype when triton imports, chunked torch
    otherwise. ``triton`` insists, with a clear error when it cannot run (CPU tensors run only
    under ``TRITON_INTERPRET=1``, Triton's interpreter)."""
    if backend == "torch":
        return "torch"
    if backend == "chunked":
        return "chunked"
    if backend == "auto":
        ok = logits.is_cuda and logits.dtype in KERNEL_DTYPES and triton_available()
        return "triton" if ok else "chunked"
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


def row_blocks(logits: torch.Tensor) -> list[slice]:
    """Consecutive row ranges of ``logits`` [N, V] holding about :data:`CHUNK_ELEMENTS` each."""
    n, v = logits.shape
    rows = max(1, CHUNK_ELEMENTS // max(v, 1))
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)]


def _scratch(logits: torch.Tensor, blocks: list[slice], count: int) -> list[torch.Tensor]:
    """``count`` buffers of one block of rows in the compute dtype, reused by every block (no
    allocator traffic per block: glibc would keep freed blocks resident)."""
    rows = blocks[0].stop - blocks[0].start
    shape = (rows, logits.shape[1])
    dtype = compute_dtype(logits.dtype)
    return [torch.empty(shape, dtype=dtype, device=logits.device) for _ in range(count)]


def row_stats_chunked(logits: torch.Tensor) -> RowStats:
    """:func:`row_stats_torch` (same operations, same order), one block of rows at a time in
    two scratch buffers."""
    out = torch.empty(3, logits.shape[0], dtype=compute_dtype(logits.dtype), device=logits.device)
    blocks = row_blocks(logits)
    if blocks:
        zs_buf, e_buf = _scratch(logits, blocks, 2)
        for rows in blocks:
            z, k = logits[rows], rows.stop - rows.start
            m = z.amax(-1).to(out.dtype)  # exact: the max is one of the values
            zs = torch.sub(z, m[:, None], out=zs_buf[:k])
            e = torch.exp(zs, out=e_buf[:k])
            out[0, rows] = m
            out[1, rows] = e.sum(-1)
            out[2, rows] = e.mul_(zs).sum(-1)
    return RowStats(out[0], out[1], out[2])


def row_stats(logits: torch.Tensor, backend: str = "auto") -> RowStats:
    """:class:`RowStats` of every row of ``logits`` [N, V_local]."""
    resolved = resolve_backend(backend, logits)
    if resolved == "torch":
        return row_stats_torch(logits)
    if resolved == "chunked":
        return row_stats_chunked(logits)
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


def logits_grad_chunked(
    logits: torch.Tensor,
    target: torch.Tensor,
    row_max: torch.Tensor,
    log_norm: torch.Tensor,
    entropy: torch.Tensor,
    g_logprob: torch.Tensor,
    g_entropy: torch.Tensor,
) -> torch.Tensor:
    """:func:`logits_grad_torch` (same operations, same order), one block of rows at a time,
    written into the gradient (fp32 logits) or through a scratch buffer (narrower ones)."""
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    blocks = row_blocks(logits)
    if not blocks:
        return grad
    dtype = compute_dtype(logits.dtype)
    g_lp, g_h = g_logprob.to(dtype), g_entropy.to(dtype)
    direct = grad.dtype == dtype
    scratch = _scratch(logits, blocks, 1 if direct else 2)
    for rows in blocks:
        k = rows.stop - rows.start
        a = grad[rows] if direct else scratch[1][:k]
        torch.sub(logits[rows], row_max[rows, None], out=a).sub_(log_norm[rows, None])  # log p
        p = torch.exp(a, out=scratch[0][:k])
        # -p * (g_lp + g_h * (log p + H))
        a.add_(entropy[rows, None]).mul_(g_h[rows, None]).add_(g_lp[rows, None]).mul_(p).neg_()
        hit = target[rows] >= 0
        a.scatter_add_(1, target[rows].clamp(min=0)[:, None], (g_lp[rows] * hit)[:, None])
        if not direct:
            grad[rows] = a
    return grad


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
    resolved = resolve_backend(backend, logits)
    if resolved == "torch":
        return logits_grad_torch(*args)
    if resolved == "chunked":
        return logits_grad_chunked(*args)
    from kernels import logprob_entropy_triton

    return logprob_entropy_triton.logits_grad(*args)
