import dataclasses
import json

import pytest
import torch
from rollout_reference import PROMPTS, hf_greedy, hf_token_logprobs, hf_warpers
from transformers import AutoModelForCausalLM, AutoTokenizer

from megatron_azr.azr.protocols import SamplingParams
from megatron_azr.rollout import RolloutConfig
from megatron_azr.rollout.torch_engine import TorchEngine
from megatron_azr.rollout.weights import iter_safetensors


@pytest.fixture(scope="module")
def engine(model_a):
    return TorchEngine(model_a, RolloutConfig(seed=3))


@pytest.fixture(scope="module")
def hf(model_a):
    return AutoModelForCausalLM.from_pretrained(model_a).eval()


def test_greedy_matches_hf_generate(engine, hf, model_a):
    tok = AutoTokenizer.from_pretrained(model_a)
    outs = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=24))
    for prompt, (c,) in zip(PROMPTS, outs, strict=True):
        assert c.token_ids == hf_greedy(hf, tok, prompt, 24)
        assert c.prompt_token_ids == tok(prompt).input_ids
        assert len(c.logprobs) == len(c.token_ids)
        if c.finish_reason == "stop":  # HF stopped on EOS too (same token ids)
            assert c.token_ids[-1] == tok.eos_token_id
        else:
            assert len(c.token_ids) == 24
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
        # greedy log-probs are the model's own (no temperature)
        ref = hf_token_logprobs(hf, c.prompt_token_ids, c.token_ids)
        torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["processed", "raw"])
def test_sampled_logprobs_match_hf_forward(model_a, hf, mode):
    engine = TorchEngine(model_a, RolloutConfig(logprobs_mode=mode))
    sp = SamplingParams(temperature=0.7, top_p=0.9, top_k=40, max_tokens=16, n=3, seed=11)
    warpers = hf_warpers(0.7, 40, 0.9)
    for group in engine.generate(PROMPTS, sp):
        assert len(group) == 3
        for c in group:
            ref = hf_token_logprobs(
                hf, c.prompt_token_ids, c.token_ids, warpers if mode == "processed" else None
            )
            assert torch.isfinite(ref).all()  # every sampled token was inside top-k / top-p
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=0)


def test_n_samples_and_seed_determinism(engine):
    sp = SamplingParams(temperature=1.0, max_tokens=12, n=4, seed=7)
    first = engine.generate(PROMPTS, sp)
    again = engine.generate(PROMPTS, sp)
    alone = engine.generate(PROMPTS[1:2], sp)  # other batch neighbours, same samples
    ids = [[c.token_ids for c in g] for g in first]
    assert ids == [[c.token_ids for c in g] for g in again]
    assert ids[1] == [c.token_ids for c in alone[0]]
    assert len({tuple(t) for t in ids[0]}) == 4  # n distinct samples, not one copied
    other = engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_tokens=12, n=4, seed=8))
    assert ids != [[c.token_ids for c in g] for g in other]
    # without a seed the engine's generator advances: two calls differ
    unseeded = SamplingParams(temperature=1.0, max_tokens=12)
    assert engine.generate(PROMPTS, unseeded) != engine.generate(PROMPTS, unseeded)


def test_stop_strings_and_max_tokens(engine, model_a):
    tok = AutoTokenizer.from_pretrained(model_a)
    (full,) = engine.generate(PROMPTS[:1], SamplingParams(temperature=0.0, max_tokens=20))[0]
    # a stop string completed by the 6th token: its text starts inside the 5th token's text
    before = tok.decode(full.token_ids[:4])
    stop = tok.decode(full.token_ids[:6])[len(before) + 1 :]
    assert stop and stop not in tok.decode(full.token_ids[:5])
    sp = SamplingParams(temperature=0.0, max_tokens=20, stop=("never-generated", stop))
    (c,) = engine.generate(PROMPTS[:1], sp)[0]
    assert c.finish_reason == "stop"
    assert c.token_ids == full.token_ids[:6]  # the token completing the stop string is kept
    assert c.text == tok.decode(full.token_ids[:6])[: len(before) + 1]  # text cut before it
    assert c.logprobs == full.logprobs[:6]

    (c,) = engine.generate(PROMPTS[:1], SamplingParams(temperature=0.0, max_tokens=3))[0]
    assert c.token_ids == full.token_ids[:3] and c.finish_reason == "length"


