import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import biject_to

from pyro_flows.sbi import ModelPrior, ModelSimulator, SiteLayout, simulate, simulate_model


def hierarchical():
    """A bounded, a positive and a vector site, one observed site under a plate."""
    w = pyro.sample("w", dist.Beta(2.0, 2.0))
    s = pyro.sample("s", dist.LogNormal(0.0, 0.3))
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", 3):
        pyro.sample(
            "x",
            dist.Normal(w.unsqueeze(-1) * loc, s.unsqueeze(-1)).to_event(1),
            obs=torch.zeros(3, 2),
        )


def exact_log_prior(theta):
    w, s, loc = theta[:, 0], theta[:, 1], theta[:, 2:]
    return (
        dist.Beta(2.0, 2.0).log_prob(w)
        + dist.LogNormal(0.0, 0.3).log_prob(s)
        + dist.Normal(0.0, 1.0).log_prob(loc).sum(-1)
    )


def test_layout_round_trip():
    layout = SiteLayout(("a", "b"), ((), (2, 3)))
    flat = torch.randn(4, 7)
    parts = layout.unpack(flat)
    assert parts["a"].shape == (4,) and parts["b"].shape == (4, 2, 3)
    assert torch.equal(layout.pack(parts, 4), flat)
    with pytest.raises(ValueError, match="7 values"):
        layout.unpack(torch.randn(4, 6))


def test_model_prior_layout_support_and_densities():
    prior = ModelPrior(hierarchical)
    assert prior.theta_layout.names == ("w", "s", "loc")
    assert prior.x_layout.names == ("x",) and prior.x_layout.shapes == ((3, 2),)
    theta = prior.sample((500,))
    assert theta.shape == (500, 4)
    assert bool(((theta[:, 0] > 0) & (theta[:, 0] < 1)).all()) and bool((theta[:, 1] > 0).all())
    assert torch.allclose(prior.log_prob(theta), exact_log_prior(theta), atol=1e-5)
    x = ModelSimulator(prior)(theta[:5])
    log_p, log_lik = prior.log_joint(theta[:5], x)
    w, s, loc = theta[:5, :1, None], theta[:5, 1:2, None], theta[:5, None, 2:]
    exact_lik = dist.Normal(w * loc, s).log_prob(x.reshape(5, 3, 2)).sum((-1, -2))
    assert torch.allclose(log_lik, exact_lik, atol=1e-4)
    assert torch.allclose(log_p, exact_log_prior(theta[:5]), atol=1e-5)
    # biject_to(support): R^4 onto the product of the sites' supports, with its log-determinant
    t = biject_to(prior.support)
    u = torch.randn(6, 4) * 3
    y = t(u)
    assert bool(prior.support.check(y).all())
    assert torch.allclose(t.inv(y), u, atol=1e-4)
    jac = torch.stack([torch.autograd.functional.jacobian(t, ui) for ui in u.double()])
    assert torch.allclose(
        t.log_abs_det_jacobian(u.double(), t(u.double())), torch.linalg.slogdet(jac)[1], atol=1e-8
    )


def test_simulate_model_batches_and_data_follow_theta():
    sims = simulate_model(hierarchical, 250, batch_size=100, progress=False, seed=0)
    theta, x = sims
    assert theta.shape == (250, 4) and x.shape == (250, 6) and len(sims) == 250
    # x = w * loc + noise: the simulations depend on theta row by row
    w, s, loc = theta[:, :1], theta[:, 1:2], theta[:, 2:]
    z = (x.reshape(250, 3, 2).mean(1) - w * loc) / (s / 3**0.5)  # N(0, 1) if rows line up
    assert abs(z.std().item() - 1) < 0.1 and abs(z.mean().item()) < 0.15
    shuffled = (x.reshape(250, 3, 2).mean(1).roll(1, 0) - w * loc) / (s / 3**0.5)
    assert shuffled.std() > 1.2


def test_simulate_plain_simulator_in_support():
    prior = dist.Uniform(torch.zeros(3), torch.ones(3)).to_event(1)
    theta, x = simulate(lambda t: t.sum(-1), prior, 120, batch_size=50, progress=False)
    assert theta.shape == (120, 3) and x.shape == (120, 1)
    assert torch.allclose(x[:, 0], theta.sum(-1))


def test_bad_inputs_are_named():
    prior = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    with pytest.raises(ValueError, match="returned shape"):
        simulate(lambda t: t[:1], prior, 10, progress=False)
    with pytest.raises(ValueError, match="event shape"):
        simulate(lambda t: t, dist.Normal(torch.zeros(2), 1.0), 10, progress=False)
    with pytest.raises(ValueError, match="no sample site 'nope'"):
        ModelPrior(hierarchical, latent_sites=["nope"])

    def discrete():
        k = pyro.sample("k", dist.Poisson(3.0))
        pyro.sample("x", dist.Normal(k, 1.0), obs=torch.tensor(0.0))

    with pytest.raises(ValueError, match="discrete"):
        ModelPrior(discrete)

    def no_obs():
        pyro.sample("a", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no observed site"):
        ModelPrior(no_obs)
