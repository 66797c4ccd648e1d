"""Real multi-process runs (torchrun, gloo, megatron-core) against single-process references."""

import subprocess
import sys
from pathlib import Path

import pytest
from processes import child_env

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors.torch")


def _load_worker():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "dist_worker", Path(__file__).parent / "dist_worker.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hf_logprobs(model, sample):
    ids = torch.tensor([sample.prompt_token_ids + sample.response_token_ids])
    logp = torch.log_softmax(model(ids).logits[0], -1)
    p = len(sample.prompt_token_ids)
    return logp[p - 1 : -1].gather(1, ids[0, p:, None]).squeeze(1)


TOKENS = [3, 17, 250, 9, 511, 42, 0, 77, 128, 64, 300, 5, 6, 99]


def test_logits_match_transformers_and_round_trip_is_exact(tiny_models, torchrun, tmp_path):
    models = {k: tiny_models[k] for k in ("qwen2", "llama")}
    layouts = ["dp2", "tp2", "tp2sp", "pp2"]
    torchrun(
        2, "logits", {"out": str(tmp_path), "models": models, "layouts": layouts, "tokens": TOKENS}
    )
    samples = _load_worker().samples_for_step(0)
    for family, hf_dir in models.items():
        hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        with torch.no_grad():
            ref = hf(torch.tensor([TOKENS])).logits[0, :-1]  # the actor's rows: see dist_worker
            ref_lp = [_hf_logprobs(hf, s) for s in samples]
        original = safetensors.load_file(Path(hf_dir) / "model.safetensors")
        for layout in layouts:
            logits = torch.load(tmp_path / f"logits_{family}_{layout}.pt")
            diff = (logits - ref).abs().max().item()
            assert diff < 1e-4, f"{family} {layout}: max |logits - HF| = {diff}"
            # Several sequences packed per micro-batch give each one's own log-probs.
            packed = torch.load(tmp_path / f"packed_{family}_{layout}.pt")
            for got, want in zip(packed, ref_lp, strict=True):
                assert torch.allclose(torch.tensor(got), want, atol=1e-4), (family, layout)
            exported = safetensors.load_file(
                tmp_path / f"hf_{family}_{layout}" / "model.safetensors"
            )
            assert exported.keys() == original.keys(), (family, layout)
            for name, t in original.items():
                assert exported[name].dtype == t.dtype and torch.equal(exported[name], t), name


UPDATE_RUNS = [("qwen2", "dp2"), ("qwen2", "tp2"), ("qwen2", "tp2sp"), ("qwen2", "pp2")]
UPDATE_RUNS += [("qwen2_4l", "pp2vpp2")]  # interleaved 1F1B needs 2 layers per stage
UPDATE_RUNS += [("llama", "pp2")]  # tied embeddings split over stages: shared-grad sync


def test_update_matches_single_process_at_every_layout(tiny_models, torchrun, tmp_path):
    args = {"out": str(tmp_path), "models": tiny_models}
    singles = [(m, "single") for m in ("qwen2", "qwen2_4l", "llama")]
    torchrun(1, "update", {**args, "runs": singles})
    torchrun(2, "update", {**args, "runs": UPDATE_RUNS})
    for model, layout in UPDATE_RUNS:
        ref = torch.load(tmp_path / f"update_{model}_single.pt")
        got = torch.load(tmp_path / f"update_{model}_{layout}.pt")
        for a, b in zip(got["logprobs"], ref["logprobs"], strict=True):
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5), layout
        for step, (m, r) in enumerate(zip(got["metrics"], ref["metrics"], strict=True)):
            for key in ("loss", "grad_norm", "entropy", "tokens"):
                assert m[key] == pytest.approx(r[key], rel=1e-5, abs=1e-6), (layout, step, key)
        # Two AdamW steps at lr 1e-3 move weights by ~2e-3; layouts differ in float summation
        # order only (measured <= 3.3e-7 with adam_eps 1e-4, see dist_worker._actor_cfg).
        for name, t in ref["state"].items():
            diff = (got["state"][name] - t).abs().max().item()
            assert diff < 2e-6, (layout, name, diff)
    ref = torch.load(tmp_path / "update_qwen2_single.pt")
    expected = [
        "response tokens",
        "empty prompt",
        "outside the vocabulary",
        "non-finite",
        "1 entries",
    ]
    assert len(ref["errors"]) == len(expected)
    for message, fragment in zip(ref["errors"], expected, strict=True):
        assert fragment in message, (fragment, message)
    # KL to a frozen reference (a second model in the same processes): 0 before the first
    # step, positive once the policy has moved.
    kl_first, kl_second = ref["kl"]
    assert abs(kl_first) < 1e-9 and kl_second > 1e-6
    initial = safetensors.load_file(Path(tiny_models["qwen2"]) / "model.safetensors")
    moved = max((ref["state"][k] - v).abs().max().item() for k, v in initial.items())
    assert moved > 1e-3


