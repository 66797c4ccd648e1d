"""Log-prob kernel benchmark: memory and time of token log-prob + entropy over one TP rank's
vocabulary shard, fused Triton kernels against the torch reference, in the same run.

The workload is the actor's: ``logprob_and_entropy`` on bf16 logits [tokens, vocab / tp], then
the backward of ``g_logprob . logprob + g_entropy . entropy``. The metric that matters is the
peak memory above the live inputs (the logits are the actor's largest activation; the torch
reference materialises several fp32 copies of them), so the last line is

    ratio: <reference peak bytes / kernel peak bytes>      (forward + backward)

Needs a CUDA GPU with triton (the kernels' correctness on CPU is tested through Triton's
interpreter: ``pytest tests/kernels``).

    python benchmarks/logprob_kernel_bench.py                       # 8192 tokens, 152064 / 2
    python benchmarks/logprob_kernel_bench.py --tokens 16384 --tp 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from megatron_azr.train.logprobs import logprob_and_entropy

MiB = 2**20


def _sync_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


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
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        out[f"{name}_peak"] = torch.cuda.max_memory_allocated() - base
        out[f"{name}_ms"] = _sync_ms(fn, repeats)
    return out


def max_errors(logits, target, g_lp, g_ent) -> tuple[float, float]:
    """Max |kernel - reference| of (log-prob and entropy, gradient)."""
    res = {}
    for backend in ("torch", "triton"):
        x = logits.detach().requires_grad_(True)
        lp, ent = logprob_and_entropy(x, target, backend=backend)
        torch.autograd.backward((lp, ent), (g_lp, g_ent))
        res[backend] = (lp.detach(), ent.detach(), x.grad)
    (a_lp, a_ent, a_g), (b_lp, b_ent, b_g) = res["triton"], res["torch"]
    fwd = max((a_lp - b_lp).abs().max().item(), (a_ent - b_ent).abs().max().item())
    return fwd, (a_g.float() - b_g.float()).abs().max().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=152064, help="full vocabulary (Qwen2.5)")
    ap.add_argument("--tp", type=int, default=2, help="tensor-parallel size: shard = vocab / tp")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit(
            "logprob_kernel_bench: needs a CUDA GPU (the Triton kernels' memory and speed only "
            "mean something there); on CPU run `pytest tests/kernels` for their correctness"
        )
    from kernels.logprob_entropy import triton_available

    if not triton_available():
        sys.exit("logprob_kernel_bench: triton does not import (it ships with CUDA torch builds)")

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    shard = args.vocab // args.tp
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(args.tokens, shard, device="cuda", generator=gen) * 4).to(dtype)
    target = torch.randint(0, shard, (args.tokens,), device="cuda", generator=gen)
    g_lp, g_ent = torch.randn(2, args.tokens, device="cuda", generator=gen)

    fwd_err, grad_err = max_errors(logits, target, g_lp, g_ent)
    rows = {b: measure(b, logits, target, g_lp, g_ent, args.repeats) for b in ("torch", "triton")}

    gpu = torch.cuda.get_device_name()
    print(f"{gpu}: logits [{args.tokens}, {shard}] {args.dtype} ({logits.nbytes / MiB:.0f} MiB)")
    print(f"max |triton - torch|: log-prob/entropy {fwd_err:.2e}, gradient {grad_err:.2e}")
    print("| backend | fwd ms | fwd peak MiB | fwd+bwd ms | fwd+bwd peak MiB |")
    print("|---|---:|---:|---:|---:|")
    for name, label in (("torch", "torch reference"), ("triton", "Triton kernels")):
        r = rows[name]
        print(
            f"| {label} | {r['fwd_ms']:.2f} | {r['fwd_peak'] / MiB:.0f} | "
            f"{r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_peak'] / MiB:.0f} |"
        )
    t, k = rows["torch"], rows["triton"]
    print(f"time ratio (fwd+bwd): {t['fwd_bwd_ms'] / k['fwd_bwd_ms']:.2f}")
    print(f"ratio: {t['fwd_bwd_peak'] / k['fwd_bwd_peak']:.2f}")


if __name__ == "__main__":
    main()
