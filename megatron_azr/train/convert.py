"""HF <-> megatron checkpoint conversion (``azr convert``).

``hf_to_mcore`` loads an HF Qwen2/Llama directory into megatron chunks (any TP/PP layout when
run under torchrun) and writes a weights-only actor checkpoint (megatron dist checkpoint,
reshardable to any layout on load) with the config and tokenizer files carried along.
``mcore_to_hf`` goes back. Weights keep their dtype (bf16 and fp32 natively; fp16 through fp32,
which represents it exactly), so HF -> megatron -> HF reproduces every tensor bit for bit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from megatron_azr.models.config import ModelConfig
from megatron_azr.models.hf_io import HFWeights
from megatron_azr.train import checkpoint
from megatron_azr.train.actor import Actor
from megatron_azr.train.config import ActorConfig, ParallelConfig

logger = logging.getLogger(__name__)

_PRECISION = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp32"}


def _converter(
    arch: ModelConfig, dtype: torch.dtype, parallel: ParallelConfig, init: Path
) -> Actor:
    if dtype not in _PRECISION:
        raise ValueError(f"unsupported weight dtype {dtype} (fp32, bf16 or fp16)")
    cfg = ActorConfig(precision=_PRECISION[dtype], transformer_impl="local")  # type: ignore[arg-type]
    return Actor(arch, parallel, cfg, init_from=init, trainable=False)


def hf_to_mcore(hf_dir: str | Path, ckpt_dir: str | Path, parallel: ParallelConfig) -> Path:
    hf_dir = Path(hf_dir)
    arch = ModelConfig.from_hf_dir(hf_dir)
    with HFWeights(hf_dir) as weights:
        dtype = weights.dtype()
        unknown = weights.names() - _expected_hf_names(arch)
    if unknown:
        raise ValueError(f"{hf_dir} has tensors this converter does not map: {sorted(unknown)}")
    actor = _converter(arch, dtype, parallel, hf_dir)
    out = checkpoint.save(actor, ckpt_dir, with_optimizer=False, hf_dtype=str(dtype))
    logger.info("converted %s (%s, %s) -> %s", hf_dir, arch.name, dtype, out)
    return out


def mcore_to_hf(ckpt_dir: str | Path, hf_dir: str | Path, parallel: ParallelConfig) -> Path:
    ckpt_dir = Path(ckpt_dir)
    meta = checkpoint.read_meta(ckpt_dir)
    arch = ModelConfig(**meta["model_card"])
    dtype = getattr(torch, meta.get("hf_dtype", meta["params_dtype"]).removeprefix("torch."))
    actor = _converter(arch, dtype, parallel, ckpt_dir)
    actor.export_hf(hf_dir, dtype=dtype)
    logger.info("exported %s -> %s (%s)", ckpt_dir, hf_dir, dtype)
    return Path(hf_dir)


def _expected_hf_names(arch: ModelConfig) -> set[str]:
    from megatron_azr.models.mapping import param_maps

    maps = param_maps(arch.num_layers, arch.qkv_bias, arch.tie_word_embeddings)
    names = {n for m in maps for n in m.hf}
    if arch.tie_word_embeddings:
        names.add("lm_head.weight")  # some tied checkpoints store the (identical) head anyway
    return names
