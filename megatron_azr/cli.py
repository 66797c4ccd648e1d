"""The ``azr`` command.

Each room that has commands exposes ``register(subparsers)`` in its own ``cli`` module and is
listed in ``_ROOMS``; registering must stay cheap (no torch/megatron import) so that
``azr --help`` and ``azr executor ...`` start fast on CPU-only farm nodes.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path

from megatron_azr.config import Config, ConfigError, dump_config, load_config

_ROOMS: tuple[str, ...] = (
    "megatron_azr.executor.cli",
    "megatron_azr.train.cli",
    "megatron_azr.models.cli",
    "megatron_azr.plan",
    "megatron_azr.telemetry.cli",
    "megatron_azr.eval.cli",
)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/tiny_cpu.yaml", help="YAML config file")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides: azr.k_references=4"
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from megatron_azr import rundir
    from megatron_azr.telemetry.logs import current_rank, setup_logging

    cfg = load_config(args.config, args.overrides)
    rundir.check_start(cfg)  # a mistake costs a second, not the trainer's imports (~10 s)
    # The rank log before those imports: their fallback warnings (no Apex/TE) go there only.
    setup_logging(cfg.logging.level, rundir.rank_log(Path(cfg.run.output_dir), current_rank()))
    from megatron_azr.trainer import RankFailure, train

    try:
        train(cfg)
    except RankFailure:  # logged where it was raised; the failing rank shows the traceback
        return 1
    return 0


def _train_epilog() -> str:
    sections = ", ".join(f.name for f in dataclasses.fields(Config))
    return (
        f"The config is a YAML file with the sections {sections}; KEY=VALUE overrides any key "
        "(azr.k_references=4 run.steps=20). `azr config --config FILE [KEY=VALUE ...]` prints "
        "the resolved config, every key with its value; README.md, Configuration, explains "
        "them."
    )


def _cmd_seed(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from megatron_azr.seed import seed, seed_paths
    from megatron_azr.telemetry.logs import setup_logging

    setup_logging(cfg.logging.level)
    try:
        written = seed(cfg, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"azr seed: {e}", file=sys.stderr)
        return 2
    for path in seed_paths(cfg, args.out):
        if path is not None:
            done = "written" if path in written else "exists, reused (delete it to seed again)"
            print(f"azr seed: {path}: {done}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="azr", description="Absolute Zero self-play at scale")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="run AZR self-play training",
        description="Run AZR self-play training (resumes from <run.output_dir>/checkpoints).",
        epilog=_train_epilog(),
    )
    add_config_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("seed", help="write the config's absent seed files with the model (spec §3)")
    add_config_args(p)
    p.add_argument(
        "--out", default=None, metavar="DIR", help="write into DIR instead of the config's paths"
    )
    p.set_defaults(func=_cmd_seed)

    p = sub.add_parser("config", help="print the resolved configuration")
    add_config_args(p)
    p.set_defaults(func=_cmd_config)

    for room in _ROOMS:
        importlib.import_module(room).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"azr: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
