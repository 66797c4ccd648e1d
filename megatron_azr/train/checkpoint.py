"""Actor checkpoints: megatron dist checkpoints, reshardable to any TP/PP/DP layout.

Layout of a checkpoint directory::

    CKPT/
      meta.json   format tag, the model card, step count, what is inside, the saving layout
      dist/       megatron ``dist_checkpointing`` (model weights [+ optimizer state])
      hf/         config + tokenizer files of the original HF model (for export)

The directory is written under a temporary name and renamed into place once complete, so a crash
mid-save never leaves a half checkpoint under the final name.

Distributed-optimizer state has two formats (``actor.checkpoint_format``; megatron's default,
``fully_sharded_model_space``, fails to save):

* ``dp_reshardable`` (default): every rank writes its own optimizer shard, no gather. Host
  memory of a save is what the rank writes (megatron stages its write buckets in host memory,
  ``strategies/filesystem_async.py:212`` in 0.16.1). Loads at the saving TP/PP with any DP.
* ``fully_reshardable``: the state in model space, loadable at any TP/PP/DP. Saving gathers
  the DP-unsharded fp32 state of the rank's TP/PP shard to host memory on *every* rank
  (``get_parameter_state_dp_zero(return_on_all_ranks=True)``, ``distrib_optimizer.py:977`` in
  0.16.1): DP times the optimizer bytes the rank owns, whatever the DP size.

:func:`make_fully_reshardable` converts the first into the second (``azr convert
reshardable``), once, at the saving TP/PP and any DP, when a run moves to another TP/PP.
Model weights are reshardable in both.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.validation import StrictHandling

from megatron_azr import atomic
from megatron_azr.models import hf_io
from megatron_azr.models.config import ModelConfig
from megatron_azr.train import mcore_compat
from megatron_azr.train.dist import broadcast_object

if TYPE_CHECKING:
    from megatron_azr.train.actor import Actor

logger = logging.getLogger(__name__)

FORMAT = "megatron-azr/actor-checkpoint/1"
# Keys a Transformer Engine module adds to the state dict (FP8 scaling metadata); the local spec
# has none for its attention and norms, so checkpoints it wrote (`azr convert hf-to-mcore`)
# lack them, and TE modules start such state fresh when it is absent.
TE_EXTRA_STATE = "_extra_state"


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


def _metadata(actor: Actor, optimizer_format: str) -> dict[str, Any]:
    """Sharded-state-dict metadata megatron's model/optimizer builders read."""
    md: dict[str, Any] = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}
    if actor.parallel.distributed_optimizer:
        md["distrib_optim_sharding_type"] = optimizer_format
    return md


def _model_sharded_state_dict(actor: Actor, metadata: dict[str, Any]) -> dict[str, Any]:
    sd: dict[str, Any] = {}
    models = actor.models
    for i, m in enumerate(models):
        sd["model" if len(models) == 1 else f"model{i}"] = m.sharded_state_dict(metadata=metadata)
    return sd


def _sharded_state_dict(
    actor: Actor, with_optimizer: bool, is_loading: bool, optimizer_format: str
) -> dict[str, Any]:
    # Rebuilt for every save/load: dist_checkpointing.save mutates the dict it is given.
    md = _metadata(actor, optimizer_format)
    sd = _model_sharded_state_dict(actor, md)
    if with_optimizer:
        sd["optimizer"] = actor.optimizer.sharded_state_dict(sd, is_loading=is_loading, metadata=md)
    return sd


def save(
    actor: Actor,
    path: str | Path,
    *,
    with_optimizer: bool = True,
    hf_dtype: str | None = None,
    optimizer_format: str | None = None,
) -> Path:
    """Save weights (and optimizer state) of ``actor`` to ``path`` (collective, atomic).

    ``hf_dtype`` records the dtype of the HF weights this came from, for exact export.
    ``optimizer_format``: that of the distributed optimizer's state (module doc); default
    ``actor.cfg.checkpoint_format``.
    """
    final = Path(path).resolve()
    with_optimizer = with_optimizer and actor.optimizer is not None
    fmt = optimizer_format or actor.cfg.checkpoint_format
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
        sd = _sharded_state_dict(actor, with_optimizer, is_loading=False, optimizer_format=fmt)
        sd["actor_steps"] = actor.steps
        dist_checkpointing.save(sd, str(tmp_dir / "dist"))
        dist.barrier()
        if rank == 0:
            _write_meta_and_hf(actor, tmp_dir, with_optimizer, hf_dtype, fmt)
            atomic.replace_dir(tmp_dir, final)
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    dist.barrier()
    logger.info("saved actor checkpoint (step %d) to %s", actor.steps, final)
    return final


