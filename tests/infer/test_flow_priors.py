"""Flow priors: a fitted flow as pyro.sample(..., prior), frozen, in the constrained space."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch.distributions import constraints

from pyro_flows.flows import normalizing_flow
from pyro_flows.infer import AutoFlowGuide, fit_flow_prior, flow_prior


def test_fitted_flow_prior_matches_the_draws_it_was_fitted_to():
    target = dist.LogNormal(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.3])).to_event(1)
    draws = target.sample((4000,))
    flow, _ = fit_flow_prior(
        draws,
        support=constraints.positive,
        num_layers=2,
        hidden_dims=[16],
        num_steps=150,
        lr=2e-2,
        batch_size=256,
        progress=False,
        seed=0,
    )
    prior = flow_prior(flow, support=constraints.positive)
    sample = prior.sample((2000,))
    assert sample.shape == (2000, 2) and (sample > 0).all()
    fresh = target.sample((2000,))
    # KL(target || prior) from fresh draws: small once fitted
    kl = (target.log_prob(fresh) - prior.log_prob(fresh)).mean()
    assert kl < 0.05


def test_flow_prior_in_a_model_is_frozen_and_not_registered():
    flow = normalizing_flow("maf", 2, num_layers=2, hidden_dims=[8])
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    prior = flow_prior(flow)
    assert not any(p.requires_grad for p in flow.parameters())

    def model(y):
        theta = pyro.sample("theta", prior)
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(theta.sum(-1, keepdim=True), 1.0), obs=y)

    y = torch.randn(10)
    guide = AutoFlowGuide(model, "iaf", num_layers=2)
    svi = SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(5):
        assert torch.isfinite(torch.tensor(svi.step(y)))
    after = flow.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(
        "flow" in name and "AutoFlowGuide" not in name for name in pyro.get_param_store()
    )


def test_flow_prior_batches_in_a_plate():
    prior = flow_prior(normalizing_flow("affine_coupling", 3, num_layers=2, hidden_dims=[8]))
    with pyro.plate("groups", 4):
        value = pyro.sample("theta", prior)
    assert value.shape == (4, 3)
    assert prior.expand([4]).log_prob(value).shape == (4,)


def test_a_flow_without_inverse_cannot_be_a_prior():
    with pytest.raises(ValueError, match="cannot score"):
        flow_prior(normalizing_flow("naf", 2, num_layers=1))
    with pytest.raises(TypeError, match="NormalizingFlow"):
        flow_prior(torch.nn.Linear(2, 2))
