"""How the policy generates: which engine, its parallelism, memory and weight-update settings.

Pure Python (no torch, no vLLM) so that ``megatron_azr.config`` can compose it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EngineName = Literal["torch", "vllm", "vllm_cpu"]


@dataclass
class RolloutConfig:
    # torch: HF transformers on CPU (tests, tiny runs); vllm: CUDA vLLM colocated with the
    # training ranks; vllm_cpu: the `vllm-cpu` package, in-process, for CPU runs and CI.
    engine: EngineName = "torch"
    # "auto" = the actor's precision when the trainer builds the engine (its log-probs must be
    # the actor's), the dtype in the model's config.json for a standalone engine.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    tensor_parallel_size: int = 1
    # Share of GPU memory vLLM may take (weights + KV cache) while awake; the actor's memory
    # must fit beside it because both live on the same GPUs.
    gpu_memory_utilization: float = 0.5
    max_model_len: int | None = None  # None = the model's max_position_embeddings
    # Sequences decoded at once (vLLM's max_num_seqs; the torch engine's batch bound).
    max_num_seqs: int = 256
    # Reuses the KV cache of shared prompt prefixes, including among the n samples of a prompt.
    enable_prefix_caching: bool = True
    # vLLM sleep level between rollouts: 1 offloads weights to host memory, 2 discards them
    # (the next update_weights rewrites them anyway, so 2 saves the host copy).
    sleep_level: Literal[1, 2] = 2
    # Weight updates move in buckets of this size: the resharding staging memory (gathering the
    # actor's shards) and the engine's host-to-device transfers.
    update_bucket_mb: int = 512
    # How resharding moves shards between ranks: "collective" (torch.distributed: NCCL/gloo),
    # "shm" (a /dev/shm window, CPU ranks on one host), "auto" (shm where it works).
    reshard_transport: Literal["auto", "collective", "shm"] = "auto"
    # "auto" reads weights from model_dir; "dummy" reads only config and tokenizer, for engines
    # whose weights always come from the actor (update_weights must precede generate).
    load_format: Literal["auto", "dummy"] = "auto"
    # "processed": log-probs of the distribution actually sampled from (temperature, top-k,
    # top-p applied); "raw": log-softmax of the model's logits.
    logprobs_mode: Literal["processed", "raw"] = "processed"
    enforce_eager: bool = False  # vLLM GPU only: skip CUDA graph capture
    cpu_kvcache_space_gb: int = 1  # vllm_cpu only: VLLM_CPU_KVCACHE_SPACE
    seed: int = 0
    # Which ranks generate. "leader": one engine on global rank 0, completions broadcast (the
    # in-process engines' default). "replicas": an engine per group of tensor_parallel_size
    # ranks; prompts are dealt round-robin to the replicas and the completions all-gathered, so
    # every rank ends with the same list (colocated vLLM's default; on CPU, DP rollouts).
    # "auto" picks "replicas" for vllm and "leader" otherwise.
    placement: Literal["auto", "leader", "replicas"] = "auto"

    @property
    def replicated(self) -> bool:
        return self.placement == "replicas" or (self.placement == "auto" and self.engine == "vllm")

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be >= 1")
        if self.engine != "vllm" and self.tensor_parallel_size != 1:
            raise ValueError(f"engine '{self.engine}' runs in-process: tensor_parallel_size=1")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError("max_model_len must be >= 2 (or null for the model's own)")
        if self.max_num_seqs < 1 or self.update_bucket_mb < 1 or self.cpu_kvcache_space_gb < 1:
            raise ValueError("max_num_seqs, update_bucket_mb and cpu_kvcache_space_gb must be >= 1")
