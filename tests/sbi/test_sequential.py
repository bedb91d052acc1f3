import pyro.distributions as dist
import pytest
import torch

from pyro_flows.sbi import NPE, TruncatedPrior, tsnpe

PRIOR = dist.Uniform(-3 * torch.ones(2), 3 * torch.ones(2)).to_event(1)


def simulator(theta):
    return theta + 0.1 * torch.randn_like(theta)


def test_truncated_prior_is_the_prior_inside_the_region():
    q = dist.Normal(torch.tensor([1.0, -1.0]), 0.2).to_event(1)
    trunc = TruncatedPrior(PRIOR, q, quantile=1e-3)
    draws = trunc.sample((2000,))
    assert bool(trunc.inside(draws).all())
    # inside the region, the prior is uniform: draws spread over the whole disc, not like q
    assert draws.std(0).min() > 0.25 and (draws.mean(0) - q.mean).abs().max() < 0.05
    # region = a disc of radius 0.2 * sqrt(chi2_2(0.999)) = 0.74: volume 1.73 of the prior's 36
    assert abs(trunc.acceptance_rate - 1.73 / 36) < 0.01
    lp = trunc.log_prob(torch.tensor([[1.0, -1.0], [-2.0, 2.0]]))
    assert torch.isfinite(lp[0]) and lp[1] == -float("inf")


def test_tsnpe_concentrates_simulations_near_the_observation():
    x_o = torch.tensor([1.0, -1.0])
    npe = NPE(
        PRIOR, num_layers=1, hidden_dims=[16], num_steps=150, lr=3e-3, progress=False, seed=0
    )
    res = tsnpe(
        npe,
        simulator,
        x_o,
        num_rounds=2,
        num_simulations=400,
        quantile=1e-3,
        num_threshold_samples=4000,
        progress=False,
    )
    first, second = res.theta[res.rounds == 0], res.theta[res.rounds == 1]
    assert first.shape == second.shape == (400, 2)
    near = lambda t: ((t - x_o).norm(dim=-1) < 0.5).float().mean()  # noqa: E731
    assert near(second) > 5 * near(first)
    assert 0 < res.acceptance_rates[0] < 0.3
    draws = res.estimator.sample(2000, x_o)
    assert (draws.mean(0) - x_o).abs().max() < 0.1


def test_tsnpe_bad_arguments():
    npe = NPE(PRIOR, num_layers=1, hidden_dims=[8], num_steps=5, progress=False)
    with pytest.raises(ValueError, match="entries for 3 rounds"):
        tsnpe(npe, simulator, torch.zeros(2), num_rounds=3, num_simulations=[10, 10])
    with pytest.raises(ValueError, match="one observation"):
        tsnpe(npe, simulator, torch.zeros(1, 2))
    with pytest.raises(TypeError, match="NPE or FMPE"):
        tsnpe(object(), simulator, torch.zeros(2))
    with pytest.raises(ValueError, match="quantile"):
        TruncatedPrior(PRIOR, dist.Normal(torch.zeros(2), 1.0).to_event(1), quantile=1.0)
