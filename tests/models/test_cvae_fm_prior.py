"""The flow-matching prior of pyro_flows.matching plugs into the CVAE as p(z | y)."""

import math

import pytest
import torch

from pyro_flows.infer import fit_svi
from pyro_flows.models import cvae, elbo, iwae_bound

matching = pytest.importorskip("pyro_flows.matching")
fields = pytest.importorskip("pyro_flows.nn")


class TrainableFMPrior(torch.nn.Module):
    """A module, so the CVAE trains its field jointly; calling it gives p(z | y)."""

    def __init__(self, latent_dim, context_dim):
        super().__init__()
        self.field = fields.VectorField(latent_dim, [16], context_dim=context_dim)
        self.prior = matching.FlowMatchingPrior(self.field, method="rk4", num_steps=3)

    def forward(self, y):
        return self.prior.condition(y)


def test_cvae_trains_with_flow_matching_prior():
    torch.manual_seed(0)
    y = torch.nn.functional.one_hot(torch.arange(40) % 2, 2).float()
    x = 2.0 * y[:, :1] + 0.3 * torch.randn(40, 3)
    fm = TrainableFMPrior(2, 2)
    before = [p.clone() for p in fm.parameters()]
    vae = cvae(3, 2, 2, net_hidden_dims=[16], prior=fm, posterior="iaf", hidden_dims=[8])
    assert isinstance(vae.prior_distribution(y), matching.FlowMatchingPrior)
    losses = fit_svi(vae.model, vae.guide, x, y, num_steps=15, lr=1e-2, batch_size=20)
    assert all(math.isfinite(v) for v in losses)
    assert not all(torch.equal(a, b) for a, b in zip(before, fm.parameters(), strict=True))
    e, iw = elbo(vae, x, y, 10), iwae_bound(vae, x, y, 100)
    assert torch.isfinite(e).all() and iw.mean() >= e.mean()
    assert vae.sample(y[:3], 4).shape == (4, 3, 3)

    # a fitted, frozen field plugs in as a bound method and stays as it was
    frozen = matching.FlowMatchingPrior(
        fields.VectorField(2, [16], context_dim=2).requires_grad_(False), method="rk4", num_steps=3
    )
    vae = cvae(3, 2, 2, net_hidden_dims=[16], prior=frozen.condition)
    assert all(math.isfinite(v) for v in fit_svi(vae.model, vae.guide, x, y, num_steps=3))
