"""HF checkpoints in and out of megatron model chunks, at any TP/PP layout.

* :class:`HFWeights` reads (sharded) safetensors lazily, one tensor at a time.
* :func:`load_hf` fills this rank's chunks from an HF directory (each rank reads only the
  tensors it holds and slices its TP shard).
* :func:`iter_hf_tensors` gathers full HF tensors out of a parallel model: a collective
  generator (every rank of the job iterates it) yielding ``(hf_name, tensor)`` on every rank or
  one; it is the rollout's bucketed resharding pass (``megatron_azr.rollout.reshard``).
* :func:`save_hf` writes those tensors (rank 0) as sharded safetensors, with the config and
  tokenizer files carried over, atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from megatron_azr import atomic
from megatron_azr.models import mapping
from megatron_azr.models.config import LLAMA3_ROPE_FIXED, ModelConfig

logger = logging.getLogger(__name__)

# Files of an HF model directory that are not weights and travel with them.
META_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
_IGNORED_HF = ("rotary_emb.inv_freq",)


class HFWeights:
    """Lazy reader of an HF directory's safetensors (single file or sharded with an index)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        self._stack = contextlib.ExitStack()
        self._handles: dict[str, object] = {}
        if index.is_file():
            self.weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        elif (self.path / "model.safetensors").is_file():
            with safe_open(self.path / "model.safetensors", "pt") as f:
                self.weight_map = dict.fromkeys(f.keys(), "model.safetensors")
        else:
            raise FileNotFoundError(f"no safetensors weights in {self.path}")

    def names(self) -> set[str]:
        return {n for n in self.weight_map if not n.endswith(_IGNORED_HF)}

    def _handle(self, name: str) -> Any:
        if name not in self.weight_map:
            raise KeyError(f"{self.path}: tensor {name!r} not found")
        file = self.weight_map[name]
        if file not in self._handles:
            self._handles[file] = self._stack.enter_context(safe_open(self.path / file, "pt"))
        return self._handles[file]

    def get(self, name: str) -> torch.Tensor:
        return self._handle(name).get_tensor(name)

    def dtype(self) -> torch.dtype:
        """The dtype the weights are stored in (that of the token embedding; one row read)."""
        name = "model.embed_tokens.weight"
        return self._handle(name).get_slice(name)[:1].dtype

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> HFWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _layout() -> tuple[int, int, int, int, int]:
    return (
        ps.get_tensor_model_parallel_world_size(),
        ps.get_tensor_model_parallel_rank(),
        ps.get_pipeline_model_parallel_world_size(),
        ps.get_pipeline_model_parallel_rank(),
        ps.get_virtual_pipeline_model_parallel_world_size() or 1,
    )


def global_named_parameters(
    chunks: list[torch.nn.Module], arch: ModelConfig
) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """This rank's parameters under canonical names with *global* layer indices."""
    _, _, pp, pp_rank, vpp = _layout()
    for vp_stage, chunk in enumerate(chunks):
        offset = mapping.layer_offset(arch.num_layers, pp, pp_rank, vpp, vp_stage)
        for name, param in chunk.named_parameters():
            canon = mapping.canonical_name(name)
            parts = mapping.split_layer_name(canon)
            if parts is not None:
                canon = mapping.with_layer(canon, offset + parts[0])
            yield canon, param


def _maps_by_name(arch: ModelConfig) -> dict[str, mapping.ParamMap]:
    maps = {
        m.mcore: m
        for m in mapping.param_maps(arch.num_layers, arch.qkv_bias, arch.tie_word_embeddings)
    }
    if arch.tie_word_embeddings:
        # With PP > 1 the last stage holds a copy of the tied embedding as its output layer.
        maps["output_layer.weight"] = mapping.ParamMap(
            "output_layer.weight", ("model.embed_tokens.weight",), "vocab", None
        )
    return maps


@torch.no_grad()
def load_hf(chunks: list[torch.nn.Module], arch: ModelConfig, hf_dir: str | Path) -> set[str]:
    """Copy the HF weights at ``hf_dir`` into this rank's chunks; returns the HF names read."""
    arch.check_matches(ModelConfig.from_hf_dir(hf_dir), f"the HF config at {hf_dir}")
    tp, tp_rank, *_ = _layout()
    dims = mapping.attn_dims(arch)
    maps = _maps_by_name(arch)
    used: set[str] = set()
    named = list(global_named_parameters(chunks, arch))
    quiet = dist.is_initialized() and dist.get_rank() != 0
    with HFWeights(hf_dir) as weights:
        for name, param in tqdm(named, desc="loading HF weights", disable=quiet, leave=False):
            m = maps.get(name)
            if m is None:
                raise KeyError(f"megatron parameter {name!r} has no HF mapping")
            full = mapping.from_hf(m.kind, tuple(weights.get(n) for n in m.hf), dims)
            local = mapping.shard(m.kind, full, tp_rank, tp, dims)
            if local.shape != param.shape:
                raise ValueError(
                    f"{name}: HF gives shard {tuple(local.shape)}, model has {tuple(param.shape)}"
                )
            param.copy_(local)
            used.update(m.hf)
    return used


