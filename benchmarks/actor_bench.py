"""Actor benchmark: tokens/s of one policy update, and model FLOPs utilisation on GPU.

Baseline, measured in the same run on the same device: the straightforward PyTorch
implementation of the same update — the HF ``transformers`` model, sequences padded per
micro-batch of fixed size, full-vocabulary log-softmax, the same PPO loss and AdamW. The actor
packs variable-length sequences by token budget (no padding), runs megatron-core layers and
computes log-probs vocab-parallel.

    python benchmarks/actor_bench.py                      # CPU: tiny model
    python benchmarks/actor_bench.py --card qwen2.5-0.5b  # GPU: bf16 (TE spec when installed)

Prints a table and, last, ``ratio: <actor tokens/s / baseline tokens/s>``.

``--memory`` measures instead the actor's peak memory (resident memory on CPU, the kernel's
high-water mark reset before each phase; CUDA allocations on a GPU) through ``logprobs`` and
``--steps`` updates of the random-init card, e.g. the self-play step of a 0.5B model on CPU:

    python benchmarks/actor_bench.py --memory --card qwen2.5-0.5b --samples 24 \
        --prompt 550 650 --response 400 512 --micro-batch-tokens 4096 --recompute full --steps 2
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from megatron_azr.azr.protocols import Role, TaskType, TrainSample
from megatron_azr.models.config import ModelConfig, load_model_card

# Dense bf16 peak per GPU (TFLOP/s), for MFU.
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "H800": 989.4, "A100": 312.0, "B200": 2250.0}


def make_samples(n: int, prompt: tuple[int, int], response: tuple[int, int], vocab: int, seed=0):
    """Random samples dealt round-robin to the six (task, role) sub-batches."""
    rng = random.Random(seed)
    subbatches = [(t, r) for t in TaskType for r in Role]
    out = []
    for i in range(n):
        p = [rng.randrange(vocab) for _ in range(rng.randint(*prompt))]
        r = [rng.randrange(vocab) for _ in range(rng.randint(*response))]
        task, role = subbatches[i % len(subbatches)]
        out.append(TrainSample(task, role, p, r, 0.0, rng.gauss(0, 1)))
    return out


def model_flops(arch: ModelConfig, samples: list[TrainSample]) -> float:
    """Training FLOPs (forward + backward) of one pass over ``samples``: 6 x params x tokens for
    the matmuls (output layer included, embedding lookup not) plus causal attention."""
    h, d = arch.hidden_size, arch.head_dim
    q, kv = arch.num_attention_heads * d, arch.num_query_groups * d
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * arch.ffn_hidden_size
    matmul_params = arch.num_layers * per_layer + arch.vocab_size * h
    tokens = sum(len(s.prompt_token_ids) + len(s.response_token_ids) for s in samples)
    # QK^T and AV: 2 matmuls x 2 flops x q_dim per (query, key) pair; causal pairs ~ n^2/2.
    pairs = sum((len(s.prompt_token_ids) + len(s.response_token_ids)) ** 2 / 2 for s in samples)
    attn = 3 * 4 * arch.num_layers * q * pairs
    return 6 * matmul_params * tokens + attn


def make_actor(arch, args):
    from megatron_azr.train.actor import Actor
    from megatron_azr.train.config import ActorConfig, ParallelConfig

    cfg = ActorConfig(
        precision=args.precision,
        micro_batch_tokens=args.micro_batch_tokens,
        transformer_impl=args.impl,
        recompute=args.recompute,
    )
    return Actor(arch, ParallelConfig(), cfg)


def bench_actor(arch, samples, args, device):
    actor = make_actor(arch, args)
    actor.update(samples)  # warm-up (allocations, kernel selection)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        actor.update(samples)
    sync(device)
    return (time.perf_counter() - t0) / args.steps


def bench_baseline(arch, samples, args, device):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    from megatron_azr.models.hf_io import hf_config

    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    cfg_cls = Qwen2Config if arch.family == "qwen2" else LlamaConfig
    config = cfg_cls.from_dict(hf_config(arch, dtype))
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    if args.recompute == "full":
        model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        n_tokens = sum(len(s.response_token_ids) for s in samples)
        for i in range(0, len(samples), args.baseline_micro_batch):
            mb = samples[i : i + args.baseline_micro_batch]
            seqs = [s.prompt_token_ids + s.response_token_ids for s in mb]
            width = max(map(len, seqs))
            ids = torch.zeros(len(mb), width, dtype=torch.long)
            mask = torch.zeros(len(mb), width)
            loss_mask = torch.zeros(len(mb), width)
            adv = torch.zeros(len(mb), width)
            for j, (s, seq) in enumerate(zip(mb, seqs, strict=True)):
                ids[j, : len(seq)] = torch.tensor(seq)
                mask[j, : len(seq)] = 1
                p = len(s.prompt_token_ids)
                loss_mask[j, p - 1 : len(seq) - 1] = 1
                adv[j] = s.advantage
            ids, mask, loss_mask, adv = (t.to(device) for t in (ids, mask, loss_mask, adv))
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1)
            lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
            ent = -(logp.exp() * logp).sum(-1)
            ratio = torch.exp(lp - lp.detach())
            pg = torch.maximum(-adv[:, 1:] * ratio, -adv[:, 1:] * ratio.clamp(0.8, 1.2))
            loss = ((pg - 0.001 * ent) * loss_mask[:, :-1]).sum() / n_tokens
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / args.steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _resident(key: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if key in x)
    return int(line.split()[1]) * 1024


class PeakMemory:
    """Memory now and the peak since :meth:`reset`: CUDA allocations on a GPU, resident memory
    (the kernel's high-water mark, VmHWM) on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def now(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else _resident("VmRSS:")

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated() if self.cuda else _resident("VmHWM:")


def bench_memory(arch, samples, args, device) -> None:
    """Peak memory of building the actor, ``logprobs`` and each update (the first allocates
    AdamW's state; later ones hold it throughout)."""
    mem, gb = PeakMemory(device), 2**30
    actor = None

    def build() -> None:
        nonlocal actor
        actor = make_actor(arch, args)

    phases = [("build", build), ("logprobs", lambda: actor.logprobs(samples))]
    phases += [(f"update {i + 1}", lambda: actor.update(samples)) for i in range(args.steps)]
    print(f"{'phase':<10}{'before GB':>10}{'peak GB':>10}{'after GB':>10}{'s':>8}")
    peak = 0
    for name, run in phases:
        sync(device)
        before = mem.now()
        mem.reset()
        t0 = time.perf_counter()
        run()
        sync(device)
        took = time.perf_counter() - t0
        peak = max(peak, mem.peak())
        print(
            f"{name:<10}{before / gb:>10.2f}{mem.peak() / gb:>10.2f}{mem.now() / gb:>10.2f}"
            f"{took:>8.0f}"
        )
    print(f"peak GB: {peak / gb:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    gpu = torch.cuda.is_available()
    ap.add_argument("--card", default="qwen2.5-0.5b" if gpu else "tiny")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--precision", default="bf16" if gpu else "fp32", choices=["fp32", "bf16"])
    ap.add_argument("--impl", default="auto", choices=["auto", "local", "transformer_engine"])
    ap.add_argument("--recompute", default="none", choices=["none", "full"])
    ap.add_argument("--micro-batch-tokens", type=int, default=16384 if gpu else 1024)
    ap.add_argument("--baseline-micro-batch", type=int, default=4 if gpu else 8)
    ap.add_argument("--peak-tflops", type=float, default=None, help="GPU bf16 dense peak")
    ap.add_argument("--prompt", type=int, nargs=2, default=None, help="min max prompt tokens")
    ap.add_argument("--response", type=int, nargs=2, default=None, help="min max response tokens")
    ap.add_argument("--memory", action="store_true", help="peak memory per phase, no baseline")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if gpu else "cpu")
    arch = load_model_card(args.card)
    prompt, response = ((256, 1024), (128, 2048)) if gpu else ((16, 64), (8, 128))
    samples = make_samples(
        args.samples, args.prompt or prompt, args.response or response, arch.vocab_size
    )
    tokens = sum(len(s.prompt_token_ids) + len(s.response_token_ids) for s in samples)
    if args.memory:
        where = torch.cuda.get_device_name() if gpu else "CPU, resident memory"
        print(f"actor memory: {arch.name}, {args.samples} samples, {tokens} tokens, {where}")
        bench_memory(arch, samples, args, device)
        return

    t_actor = bench_actor(arch, samples, args, device)
    t_base = bench_baseline(arch, samples, args, device)
    rows = [("megatron actor (packed)", t_actor), ("HF baseline (padded)", t_base)]
    name = torch.cuda.get_device_name() if gpu else "CPU"
    print(f"\nactor update: {arch.name}, {args.samples} samples, {tokens} tokens, {name}")
    print(f"{'implementation':<26}{'s/update':>10}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU':>8}")
    flops = model_flops(arch, samples)
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    for label, t in rows:
        tflops = flops / t / 1e12
        mfu = f"{100 * tflops / peak:.1f}%" if gpu and peak else "-"
        print(f"{label:<26}{t:>10.3f}{tokens / t:>12.0f}{tflops:>10.2f}{mfu:>8}")
    print(f"ratio: {t_base / t_actor:.3f}")


if __name__ == "__main__":
    main()
