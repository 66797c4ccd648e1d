"""Resharding benchmark: GB/s of turning TP=2 shards of a ~1B-parameter model into full HF
tensors, against a plain memory copy of the same bytes in the same run.

Two gloo processes hold the TP=2 shards of a synthetic Qwen2-like model (1.1B parameters, random
bf16 values, the shard shapes megatron uses) and run the real resharding pass
(``rollout.reshard.reshard``: bucket plan, transport, per-parameter conversion) into full HF
tensors on rank 0, which lets each tensor go as it arrives (what an engine update or an export
then does with it is their cost, not resharding's).

Baseline, on rank 0 in the same processes, same thread count and allocator: a plain copy of the
same bytes into new tensors of the same sizes as the pass yields (``torch.empty`` +
``copy_``): materialising the model's tensors with no resharding at all. Also shown: the same
copies into one preallocated buffer (memcpy bandwidth, no allocation). Both read the bytes
from a model-sized buffer, as the pass reads every shard once. Every case is repeated,
alternating, and the best of each kept (the machine may be shared).

    python benchmarks/reshard_bench.py                          # ~1.1B params, bf16
    python benchmarks/reshard_bench.py --layers 4 --repeats 2   # quick

Prints a table and, last, ``ratio: <resharding GB/s / baseline GB/s>`` (shared-memory
transport, one destination).
"""

from __future__ import annotations

import argparse
import math
import os
import queue as queues
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_azr.models import mapping
from megatron_azr.models.config import ModelConfig
from megatron_azr.rollout.reshard import plan_entries, reshard
from megatron_azr.rollout.transport import ShardLayout
from megatron_azr.train.host_memory import keep_freed_host_memory

TP = 2
BASELINE = "copy into new tensors (baseline)"
RESHARD = "reshard, shm -> rank 0"


def synthetic_arch(layers: int) -> ModelConfig:
    """TinyLlama-1.1B's dimensions with Qwen2's QKV bias: 1.1B parameters at 22 layers."""
    return ModelConfig(
        name="synthetic-1b",
        family="qwen2",
        num_layers=layers,
        hidden_size=2048,
        ffn_hidden_size=5632,
        num_attention_heads=16,
        num_query_groups=4,
        vocab_size=32000,
        qkv_bias=True,
    )


def _timed(fn) -> float:
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - t0


def _worker(rank: int, args: argparse.Namespace, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes on the benchmark's cores
    if not args.glibc_default:
        # What `azr train` does on CPU hosts; both baselines and resharding run under it.
        keep_freed_host_memory()
    dist.init_process_group("gloo", rank=rank, world_size=TP)
    arch = synthetic_arch(args.layers)
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(rank)
    entries = plan_entries(arch, tp=TP, pp=1)
    local = {e.m.mcore: torch.randn(e.shape, generator=gen).to(dtype) for e in entries}
    layout = ShardLayout(tp=TP, tp_rank=rank, pp=1, pp_rank=0)
    bucket = args.bucket_mb << 20
    model_bytes = arch.num_parameters() * dtype.itemsize
    # The tensors a pass yields: the same sizes for the baselines.
    sizes = [math.prod(s) for e in entries for s in mapping.hf_shapes(
        e.m, arch.hidden_size, arch.ffn_hidden_size, arch.vocab_size, mapping.attn_dims(arch)
    )]  # fmt: skip
    # The baselines read the model's bytes from memory too (rank 0's shards twice over: as many
    # distinct bytes as the pass reads), not one buffer that may stay in cache.
    src = torch.cat([t.view(-1) for t in local.values()] * TP) if rank == 0 else None
    prealloc = torch.empty(max(sizes), dtype=dtype)

    def copy_new() -> None:
        if src is not None:
            start = 0
            for n in sizes:
                out = torch.empty(n, dtype=dtype)
                out.copy_(src[start : start + n])
                start += n
                del out

    def memcpy() -> None:
        if src is not None:
            start = 0
            for n in sizes:
                prealloc[:n].copy_(src[start : start + n])
                start += n

    def run(transport: str, dst: int | None):
        def go() -> None:
            for _, t in reshard(
                local, arch, layout, bucket_bytes=bucket, dst=dst, transport=transport
            ):
                del t  # what the consumer does with it is its own cost

        return go

    cases = {
        BASELINE: copy_new,
        "memcpy into one preallocated buffer": memcpy,
        RESHARD: run("shm", 0),
        "reshard, collective -> rank 0": run("collective", 0),
        "reshard, shm -> every rank": run("shm", None),
    }
    best = dict.fromkeys(cases, float("inf"))
    run("shm", 0)()  # warm-up: page the shards in (every pass maps a new shared-memory window)
    for _ in range(args.repeats):
        for name, fn in cases.items():
            best[name] = min(best[name], _timed(fn))
    if rank == 0:
        queue.put((model_bytes, best))
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--bucket-mb", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--glibc-default",
        action="store_true",
        help="run the workers with glibc malloc's default (trimming) settings",
    )
    args = p.parse_args()
    from megatron_azr.train.dist import free_port

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, args, port, queue)) for r in range(TP)]
    for proc in procs:
        proc.start()
    while True:
        try:
            model_bytes, best = queue.get(timeout=5)
            break
        except queues.Empty:
            if any(p.exitcode for p in procs):
                for proc in procs:
                    proc.kill()
                raise SystemExit("a benchmark worker failed (see its traceback above)") from None
    for proc in procs:
        proc.join()
    arch = synthetic_arch(args.layers)
    print(
        f"model: {arch.num_parameters() / 1e9:.2f}B params, bf16, {model_bytes / 1e9:.2f} GB; "
        f"TP={TP} -> full tensors; bucket {args.bucket_mb} MiB; best of {args.repeats}; "
        f"glibc malloc {'defaults' if args.glibc_default else 'keeping freed blocks'}"
    )
    print(f"{'case':40s} {'s':>7s} {'GB/s':>7s}")
    for name, sec in best.items():
        print(f"{name:40s} {sec:7.3f} {model_bytes / sec / 1e9:7.2f}")
    strict = best["memcpy into one preallocated buffer"] / best[RESHARD]
    print(f"(reshard / memcpy into one preallocated buffer: {strict:.2f})")
    print(f"ratio: {best[BASELINE] / best[RESHARD]:.2f}")


if __name__ == "__main__":
    main()
