"""Triton kernels of :mod:`kernels.logprob_entropy`: one program per row, streaming the row's
vocabulary shard in blocks with fp32 accumulation. Imported only when the Triton backend runs.

Forward: an online softmax (running max with rescaling) that also carries ``sum exp(z - m) (z -
m)``; when the running max moves from ``m`` to ``m'`` (``d = m - m'``) the sums become
``s' = e^d s`` and ``w' = e^d (w + d s)``. Backward: one elementwise pass writing the gradient in
the logits' dtype. Neither allocates anything of the shard's size in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.logprob_entropy import RowStats

# Logit elements per block step. 4096 bf16 = 8 KiB per step of a 256-thread program: wide
# vector loads, few loop trips over a 76k-152k shard, and no register spills (fp32 temporaries
# of 16 elements per thread).
MAX_BLOCK = 4096


def launch_config(vocab: int) -> tuple[int, int]:
    """(block, num_warps) for a shard of ``vocab`` entries."""
    block = min(MAX_BLOCK, triton.next_power_of_2(vocab))
    return block, max(1, min(8, block // 512))


@triton.jit
def _row_stats_kernel(
    logits_ptr,
    stride,
    max_ptr,
    sum_exp_ptr,
    sum_exp_z_ptr,
    V,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    # A finite start: with -inf, the first rescale would compute (-inf) * 0.
    m = tl.full([], -3.0e38, tl.float32)
    s = tl.zeros([], tl.float32)
    w = tl.zeros([], tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < V
        z = tl.load(base + cols, mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        d = m - m_new
        a = tl.exp(d)
        zs = z - m_new
        e = tl.exp(zs)  # 0 on masked lanes
        w = a * (w + d * s) + tl.sum(tl.where(mask, e * zs, 0.0), axis=0)
        s = a * s + tl.sum(e, axis=0)
        m = m_new
    tl.store(max_ptr + row, m)
    tl.store(sum_exp_ptr + row, s)
    tl.store(sum_exp_z_ptr + row, w)


@triton.jit
def _logits_grad_kernel(
    logits_ptr,
    grad_ptr,
    stride_logits,
    stride_grad,
    target_ptr,
    max_ptr,
    log_norm_ptr,
    entropy_ptr,
    g_logprob_ptr,
    g_entropy_ptr,
    V,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    m = tl.load(max_ptr + row)
    log_norm = tl.load(log_norm_ptr + row)
    h = tl.load(entropy_ptr + row)
    g_lp = tl.load(g_logprob_ptr + row)
    g_h = tl.load(g_entropy_ptr + row)
    target = tl.load(target_ptr + row)  # -1: the target is in another shard
    src = logits_ptr + row * stride_logits
    dst = grad_ptr + row * stride_grad
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < V
        z = tl.load(src + cols, mask=mask, other=0.0).to(tl.float32)
        log_p = (z - m) - log_norm
        p = tl.exp(log_p)
        g = -p * (g_lp + g_h * (log_p + h))
        g = tl.where(cols == target, g + g_lp, g)
        tl.store(dst + cols, g.to(grad_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """Logits with unit stride along the vocabulary (rows may be strided)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def row_stats(logits: torch.Tensor) -> RowStats:
    logits = _rows(logits)
    n, v = logits.shape
    out = torch.empty(3, n, dtype=torch.float32, device=logits.device)
    if n > 0:
        blk, warps = launch_config(v)
        _row_stats_kernel[(n,)](
            logits, logits.stride(0), out[0], out[1], out[2], v, BLOCK=blk, num_warps=warps
        )
    return RowStats(out[0], out[1], out[2])


def logits_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    row_max: torch.Tensor,
    log_norm: torch.Tensor,
    entropy: torch.Tensor,
    g_logprob: torch.Tensor,
    g_entropy: torch.Tensor,
) -> torch.Tensor:
    logits = _rows(logits)
    n, v = logits.shape
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    if n == 0:
        return grad
    # Per-row vectors are read at `row`: they must be dense (autograd hands expanded grads).
    vecs = [t.to(torch.float32).contiguous() for t in (row_max, log_norm, entropy)]
    gs = [t.to(torch.float32).contiguous() for t in (g_logprob, g_entropy)]
    blk, warps = launch_config(v)
    _logits_grad_kernel[(n,)](
        logits,
        grad,
        logits.stride(0),
        grad.stride(0),
        target.contiguous(),
        *vecs,
        *gs,
        v,
        BLOCK=blk,
        num_warps=warps,
    )
    return grad
