"""``azr convert``: HF <-> megatron checkpoints. Registration imports no torch.

Run it plainly for a single-process conversion, or under torchrun with ``--tp/--pp`` to shard
the work (the checkpoint is reshardable either way)::

    azr convert hf-to-mcore HF_DIR CKPT_DIR
    azr convert mcore-to-hf CKPT_DIR HF_DIR
    azr convert reshardable CKPT_DIR NEW_DIR   # dp_reshardable optimizer state -> any layout
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from megatron_azr.train.config import ParallelConfig


def _parallel(args: argparse.Namespace) -> ParallelConfig:
    from megatron_azr.train.config import ParallelConfig

    return ParallelConfig(tp=args.tp, pp=args.pp)


def _cmd_hf_to_mcore(args: argparse.Namespace) -> int:
    from megatron_azr.train.convert import hf_to_mcore

    hf_to_mcore(args.src, args.dst, _parallel(args))
    return 0


def _cmd_mcore_to_hf(args: argparse.Namespace) -> int:
    from megatron_azr.train.convert import mcore_to_hf

    mcore_to_hf(args.src, args.dst, _parallel(args))
    return 0


def _cmd_reshardable(args: argparse.Namespace) -> int:
    from megatron_azr.train.checkpoint import make_fully_reshardable

    make_fully_reshardable(args.src, args.dst)
    return 0


def _run(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from megatron_azr.telemetry.logs import setup_logging

        setup_logging("INFO")
        try:
            return int(handler(args))
        except (FileNotFoundError, ValueError) as e:
            logging.getLogger("azr.convert").error("%s", e)
            return 2
        finally:
            from megatron_azr.train.dist import shutdown

            shutdown()

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="convert checkpoints between HF and megatron")
    sub = p.add_subparsers(dest="direction", required=True)
    for name, handler, src, dst in (
        ("hf-to-mcore", _cmd_hf_to_mcore, "HF_DIR", "CKPT_DIR"),
        ("mcore-to-hf", _cmd_mcore_to_hf, "CKPT_DIR", "HF_DIR"),
    ):
        c = sub.add_parser(name, help=f"{src} -> {dst}")
        c.add_argument("src", metavar=src)
        c.add_argument("dst", metavar=dst)
        c.add_argument("--tp", type=int, default=1, help="tensor parallel size (under torchrun)")
        c.add_argument("--pp", type=int, default=1, help="pipeline parallel size (under torchrun)")
        c.set_defaults(func=_run(handler))
    c = sub.add_parser(
        "reshardable",
        help="CKPT_DIR -> NEW_DIR with optimizer state any TP/PP loads (run at its TP/PP)",
    )
    c.add_argument("src", metavar="CKPT_DIR")
    c.add_argument("dst", metavar="NEW_DIR")
    c.set_defaults(func=_run(_cmd_reshardable))
