import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from pyro_flows.bases import GaussianMixture, fit_gaussian_mixture
from pyro_flows.distributions import NormalizingFlow
from pyro_flows.flows import build


def _random_mixture(covariance, k=3, d=3, seed=0):
    torch.manual_seed(seed)
    base = GaussianMixture(d, k, covariance).double()
    with torch.no_grad():
        base.logits.normal_()
        base.loc.normal_()
        base.log_diag.normal_(0, 0.3)
        if covariance == "full":
            base.lower.normal_(0, 0.5)
    return base


def _by_hand(base, z):
    """sum_k pi_k N(z; mu_k, L_k L_k^T), with scipy, in float64."""
    w = base.weights.detach().numpy()
    cov = (base.scale_tril @ base.scale_tril.mT).detach().numpy()
    mu = base.loc.detach().numpy()
    dens = sum(w[k] * multivariate_normal(mu[k], cov[k]).pdf(z.numpy()) for k in range(len(w)))
    return np.log(dens)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_log_prob_is_the_mixture_density(covariance):
    base = _random_mixture(covariance)
    z = torch.randn(7, 3, dtype=torch.float64)
    np.testing.assert_allclose(base.log_prob(z).detach().numpy(), _by_hand(base, z), rtol=1e-10)
    # the Pyro distribution agrees, and batch shapes pass through
    np.testing.assert_allclose(
        base().log_prob(z).detach().numpy(), base.log_prob(z).detach().numpy(), rtol=1e-10
    )
    assert base.log_prob(z.reshape(7, 1, 3).expand(7, 2, 3)).shape == (7, 2)
    if covariance == "diag":
        assert torch.count_nonzero(torch.tril(base.scale_tril, diagonal=-1)) == 0


def test_one_component_at_init_is_standard_normal():
    base = GaussianMixture(4, 1).double()
    z = torch.randn(5, 4, dtype=torch.float64)
    expected = -0.5 * z.pow(2).sum(-1) - 2 * math.log(2 * math.pi)
    torch.testing.assert_close(base.log_prob(z), expected)


def test_sample_shapes_and_gradients():
    base = _random_mixture("full")
    assert base().sample((4, 5)).shape == (4, 5, 3)
    base.log_prob(torch.randn(6, 3, dtype=torch.float64)).sum().backward()
    for name, p in base.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_em_recovers_a_known_mixture():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3000, 2, generator=gen, dtype=torch.float64) * 0.5 + torch.tensor([-4.0, 0])
    b = torch.randn(1000, 2, generator=gen, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.8], [0.0, 0.6]], dtype=torch.float64
    ) + torch.tensor([4.0, 1.0])
    w, mu, cov, ll = fit_gaussian_mixture(torch.cat([a, b]), 2, seed=0)
    order = mu[:, 0].argsort()
    torch.testing.assert_close(
        w[order], torch.tensor([0.75, 0.25], dtype=torch.float64), atol=0.01, rtol=0
    )
    torch.testing.assert_close(
        mu[order], torch.tensor([[-4.0, 0.0], [4.0, 1.0]], dtype=torch.float64), atol=0.06, rtol=0
    )
    torch.testing.assert_close(
        cov[order[0]], 0.25 * torch.eye(2, dtype=torch.float64), atol=0.03, rtol=0
    )
    # the returned log-likelihood is that of the returned mixture
    base = GaussianMixture(2, 2).double()
    assert abs(base.initialize(torch.cat([a, b]), seed=0) - ll) < 1e-12
    torch.testing.assert_close(base.log_prob(torch.cat([a, b])).mean().item(), ll)


def test_em_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.mixture")
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0, 0], [3, 0, 0], [0, 3, 1]])  # overlapping, correlated blobs
    x = np.concatenate([rng.normal(size=(100, 3)) @ rng.normal(size=(3, 3)) + m for m in centres])
    ours = fit_gaussian_mixture(torch.from_numpy(x), 3, reg_covar=1e-3, num_inits=2, seed=0)[3]
    theirs = sklearn.GaussianMixture(3, reg_covar=1e-3, n_init=2, random_state=0).fit(x)
    assert ours > theirs.score(x) - 0.01


def test_flow_with_identity_layers_scores_like_its_mixture():
    base = _random_mixture("full")
    flow = build("affine_coupling", 3, num_layers=1).double()  # zero-initialised: identity
    model = NormalizingFlow(flow, 3, base=base)
    z = torch.randn(9, 3, dtype=torch.float64)
    torch.testing.assert_close(model.inverse(z), z)
    np.testing.assert_allclose(model.log_prob(z).detach().numpy(), _by_hand(base, z), rtol=1e-10)
    assert model.sample((4,)).shape == (4, 3)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: GaussianMixture(2, 0), "num_components must be an integer >= 1"),
        (lambda: GaussianMixture(2, 2, "spherical"), "unknown covariance 'spherical'"),
        (lambda: fit_gaussian_mixture(torch.randn(3, 2), 5), "num_components=5 needs at least 5"),
        (lambda: fit_gaussian_mixture(torch.randn(9, 2), 2, reg_covar=0), "reg_covar must be"),
        (lambda: NormalizingFlow(build("maf", 2, 1), 2, base=GaussianMixture(3)), "input_dim 3"),
    ],
)
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
