"""Choose and build the rollout engine named by the config, and check that it fits beside the
actor."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from megatron_azr.rollout.config import RolloutConfig

if TYPE_CHECKING:
    from megatron_azr.azr.protocols import RolloutEngine
    from megatron_azr.train.config import Precision

logger = logging.getLogger(__name__)

GiB = 2**30

_ACTOR_DTYPES: dict[str, Literal["float32", "bfloat16"]] = {"fp32": "float32", "bf16": "bfloat16"}


def build_rollout_engine(
    cfg: RolloutConfig, model_dir: str | Path, actor_precision: Precision | None = None
) -> RolloutEngine:
    """The engine ``cfg.engine`` on the HF model directory ``model_dir`` (config, tokenizer and,
    unless ``cfg.load_format == "dummy"``, safetensors weights).

    ``actor_precision``: that of the actor whose weights the engine will receive;
    ``cfg.dtype == "auto"`` then means that precision, so that the engine's log-probs are the
    actor's (a real model's config.json often says bfloat16 while the actor trains in fp32).
    """
    if cfg.dtype == "auto" and actor_precision is not None:
        cfg = dataclasses.replace(cfg, dtype=_ACTOR_DTYPES[actor_precision])
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise FileNotFoundError(
            f"rollout model directory {path} {what}: expected an HF model directory "
            "(config.json, tokenizer files, *.safetensors)"
        )
    if cfg.load_format == "auto" and not any(path.glob("*.safetensors")):
        raise FileNotFoundError(
            f"rollout model directory {path} has no *.safetensors weights; set "
            "rollout.load_format=dummy if the weights come from the actor"
        )
    engine: RolloutEngine
    if cfg.engine == "torch":
        from megatron_azr.rollout.torch_engine import TorchEngine

        engine = TorchEngine(path, cfg)
    elif cfg.engine == "vllm":
        from megatron_azr.rollout.vllm_engine import VLLMEngine

        engine = VLLMEngine(path, cfg)
    elif cfg.engine == "vllm_cpu":
        from megatron_azr.rollout.vllm_engine import VLLMCPUEngine

        engine = VLLMCPUEngine(path, cfg)
    else:
        raise ValueError(f"unknown rollout engine {cfg.engine!r}")
    logger.info("rollout engine %s built on %s", cfg.engine, path)
    return engine


def memory_budget(actor: dict[str, int], free: int, total: int, utilization: float) -> str:
    """One line on how the colocated engine fits beside the actor's resident state; raises
    :class:`MemoryError` when it cannot start.

    vLLM takes ``gpu_memory_utilization x total`` for its weights, activations and KV cache, and
    refuses to start when less is free (``request_memory``, vllm/v1/worker/utils.py, vLLM
    0.32). The actor's weights, gradient buffers and optimizer state stay resident beside it,
    so all of them must already be allocated when it checks; the actor's activations then get
    what is left while vLLM sleeps (level 2 frees its share entirely).
    """
    held = sum(actor.values())
    engine = int(utilization * total)
    parts = " + ".join(f"{k} {v / GiB:.2f}" for k, v in actor.items())
    line = (
        f"GPU memory before the rollout engine: actor {parts} = {held / GiB:.2f} GiB resident; "
        f"{free / GiB:.2f} of {total / GiB:.2f} GiB free; rollout engine "
        f"{utilization:g} x {total / GiB:.2f} = {engine / GiB:.2f} GiB while awake; "
        f"{(free - engine) / GiB:.2f} GiB left beside both"
    )
    if engine > free:
        raise MemoryError(
            f"{line}: the engine does not fit; lower rollout.gpu_memory_utilization to at most "
            f"{free / total:.2f} (minus a margin for CUDA graphs and NCCL) or shard the actor "
            "further (parallel.tp, distributed_optimizer)"
        )
    return line


def log_memory_budget(actor: dict[str, int], cfg: RolloutConfig) -> None:
    """Log the actor's resident bytes and, for the colocated vLLM engine, check its GPU budget
    against what is free now (call once the actor's optimizer state exists)."""
    import torch

    if cfg.engine == "vllm" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        logger.info("%s", memory_budget(actor, free, total, cfg.gpu_memory_utilization))
        return
    parts = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in actor.items())
    logger.info("actor memory on this rank before the rollout engine: %s", parts)
