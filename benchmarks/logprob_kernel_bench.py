"""Log-prob kernel benchmark: memory and time of token log-prob + entropy over one TP rank's
vocabulary shard, each backend against the torch reference, in the same run.

The workload is the actor's: ``logprob_and_entropy`` on logits [tokens, vocab / tp], then the
backward of ``g_logprob . logprob + g_entropy . entropy``. The metric that matters is the peak
memory above the live inputs (the logits are the actor's largest activation; the torch reference
materialises several fp32 copies of them), so the last line is

    ratio: <reference peak bytes / kernel peak bytes>      (forward + backward)

where the kernel is the backend ``actor.logprob_kernel=auto`` runs: the fused Triton kernels on a
CUDA GPU (CUDA memory), the chunked torch path on CPU (resident memory, the kernel's high-water
mark reset before each measurement). On a GPU the chunked path is measured too.

    python benchmarks/logprob_kernel_bench.py                       # GPU: 8192 tokens, 152064 / 2
    python benchmarks/logprob_kernel_bench.py --tokens 16384 --tp 1
    python benchmarks/logprob_kernel_bench.py                       # CPU: 2048 tokens, fp32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from megatron_azr.train.logprobs import logprob_and_entropy

MiB = 2**20


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_ms(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _resident(key: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if key in x)
    return int(line.split()[1]) * 1024


def peak_bytes(fn: Callable[[], None]) -> int:
    """Peak memory while ``fn`` runs above the memory before it: CUDA allocations on a GPU,
    resident memory (VmHWM after resetting it) on CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    Path("/proc/self/clear_refs").write_text("5")
    base = _resident("VmRSS:")
    fn()
    return _resident("VmHWM:") - base


def measure(backend: str, logits, target, g_lp, g_ent, repeats: int) -> dict[str, float]:
    def forward() -> None:
        with torch.no_grad():
            logprob_and_entropy(logits, target, backend=backend)

    def train_step() -> None:
        x = logits.detach().requires_grad_(True)
        lp, ent = logprob_and_entropy(x, target, backend=backend)
        torch.autograd.backward((lp, ent), (g_lp, g_ent))

    out = {}
    for name, fn in (("fwd", forward), ("fwd_bwd", train_step)):
        fn()  # warm-up: Triton compiles here
        out[f"{name}_peak"] = peak_bytes(fn)
        out[f"{name}_ms"] = _median_ms(fn, repeats)
    return out


def max_errors(backend: str, logits, target, g_lp, g_ent) -> tuple[float, float]:
    """Max |backend - reference| of (log-prob and entropy, gradient)."""
    res = {}
    for b in ("torch", backend):
        x = logits.detach().requires_grad_(True)
        lp, ent = logprob_and_entropy(x, target, backend=b)
        torch.autograd.backward((lp, ent), (g_lp, g_ent))
        res[b] = (lp.detach(), ent.detach(), x.grad)
    (a_lp, a_ent, a_g), (b_lp, b_ent, b_g) = res[backend], res["torch"]
    fwd = max((a_lp - b_lp).abs().max().item(), (a_ent - b_ent).abs().max().item())
    return fwd, (a_g.float() - b_g.float()).abs().max().item()


LABELS = {"torch": "torch reference", "chunked": "chunked torch", "triton": "Triton kernels"}


def main() -> None:
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=8192 if gpu else 2048)
    ap.add_argument("--vocab", type=int, default=152064, help="full vocabulary (Qwen2.5)")
    ap.add_argument("--tp", type=int, default=2, help="tensor-parallel size: shard = vocab / tp")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16" if gpu else "fp32")
    ap.add_argument("--repeats", type=int, default=10 if gpu else 3)
    args = ap.parse_args()
    backends = ["torch", "chunked"]
    if gpu:
        from kernels.logprob_entropy import triton_available

        if not triton_available():
            sys.exit("logprob_kernel_bench: triton does not import (it ships with CUDA torch)")
        backends.append("triton")
    elif not Path("/proc/self/clear_refs").exists():
        sys.exit("logprob_kernel_bench: on CPU it reads resident memory from Linux's /proc")

    device = "cuda" if gpu else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    shard = args.vocab // args.tp
    gen = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(args.tokens, shard, device=device, generator=gen) * 4).to(dtype)
    target = torch.randint(0, shard, (args.tokens,), device=device, generator=gen)
    g_lp, g_ent = torch.randn(2, args.tokens, device=device, generator=gen)

    rows = {b: measure(b, logits, target, g_lp, g_ent, args.repeats) for b in backends}
    where = torch.cuda.get_device_name() if gpu else "CPU (resident memory)"
    print(f"{where}: logits [{args.tokens}, {shard}] {args.dtype} ({logits.nbytes / MiB:.0f} MiB)")
    for b in backends[1:]:
        fwd_err, grad_err = max_errors(b, logits, target, g_lp, g_ent)
        print(f"max |{b} - torch|: log-prob/entropy {fwd_err:.2e}, gradient {grad_err:.2e}")
    print("| backend | fwd ms | fwd peak MiB | fwd+bwd ms | fwd+bwd peak MiB |")
    print("|---|---:|---:|---:|---:|")
    for b in backends:
        r = rows[b]
        print(
            f"| {LABELS[b]} | {r['fwd_ms']:.2f} | {r['fwd_peak'] / MiB:.0f} | "
            f"{r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_peak'] / MiB:.0f} |"
        )
    t, k = rows["torch"], rows[backends[-1]]
    print(f"time ratio (fwd+bwd): {t['fwd_bwd_ms'] / k['fwd_bwd_ms']:.2f}")
    print(f"ratio: {t['fwd_bwd_peak'] / k['fwd_bwd_peak']:.2f}")


if __name__ == "__main__":
    main()
