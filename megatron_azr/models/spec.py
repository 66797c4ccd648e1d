"""Layer specs: megatron-core's local spec (CPU, GPU without TE) and Transformer Engine spec.

Both run packed micro-batches in megatron's THD format (``PackedSeqParams``). The local spec is
megatron's ``get_gpt_layer_local_spec`` with its norms and core attention swapped for the
modules in :mod:`megatron_azr.models.layers` (HF-exact RMSNorm that works under sequence
parallelism; per-sequence causal attention over packed rows). Parameter names, and thus the
weight mapping and checkpoints, are those of the local spec.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_azr.models.layers import PackedAttention, RMSNorm

Impl = Literal["local", "transformer_engine"]


def local_layer_spec() -> ModuleSpec:
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    sub = spec.submodules
    attn = sub.self_attention
    attn = dataclasses.replace(
        attn, submodules=dataclasses.replace(attn.submodules, core_attention=PackedAttention)
    )
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
