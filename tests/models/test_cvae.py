import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_flows.flows import normalizing_flow
from pyro_flows.infer import fit_svi
from pyro_flows.models import CVAE, MLP, Gaussian, cvae, elbo, iwae_bound, log_weights

D, C, L = 4, 2, 2
SIGMA = 0.3


def linear_gaussian(n, seed=0):
    """x = W z + M y + noise: log p(x | y) is a known Gaussian."""
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([[1.0, 0.0], [0.5, 1.0], [0.0, -1.0], [1.0, 1.0]])
    m = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0], [0.0, -3.0]])
    y = torch.randn(n, C, generator=g)
    z = torch.randn(n, L, generator=g)
    x = z @ w.T + y @ m.T + SIGMA * torch.randn(n, D, generator=g)
    cov = w @ w.T + SIGMA**2 * torch.eye(D)
    exact = dist.MultivariateNormal(y @ m.T, cov).log_prob(x)
    return x, y, exact, m


def small(posterior="normal", prior="normal", **kwargs):
    return cvae(
        D,
        L,
        C,
        net_hidden_dims=[32, 32],
        posterior=posterior,
        prior=prior,
        hidden_dims=[16],
        **kwargs,
    )


@pytest.mark.parametrize("posterior", ["normal", "iaf"])
def test_cvae_trains_and_elbo_rises(posterior):
    x, y, exact, _ = linear_gaussian(300)
    vae = small(posterior)
    before = elbo(vae, x, y, 20).mean().item()
    losses = fit_svi(vae.model, vae.guide, x, y, num_steps=600, lr=1e-2, batch_size=100)
    after = elbo(vae, x, y, 20).mean().item()
    assert after > before + 2.0
    # SVI's loss is the negative ELBO of the whole data set, scaled from minibatches
    assert sum(losses[-50:]) / 50 / len(x) < sum(losses[:50]) / 50 / len(x) - 2.0
    # the bound approaches the exact log-likelihood of the linear-Gaussian data
    bound = iwae_bound(vae, x, y, 200).mean().item()
    assert bound < exact.mean().item() + 0.1
    assert bound > exact.mean().item() - 0.75


@pytest.mark.parametrize(
    "posterior, prior",
    [("maf", "normal"), ("affine_coupling", "maf"), ("planar", "affine_coupling")],
)
def test_flow_posteriors_and_priors_run(posterior, prior):
    x, y, _, _ = linear_gaussian(64)
    vae = small(posterior, prior)
    losses = fit_svi(vae.model, vae.guide, x, y, num_steps=5, batch_size=16)
    assert all(math.isfinite(v) for v in losses)
    names = set(pyro.get_param_store().keys())
    assert any("posterior_flow" in n for n in names) or posterior == "normal"
    assert any(n.startswith("cvae$$$prior") for n in names) == (prior != "normal")
    assert torch.isfinite(elbo(vae, x, y, 3)).all()


def test_conditional_samples_shapes_and_respond_to_y():
    x, y, _, m = linear_gaussian(300)
    vae = small()
    fit_svi(vae.model, vae.guide, x, y, num_steps=600, lr=1e-2, batch_size=100)
    y1, y2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, -1.0])
    s1, s2 = vae.sample(y1, 2000), vae.sample(y2, 2000)
    assert s1.shape == (2000, D)
    assert vae.sample(torch.stack([y1, y2]), 5).shape == (5, 2, D)
    assert vae.sample(y1, 5, mean=True).shape == (5, D)
    # E[x | y] = M y: the shift between the two contexts is M (y1 - y2), entries of size 3
    shift = s1.mean(0) - s2.mean(0)
    assert torch.allclose(shift, m @ (y1 - y2), atol=0.4)


def test_iwae_at_least_elbo_and_matches_pyro_elbo():
    x, y, _, _ = linear_gaussian(200)
    vae = small("iaf")
    fit_svi(vae.model, vae.guide, x, y, num_steps=200, lr=1e-2, batch_size=100)
    e = elbo(vae, x, y, 100).mean().item()
    iw = iwae_bound(vae, x, y, 100).mean().item()
    assert iw >= e
    assert iwae_bound(vae, x, y, 1000).mean().item() >= iw - 0.01  # grows with K
    # the ELBO computed here is the one SVI optimises (the model's and guide's terms)
    loss = Trace_ELBO(num_particles=200, vectorize_particles=False).loss(
        vae.model, vae.guide, x, y
    )
    assert -loss / len(x) == pytest.approx(e, abs=0.05)
    assert log_weights(vae, x, y, 7, chunk_size=3).shape == (7, len(x))


