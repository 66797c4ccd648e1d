"""Choose and build the rollout engine named by the config."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from megatron_azr.rollout.config import RolloutConfig

if TYPE_CHECKING:
    from megatron_azr.azr.protocols import RolloutEngine
    from megatron_azr.train.config import Precision

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
    if cfg.engine == "torch":
        from megatron_azr.rollout.torch_engine import TorchEngine

        return TorchEngine(path, cfg)
    if cfg.engine == "vllm":
        from megatron_azr.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(path, cfg)
    if cfg.engine == "vllm_cpu":
        from megatron_azr.rollout.vllm_engine import VLLMCPUEngine

        return VLLMCPUEngine(path, cfg)
    raise ValueError(f"unknown rollout engine {cfg.engine!r}")
