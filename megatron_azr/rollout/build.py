"""Choose and build the rollout engine named by the config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from megatron_azr.rollout.config import RolloutConfig

if TYPE_CHECKING:
    from megatron_azr.azr.protocols import RolloutEngine


def build_rollout_engine(cfg: RolloutConfig, model_dir: str | Path) -> RolloutEngine:
    """The engine ``cfg.engine`` on the HF model directory ``model_dir`` (config, tokenizer and,
    unless ``cfg.load_format == "dummy"``, safetensors weights)."""
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
