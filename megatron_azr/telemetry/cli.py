"""``azr comm-bench``: registration only (no torch import here; the benchmark is in
:mod:`megatron_azr.telemetry.comm_bench`)."""

from __future__ import annotations

import argparse


def _size(text: str) -> int:
    """``4096``, ``64K``, ``16M``, ``1G`` (powers of 1024, as nccl-tests' -b/-e)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _cmd_comm_bench(args: argparse.Namespace) -> int:
    from megatron_azr.config import load_config
    from megatron_azr.telemetry.comm_bench import BenchArgs, main
    from megatron_azr.telemetry.logs import setup_logging
    from megatron_azr.train.dist import shutdown

    cfg = load_config(args.config, args.overrides)
    setup_logging(cfg.logging.level)
    bench = BenchArgs(
        ops=args.ops,
        groups=args.groups,
        min_bytes=args.min_bytes,
        max_bytes=args.max_bytes,
        factor=args.factor,
        iters=args.iters,
        warmup=args.warmup,
        dtype=args.dtype,
        backend=args.backend,
        out=args.out,
    )
    try:
        return main(cfg, bench)
    finally:
        shutdown()


def register(subparsers: argparse._SubParsersAction) -> None:
    from megatron_azr.cli import add_config_args

    p = subparsers.add_parser(
        "comm-bench",
        help="nccl-tests-style bandwidth of the run's process groups (under torchrun/srun)",
    )
    add_config_args(p)
    p.add_argument("--ops", type=_names, default="all_reduce,all_gather,reduce_scatter,broadcast")
    p.add_argument("--groups", type=_names, default="tp,pp,dp,mp,world", help="groups to measure")
    p.add_argument("-b", "--min-bytes", type=_size, default="1K", help="smallest size (1K)")
    p.add_argument("-e", "--max-bytes", type=_size, default="64M", help="largest size (64M)")
    p.add_argument("-f", "--factor", type=int, default=4, help="size multiplication factor")
    p.add_argument("-n", "--iters", type=int, default=20, help="timed iterations per size")
    p.add_argument("-w", "--warmup", type=int, default=5, help="untimed iterations per size")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto")
    p.add_argument("--out", default=None, help="results JSON (default: <output_dir>/profile/)")
    p.set_defaults(func=_cmd_comm_bench)
