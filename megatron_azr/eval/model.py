"""What ``azr eval --model`` names: an HF directory, or a run (its latest checkpoint), a step
checkpoint or an actor checkpoint, exported to an HF directory once and reused."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    hf_dir: Path  # what the engine loads
    label: str  # how tables name it
    run_dir: Path | None = None  # the run it came from, if any
    step: int | None = None


def resolve_model(path: str | Path) -> ModelSource:
    """The HF directory for ``path``, exporting a megatron checkpoint to
    ``<run>/eval/step_<N>/hf`` (once) when ``path`` is a run or one of its checkpoints."""
    p = Path(path).expanduser().resolve()
    if (p / "config.json").is_file():
        return ModelSource(p, p.name)
    actor, run_dir, step = _find_actor(p)
    out = (run_dir / "eval" / f"step_{step:08d}" / "hf") if run_dir else p.parent / f"{p.name}_hf"
    if not (out / "config.json").is_file():
        _export(actor, out, run_dir)
    label = f"{run_dir.name} step {step}" if run_dir else p.name
    return ModelSource(out, label, run_dir, step)


def _find_actor(p: Path) -> tuple[Path, Path | None, int]:
    """(actor checkpoint, run directory, step) for a run dir, a step dir or an actor dir."""
    from megatron_azr import rundir

    if (p / "checkpoints").is_dir():
        resume = rundir.find_resume(p)  # the newest complete checkpoint
        if resume.path is None:
            raise FileNotFoundError(f"{p} is a run without a checkpoint yet")
        return resume.path / "actor", p, resume.step
    if (p / rundir.STATE_FILE).is_file():
        return p / "actor", p.parent.parent, rundir.checkpoint_step(p)
    if (p / "meta.json").is_file():
        return p, None, 0
    raise FileNotFoundError(
        f"{p} is neither an HF model directory (config.json) nor a run, step or actor checkpoint"
    )


def _export(actor: Path, out: Path, run_dir: Path | None) -> None:
    """Megatron checkpoint -> HF directory (single process), with the run's tokenizer."""
    from megatron_azr.models.hf_io import META_FILES
    from megatron_azr.train.config import ParallelConfig
    from megatron_azr.train.convert import mcore_to_hf
    from megatron_azr.train.dist import shutdown

    logger.info("exporting %s to %s", actor, out)
    try:
        mcore_to_hf(actor, out, ParallelConfig())
    finally:
        shutdown()
    meta = run_dir / "rollout_model" if run_dir else None
    if meta is not None and meta.is_dir():
        for name in META_FILES:
            if name != "config.json" and (meta / name).is_file() and not (out / name).exists():
                shutil.copy2(meta / name, out / name)