def test_unconditional_vae_and_conv_nets():
    x = torch.randint(0, 2, (20, 64)).double().float()
    vae = cvae(64, 3, net="conv", image_shape=(1, 8, 8), likelihood="bernoulli", posterior="iaf")
    losses = fit_svi(vae.model, vae.guide, x, num_steps=3, batch_size=8)
    assert all(math.isfinite(v) for v in losses)
    assert vae.sample(None, 4).shape == (4, 64)
    assert set(vae.sample(None, 4).unique().tolist()) <= {0.0, 1.0}


def test_plug_in_priors_frozen_stay_frozen_trainable_train():
    x, y, _, _ = linear_gaussian(64)
    frozen = normalizing_flow("maf", L, 2, context_dim=C, hidden_dims=[8]).requires_grad_(False)
    trainable = normalizing_flow("maf", L, 2, context_dim=C, hidden_dims=[8])
    before_f = [p.clone() for p in frozen.parameters()]
    before_t = [p.clone() for p in trainable.parameters()]
    for prior in (frozen, trainable):
        pyro.clear_param_store()
        vae = small(prior=prior)
        fit_svi(vae.model, vae.guide, x, y, num_steps=5, batch_size=16)
    assert all(torch.equal(a, b) for a, b in zip(before_f, frozen.parameters(), strict=True))
    assert not all(
        torch.equal(a, b) for a, b in zip(before_t, trainable.parameters(), strict=True)
    )
    assert not any(p.requires_grad for p in frozen.parameters())

    # any callable y -> distribution: a shifted normal, which the samples follow
    vae = small(prior=lambda y: dist.Normal(y * 0 + 5.0, 1.0).to_event(1))
    z = vae.prior_distribution(y).sample((100,))
    assert z.shape == (100, 64, L) and z.mean() == pytest.approx(5.0, abs=0.1)


def test_svi_with_pyro_optimiser_and_subsampling_scale():
    x, y, _, _ = linear_gaussian(40)
    vae = small()
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    assert math.isfinite(svi.step(x, y, batch_size=10))
    tr = pyro.poutine.trace(vae.model).get_trace(x, y, batch_size=10)
    assert tr.nodes["x"]["scale"] == 4.0 and tr.nodes["z"]["fn"].batch_shape == (10,)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"posterior": "nope"}, ValueError, "unknown flow 'nope'"),
        ({"posterior": 3}, TypeError, "posterior must be"),
        ({"prior": 3}, TypeError, "prior must be 'normal'"),
        ({"prior": "naf"}, ValueError, "cannot score"),
        ({"prior": "block_autoregressive"}, ValueError, "no conditional variant|cannot score"),
        ({"num_layers": 0, "posterior": "iaf"}, ValueError, "num_layers"),
        ({"likelihood": "poisson"}, ValueError, "unknown likelihood 'poisson'"),
        ({"likelihood": 1.0}, TypeError, "likelihood must be"),
    ],
)
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        small(**kwargs)


def test_bad_calls():
    x, y, _, _ = linear_gaussian(10)
    vae = small()
    with pytest.raises(ValueError, match="is conditional: pass y"):
        vae.guide(x)
    with pytest.raises(ValueError, match=r"y must have shape \(\.\.\., 2\)"):
        vae.guide(x, y[:, :1])
    with pytest.raises(ValueError, match="as many rows"):
        vae.guide(x, y[:5])
    with pytest.raises(ValueError, match="batch_size must be"):
        vae.model(x, y, batch_size=0)
    with pytest.raises(ValueError, match="x contains 10 NaN"):
        vae.model(torch.where(torch.arange(D) == 0, math.nan, x[:1]).expand(10, D), y)
    with pytest.raises(ValueError, match="has no context"):
        cvae(D, L).sample(y[0])
    with pytest.raises(ValueError, match="event shape"):
        small(prior=lambda y: dist.Normal(0.0, 1.0).expand([3]).to_event(1)).sample(y[0])
    with pytest.raises(TypeError, match="encoder must be"):
        CVAE(lambda x: x, MLP(L, D), Gaussian(1.0), L)
    with pytest.raises(ValueError, match="encoder_dim"):
        CVAE(torch.nn.Identity(), MLP(L, D), Gaussian(1.0), L)