def test_recompute_full_equals_none_on_cpu(tiny_models, torchrun, tmp_path):
    """megatron's checkpointed layers save and restore CUDA RNG states; on CPU the compat layer
    makes that the CPU generator's, and recomputing a layer must give the same step."""
    layouts = ["dp2", "tp2"]
    torchrun(2, "recompute", {"out": str(tmp_path), "hf": tiny_models["qwen2"], "layouts": layouts})
    for name in layouts:
        none = torch.load(tmp_path / f"{name}_none.pt")
        full = torch.load(tmp_path / f"{name}_full.pt")
        for a, b in zip(full["metrics"], none["metrics"], strict=True):
            for key in ("loss", "grad_norm", "entropy"):
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (name, key)
        for k, t in none["state"].items():
            assert torch.allclose(full["state"][k], t, rtol=0, atol=1e-7), (name, k)


def test_bf16_update_on_cpu_tracks_fp32(tiny_models, torchrun, tmp_path):
    """configs/smollm2_cpu.yaml trains in bf16 on CPU: megatron's mixed-precision optimizer must
    run there (bf16 model weights, fp32 masters) and take the fp32 step up to bf16 rounding."""
    torchrun(1, "bf16", {"out": str(tmp_path), "hf": tiny_models["qwen2"]})
    fp32 = torch.load(tmp_path / "bf16_fp32.pt")
    bf16 = torch.load(tmp_path / "bf16_bf16.pt")
    assert bf16["param_dtypes"] == ["torch.bfloat16"] and fp32["param_dtypes"] == ["torch.float32"]
    assert bf16["optimizers"] == ["Float16OptimizerWithFloat16Params"], bf16["optimizers"]
    assert fp32["optimizers"] == ["FP32Optimizer"], fp32["optimizers"]
    for a, b in zip(bf16["metrics"], fp32["metrics"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=0.05, abs=1e-3)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=0.05)

    # bf16 rounds each element's move (spacing 2^-8 relative), so compare the update's direction.
    def delta(r: dict) -> torch.Tensor:
        return torch.cat([(r["after"][k] - r["before"][k]).float().flatten() for k in r["before"]])

    cos = torch.nn.functional.cosine_similarity(delta(fp32), delta(bf16), dim=0).item()
    assert cos > 0.9, cos


def test_resume_at_another_layout_continues_exactly(tiny_models, torchrun, tmp_path):
    """Save after step 1 at TP=2 (and at DP=2 with the distributed optimizer), resume at
    TP=1 x PP=2 (and TP=2 with the distributed optimizer): steps 2-4 must match the run that
    never stopped. Adam state (moments and step count) drives those steps, so a lost or stale
    optimizer state shows up in the losses."""
    args = {"out": str(tmp_path), "hf": tiny_models["qwen2"]}
    runs = [("plain", "tp2", False), ("dopt", "dp2", True)]
    torchrun(2, "ckpt_save", {**args, "runs": runs})
    # The distributed optimizer's in-run format (dp_reshardable) loads only at its TP/PP: the
    # move to TP=2 goes through `azr convert reshardable`, run at the saving TP/PP on one rank
    # (a DP change, which that format allows).
    r = subprocess.run(
        [sys.executable, "-m", "megatron_azr.cli", "convert", "reshardable",
         str(tmp_path / "ckpt_dopt"), str(tmp_path / "ckpt_dopt_any")],
        env=child_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    resume = [("plain", "pp2", False), ("dopt", "tp2", True)]
    torchrun(
        2,
        "ckpt_resume",
        {
            **args,
            "runs": resume,
            "source": {"dopt": "ckpt_dopt_any"},
            "refused": [("ckpt_dopt", "tp2")],
        },
    )
    for name, _, _ in runs:
        full = torch.load(tmp_path / f"ckpt_{name}_uninterrupted.pt")["metrics"][1:]
        resumed = torch.load(tmp_path / f"ckpt_{name}_resumed.pt")["metrics"]
        for step, (a, b) in enumerate(zip(resumed, full, strict=True), start=2):
            for key in ("loss", "grad_norm"):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (name, step, key)