def test_eos_stops_generation(tmp_path, model_a):
    """A token declared EOS ends the completion with finish_reason 'stop', kept in token_ids."""
    greedy = TorchEngine(model_a).generate(["print("], SamplingParams(temperature=0.0))[0][0]
    eos = greedy.token_ids[3]
    assert eos not in greedy.token_ids[:3]
    local = tmp_path / "m"
    local.mkdir()
    for f in model_a.iterdir():
        (local / f.name).write_bytes(f.read_bytes())
    gen_cfg = json.loads((local / "generation_config.json").read_text())
    gen_cfg["eos_token_id"] = [0, eos]
    (local / "generation_config.json").write_text(json.dumps(gen_cfg))
    (c,) = TorchEngine(local).generate(["print("], SamplingParams(temperature=0.0))[0]
    assert c.token_ids == greedy.token_ids[:4] and c.finish_reason == "stop"


def test_max_model_len_bounds_generation(model_a):
    engine = TorchEngine(model_a, RolloutConfig(max_model_len=8))
    (c,) = engine.generate(["print("], SamplingParams(temperature=0.0, max_tokens=50))[0]
    assert len(c.prompt_token_ids) + len(c.token_ids) == 8 and c.finish_reason == "length"
    with pytest.raises(ValueError, match="max_model_len=8"):
        engine.generate(["x " * 20], SamplingParams())


def test_bad_sampling_params_are_rejected(engine):
    for bad in (
        SamplingParams(n=0),
        SamplingParams(top_p=0.0),
        SamplingParams(top_k=0),
        SamplingParams(temperature=-1.0),
        SamplingParams(stop=("",)),
    ):
        with pytest.raises(ValueError, match="SamplingParams"):
            engine.generate(PROMPTS, bad)
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate([""], SamplingParams())


def test_update_weights_equals_fresh_engine(model_a, model_b):
    sp_greedy = SamplingParams(temperature=0.0, max_tokens=16)
    sp_sampled = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=16, n=2, seed=5)
    engine = TorchEngine(model_a)
    fresh = TorchEngine(model_b)
    before = engine.generate(PROMPTS, sp_greedy)
    engine.update_weights(iter_safetensors(model_b))  # streamed, one tensor at a time
    after = engine.generate(PROMPTS, sp_greedy)
    assert after != before
    assert after == fresh.generate(PROMPTS, sp_greedy)  # token ids, text and logprobs
    assert engine.generate(PROMPTS, sp_sampled) == fresh.generate(PROMPTS, sp_sampled)


def test_update_weights_rejects_bad_input_then_recovers(model_a, model_b):
    engine = TorchEngine(model_a)
    good = list(iter_safetensors(model_b))
    name, tensor = good[0]
    with pytest.raises(KeyError, match=r"model\.layers\.99\.mlp\.up_proj\.weight"):
        engine.update_weights([("model.layers.99.mlp.up_proj.weight", tensor)])
    with pytest.raises(ValueError, match=r"has shape \(3,\)"):
        engine.update_weights([good[1], (name, torch.zeros(3))])
    with pytest.raises(RuntimeError, match="update_weights"):  # half-updated: refuses
        engine.generate(PROMPTS, SamplingParams())
    with pytest.raises(RuntimeError, match="unwritten"):  # a partial update is not enough
        engine.update_weights(good[:3])
    engine.update_weights(good)
    sp = SamplingParams(temperature=0.0, max_tokens=8)
    assert engine.generate(PROMPTS, sp) == TorchEngine(model_b).generate(PROMPTS, sp)


def test_dummy_load_needs_weights_first(model_a):
    engine = TorchEngine(model_a, RolloutConfig(load_format="dummy"))
    with pytest.raises(RuntimeError, match="update_weights"):
        engine.generate(PROMPTS, SamplingParams())
    engine.update_weights(iter_safetensors(model_a))
    sp = SamplingParams(temperature=0.0, max_tokens=8)
    assert engine.generate(PROMPTS, sp) == TorchEngine(model_a).generate(PROMPTS, sp)


def test_sleep_and_wake_up_are_noops(engine):
    sp = SamplingParams(temperature=0.0, max_tokens=8)
    before = engine.generate(PROMPTS, sp)
    engine.sleep()
    engine.wake_up()
    assert engine.generate(PROMPTS, sp) == before


