"""Host memory of an actor checkpoint save and load per distributed-optimizer format.

    torchrun --nproc-per-node 2 benchmarks/checkpoint_bench.py [--layers 10] [--out DIR]

A random SmolLM2-135M-shaped model (``--layers`` of its 30) at DP=2 with the distributed
optimizer, fp32 on CPU. For each format (train/checkpoint.py) every rank reports the rise of its
resident memory above what it held before (the kernel's high-water mark, VmHWM, reset first)
during ``save`` and during ``load``, next to the bytes of optimizer state it owns and the
parameters of its TP/PP shard. On CPU the state already lives in host memory, so what is
measured is what the format adds (the gather); on a GPU a save also stages every byte the rank
writes in host memory (megatron's ``preload_tensors``), which the README adds analytically.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import shutil
import tempfile
import time
from pathlib import Path

import torch.distributed as dist

from megatron_azr.models.config import load_model_card
from megatron_azr.train import checkpoint
from megatron_azr.train.actor import Actor
from megatron_azr.train.config import ActorConfig, ParallelConfig
from megatron_azr.train.dist import broadcast_object
from megatron_azr.train.host_memory import release_freed

MiB = 2**20


def _status(key: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key))
    return int(line.split()[1]) * 1024


def _peak_rise(run) -> tuple[int, float]:
    gc.collect()
    release_freed()
    dist.barrier()
    base = _status("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    run()
    took = time.perf_counter() - t0
    rise = _status("VmHWM:") - base
    out = [0] * dist.get_world_size()
    dist.all_gather_object(out, rise)
    return max(out), took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--out", default=None, help="checkpoint directory (default: a temp dir)")
    args = p.parse_args()
    arch = dataclasses.replace(load_model_card("smollm2-135m"), num_layers=args.layers)
    par = ParallelConfig(distributed_optimizer=True)
    actor = Actor(arch, par, ActorConfig(precision="fp32", transformer_impl="local"))
    mem = actor.memory_bytes()
    params = sum(q.numel() for m in actor.models for q in m.parameters())
    root = Path(args.out or (tempfile.mkdtemp() if dist.get_rank() == 0 else ""))
    root = Path(broadcast_object(str(root)))
    rank0 = dist.get_rank() == 0
    if rank0:
        print(
            f"{params / 1e6:.1f}M parameters in the TP/PP shard, DP={actor.layout.dp}; "
            f"optimizer state owned per rank {mem['optimizer'] / MiB:.0f} MiB"
        )
        print(f"{'format':<20}{'save MiB':>10}{'B/param':>9}{'s':>6}{'load MiB':>10}{'B/param':>9}")
    for fmt in ("dp_reshardable", "fully_reshardable"):
        path = root / fmt
        save, ts = _peak_rise(functools.partial(checkpoint.save, actor, path, optimizer_format=fmt))
        load, _ = _peak_rise(functools.partial(checkpoint.load, actor, path))
        if rank0:
            print(
                f"{fmt:<20}{save / MiB:>10.0f}{save / params:>9.2f}{ts:>6.1f}"
                f"{load / MiB:>10.0f}{load / params:>9.2f}"
            )
    dist.barrier()
    if rank0 and args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
