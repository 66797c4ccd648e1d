"""``ReplicatedRollout`` on real gloo ranks: ``torchrun --nproc-per-node 2 replicas_worker.py
OUT TP``. The engine stands in for a vLLM replica (CUDA vLLM does not run here) and tags every
completion with the rank that generated it, which shows where completions travelled."""

import json
import sys
from pathlib import Path

import torch.distributed as dist

from megatron_azr.azr.protocols import Completion, SamplingParams
from megatron_azr.rollout.config import RolloutConfig
from megatron_azr.trainer import ReplicatedRollout


class RankTaggingEngine:
    def generate(self, prompts, sampling, seeds=None):
        rank = dist.get_rank()
        return [[Completion(f"{p}@{rank}", [1], [0.0], [1], "stop")] for p in prompts]


if __name__ == "__main__":
    out, tp = Path(sys.argv[1]), int(sys.argv[2])
    dist.init_process_group("gloo")
    cfg = RolloutConfig(engine="vllm", tensor_parallel_size=tp)
    rollout = ReplicatedRollout(RankTaggingEngine(), cfg)
    got = rollout.generate(["a", "b", "c"], SamplingParams(max_tokens=1))
    texts = [c[0].text for c in got]
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(texts))
    dist.destroy_process_group()