def test_batches_are_bounded_by_max_num_seqs(model_a):
    """Prompts are decoded max_num_seqs // n at a time; results do not depend on the split."""
    sp = SamplingParams(temperature=1.0, max_tokens=8, n=2, seed=1)
    small = TorchEngine(model_a, RolloutConfig(max_num_seqs=2)).generate(PROMPTS, sp)
    large = TorchEngine(model_a).generate(PROMPTS, sp)
    for g_small, g_large in zip(small, large, strict=True):
        for a, b in zip(g_small, g_large, strict=True):
            assert a.token_ids == b.token_ids
            # other batch shapes: same math, float rounding may differ
            torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=0)


def test_tied_embeddings_update_through_either_name(model_tied):
    weights = dict(iter_safetensors(model_tied))
    assert "lm_head.weight" not in weights  # saved once, under the embedding's name
    sp = SamplingParams(temperature=0.0, max_tokens=8)
    reference = TorchEngine(model_tied).generate(PROMPTS, sp)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        renamed = {(name if k == "model.embed_tokens.weight" else k): v for k, v in weights.items()}
        engine = TorchEngine(model_tied, RolloutConfig(load_format="dummy"))
        engine.update_weights(renamed.items())
        assert engine.generate(PROMPTS, sp) == reference


def test_seeded_prompts_do_not_depend_on_the_batch(model_a):
    """Per-prompt seeds: sample j of prompt i draws from seeds[i] + j, whatever else is in the
    call, however the call is split into batches."""
    sp = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=10, n=3)
    prompts = [*PROMPTS, PROMPTS[0]]  # a prompt twice, with other seeds: other samples
    seeds = [11, 500, 7, 900]

    def ids(groups):
        return [[c.token_ids for c in g] for g in groups]

    together = ids(TorchEngine(model_a).generate(prompts, sp, seeds))
    split = TorchEngine(model_a, RolloutConfig(max_num_seqs=3))  # one prompt per batch
    assert ids(split.generate(prompts, sp, seeds)) == together
    reordered = split.generate(prompts[::-1], sp, seeds[::-1])
    assert ids(reordered)[::-1] == together
    for i in range(len(prompts)):
        assert ids(split.generate([prompts[i]], sp, [seeds[i]]))[0] == together[i]
    # sample j is the first sample of seed seeds[1] + j
    single = dataclasses.replace(sp, n=1)
    firsts = [split.generate([prompts[1]], single, [seeds[1] + j])[0][0] for j in range(3)]
    assert [c.token_ids for c in firsts] == together[1]
    assert together[0] != together[3]
    # without seeds, sampling.seed seeds every prompt alike (vLLM's behaviour)
    shared = ids(split.generate(prompts, dataclasses.replace(sp, seed=11)))
    assert shared[0] == shared[3] == together[0]
    with pytest.raises(ValueError, match="one per prompt"):
        split.generate(prompts, sp, seeds[:2])


@pytest.mark.parametrize("shared_seed", [False, True])
def test_samples_of_different_prompts_are_independent(model_a, hf, shared_seed):
    """Two prompts whose next-token distributions p_a, p_b overlap: sampled independently, their
    first tokens agree at the rate sum_k p_a(k) p_b(k); under one shared seed (the coupling bug:
    the same uniform draws drive both) they agree far more often."""
    tok = AutoTokenizer.from_pretrained(model_a)
    prompts = ["def f(a):", "def f(b):"]
    p_a, p_b = (
        hf(torch.tensor([tok(p).input_ids])).logits[0, -1].softmax(-1).detach() for p in prompts
    )
    q = float((p_a * p_b).sum())
    n = 4000
    seeds = [0, 0] if shared_seed else [0, 10**6]
    groups = TorchEngine(model_a).generate(
        prompts, SamplingParams(temperature=1.0, max_tokens=1, n=n), seeds
    )
    agree = sum(a.token_ids == b.token_ids for a, b in zip(*groups, strict=True))
    sd = (n * q * (1 - q)) ** 0.5
    assert 20 < n * q < n / 10  # overlapping distributions, yet agreement is not the norm
    if shared_seed:
        assert agree > n * q + 20 * sd
    else:
        assert abs(agree - n * q) < 4.5 * sd
