"""Rollout engines (torch, vLLM GPU, vLLM-CPU) behind ``megatron_azr.azr.protocols.RolloutEngine``.

Importing this package is cheap: engines import torch/transformers/vLLM when built.
"""

from megatron_azr.rollout.build import build_rollout_engine
from megatron_azr.rollout.config import RolloutConfig

__all__ = ["RolloutConfig", "build_rollout_engine"]
