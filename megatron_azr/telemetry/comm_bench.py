"""``azr comm-bench``: nccl-tests-style bandwidth of the run's own process groups.

Under torchrun or srun, with the run's config: megatron's parallel state is built from
``parallel`` (the same TP/PP/DP/model-parallel groups a run has, every instance of a group
measured at once as in the run), and each of all-reduce, all-gather, reduce-scatter and
broadcast is timed over a range of sizes. Sizes, algbw and busbw follow nccl-tests
(doc/PERFORMANCE.md, :mod:`megatron_azr.telemetry.comm`); the time of one size is the mean over
ranks of each rank's mean over ``iters`` back-to-back operations (nccl-tests' default ``-a 1``).

Rank 0 prints a table per group and writes ``<output_dir>/profile/comm_bench.json``, the
baseline that a run's comm table compares its busbw against ("of bench").
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_azr.config import Config
from megatron_azr.telemetry import comm
from megatron_azr.telemetry.profile import BENCH_FILE, profile_dir

logger = logging.getLogger(__name__)

OPS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast")
GROUPS = ("tp", "pp", "dp", "mp", "world")
# torch >= 2.10 renames the single-tensor forms (and deprecates the old names).
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BenchArgs:
    ops: tuple[str, ...] = OPS
    groups: tuple[str, ...] = GROUPS
    min_bytes: int = 1 << 10
    max_bytes: int = 64 << 20
    factor: int = 4
    iters: int = 20
    warmup: int = 5
    dtype: str = "float32"
    backend: str = "auto"  # nccl on CUDA, else gloo
    out: str | None = None  # None: <run.output_dir>/profile/comm_bench.json


@dataclass
class Row:
    group: str
    ranks: int
    op: str
    bytes: int
    time_s: float
    algbw: float
    busbw: float


def sizes(lo: int, hi: int, factor: int) -> list[int]:
    out, s = [], lo
    while s <= hi:
        out.append(s)
        s *= factor
    return out


def _init(cfg: Config, backend: str) -> torch.device:
    from megatron_azr.train.dist import init_parallel, init_process_group

    cuda = torch.cuda.is_available()
    if backend == "nccl" and not cuda:
        raise ValueError("--backend nccl needs CUDA (gloo is what runs here)")
    if backend == "gloo" and cuda:  # gloo between GPUs' hosts: host tensors
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        device = torch.device("cpu")
    else:
        init_process_group(cfg.profile.pg_timeout_minutes)
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    init_parallel(cfg.parallel, cfg.run.seed)
    return device


def _groups(names: tuple[str, ...]) -> list[tuple[str, Any]]:
    from megatron.core import parallel_state as ps

    getters: dict[str, Callable[[], Any]] = {
        "tp": ps.get_tensor_model_parallel_group,
        "pp": ps.get_pipeline_model_parallel_group,
        "dp": ps.get_data_parallel_group,
        "mp": ps.get_model_parallel_group,
        "world": lambda: dist.group.WORLD,
    }
    unknown = set(names) - set(getters)
    if unknown:
        raise ValueError(f"unknown groups {sorted(unknown)} (known: {', '.join(getters)})")
    return [(name, getters[name]()) for name in names]


def _operation(
    op: str, nbytes: int, group: Any, dtype: torch.dtype, device: torch.device
) -> tuple[Callable[[], None], int]:
    """One ``op`` of nccl-tests size ``nbytes`` (rounded down to whole elements per rank) as a
    closure over preallocated buffers, and the size it moves."""
    n = group.size()
    elem = torch.empty(0, dtype=dtype).element_size()
    count = max(nbytes // elem // n, 1) * n
    full = torch.ones(count, dtype=dtype, device=device)
    part = torch.ones(count // n, dtype=dtype, device=device)
    if op == "all_reduce":
        return lambda: dist.all_reduce(full, group=group), count * elem
    if op == "all_gather":
        return lambda: _ALL_GATHER(full, part, group=group), count * elem
    if op == "reduce_scatter":
        return lambda: _REDUCE_SCATTER(part, full, group=group), count * elem
    if op == "broadcast":
        src = dist.get_global_rank(group, 0)
        return lambda: dist.broadcast(full, src=src, group=group), count * elem
    raise ValueError(f"unknown op {op!r} (known: {', '.join(OPS)})")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _mean_time(run: Callable[[], None], args: BenchArgs, device: torch.device) -> float:
    for _ in range(args.warmup):
        run()
    _sync(device)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        run()
    _sync(device)
    mine = torch.tensor([(time.perf_counter() - t0) / args.iters], dtype=torch.float64)
    mine = mine.to(device)
    dist.all_reduce(mine)
    return float(mine.item()) / dist.get_world_size()


def run_bench(cfg: Config, args: BenchArgs) -> list[Row]:
    """Collective: every rank of the job calls it; every rank returns the same rows."""
    device = _init(cfg, args.backend)
    dtype = DTYPES[args.dtype]
    rows: list[Row] = []
    for name, group in _groups(args.groups):
        n = group.size()
        if n == 1:
            logger.info("comm-bench: group %s has 1 rank: nothing to measure", name)
            continue
        label = comm.group_name(group) if name != "world" else "world"
        for op in args.ops:
            for target in sizes(args.min_bytes, args.max_bytes, args.factor):
                run, nbytes = _operation(op, target, group, dtype, device)
                t = _mean_time(run, args, device)
                bw = comm.algbw(nbytes, t)
                rows.append(Row(label, n, op, nbytes, t, bw, bw * comm.bus_factor(op, n)))
    return rows


def table(rows: list[Row], backend: str, dtype: str, iters: int) -> str:
    lines: list[str] = []
    seen: tuple[str, str] | None = None
    for r in rows:
        if (r.group, r.op) != seen:
            seen = (r.group, r.op)
            lines += [
                "",
                f"# {r.op} over {r.group} ({r.ranks} ranks), {backend}, {dtype}, {iters} iters",
                f"{'size (B)':>14}{'count':>12}{'time (us)':>12}{'algbw GB/s':>12}"
                f"{'busbw GB/s':>12}",
            ]
        elem = DTYPES[dtype].itemsize
        lines.append(
            f"{r.bytes:>14}{r.bytes // elem:>12}{r.time_s * 1e6:>12.1f}{r.algbw:>12.3f}"
            f"{r.busbw:>12.3f}"
        )
    return "\n".join(lines).lstrip("\n")


def main(cfg: Config, args: BenchArgs) -> int:
    rows = run_bench(cfg, args)
    if dist.get_rank() == 0:
        backend = dist.get_backend()
        print(table(rows, backend, args.dtype, args.iters), flush=True)
        out = Path(args.out) if args.out else profile_dir(Path(cfg.run.output_dir)) / BENCH_FILE
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"backend": backend, "dtype": args.dtype, "results": [asdict(r) for r in rows]}
        out.write_text(json.dumps(doc, indent=1))
        print(f"comm-bench: results in {out}", flush=True)
    return 0
