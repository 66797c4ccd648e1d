"""The run directory (``run.output_dir``): what a start reads there and checks before any model
is loaded or any file is written, and what it records. Pure Python (no torch): ``azr train``
runs it before importing the trainer, so a mistake costs a second, not a model load.

    <output_dir>/config.yaml                  the resolved config of the latest start
    <output_dir>/logs/rank<R>.log             each rank's log
    <output_dir>/checkpoints/latest           the name of the newest published checkpoint
    <output_dir>/checkpoints/step_<N>/        trainer_state.json, actor/, buffers/, manifest.json

A checkpoint is built under a temporary name, synced, and renamed into place; ``latest`` moves
after that. Its ``manifest.json`` lists every file with its size, so a checkpoint damaged after
publishing (a file truncated or deleted: a full disk, a partial copy, a crash of a file system
that ignored the syncs) is recognised at resume, and the run resumes from the newest complete
checkpoint instead, with a warning.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megatron_azr import atomic
from megatron_azr.config import Config, ConfigError, dump_config, to_dict

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
LATEST = "latest"
MANIFEST = "manifest.json"
CONFIG_FILE = "config.yaml"

# Keys a resumed run cannot change: the checkpoint already holds what they chose (the weights'
# architecture and origin, the buffers built from the seed files). Changing one is refused
# unless run.allow_config_change=true.
FIXED_ON_RESUME = ("model.card", "model.path", "azr.seed_io_path", "azr.seed_induction_path")


class RunDirError(ValueError):
    """A run directory a run cannot start from; the message says why and what to do."""


def checkpoint_root(out: Path) -> Path:
    return out / "checkpoints"


def rank_log(out: Path, rank: int) -> Path:
    return out / "logs" / f"rank{rank}.log"


# ---------------------------------------------------------------------------------------------
# Checkpoints


def write_manifest(path: Path) -> None:
    """Record every file under checkpoint ``path`` with its size (the last file written)."""
    files = {
        str(p.relative_to(path)): p.stat().st_size
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }
    atomic.write_text(path / MANIFEST, json.dumps({"files": files}, indent=0))


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint, or None when it is."""
    try:
        int(json.loads((path / STATE_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{STATE_FILE} is missing or unreadable"
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return None  # published before manifests were written: the state file is the mark
    except (OSError, ValueError, KeyError):
        return f"{MANIFEST} is unreadable"
    for rel, size in files.items():
        try:
            actual = (path / rel).stat().st_size
        except FileNotFoundError:
            return f"{rel} is missing"
        if actual != size:
            return f"{rel} has {actual} bytes, {size} were written"
    return None


def checkpoint_step(path: Path) -> int:
    return int(json.loads((path / STATE_FILE).read_text())["step"])


@dataclass
class Resume:
    """Where a start resumes from (``path`` None: a fresh run) and the newer checkpoints it
    passed over as incomplete (``skipped``: one line each)."""

    path: Path | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def step(self) -> int:
        return 0 if self.path is None else checkpoint_step(self.path)


def find_resume(out: Path) -> Resume:
    """The checkpoint named by ``latest`` if it is complete, else the newest complete one
    before it; no ``latest``: a fresh run. Raises :class:`RunDirError` when ``latest`` exists
    and no checkpoint is complete (starting over would discard the run silently)."""
    root = checkpoint_root(out)
    pointer = root / LATEST
    if not pointer.is_file():
        return Resume()
    named = pointer.read_text().strip()
    older = sorted((p for p in root.glob("step_*") if p.is_dir() and p.name <= named), reverse=True)
    resume = Resume()
    if not (root / named).is_dir():
        resume.skipped.append(f"{named} (named by {pointer}) does not exist")
    for path in older:
        problem = checkpoint_problem(path)
        if problem is None:
            resume.path = path
            return resume
        resume.skipped.append(f"{path.name}: {problem}")
    raise RunDirError(
        f"{out} holds no complete checkpoint ({'; '.join(resume.skipped)}): move the directory "
        "away to start over, or choose another run.output_dir"
    )


# ---------------------------------------------------------------------------------------------
# The config record


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(cfg: Config) -> list[tuple[str, Any, Any]]:
    """(key, recorded value, value now) for each key that differs from the config recorded in
    the run directory by an earlier start (none recorded: no changes)."""
    recorded = Path(cfg.run.output_dir) / CONFIG_FILE
    if not recorded.is_file():
        return []
    old = _flatten(yaml.safe_load(recorded.read_text()) or {})
    new = _flatten(to_dict(cfg))
    return [
        (k, old.get(k), new.get(k))
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]


def describe(changes: list[tuple[str, Any, Any]]) -> list[str]:
    return [f"config differs from the recorded one: {k}: {a!r} -> {b!r}" for k, a, b in changes]


def refuse_fixed_changes(cfg: Config, changes: list[tuple[str, Any, Any]]) -> None:
    """Raise :class:`ConfigError` when a resume would change a key of :data:`FIXED_ON_RESUME`
    (unless ``run.allow_config_change``)."""
    fixed = [c for c in changes if c[0] in FIXED_ON_RESUME]
    if not fixed or cfg.run.allow_config_change:
        return
    what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in fixed)
    raise ConfigError(
        f"{cfg.run.output_dir} resumes a run whose checkpoint was made with other values of "
        f"keys it cannot change ({what}): choose another run.output_dir, or pass "
        "run.allow_config_change=true to resume anyway"
    )


# ---------------------------------------------------------------------------------------------
# A start


@dataclass
class Start:
    resume: Resume
    changes: list[tuple[str, Any, Any]]

    def finished(self, steps: int) -> bool:
        return self.resume.path is not None and self.resume.step >= steps


def check_start(cfg: Config) -> Start:
    """Everything about the run directory that can stop a start, checked before a model is
    loaded and before anything is written there (reads only; every rank may call it)."""
    out = Path(cfg.run.output_dir)
    try:
        resume = find_resume(out)
    except RunDirError as e:
        raise ConfigError(str(e)) from e
    start = Start(resume, config_changes(cfg))
    if start.finished(cfg.run.steps):
        return start
    if resume.path is None and cfg.model.path and not Path(cfg.model.path).exists():
        raise ConfigError(
            f"model.path {cfg.model.path} does not exist (give an HF directory or a checkpoint "
            "of `azr convert hf-to-mcore`; `azr model smollm2` builds SmolLM2-135M-Instruct's)"
        )
    if resume.path is not None:
        refuse_fixed_changes(cfg, start.changes)
    return start


def record_start(cfg: Config, start: Start, leader: bool) -> None:
    """Say what the start passed over and changed (in the log), and record the config."""
    for line in start.resume.skipped:
        logger.warning("checkpoint passed over: %s", line)
    if start.resume.skipped and start.resume.path is not None:
        logger.warning("resuming from the newest complete checkpoint, %s", start.resume.path)
    if start.resume.path is not None:
        for line in describe(start.changes):
            logger.warning("%s", line)
    if leader:
        out = Path(cfg.run.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / CONFIG_FILE, dump_config(cfg))
