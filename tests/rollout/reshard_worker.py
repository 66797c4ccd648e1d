"""Multi-process resharding scenarios, launched by torchrun from tests/rollout/test_reshard.py.

``python -m torch.distributed.run --nproc-per-node N tests/rollout/reshard_worker.py SCENARIO JSON``
Checks that need every rank's view assert here (a failure fails the launch with its traceback);
results the test compares against other processes (HF, vLLM) are written by rank 0.
"""

from __future__ import annotations

import ctypes
import gc
import json
import random
import re
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from reshard_shapes import vllm_shard, vllm_shard_shapes
from safetensors.torch import load_file

from megatron_azr.azr.protocols import Role, TaskType, TrainSample
from megatron_azr.models import hf_io, mapping
from megatron_azr.models.builder import BuildOptions, build_model
from megatron_azr.models.config import ModelConfig
from megatron_azr.rollout import reshard
from megatron_azr.train.config import ParallelConfig
from megatron_azr.train.dist import init_parallel, init_process_group

LAYOUTS = {
    "tp2": ParallelConfig(tp=2),
    "pp2": ParallelConfig(pp=2),
    "pp2vpp2": ParallelConfig(pp=2, vpp=2),
    "dp2": ParallelConfig(),
    "tp2pp2": ParallelConfig(tp=2, pp=2),
}


def hf_order(arch: ModelConfig) -> list[str]:
    maps = mapping.param_maps(arch.num_layers, arch.qkv_bias, arch.tie_word_embeddings)
    return [name for m in maps for name in m.hf]


def check_equal(got: dict[str, torch.Tensor], expect: dict[str, torch.Tensor], what: str) -> None:
    assert got.keys() == expect.keys(), (what, sorted(got.keys() ^ expect.keys()))
    for name, t in expect.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), (what, name)


# -- scenario: every layout, transport, destination and bucket size is exact ----------------


def scenario_layouts(args: dict) -> None:
    rank = dist.get_rank()
    for model, layouts in args["runs"]:
        hf_dir = args["models"][model]
        arch = ModelConfig.from_hf_dir(hf_dir)
        expect = load_file(Path(hf_dir) / "model.safetensors")
        expect = {
            k: v for k, v in expect.items() if k != "lm_head.weight" or not arch.tie_word_embeddings
        }
        for name in layouts:
            par = LAYOUTS[name]
            init_parallel(par, seed=3)
            chunks = build_model(arch, BuildOptions())
            hf_io.load_hf(chunks, arch, hf_dir)
            passes = [(t, None, b) for t in ("collective", "shm") for b in (1, 50_000, 1 << 30)]
            passes += [(t, d, 50_000) for t in ("collective", "shm") for d in (0, 1)]
            for transport, dst, bucket in passes:
                what = f"{model} {name} {transport} dst={dst} bucket={bucket}"
                it = reshard.hf_tensors(
                    chunks, arch, bucket_bytes=bucket, dst=dst, transport=transport
                )
                got = {k: v.clone() for k, v in it}
                if dst is None or dst == rank:
                    assert list(got) == hf_order(arch), what  # HF order, each name once
                    check_equal(got, expect, what)
                else:
                    assert not got, what
            shapes = vllm_shard_shapes(arch, par.tp)
            tp_rank = rank % par.tp
            for transport in ("collective", "shm"):
                it = reshard.engine_shards(
                    chunks, arch, shapes, bucket_bytes=50_000, transport=transport
                )
                got = {k: v.clone() for k, v in it}
                want = {n: vllm_shard(expect, n, par.tp, tp_rank) for n in shapes}
                check_equal(got, want, f"{model} {name} {transport} engine shards")


# -- scenario: peak memory of a pass ------------------------------------------------------------


