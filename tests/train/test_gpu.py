"""GPU paths: Transformer Engine layer spec, FP8 recipes, NCCL. Skipped without CUDA.

Run on a GPU node with ``pytest -m gpu tests/train/test_gpu.py`` (the TE tests also need
``transformer-engine[pytorch]``; the two-GPU test needs two GPUs).
"""

import random

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _samples(n=12, seed=0, vocab=512, advantage=None):
    from megatron_azr.azr.protocols import Role, TaskType, TrainSample

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(8, 40))]
        response = [rng.randrange(vocab) for _ in range(rng.randint(4, 60))]
        adv = rng.gauss(0, 1) if advantage is None else advantage
        out.append(TrainSample(TaskType.DEDUCTION, Role.SOLVE, prompt, response, 0.0, adv))
    return out


def _hf_logprobs(hf_dir, samples):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).cuda()
    out = []
    with torch.no_grad():
        for s in samples:
            ids = torch.tensor([s.prompt_token_ids + s.response_token_ids], device="cuda")
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            p = len(s.prompt_token_ids)
            tgt = ids[0, p:]
            out.append(logp[p - 1 : -1].gather(1, tgt[:, None]).squeeze(1).cpu())
    return out


def _actor(hf_dir, impl, precision="bf16", fp8="none", lr=1e-6):
    from megatron_azr.models.config import ModelConfig
    from megatron_azr.train.actor import Actor
    from megatron_azr.train.config import ActorConfig, ParallelConfig

    cfg = ActorConfig(
        precision=precision, fp8=fp8, transformer_impl=impl, lr=lr, micro_batch_tokens=256
    )
    return Actor(ModelConfig.from_hf_dir(hf_dir), ParallelConfig(), cfg, init_from=hf_dir)


def _flat(per_sample):
    return torch.tensor([x for lp in per_sample for x in lp])


def test_local_spec_on_gpu_matches_transformers(tiny_models):
    samples = _samples()
    ref = _hf_logprobs(tiny_models["qwen2"], samples)
    got = _actor(tiny_models["qwen2"], "local", precision="fp32").logprobs(samples)
    for a, b in zip(got, ref, strict=True):
        assert torch.allclose(torch.tensor(a), b, atol=1e-4)


def test_te_spec_matches_local_spec_in_bf16(tiny_models):
    """Same weights, same packed batch: TE layers (THD packing, fused RMSNorm+linear) against
    the local spec (block-diagonal mask), both in bf16, both against an fp32 reference."""
    pytest.importorskip("transformer_engine")
    samples = _samples()
    ref = torch.cat(_hf_logprobs(tiny_models["qwen2"], samples))
    local = _flat(_actor(tiny_models["qwen2"], "local").logprobs(samples))
    te = _flat(_actor(tiny_models["qwen2"], "transformer_engine").logprobs(samples))
    scale = ref.abs().mean().item()
    # bf16 carries ~3 significant digits: per-token log-probs agree to a few percent.
    assert (te - local).abs().mean().item() < 0.02 * scale
    assert (te - ref).abs().mean().item() < 0.03 * scale
    assert (local - ref).abs().mean().item() < 0.03 * scale
    print(f"bf16 |TE - local| mean {(te - local).abs().mean():.4f} (|logp| mean {scale:.3f})")


def test_checkpoint_moves_between_local_and_te_specs(tiny_models, tmp_path):
    """Local-spec checkpoints use TE's parameter keys: a TE model loads them."""
    pytest.importorskip("transformer_engine")
    from megatron_azr.train import checkpoint

    samples = _samples()
    local = _actor(tiny_models["qwen2"], "local")
    local.update(samples)  # weights now differ from the HF directory
    checkpoint.save(local, tmp_path / "ckpt")
    want = _flat(local.logprobs(samples))
    te = _actor(tiny_models["qwen2"], "transformer_engine")
    checkpoint.load(te, tmp_path / "ckpt")
    got = _flat(te.logprobs(samples))
    assert te.steps == 1
    assert (got - want).abs().mean().item() < 0.02 * want.abs().mean().item()


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise", "mxfp8"])
def test_fp8_update_runs_and_loss_decreases(tiny_models, recipe):
    pytest.importorskip("transformer_engine")
    import transformer_engine.common.recipe as te_recipe
    from megatron.core.fp8_utils import get_fp8_recipe

    from megatron_azr.models import te

    try:
        te.check_fp8(recipe)
    except RuntimeError as e:
        pytest.skip(str(e))
    actor = _actor(tiny_models["qwen2"], "transformer_engine", fp8=recipe, lr=1e-3)
    expected = {
        "delayed": te_recipe.DelayedScaling,
        "tensorwise": te_recipe.Float8CurrentScaling,
        "mxfp8": te_recipe.MXFP8BlockScaling,
    }[recipe]
    assert isinstance(get_fp8_recipe(actor.tconfig), expected)
    samples = _samples(advantage=1.0)
    old = actor.logprobs(samples)
    # Off-policy against fixed old log-probs: the surrogate -A*r falls as the policy raises
    # the probability of the (positively rewarded) responses, until the clip at 1 + 0.2.
    losses = [actor.update(samples, old_logprobs=old)["loss"] for _ in range(6)]
    print(recipe, [round(x, 4) for x in losses])
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.05


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_nccl_tp2_and_pp2_match_one_gpu(tiny_models, torchrun, tmp_path):
    args = {"out": str(tmp_path), "models": tiny_models}
    torchrun(1, "update", {**args, "runs": [("qwen2", "single")]})
    torchrun(2, "update", {**args, "runs": [("qwen2", "tp2"), ("qwen2", "pp2")]})
    ref = torch.load(tmp_path / "update_qwen2_single.pt")
    for layout in ("tp2", "pp2"):
        got = torch.load(tmp_path / f"update_qwen2_{layout}.pt")
        for m, r in zip(got["metrics"], ref["metrics"], strict=True):
            assert m["loss"] == pytest.approx(r["loss"], rel=1e-4)
            assert m["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-3)
