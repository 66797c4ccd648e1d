"""Actor checkpoints: megatron dist checkpoints, reshardable to any TP/PP/DP layout.

Layout of a checkpoint directory::

    CKPT/
      meta.json   format tag, the model card, step count, what is inside, the saving layout
      dist/       megatron ``dist_checkpointing`` (model weights [+ optimizer state])
      hf/         config + tokenizer files of the original HF model (for export)

The directory is written under a temporary name and renamed into place once complete, so a crash
mid-save never leaves a half checkpoint under the final name. The distributed optimizer saves in
megatron's ``fully_reshardable`` format (the default format fails to save; ``dp_reshardable``
cannot change TP/PP).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from megatron.core import dist_checkpointing

from megatron_azr import atomic
from megatron_azr.models import hf_io
from megatron_azr.models.config import ModelConfig
from megatron_azr.train import mcore_compat
from megatron_azr.train.dist import broadcast_object

if TYPE_CHECKING:
    from megatron_azr.train.actor import Actor

logger = logging.getLogger(__name__)

FORMAT = "megatron-azr/actor-checkpoint/1"


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / "meta.json").is_file() and (Path(path) / "dist").is_dir()


def read_meta(path: str | Path) -> dict[str, Any]:
    meta_file = Path(path) / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"not an actor checkpoint (no meta.json): {path}")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    return meta


def _metadata(actor: Actor) -> dict[str, Any]:
    """Sharded-state-dict metadata megatron's model/optimizer builders read."""
    md: dict[str, Any] = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}
    if actor.parallel.distributed_optimizer:
        md["distrib_optim_sharding_type"] = "fully_reshardable"
    return md


def _model_sharded_state_dict(actor: Actor, metadata: dict[str, Any]) -> dict[str, Any]:
    sd: dict[str, Any] = {}
    models = actor.models
    for i, m in enumerate(models):
        sd["model" if len(models) == 1 else f"model{i}"] = m.sharded_state_dict(metadata=metadata)
    return sd


def _sharded_state_dict(actor: Actor, with_optimizer: bool, is_loading: bool) -> dict[str, Any]:
    # Rebuilt for every save/load: dist_checkpointing.save mutates the dict it is given.
    md = _metadata(actor)
    sd = _model_sharded_state_dict(actor, md)
    if with_optimizer:
        sd["optimizer"] = actor.optimizer.sharded_state_dict(sd, is_loading=is_loading, metadata=md)
    return sd


def save(
    actor: Actor, path: str | Path, *, with_optimizer: bool = True, hf_dtype: str | None = None
) -> Path:
    """Save weights (and optimizer state) of ``actor`` to ``path`` (collective, atomic).

    ``hf_dtype`` records the dtype of the HF weights this came from, for exact export.
    """
    final = Path(path).resolve()
    with_optimizer = with_optimizer and actor.optimizer is not None
    mcore_compat.in_process_write_results()
    rank = dist.get_rank()
    tmp = ""
    if rank == 0:
        tmp = str(atomic.staging_dir(final))
    tmp_dir = Path(broadcast_object(tmp))
    try:
        if rank == 0:
            (tmp_dir / "dist").mkdir()
        dist.barrier()
        sd = _sharded_state_dict(actor, with_optimizer, is_loading=False)
        sd["actor_steps"] = actor.steps
        dist_checkpointing.save(sd, str(tmp_dir / "dist"))
        dist.barrier()
        if rank == 0:
            _write_meta_and_hf(actor, tmp_dir, with_optimizer, hf_dtype)
            atomic.replace_dir(tmp_dir, final)
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    dist.barrier()
    logger.info("saved actor checkpoint (step %d) to %s", actor.steps, final)
    return final


def _write_meta_and_hf(
    actor: Actor, tmp_dir: Path, with_optimizer: bool, hf_dtype: str | None
) -> None:
    from dataclasses import asdict

    lay = actor.layout
    meta = {
        "format": FORMAT,
        "model_card": asdict(actor.arch),
        "steps": actor.steps,
        "has_optimizer": with_optimizer,
        "distributed_optimizer": actor.parallel.distributed_optimizer,
        "params_dtype": str(actor.tconfig.params_dtype).removeprefix("torch."),
        "saved_layout": {"tp": lay.tp, "pp": lay.pp, "dp": lay.dp, "vpp": lay.vpp},
    }
    if hf_dtype is not None:
        meta["hf_dtype"] = hf_dtype.removeprefix("torch.")
    if actor.hf_source is not None:
        (tmp_dir / "hf").mkdir()
        hf_io.copy_meta_files(actor.hf_source, tmp_dir / "hf")
    atomic.write_text(tmp_dir / "meta.json", json.dumps(meta, indent=2))


def _check_card(actor: Actor, meta: dict[str, Any], path: Path) -> None:
    actor.arch.check_matches(ModelConfig(**meta["model_card"]), f"the checkpoint at {path}")


def load(actor: Actor, path: str | Path, *, with_optimizer: bool = True) -> None:
    """Restore ``actor`` from ``path``, whatever layout saved it (collective)."""
    path = Path(path)
    meta = read_meta(path)
    _check_card(actor, meta, path)
    with_optimizer = with_optimizer and actor.optimizer is not None
    if with_optimizer and not meta["has_optimizer"]:
        raise ValueError(f"{path} holds no optimizer state (weights only); load it as model.path")
    if with_optimizer and meta["distributed_optimizer"] != actor.parallel.distributed_optimizer:
        raise ValueError(
            f"{path} was saved with distributed_optimizer={meta['distributed_optimizer']}; "
            "the optimizer state formats differ, resume with the same setting"
        )
    if with_optimizer:
        mcore_compat.prepare_optimizer_for_load(actor.optimizer)
    sd = _sharded_state_dict(actor, with_optimizer, is_loading=True)
    loaded = dist_checkpointing.load(sd, str(path / "dist"))
    for i, m in enumerate(actor.models):
        key = "model" if len(actor.models) == 1 else f"model{i}"
        m.load_state_dict(loaded[key], strict=True)
    if with_optimizer:
        actor.optimizer.load_state_dict(loaded["optimizer"])
        mcore_compat.fix_optimizer_after_load(actor.optimizer)
        actor.steps = int(loaded.get("actor_steps", meta["steps"]))
    if (path / "hf" / "config.json").is_file():
        actor.hf_source = path / "hf"
    logger.info("loaded actor checkpoint %s (step %d)", path, actor.steps)


def load_weights(actor: Actor, path: str | Path) -> None:
    """Model weights only (initialising a run from a converted checkpoint)."""
    load(actor, path, with_optimizer=False)
