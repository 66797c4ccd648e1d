"""Build the policy as megatron-core ``GPTModel`` chunks for the current parallel layout.

The layout (TP, PP, virtual PP) is read from ``megatron.core.parallel_state``, which must be
initialised first (``megatron_azr.train.dist.init_parallel``). One chunk per virtual pipeline
stage is returned (a single chunk without interleaving), as megatron's schedules expect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_azr.models import te
from megatron_azr.models.config import ModelConfig
from megatron_azr.models.spec import Impl, block_spec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    """How to build (not what): numerics, kernels and memory switches."""

    impl: Literal["auto", "local", "transformer_engine"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    fp8: Literal["none", "delayed", "tensorwise", "mxfp8"] = "none"
    fp8_amax_history_len: int = 1024
    sequence_parallel: bool = False
    recompute: Literal["none", "full"] = "none"


def resolve_impl(impl: str) -> Impl:
    if impl == "auto":
        if not torch.cuda.is_available():
            return "local"
        if te.te_installed():
            return "transformer_engine"
        logger.warning(
            "Transformer Engine does not import (%s): local layer spec on GPU (no FP8)",
            te.te_unusable_reason(),
        )
        return "local"
    if impl == "transformer_engine":
        te.require_te()
        if not torch.cuda.is_available():
            raise RuntimeError("transformer_impl 'transformer_engine' needs a CUDA GPU")
    if impl not in ("local", "transformer_engine"):
        raise ValueError(f"unknown transformer_impl {impl!r}")
    return impl  # type: ignore[return-value]


def gradient_accumulation_fusion(cuda: bool) -> bool:
    """Fuse the weight-gradient GEMM with the fp32 ``main_grad`` accumulation only where APEX's
    ``fused_weight_gradient_mlp_cuda`` extension imports.

    The flag is one ``TransformerConfig`` field for every linear layer, and ``GPTModel``'s
    output layer is megatron's own ``ColumnParallelLinear`` even in the TE spec: its
    constructor raises when the flag is set and the extension is missing (megatron-core 0.16.1
    ``tensor_parallel/layers.py:44-48`` and ``:924``; 0.19.2 ``:49-53`` and ``:1070``). The
    ``gpu`` extra installs no APEX (it is not on PyPI), so the flag follows the very module
    attribute megatron checks.
    """
    if not cuda:
        return False
    from megatron.core.tensor_parallel import layers

    if getattr(layers, "_grad_accum_fusion_available", False):
        logger.info("gradient_accumulation_fusion on (APEX fused_weight_gradient_mlp_cuda)")
        return True
    logger.warning(
        "gradient_accumulation_fusion off: APEX's fused_weight_gradient_mlp_cuda does not "
        "import (megatron's ColumnParallelLinear refuses the fusion without it); weight "
        "gradients are accumulated by a separate add"
    )
    return False


def transformer_config(arch: ModelConfig, opts: BuildOptions) -> TransformerConfig:
    impl = resolve_impl(opts.impl)
    tp = ps.get_tensor_model_parallel_world_size()
    pp = ps.get_pipeline_model_parallel_world_size()
    vpp = ps.get_virtual_pipeline_model_parallel_world_size()
    if arch.num_layers % (pp * (vpp or 1)):
        raise ValueError(
            f"{arch.name}: {arch.num_layers} layers cannot be split evenly over "
            f"pp={pp} x vpp={vpp or 1} stages"
        )
    for what, n in (("num_query_groups", arch.num_query_groups), ("vocab_size", arch.vocab_size)):
        if n % tp:
            raise ValueError(f"{arch.name}: {what}={n} is not divisible by tp={tp}")
    if opts.fp8 != "none":
        if impl != "transformer_engine":
            raise ValueError("fp8 needs the Transformer Engine layer spec")
        te.check_fp8(opts.fp8)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if opts.precision == "bf16" else torch.float32
    use_te = impl == "transformer_engine"
    kwargs: dict = dict(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        attention_softmax_in_fp32=True,
        # The layout is also needed here: without it every PP stage builds all layers.
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp,
        sequence_parallel=opts.sequence_parallel and tp > 1,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=opts.precision == "bf16",
        # CPU init gives the same random weights at every TP size (and is the only one on CPU).
        use_cpu_initialization=not cuda,
        # Always initialise, even before loading weights: with perform_initialization=False
        # megatron-core skips tagging TP-sharded params (tensor_model_parallel), which silently
        # breaks the grad norm and the distributed optimizer at TP > 1.
        perform_initialization=True,
        # Under PP every micro-batch of a step is padded to one length instead: megatron's
        # variable_seq_lengths shape exchange deadlocks the interleaved schedule.
        variable_seq_lengths=False,
        # Interleaved 1F1B sends activations and gradients to the same peer in one call when
        # pp == 2; batched p2p would pair them by order and swap them. Megatron's training
        # defaults for interleaving (overlapped, unbatched p2p on split groups) avoid that.
        overlap_p2p_comm=bool(vpp),
        batch_p2p_comm=not vpp,
        # The loss function returns token sums; megatron divides by the global token count.
        calculate_per_token_loss=True,
        deallocate_pipeline_outputs=cuda,
        gradient_accumulation_fusion=gradient_accumulation_fusion(cuda),
        bias_activation_fusion=cuda,
        apply_rope_fusion=use_te,
        masked_softmax_fusion=False,
    )
    if opts.recompute == "full":
        kwargs.update(
            recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1
        )
    if opts.fp8 != "none":
        kwargs.update(
            fp8="hybrid",
            fp8_recipe=opts.fp8,
            fp8_amax_history_len=opts.fp8_amax_history_len,
            fp8_amax_compute_algo="max",
        )
    return TransformerConfig(**kwargs)


def build_model(
    arch: ModelConfig, opts: BuildOptions, config: TransformerConfig | None = None
) -> list[GPTModel]:
    """The model chunks of this rank (one per virtual pipeline stage), on the right device."""
    impl = resolve_impl(opts.impl)
    config = config or transformer_config(arch, opts)
    vpp = ps.get_virtual_pipeline_model_parallel_world_size()
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        model = GPTModel(
            config=config,
            transformer_layer_spec=block_spec(impl, config, stage),
            vocab_size=arch.vocab_size,
            max_sequence_length=arch.max_position_embeddings,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            parallel_output=True,
            share_embeddings_and_output_weights=arch.tie_word_embeddings,
            position_embedding_type="rope",
            rotary_base=int(arch.rope_theta),
            rope_scaling=arch.rope_scaling_factor is not None,
            rope_scaling_factor=arch.rope_scaling_factor or 8.0,
            vp_stage=stage,
        )
        if torch.cuda.is_available():
            model.cuda(torch.cuda.current_device())
        chunks.append(model)
    n_params = sum(p.numel() for m in chunks for p in m.parameters())
    logger.info(
        "built %s (%s spec): %.1fM parameters on this rank", arch.name, impl, n_params / 1e6
    )
    return chunks
