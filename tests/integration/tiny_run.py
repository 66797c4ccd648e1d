"""What the integration tests share about a tiny `azr train` run."""

import json
import subprocess
import sys
from pathlib import Path

from processes import ROOT, child_env, torchrun_cmd

# Overrides that keep a tiny CPU run to seconds per step.
FAST = [
    "azr.batch_size=2",
    "azr.k_references=1",
    "azr.max_response_tokens=12",
    "azr.n_learnability_samples=2",
    "run.checkpoint_every=1",
    "logging.wandb_mode=disabled",
]
# Wall-clock figures differ between runs, and so does the telemetry (README "Profiling": its
# counts depend on the layout and on what a resumed run set up); everything else replays exactly.
VOLATILE = ("time", "actor/time_s", "comm/", "straggler/", "gpu/")


def metrics(out: Path, *, keep_volatile: bool = False) -> list[dict]:
    """The rows of ``<out>/metrics.jsonl``, without the wall-clock figures unless asked."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if keep_volatile:
        return rows
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def train_cmd(out: Path, *overrides: str, nproc: int = 1) -> list[str]:
    """`azr train` of the tiny config into ``out`` with :data:`FAST` (under torchrun: nproc>1)."""
    args = ["--config", "configs/tiny_cpu.yaml", f"run.output_dir={out}", *FAST, *overrides]
    if nproc == 1:
        return [sys.executable, "-m", "megatron_azr.cli", "train", *args]
    return [*torchrun_cmd(nproc), "-m", "megatron_azr.cli", "train", *args]


def azr_train(out: Path, *overrides: str, nproc: int = 1) -> subprocess.CompletedProcess[str]:
    """Run :func:`train_cmd` to the end; fail with its output unless it succeeds."""
    cmd = train_cmd(out, *overrides, nproc=nproc)
    r = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return r
