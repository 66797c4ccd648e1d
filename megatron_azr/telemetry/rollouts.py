"""What the model wrote, step by step: the rollout dump and the end-of-run summary.

The dump is one JSONL file per step under ``<run>/rollouts/``; each line is one proposer or
solver response (``StepResult.rows``): task type, role, prompt, response, the parsed answer, the
executor's status, reward and advantage. Big runs keep a deterministic sample of the lines.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from megatron_azr import atomic

TASKS = ("abduction", "deduction", "induction")


def dump_path(out: Path, step: int) -> Path:
    return out / "rollouts" / f"step_{step:08d}.jsonl"


def dump_rollouts(
    out: Path, step: int, rows: Sequence[Mapping[str, object]], rate: float, seed: int
) -> Path:
    """Write the step's rows (a ``rate`` share of them, the same ones on a replay) atomically."""
    if rate < 1.0:
        rng = random.Random(f"megatron-azr/dump/{seed}/{step}")
        rows = [r for r in rows if rng.random() < rate]
    path = dump_path(out, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def summary(out: Path, step: int, metrics: Mapping[str, float]) -> str:
    """The last step's rates and rewards per task type, and where to look next."""
    columns = [
        ("proposals", "propose/n", ".0f"),
        ("valid", "propose/valid_rate", ".2f"),
        ("solve rate", "propose/solve_rate_mean", ".2f"),
        ("reward", "propose/reward_mean", ".2f"),
        ("solves", "solve/n", ".0f"),
        ("accuracy", "solve/accuracy", ".2f"),
        ("reward", "solve/reward_mean", ".2f"),
    ]
    lines = [
        f"run directory: {out}",
        f"step {step}:",
        " " * 10 + "".join(f"{c:>12}" for c, _, _ in columns),
    ]
    for t in TASKS:
        if f"{t}/propose/n" in metrics:
            cells = (format(metrics.get(f"{t}/{key}", 0.0), fmt) for _, key, fmt in columns)
            lines.append(f"{t:<10}" + "".join(f"{c:>12}" for c in cells))
    dump = dump_path(out, step)
    lines.append("look at:")
    if dump.is_file():
        lines.append(f"  {dump}  (every response: prompt, text, parsed answer, verdict, reward)")
        lines.append(
            f"  jq -c 'select(.role==\"proposer\" and .valid)|.parsed' {dump}   (valid tasks)"
        )
    lines.append(f"  {out / 'metrics.jsonl'}  (one row per step), {out / 'logs'}")
    if (out / "wandb").is_dir():
        lines.append(f"  wandb sync {out / 'wandb'}/offline-run-*  (to see it in wandb)")
    return "\n".join(lines)
