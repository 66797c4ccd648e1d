"""Overhead of the always-on communication accounting (``megatron_azr.telemetry.comm``): time per
collective with the ProcessGroup hooks installed against the same collectives without them, in
the same processes.

Run under torchrun (gloo on CPU, NCCL on GPU)::

    torchrun --nproc-per-node 2 benchmarks/comm_accounting_bench.py
    torchrun --nproc-per-node 2 benchmarks/comm_accounting_bench.py --calls 2000 --rounds 5

For each size, rounds alternate a block of ``--calls`` all-reduces without the hooks and one with
them (a phase name set, stats taken after the block: the whole per-step path), and each side
keeps its best round (the machine may be shared). Two clocks: wall time per collective, and the
calling thread's CPU time per collective (``time.thread_time``: the hook's Python work, not the
wait for the transfer, which gloo runs on its own threads and NCCL on the GPU), which a loaded
machine disturbs far less. Rank 0 prints a table and, last, ``overhead_us: <median over sizes of
the extra caller CPU time per collective>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist

from megatron_azr.telemetry.comm import CommAccounting


def _block(t: torch.Tensor, calls: int, accounting: bool) -> tuple[float, float]:
    """(wall s, calling thread's CPU s) per collective."""
    acc = CommAccounting().install() if accounting else None
    if acc is not None:
        acc.phase = "update"
    dist.barrier()
    if t.is_cuda:
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(calls):
        dist.all_reduce(t)
    if t.is_cuda:
        torch.cuda.synchronize()
    if acc is not None:
        acc.take()
        acc.uninstall()
    return (time.perf_counter() - t0) / calls, (time.thread_time() - c0) / calls


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sizes", default="4,4096,262144,4194304", help="bytes per all-reduce")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    rows = []
    for nbytes in (int(s) for s in args.sizes.split(",")):
        t = torch.ones(max(nbytes // 4, 1), device=device)
        _block(t, args.calls // 10 or 1, False)  # warm-up
        off, on = [], []
        for _ in range(args.rounds):
            off.append(_block(t, args.calls, False))
            on.append(_block(t, args.calls, True))
        best = [min(x[i] for x in side) * 1e6 for side in (off, on) for i in (0, 1)]
        rows.append((nbytes, *best))  # wall off, cpu off, wall on, cpu on (us)
    if dist.get_rank() == 0:
        world, backend = dist.get_world_size(), dist.get_backend()
        print(f"{world} ranks, {backend}, {args.calls} calls x {args.rounds} rounds (best)")
        print(
            f"{'bytes':>10}{'wall us':>10}{'hooked':>10}{'extra':>9}"
            f"{'caller CPU us':>15}{'hooked':>10}{'extra':>9}"
        )
        for nbytes, w0, c0, w1, c1 in rows:
            print(
                f"{nbytes:>10}{w0:>10.1f}{w1:>10.1f}{w1 - w0:>9.1f}"
                f"{c0:>15.1f}{c1:>10.1f}{c1 - c0:>9.1f}"
            )
        median = statistics.median(c1 - c0 for _, _, c0, _, c1 in rows)
        print(f"overhead_us: {median:.2f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
