import torch

from megatron_azr.rollout.sampling import inverse_cdf


def test_inverse_cdf_draws_the_distribution_and_never_a_zero():
    probs = torch.tensor([0.0, 0.1, 0.0, 0.45, 0.15, 0.3, 0.0])
    n = 20000
    gens = [torch.Generator().manual_seed(s) for s in range(n)]
    tokens = inverse_cdf(probs.expand(n, -1), gens)
    counts = torch.bincount(tokens, minlength=len(probs)).double()
    assert counts[probs == 0].sum() == 0
    sd = (n * probs * (1 - probs)).sqrt()
    assert ((counts - n * probs).abs() <= 4.5 * sd).all(), counts
    # one draw per row from the row's own generator: rows do not see each other
    again = inverse_cdf(probs.expand(3, -1), [torch.Generator().manual_seed(s) for s in range(3)])
    assert again.tolist() == tokens[:3].tolist()
