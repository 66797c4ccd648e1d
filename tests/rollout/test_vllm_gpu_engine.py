"""The colocated CUDA vLLM engine: sleep/wake memory, weight updates (HF names and own shards).

Each engine runs in its own child process, colocated as under torchrun: a one-rank
torch.distributed world, ``distributed_executor_backend="external_launcher"``.
"""

import importlib.util
import socket

import pytest
import torch
from rollout_reference import PROMPTS
from rollout_remote import RemoteEngines

from megatron_azr.azr.protocols import SamplingParams
from megatron_azr.rollout.weights import iter_safetensors

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.vllm,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs CUDA vllm"),
]

GPU = dict(engine="vllm", dtype="bfloat16", gpu_memory_utilization=0.3, max_model_len=512, seed=0)
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)
SAMPLED = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=16, n=3, seed=5)


def colocated() -> RemoteEngines:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    r = RemoteEngines({**env, "MASTER_PORT": str(port)})
    r("init_process_group")
    return r


def same_generations(a, b) -> None:
    for ga, gb in zip(a, b, strict=True):
        for ca, cb in zip(ga, gb, strict=True):
            assert ca.token_ids == cb.token_ids and ca.text == cb.text
            assert ca.finish_reason == cb.finish_reason
            torch.testing.assert_close(ca.logprobs, cb.logprobs, atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def fresh_b(model_b):
    """Generations of an engine built directly on model_b: what an updated engine must give."""
    r = colocated()
    try:
        r("build", "b", str(model_b), GPU)
        yield r("generate", "b", PROMPTS, GREEDY), r("generate", "b", PROMPTS, SAMPLED)
    finally:
        r.close()


def test_sleep_frees_memory_and_update_then_wake_equals_fresh(model_a, model_b, fresh_b):
    r = colocated()
    try:
        free_before = r("cuda_free_bytes")
        r("build", "u", str(model_a), GPU)
        awake = r("cuda_free_bytes")
        used = free_before - awake
        assert used > 0
        r("sleep", "u")  # level 2: weights and KV cache released
        assert r("cuda_free_bytes") - awake > 0.8 * used
        with pytest.raises(RuntimeError, match="asleep"):
            r("generate", "u", PROMPTS, GREEDY)
        r("update_from_dir", "u", str(model_b))  # wakes the weights only
        assert r("cuda_free_bytes") - awake > 0.5 * used  # the KV cache is still released
        r("wake_up", "u")
        same_generations(r("generate", "u", PROMPTS, GREEDY), fresh_b[0])
        same_generations(r("generate", "u", PROMPTS, SAMPLED), fresh_b[1])
        # level 2 discarded the weights: waking without an update must not generate garbage
        r("sleep", "u")
        r("wake_up", "u")
        with pytest.raises(RuntimeError, match="no valid weights"):
            r("generate", "u", PROMPTS, GREEDY)
    finally:
        r.close()


def test_level1_sleep_keeps_weights(model_a):
    r = colocated()
    try:
        r("build", "k", str(model_a), {**GPU, "sleep_level": 1})
        before = r("generate", "k", PROMPTS, GREEDY)
        r("sleep", "k")
        r("wake_up", "k")
        same_generations(r("generate", "k", PROMPTS, GREEDY), before)
    finally:
        r.close()


def hf_to_tp1_shards(model_dir, shapes):
    """HF tensors in vLLM's own layout at TP=1: q/k/v fused as qkv_proj, gate/up as gate_up_proj
    (what the resharder yields when the engine's TP equals the actor's)."""
    hf = dict(iter_safetensors(model_dir))
    out = {}
    for name, shape in shapes.items():
        if ".qkv_proj." in name:
            parts = [hf[name.replace("qkv_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            tensor = torch.cat(parts)
        elif ".gate_up_proj." in name:
            parts = [hf[name.replace("gate_up_proj", p)] for p in ("gate_proj", "up_proj")]
            tensor = torch.cat(parts)
        else:
            tensor = hf[name]
        assert tensor.shape == shape, name  # vocab 512 needs no padding at TP=1
        out[name] = tensor.to(torch.bfloat16)  # host memory: the engine moves it per bucket
    return list(out.items())


def test_engine_shard_update_equals_fresh(model_a, model_b, fresh_b):
    r = colocated()
    try:
        r("build", "s", str(model_a), GPU)
        shapes = r("weight_shard_shapes", "s")
        assert any(".qkv_proj." in n for n in shapes) and any(".gate_up_proj." in n for n in shapes)
        r("sleep", "s")
        r("update_weights", "s", hf_to_tp1_shards(model_b, shapes), layout="shards")
        r("wake_up", "s")
        same_generations(r("generate", "s", PROMPTS, GREEDY), fresh_b[0])
    finally:
        r.close()


def test_megatron_model_resharded_into_engine_shards_equals_fresh(model_a, model_b, fresh_b):
    """A megatron-core model holding model_b's weights, pushed with ``reshard.push_weights``:
    the engine's TP equals the model's, so it gets its own shards (layout="shards")."""
    r = colocated()
    try:
        r("build", "m", str(model_a), GPU)
        r("sleep", "m")
        r("push_from_megatron", "m", str(model_b))
        r("wake_up", "m")
        same_generations(r("generate", "m", PROMPTS, GREEDY), fresh_b[0])
    finally:
        r.close()