def _write_meta_and_hf(
    actor: Actor, tmp_dir: Path, with_optimizer: bool, hf_dtype: str | None, optimizer_format: str
) -> None:
    from dataclasses import asdict

    lay = actor.layout
    meta = {
        "format": FORMAT,
        "model_card": asdict(actor.arch),
        "steps": actor.steps,
        "has_optimizer": with_optimizer,
        "distributed_optimizer": actor.parallel.distributed_optimizer,
        "optimizer_format": optimizer_format,
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
    fmt = _optimizer_format(meta)
    if with_optimizer and actor.parallel.distributed_optimizer:
        _check_layout_for_format(actor, meta, fmt, path)
    if with_optimizer:
        mcore_compat.prepare_optimizer_for_load(actor.optimizer)
    sd = _sharded_state_dict(actor, with_optimizer, is_loading=True, optimizer_format=fmt)
    loaded = _load_tolerating_extra_state(sd, path / "dist")
    for i, m in enumerate(actor.models):
        key = "model" if len(actor.models) == 1 else f"model{i}"
        _load_model_chunk(m, loaded[key], path)
    if with_optimizer:
        actor.optimizer.load_state_dict(loaded["optimizer"])
        mcore_compat.fix_optimizer_after_load(actor.optimizer)
        actor.steps = int(loaded.get("actor_steps", meta["steps"]))
    if (path / "hf" / "config.json").is_file():
        actor.hf_source = path / "hf"
    logger.info("loaded actor checkpoint %s (step %d)", path, actor.steps)


def _optimizer_format(meta: dict[str, Any]) -> str:
    # Checkpoints from before the format was recorded are fully reshardable.
    return str(meta.get("optimizer_format", "fully_reshardable"))


def _check_layout_for_format(actor: Actor, meta: dict[str, Any], fmt: str, path: Path) -> None:
    saved, lay = meta["saved_layout"], actor.layout
    here = {"tp": lay.tp, "pp": lay.pp, "vpp": lay.vpp}
    if fmt != "dp_reshardable" or all(saved[k] == v for k, v in here.items()):
        return
    raise ValueError(
        f"{path}: its optimizer state is dp_reshardable, saved at tp={saved['tp']} "
        f"pp={saved['pp']} vpp={saved['vpp']}, and loads only there (any DP), not at "
        f"tp={lay.tp} pp={lay.pp} vpp={lay.vpp}: convert it once with `azr convert "
        f"reshardable {path} NEW_DIR` on tp*pp={saved['tp'] * saved['pp']} ranks (or a "
        "multiple), then resume from NEW_DIR"
    )


def _load_tolerating_extra_state(sd: dict[str, Any], ckpt_dir: Path) -> dict[str, Any]:
    """``dist_checkpointing.load`` that lets only ``*._extra_state`` entries be absent.

    megatron's default strictness (``ASSUME_OK_UNEXPECTED``) leaves a key the model requests
    but the checkpoint lacks to the storage reader, which raises "Missing key in checkpoint
    state_dict" for it, TE's extra state included. ``RETURN_UNEXPECTED`` (megatron-core 0.16.1
    and 0.19.2 ``dist_checkpointing/validation.py``) drops such keys from the request and
    returns them; any that is not extra state is then an error here, agreed on by all ranks
    (each rank requests different keys).
    """
    loaded, _, unexpected = dist_checkpointing.load(
        sd, str(ckpt_dir), strict=StrictHandling.RETURN_UNEXPECTED
    )
    real = sorted(k for k in unexpected if not k.endswith(TE_EXTRA_STATE))
    if dist.get_world_size() > 1:
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, real)
        real = sorted({k for keys in everyone for k in keys})
    if real:
        raise ValueError(
            f"{ckpt_dir.parent} lacks {len(real)} tensors this model needs, e.g. {real[:3]} "
            "(a checkpoint of another architecture or model card?)"
        )
    if unexpected:
        logger.info(
            "%d Transformer Engine extra-state entries are not in %s (saved by the local "
            "spec): their modules start that state fresh",
            len(unexpected),
            ckpt_dir.parent,
        )
    return loaded


def _load_model_chunk(model: Any, state: dict[str, Any], path: Path) -> None:
    result = model.load_state_dict(state, strict=False)
    bad = [k for k in result.missing_keys if not k.endswith(TE_EXTRA_STATE)]
    bad += list(result.unexpected_keys)
    if bad:
        raise ValueError(f"{path}: state does not match the model: {sorted(bad)[:5]}")


def make_fully_reshardable(src: str | Path, dst: str | Path) -> Path:
    """Rewrite a checkpoint whose distributed-optimizer state is ``dp_reshardable`` in the
    ``fully_reshardable`` format, which any TP/PP/DP layout loads (collective).

    Runs at the saving TP/PP on any multiple of tp*pp ranks. The gather it does costs, on
    each rank, the fp32 state of its TP/PP shard: run it with DP = 1 where host memory is
    tight (a DP of 1 gathers nothing it does not already hold).
    """
    from megatron_azr.train.actor import Actor
    from megatron_azr.train.config import ActorConfig, ParallelConfig

    src = Path(src)
    meta = read_meta(src)
    if not (meta["has_optimizer"] and meta["distributed_optimizer"]):
        raise ValueError(f"{src} holds no distributed-optimizer state: nothing to convert")
    lay = meta["saved_layout"]
    parallel = ParallelConfig(
        tp=lay["tp"], pp=lay["pp"], vpp=lay["vpp"], distributed_optimizer=True
    )
    cfg = ActorConfig(
        precision="bf16" if meta["params_dtype"] == "bfloat16" else "fp32",
        checkpoint_format="fully_reshardable",
    )
    actor = Actor(ModelConfig(**meta["model_card"]), parallel, cfg)
    load(actor, src)
    return save(actor, dst, hf_dtype=meta.get("hf_dtype"))


def load_weights(actor: Actor, path: str | Path) -> None:
    """Model weights only (initialising a run from a converted checkpoint)."""
    load(actor, path, with_optimizer=False)
