"""``Actor.update`` against an independent reference: the HF ``transformers`` model with the same
weights, the policy loss written out here, ``torch.optim.AdamW`` and
``torch.nn.utils.clip_grad_norm_``.

The loss (spec §8, sub-batch aggregation of ``actor.loss_aggregation=subbatch``): per response
token the PPO-clip surrogate with old log-probs equal to the current ones (ratio 1) minus
``entropy_coeff`` x entropy; the token mean inside each (task, role) sub-batch; the mean over the
sub-batches. Two on-policy steps per case (one Adam step is nearly ``lr * sign(g)``, blind to
gradient magnitudes; the second combines both steps' gradients, so a wrong scale or clip shows
in the weights). Megatron's AdamW decays every parameter (biases and norms too: its per-group
``wd_mult`` is applied only by megatron's LR scheduler, which the actor does not run), as veRL's
FSDP AdamW does, so the reference decays every parameter too.

Tolerances (fp32): loss and grad norm rel 1e-5; weights 2e-6 absolute, with lr 1e-3 moving them
by ~2e-3 over the two steps.
"""

from collections import defaultdict

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LR, WD, ENT, CLIP_RATIO = 1e-3, 0.01, 0.01, 0.2
# Adam moves an element by ~lr * g / (|g| + eps): with eps 1e-8, elements whose gradient is
# ~1e-6 (rounding noise of fp32 sums ~1e-8) would move by amounts decided by that noise.
BETAS, EPS = (0.9, 0.95), 1e-4

# Two sub-batch layouts of very different token counts, advantages of both signs.
BATCHES = [
    [
        ("deduction", "solve", 5, 22, 1.3),
        ("deduction", "solve", 9, 17, -0.6),
        ("abduction", "propose", 12, 3, -1.4),
        ("abduction", "propose", 4, 5, 0.9),
        ("abduction", "propose", 7, 2, 0.4),
        ("induction", "solve", 3, 8, -0.2),
    ],
    [
        ("induction", "propose", 6, 30, 0.7),
        ("deduction", "solve", 10, 4, -1.1),
        ("deduction", "solve", 2, 6, 1.6),
    ],
]
CASES = {
    "no_clip": {"grad_clip": 1e6},
    "clipped": {"grad_clip": 0.05},  # below every step's grad norm (asserted)
}


def _batches(vocab: int) -> list[list[dict]]:
    """Token ids from 1: HF's embedding never updates the row of ``pad_token_id`` (0 in the tiny
    models; ``nn.Embedding(padding_idx=...)``), megatron's trains every row."""
    g = torch.Generator().manual_seed(0)
    out = []
    for batch in BATCHES:
        rows = []
        for task, role, n_prompt, n_response, adv in batch:
            ids = torch.randint(1, vocab, (n_prompt + n_response,), generator=g).tolist()
            rows.append(
                dict(task=task, role=role, prompt=ids[:n_prompt], response=ids[n_prompt:], adv=adv)
            )
        out.append(rows)
    return out


def _reference_loss(model, batch: list[dict]) -> torch.Tensor:
    per_subbatch = defaultdict(list)
    for s in batch:
        ids = torch.tensor([s["prompt"] + s["response"]])
        p = len(s["prompt"])
        logp = torch.log_softmax(model(ids).logits[0, p - 1 : -1], -1)
        lp = logp.gather(1, ids[0, p:, None]).squeeze(1)
        entropy = -(logp.exp() * logp).sum(-1)
        ratio = torch.exp(lp - lp.detach())
        adv = s["adv"]
        pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - CLIP_RATIO, 1 + CLIP_RATIO))
        per_subbatch[(s["task"], s["role"])].append(pg - ENT * entropy)
    means = [torch.cat(tokens).mean() for tokens in per_subbatch.values()]
    return torch.stack(means).mean()


def _reference_run(hf_dir: str, batches: list[list[dict]], clip: float) -> list[dict]:
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    steps = []
    for batch in batches:
        opt.zero_grad()
        loss = _reference_loss(model, batch)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        steps.append({"loss": loss.item(), "grad_norm": norm.item(), "state": state})
    return steps


def test_update_matches_hf_adamw_reference(tiny_models, torchrun, tmp_path):
    hf_dir = tiny_models["qwen2"]
    batches = _batches(vocab=512)
    cases = {
        name: dict(
            lr=LR,
            adam_beta1=BETAS[0],
            adam_beta2=BETAS[1],
            adam_eps=EPS,
            weight_decay=WD,
            entropy_coeff=ENT,
            clip_ratio=CLIP_RATIO,
            **kw,
        )
        for name, kw in CASES.items()
    }
    # Several micro-batches per step (16-token budget): the aggregation must not see them.
    for kw in cases.values():
        kw["micro_batch_tokens"] = 16
    args = {"out": str(tmp_path), "hf": hf_dir, "batches": batches, "cases": cases}
    torchrun(1, "reference", args)
    initial = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    for name, kw in CASES.items():
        start = initial.state_dict()
        got = torch.load(tmp_path / f"reference_{name}.pt")
        want = _reference_run(hf_dir, batches, kw["grad_clip"])
        for step, (g, w) in enumerate(zip(got, want, strict=True)):
            m = g["metrics"]
            assert m["micro_batches"] > 1
            assert m["loss"] == pytest.approx(w["loss"], rel=1e-5), (name, step)
            assert m["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-5), (name, step)
            if name == "clipped":
                assert w["grad_norm"] > 2 * kw["grad_clip"], "the clip must bite"
            assert g["state"].keys() == w["state"].keys()
            for k, t in w["state"].items():
                diff = (g["state"][k] - t).abs().max().item()
                assert diff < 2e-6, (name, step, k, diff)
            moved = max((g["state"][k] - v).abs().max().item() for k, v in start.items())
            assert moved > 5e-4, (name, step, moved)
            start = g["state"]