def _status(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def _reset_peak() -> int:
    """Return freed heap to the OS, reset the kernel's RSS high-water mark, return RSS."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def scenario_memory(args: dict) -> None:
    """Peak RSS above the baseline during passes whose consumer copies each tensor and drops it."""
    arch = ModelConfig(**args["arch"])
    init_parallel(ParallelConfig(tp=2), seed=3)
    chunks = build_model(arch, BuildOptions())
    # The consumer copies each tensor into memory of its own, as an engine does.
    sink = torch.zeros(max(arch.vocab_size, arch.ffn_hidden_size) * arch.hidden_size)
    results = []
    for transport in ("collective", "shm"):
        for dst in (0, None):
            dist.barrier()
            base = _reset_peak()
            it = reshard.hf_tensors(
                chunks, arch, bucket_bytes=args["bucket_bytes"], dst=dst, transport=transport
            )
            tensors = 0
            for _, t in it:
                tensors += 1
                sink[: t.numel()].view_as(t).copy_(t)
                del t
            peak = _status("VmHWM") - base
            results.append({"transport": transport, "dst": dst, "peak": peak, "tensors": tensors})
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, results)
    if dist.get_rank() == 0:
        Path(args["out"]).write_text(json.dumps(out))


# -- scenario: train at TP=2 x PP=2, reshard into the torch and vLLM-CPU engines, export ----------


def _train_samples(step: int, vocab: int, n: int = 8) -> list[TrainSample]:
    rng = random.Random(100 + step)
    out = []
    for _ in range(n):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(3, 12))]
        response = [rng.randrange(vocab) for _ in range(rng.randint(4, 20))]
        out.append(
            TrainSample(TaskType.DEDUCTION, Role.SOLVE, prompt, response, 1.0, rng.gauss(0, 1))
        )
    return out


def scenario_e2e(args: dict) -> None:
    """Rank 0 hosts both engines (vLLM-CPU in a child process of its own); every rank iterates
    each resharding pass; the test compares rank 0's results with HF on the exported weights."""
    from rollout_reference import PROMPTS
    from rollout_remote import RemoteEngines

    from megatron_azr.azr.protocols import SamplingParams
    from megatron_azr.rollout import RolloutConfig
    from megatron_azr.rollout.torch_engine import TorchEngine
    from megatron_azr.train.actor import Actor
    from megatron_azr.train.config import ActorConfig

    rank, out, hf_dir = dist.get_rank(), Path(args["out"]), args["model"]
    remote = None
    if rank == 0:  # vLLM builds (~15 s) while the actor trains
        remote = RemoteEngines()
        remote.submit("build", "v", hf_dir, {**args["vllm"], "load_format": "dummy"})
    arch = ModelConfig.from_hf_dir(hf_dir)
    cfg = ActorConfig(precision="fp32", lr=1e-3, micro_batch_tokens=64, entropy_coeff=0.01)
    actor = Actor(arch, LAYOUTS["tp2pp2"], cfg, init_from=hf_dir)
    metrics = [actor.update(_train_samples(step, arch.vocab_size)) for step in (1, 2)]

    # (a) the torch engine, through push_weights: only rank 0 reads (shared-memory transport)
    engine = None
    if rank == 0:
        engine = TorchEngine(hf_dir, RolloutConfig(engine="torch", load_format="dummy"))
    rollout_cfg = RolloutConfig(engine="torch", update_bucket_mb=1)
    reshard.push_weights(engine, actor.models, arch, rollout_cfg, dst=0)

    # (b) vLLM-CPU: every rank reads (collective transport); rank 0 streams into the engine
    stream = reshard.hf_tensors(actor.models, arch, bucket_bytes=256 << 10, transport="collective")
    if remote is not None:
        assert remote.result("build") == {"dtype": "torch.float32", "prefix_caching": True}
        remote.stream("v", stream)
    else:
        for _ in stream:
            pass

    # (c) the export path, (d) this rank's vLLM shards at TP=2
    actor.export_hf(out / "exported")
    shapes = vllm_shard_shapes(arch, 2)
    shards = {k: v.clone() for k, v in reshard.engine_shards(actor.models, arch, shapes)}
    torch.save(shards, out / f"shards_rank{rank}.pt")

    # (e) generations, logits and the actor's own log-probs of the same tokens
    greedy = SamplingParams(temperature=0.0, max_tokens=24)
    result: dict = {"metrics": metrics}
    if rank == 0:
        assert engine is not None and remote is not None
        result["torch"] = engine.generate(PROMPTS, greedy)
        result["vllm"] = remote("generate", "v", PROMPTS, greedy)
        remote.close()
        tokens = torch.tensor([args["tokens"]])
        with torch.no_grad():
            result["torch_logits"] = engine.model(tokens).logits[0]
        result["torch_state"] = {k: v.clone() for k, v in engine.model.state_dict().items()}
    completions = [result.get("torch")]
    dist.broadcast_object_list(completions, src=0)
    samples = [
        TrainSample(TaskType.DEDUCTION, Role.SOLVE, c.prompt_token_ids, c.token_ids, 0.0, 0.0)
        for (c,) in completions[0]
    ]
    result["actor_logprobs"] = actor.logprobs(samples)
    if rank == 0:
        torch.save(result, out / "e2e.pt")


SCENARIOS = {"layouts": scenario_layouts, "memory": scenario_memory, "e2e": scenario_e2e}

if __name__ == "__main__":
    init_process_group()
    SCENARIOS[sys.argv[1]](json.loads(sys.argv[2]))
    dist.barrier()
    dist.destroy_process_group()
