import pyro.distributions as dist
import pytest
import torch
from sbi_gaussian import PRIOR, exact_posterior, simulate_pairs

from pyro_flows.sbi import FMPE

X_OBS = torch.tensor([[0.5, -1.0], [1.5, 0.5]])
#: As for NPE: the mean within 0.12 (0.3 posterior sd) and the covariance within 0.06.
MEAN_TOL, COV_TOL = 0.12, 0.06


@pytest.fixture(scope="module")
def fmpe():
    torch.manual_seed(0)
    theta, x = simulate_pairs(2000)
    est = FMPE(
        PRIOR,
        hidden_dims=[64, 64],
        num_steps=600,
        lr=3e-3,
        method="rk4",
        ode_steps=8,
        progress=False,
        seed=0,
    )
    return est.fit(theta, x)


def test_gaussian_linear_mean_and_covariance(fmpe):
    for x_o in X_OBS:
        exact = exact_posterior(x_o)
        draws = fmpe.sample(4000, x_o)
        assert (draws.mean(0) - exact.mean).abs().max() < MEAN_TOL
        assert (torch.cov(draws.T) - exact.covariance_matrix).abs().max() < COV_TOL
    draws = exact_posterior(X_OBS[1]).sample((300,))
    post = fmpe.posterior(X_OBS[1])
    gap = post.log_prob(draws) - exact_posterior(X_OBS[1]).log_prob(draws)
    assert gap.abs().mean() < 0.25


def test_validation_and_early_stopping(fmpe):
    history = fmpe.history_[-1]
    assert history.val_steps[:2] == [0, 100] and min(history.val_loss) < history.val_loss[0]
    theta, x = simulate_pairs(200)
    est = FMPE(
        PRIOR,
        hidden_dims=[16],
        num_steps=3000,
        eval_every=5,
        patience=2,
        method="euler",
        ode_steps=2,
        progress=False,
        seed=0,
    ).fit(theta, x)
    assert est.history_[-1].num_steps < 3000  # stopped after 2 evaluations without progress


def test_no_mass_leaks_outside_a_bounded_prior():
    prior = dist.Uniform(torch.tensor([0.0, -1.0]), torch.tensor([1.0, 1.0])).to_event(1)
    theta = prior.sample((600,))
    x = theta + 0.3 * torch.randn_like(theta)
    est = FMPE(
        prior, hidden_dims=[32], num_steps=100, method="euler", ode_steps=4, progress=False, seed=0
    ).fit(theta, x)
    draws = est.sample(20000, torch.tensor([1.2, -1.3]))
    assert bool(prior.support.check(draws).all())
    lp = est.posterior(torch.tensor([1.2, -1.3])).log_prob(draws[:50])
    assert bool(torch.isfinite(lp).all())


def test_save_load_and_bad_options(tmp_path):
    theta, x = simulate_pairs(200)
    est = FMPE(
        PRIOR, hidden_dims=[16], num_steps=10, method="euler", ode_steps=4, progress=False
    ).fit(theta, x)
    est.save(tmp_path / "f.pt")
    loaded = FMPE.load(tmp_path / "f.pt", PRIOR)
    assert torch.allclose(loaded.log_prob(theta[:4], x[:4]), est.log_prob(theta[:4], x[:4]))
    with pytest.raises(ValueError, match="unknown activation"):
        FMPE(PRIOR, activation="relu6")
    with pytest.raises(ValueError, match="unknown method"):
        FMPE(PRIOR, method="leapfrog")
    with pytest.raises(ValueError, match="fixed-step"):
        FMPE(PRIOR, method="rk4")
