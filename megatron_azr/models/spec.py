"""Layer specs: megatron-core's local spec (CPU, GPU without TE) and Transformer Engine spec.

The local spec is megatron's ``get_gpt_layer_local_spec`` with two changes, both made here
rather than by patching megatron:

* norms are :class:`RMSNorm` (HF's numerics: normalise in fp32, scale in the input dtype) whose
  weight is tagged ``sequence_parallel`` so that megatron all-reduces its grad over TP when
  sequence parallelism is on (torch's norms reject sequence parallel configs);
* attention uses an explicit mask (``AttnMaskType.padding``): micro-batches pack several
  sequences into one row, and the mask we pass is block-diagonal causal. With the ``causal``
  type megatron's fused GPU softmax would silently ignore that mask.

The TE spec packs sequences the TE way instead (THD format, ``PackedSeqParams``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

Impl = Literal["local", "transformer_engine"]


class RMSNorm(torch.nn.Module):
    """RMSNorm as HF Qwen2/Llama compute it, usable under sequence parallelism."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        device = None if config.use_cpu_initialization else torch.cuda.current_device()
        self.weight = torch.nn.Parameter(
            torch.ones(hidden_size, dtype=config.params_dtype, device=device)
        )
        # megatron's finalize_model_grads all-reduces grads of params tagged this way over TP.
        self.weight.sequence_parallel = config.sequence_parallel  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def local_layer_spec() -> ModuleSpec:
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    sub = spec.submodules
    attn = sub.self_attention
    attn = dataclasses.replace(attn, params={**attn.params, "attn_mask_type": AttnMaskType.padding})
    sub = dataclasses.replace(
        sub, input_layernorm=RMSNorm, pre_mlp_layernorm=RMSNorm, self_attention=attn
    )
    return dataclasses.replace(spec, submodules=sub)


def te_layer_spec() -> ModuleSpec:
    from megatron_azr.models.te import require_te

    require_te()
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_with_transformer_engine_spec,
    )

    return get_gpt_layer_with_transformer_engine_spec()


def block_spec(
    impl: Impl, config: TransformerConfig, vp_stage: int | None
) -> TransformerBlockSubmodules:
    """The decoder block of this pipeline stage (and virtual stage)."""
    if impl == "local":
        layer, final_norm = local_layer_spec(), RMSNorm
    else:
        from megatron.core.extensions.transformer_engine import TENorm

        layer, final_norm = te_layer_spec(), TENorm
    n = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer] * n, layer_norm=final_norm)
