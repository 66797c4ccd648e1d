import pytest

torch = pytest.importorskip("torch")

from megatron_azr.train.logprobs import logprob_and_entropy, reference_logprob_and_entropy  # noqa: E402
from megatron_azr.train.loss import (  # noqa: E402
    METRICS,
    PolicyLossConfig,
    policy_loss_sums,
    token_weights,
)


def test_on_policy_loss_is_reinforce_with_entropy_bonus():
    lp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    ent = torch.tensor([3.0, 2.0, 1.0])
    adv = torch.tensor([1.0, -1.0, 2.0])
    cfg = PolicyLossConfig(entropy_coeff=0.1)
    total, sums = policy_loss_sums(lp, ent, lp.detach(), adv, torch.ones(3), cfg)
    assert total.item() == pytest.approx(-(1 - 1 + 2) - 0.1 * 6)
    total.backward()
    assert lp.grad.tolist() == pytest.approx((-adv).tolist())  # d(-A r)/dlogp at r = 1
    m = dict(zip(METRICS, sums.tolist(), strict=True))
    assert m["clip_frac"] == 0 and m["ratio"] == pytest.approx(3) and m["tokens"] == 3


def test_asymmetric_clipping():
    old = torch.zeros(4)
    lp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))  # ratios
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    cfg = PolicyLossConfig(clip_low=0.2, clip_high=0.28, entropy_coeff=0.0)
    lp = lp.clone().requires_grad_(True)
    total, sums = policy_loss_sums(lp, torch.zeros(4), old, adv, torch.ones(4), cfg)
    # A>0 & r>1+high: clipped (1.28); A<0 & r<1-low: clipped (0.8); the others keep r.
    assert total.item() == pytest.approx(-1.28 + 1.5 - 0.5 + 0.8)
    total.backward()
    assert lp.grad.tolist() == pytest.approx([0.0, 1.5, -0.5, 0.0])
    assert dict(zip(METRICS, sums.tolist(), strict=True))["clip_frac"] == 2


def test_kl_penalty_k3():
    lp = torch.tensor([-1.0, -2.0])
    cfg = PolicyLossConfig(entropy_coeff=0.0, kl_coef=0.5)
    with pytest.raises(ValueError, match="reference"):
        policy_loss_sums(lp, lp, lp, lp, torch.ones(2), cfg)
    _, same = policy_loss_sums(lp, lp, lp, torch.zeros(2), torch.ones(2), cfg, ref_logprob=lp)
    assert dict(zip(METRICS, same.tolist(), strict=True))["kl"] == 0
    ref = torch.tensor([-1.5, -1.0])
    total, _sums = policy_loss_sums(lp, lp, lp, torch.zeros(2), torch.ones(2), cfg, ref)
    d = ref - lp
    assert total.item() == pytest.approx(0.5 * (torch.exp(d) - d - 1).sum().item())


def test_subbatch_weights_average_the_token_means_of_the_subbatches():
    groups = ["a", "b", "a", "c", "d"]
    lengths = [3, 2, 1, 0, 6]  # a: 4 tokens, b: 2, c: none (not counted), d: 6
    w = token_weights(groups, lengths, "subbatch")
    assert w == pytest.approx([12 / (3 * 4), 12 / (3 * 2), 12 / (3 * 4), 0.0, 12 / (3 * 6)])
    torch.manual_seed(0)
    per_token = [torch.randn(n) for n in lengths]
    pairs = list(zip(groups, per_token, strict=True))
    means = {g: torch.cat([t for h, t in pairs if h == g]).mean() for g in "abd"}
    weighted = sum((wi * t).sum() for wi, t in zip(w, per_token, strict=True)) / sum(lengths)
    assert weighted.item() == pytest.approx(sum(means.values()).item() / 3)
    assert token_weights(groups, lengths, "token") == [1.0] * 5
    with pytest.raises(ValueError, match="loss aggregation"):
        token_weights(groups, lengths, "sequence")


def test_config_takes_the_aggregation():
    from megatron_azr.config import ConfigError, load_config

    assert load_config(None, []).actor.loss_aggregation == "subbatch"
    assert load_config(None, ["actor.loss_aggregation=token"]).actor.loss_aggregation == "token"
    with pytest.raises(ConfigError, match="loss_aggregation"):
        load_config(None, ["actor.loss_aggregation=sequence"])


def test_weights_scale_every_metric_but_the_token_count():
    lp = torch.tensor([-1.0, -2.0, -0.5])
    w = torch.tensor([0.5, 2.0, 0.5])
    cfg = PolicyLossConfig(entropy_coeff=0.1)
    total, sums = policy_loss_sums(lp, -lp, lp, torch.ones(3), w, cfg)
    m = dict(zip(METRICS, sums.tolist(), strict=True))
    assert total.item() == pytest.approx(-(0.5 + 2 + 0.5) - 0.1 * (0.5 + 4 + 0.25))
    assert m["entropy"] == pytest.approx(4.75) and m["ratio"] == pytest.approx(3.0)
    assert m["tokens"] == 3


def test_logprob_entropy_forward_and_backward_match_reference():
    torch.manual_seed(0)
    logits = (torch.randn(7, 33, dtype=torch.float64) * 3).requires_grad_(True)
    target = torch.randint(0, 33, (7,))
    w1, w2 = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    lp, ent = logprob_and_entropy(logits, target)
    ref_lp, ref_ent = reference_logprob_and_entropy(logits.double(), target)
    assert torch.allclose(lp.double(), ref_lp) and torch.allclose(ent.double(), ref_ent)
    (g,) = torch.autograd.grad((lp * w1 + ent * w2).sum(), logits)
    ref_logits = logits.detach().clone().requires_grad_(True)
    r_lp, r_ent = reference_logprob_and_entropy(ref_logits, target)
    (rg,) = torch.autograd.grad((r_lp * w1 + r_ent * w2).sum(), ref_logits)
    assert torch.allclose(g, rg, atol=1e-5)