def iter_hf_tensors(
    chunks: list[torch.nn.Module], arch: ModelConfig, dst: int | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Full HF tensors of the whole model, in canonical order, on every rank or only on global
    rank ``dst`` (collective: every rank iterates to the end, in step).

    This is the rollout's bucketed resharding pass (:mod:`megatron_azr.rollout.reshard`), so
    export and engine updates share one gather path.
    """
    from megatron_azr.rollout.reshard import hf_tensors  # rollout imports this module

    return hf_tensors(chunks, arch, dst=dst, progress=dst is not None)


def hf_config(arch: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """An HF ``config.json`` for ``arch`` (when no original config travels with the weights)."""
    from transformers import LlamaConfig, Qwen2Config

    kw: dict[str, Any] = dict(
        vocab_size=arch.vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.ffn_hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_query_groups,
        head_dim=arch.head_dim,
        max_position_embeddings=arch.max_position_embeddings,
        rms_norm_eps=arch.norm_eps,
        rope_theta=arch.rope_theta,
        tie_word_embeddings=arch.tie_word_embeddings,
        torch_dtype=str(dtype).removeprefix("torch."),
    )
    if arch.rope_scaling_factor is not None:
        kw["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": arch.rope_scaling_factor,
            **LLAMA3_ROPE_FIXED,
        }
    if arch.family == "qwen2":
        qwen = Qwen2Config(**kw)
        qwen.architectures = ["Qwen2ForCausalLM"]
        return qwen.to_dict()
    llama = LlamaConfig(**kw, attention_bias=False, mlp_bias=False)
    llama.architectures = ["LlamaForCausalLM"]
    return llama.to_dict()


def write_safetensors(
    tensors: Iterable[tuple[str, torch.Tensor]],
    out_dir: Path,
    max_shard_bytes: int,
    dtype: torch.dtype | None = None,
) -> None:
    """Write named tensors (cast to ``dtype``) as HF-style safetensors shards of at most
    ``max_shard_bytes`` (+ index when more than one), holding one shard in memory at a time.

    Shards are written under temporary names as they fill and renamed once their count, which
    HF file names carry, is known."""
    written: list[list[str]] = []  # tensor names of each shard written
    shard: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush() -> None:
        save_file(shard, out_dir / f".shard-{len(written)}", metadata={"format": "pt"})
        written.append(list(shard))
        shard.clear()

    for name, t in tensors:
        t = t.detach().to("cpu", dtype or t.dtype, copy=True).contiguous()
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > max_shard_bytes:
            flush()
            size = 0
        shard[name] = t
        del t
        size += nbytes
        total += nbytes
    flush()
    n = len(written)
    if n == 1:
        os.replace(out_dir / ".shard-0", out_dir / "model.safetensors")
        return
    weight_map = {}
    for i, names in enumerate(written):
        file = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        os.replace(out_dir / f".shard-{i}", out_dir / file)
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def copy_meta_files(src: Path, dst: Path) -> bool:
    """Copy the config and tokenizer files ``src`` holds into ``dst``; whether config.json was
    one of them."""
    present = [f for f in META_FILES if (src / f).is_file()]
    for f in present:
        shutil.copy2(src / f, dst / f)
    return "config.json" in present


def save_hf(
    chunks: list[torch.nn.Module],
    arch: ModelConfig,
    out_dir: str | Path,
    meta_from: str | Path | None = None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 5 * 1024**3,
) -> None:
    """Export the model as an HF directory (collective; rank 0 writes, atomically).

    Config and tokenizer files are copied from ``meta_from`` (the original HF directory);
    without it a config.json is generated from the card. ``dtype`` casts the weights (default:
    the model's own dtype).
    """
    out = Path(out_dir)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    tensors = iter_hf_tensors(chunks, arch, dst=0)
    if not rank0:
        for _ in tensors:
            pass
        dist.barrier()
        return
    tmp = atomic.staging_dir(out)
    try:
        dtype = dtype or next(iter(chunks[0].parameters())).dtype
        write_safetensors(tensors, tmp, max_shard_bytes, dtype)
        if meta_from is None or not copy_meta_files(Path(meta_from), tmp):
            (tmp / "config.json").write_text(json.dumps(hf_config(arch, dtype), indent=2))
        atomic.replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if dist.is_initialized():
            dist.barrier()
    logger.info("wrote HF model to %s", out)
