"""Streaming weight updates into a rollout engine: checked names and shapes, bounded buckets.

An update is an iterable of ``(name, tensor)`` pairs consumed lazily, exactly once: the engine
never materialises the whole model. The producer (the resharding iterator, a checkpoint reader)
must not mutate a tensor after yielding it, because vLLM buffers a layer's tensors until the
whole layer has arrived; yielding in model order (layer by layer, as an HF state dict is
ordered) keeps that buffering to one layer.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

NamedTensors = Iterable[tuple[str, Any]]


@dataclass
class UpdateStats:
    tensors: int = 0
    bytes: int = 0
    peak_bucket_bytes: int = 0
    names: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.perf_counter)

    def log(self, engine: str) -> None:
        dt = time.perf_counter() - self.started
        gb = self.bytes / 1e9
        logger.info(
            "%s: updated %d tensors, %.3f GB in %.2f s (%.2f GB/s, peak bucket %.1f MB)",
            engine,
            self.tensors,
            gb,
            dt,
            gb / max(dt, 1e-9),
            self.peak_bucket_bytes / 1e6,
        )


def checked(
    named_tensors: NamedTensors,
    shapes: Mapping[str, torch.Size],
    what: str,
    stats: UpdateStats,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Re-yield ``named_tensors``, failing early and clearly on an unknown name or a wrong shape.

    ``what`` names the expected layout in errors ("HF parameter", "vLLM shard").
    """
    for name, tensor in named_tensors:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"update_weights: {name!r} is a {type(tensor).__name__}, not a tensor")
        expected = shapes.get(name)
        if expected is None:
            example = next(iter(shapes), "?")
            raise KeyError(f"update_weights: {name!r} is not a {what} name (e.g. {example!r})")
        if tensor.shape != expected:
            raise ValueError(
                f"update_weights: {name!r} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected)}"
            )
        stats.tensors += 1
        stats.bytes += tensor.numel() * tensor.element_size()
        stats.names.add(name)
        yield name, tensor


def in_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    device: torch.device,
    bucket_bytes: int,
    stats: UpdateStats,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Move tensors to ``device`` a bucket at a time (one transfer burst per bucket).

    Held here at any time: at most one bucket of not-yet-consumed tensors plus the tensor that
    did not fit in it; a tensor larger than a bucket forms a bucket of its own. Tensors already
    on ``device`` pass through without a copy.
    """
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0

    def flush() -> Iterator[tuple[str, torch.Tensor]]:
        nonlocal size
        stats.peak_bucket_bytes = max(stats.peak_bucket_bytes, size)
        moved = deque((n, t.to(device)) for n, t in bucket)
        bucket.clear()
        size = 0
        while moved:
            yield moved.popleft()

    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield from flush()
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield from flush()


def hf_parameter_shapes(model_dir: str | Path) -> tuple[dict[str, torch.Size], set[str]]:
    """Shapes of every HF state-dict entry of the model in ``model_dir``, and the names an update
    must cover to rewrite all weights (tied weights once). Built on the meta device: no memory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {name: t.shape for name, t in model.state_dict().items()}
    return shapes, {name for name, _ in model.named_parameters()}


def iter_safetensors(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream the tensors of an HF checkpoint directory one at a time (e.g. to load a saved
    checkpoint into a live engine with ``update_weights``)."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_dir}")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, f.get_tensor(name)
