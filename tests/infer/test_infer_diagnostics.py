"""Importance weights, PSIS k-hat in both directions, ArviZ export, resampling and LOO."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormal

from pyro_flows.infer import (
    AutoFlowGuide,
    effective_sample_size,
    importance_resample,
    importance_sample,
    importance_weighted_elbo,
    loo,
    pareto_k,
    pareto_k_reading,
    psis_diagnostic,
    to_inference_data,
)
from pyro_flows.infer.diagnostics import _arviz

# -- a conjugate model: mu ~ N(0, 1), y_i ~ N(mu, 1) ---------------------------------------------
Y = torch.tensor([0.3, 1.2, -0.4, 0.9, 2.0], dtype=torch.float64)
POST_VAR = 1 / (1 + len(Y))
POST_MEAN = Y.sum().item() * POST_VAR
LOG_Z = (
    dist.MultivariateNormal(
        torch.zeros(len(Y), dtype=torch.float64),
        torch.eye(len(Y), dtype=torch.float64) + torch.ones(len(Y), len(Y), dtype=torch.float64),
    )
    .log_prob(Y)
    .item()
)


def model(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def gaussian_guide(width):
    """A guide N(posterior mean, (width * posterior sd)^2); width 1 is the exact posterior."""

    def guide(y):
        scale = torch.tensor(width * math.sqrt(POST_VAR), dtype=torch.float64)
        pyro.sample("mu", dist.Normal(torch.tensor(POST_MEAN, dtype=torch.float64), scale))

    return guide


def test_k_hat_is_small_for_the_exact_guide_and_large_for_a_narrow_one():
    exact = psis_diagnostic(model, gaussian_guide(1.0), Y, num_samples=4000)
    assert exact < 0.5  # constant weights: no tail at all (reported as -inf)
    assert pareto_k_reading(exact) == "good"
    wider = psis_diagnostic(model, gaussian_guide(1.3), Y, num_samples=4000)
    assert wider < 0.5  # bounded weights
    narrow = psis_diagnostic(model, gaussian_guide(0.4), Y, num_samples=4000)
    assert narrow > 0.7
    assert pareto_k_reading(narrow, 4000) == "bad"


def test_pareto_k_is_arviz_psis():
    res = importance_sample(model, gaussian_guide(0.5), Y, num_samples=2000)
    _, k = _arviz().psislw(res.log_weights.numpy().copy())
    assert res.pareto_k() == pytest.approx(float(k))
    assert pareto_k(res.log_weights) == pytest.approx(float(k))


def test_weights_elbo_iw_elbo_and_ess():
    exact = importance_sample(model, gaussian_guide(1.0), Y, num_samples=1000)
    assert torch.allclose(exact.log_weights, torch.full((1000,), LOG_Z, dtype=torch.float64))
    assert exact.elbo() == pytest.approx(LOG_Z) and exact.iw_elbo() == pytest.approx(LOG_Z)
    assert exact.ess() == pytest.approx(1000)
    wide = importance_sample(model, gaussian_guide(2.0), Y, num_samples=4000)
    # ELBO <= IW-ELBO(K=10) <= IW-ELBO(K=S) ~ log Z; the ELBO gap is KL(q || p)
    kl = 0.5 * (4 - 1 - math.log(4))
    assert wide.elbo() == pytest.approx(LOG_Z - kl, abs=4 * wide.elbo_se())
    assert wide.elbo() < wide.iw_elbo(k=10) < wide.iw_elbo() + 1e-9
    assert wide.iw_elbo() == pytest.approx(LOG_Z, abs=0.05)
    assert importance_weighted_elbo(model, gaussian_guide(2.0), Y, num_samples=4000) == (
        pytest.approx(LOG_Z, abs=0.05)
    )
    # ESS of N(m, 4 s^2) proposals for N(m, s^2): S / E_q[w^2] = S * sqrt(7) / 4
    assert wide.ess() / 4000 == pytest.approx(math.sqrt(7) / 4, rel=0.1)
    assert effective_sample_size(torch.tensor([0.0, -math.inf])) == 1.0


def test_importance_resampling_recovers_the_posterior():
    draws = importance_resample(
        model,
        gaussian_guide(2.0),
        Y,
        num_samples=20_000,
        generator=torch.Generator().manual_seed(0),
    )
    mu = draws["mu"]
    assert mu.shape == (20_000,)
    assert mu.mean().item() == pytest.approx(POST_MEAN, abs=0.03)
    assert mu.std().item() == pytest.approx(math.sqrt(POST_VAR), rel=0.05)


def hierarchical_model(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", len(y)):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * eta)
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


SCHOOLS_Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


@pytest.mark.parametrize(
    "make_guide",
    [
        lambda m: AutoFlowGuide(m, "iaf", num_layers=2),
        AutoNormal,
        AutoMultivariateNormal,
        lambda m: AutoIAFNormal(m, num_transforms=1),
    ],
    ids=["AutoFlowGuide", "AutoNormal", "AutoMultivariateNormal", "AutoIAFNormal"],
)
def test_to_inference_data_groups_names_and_shapes(make_guide):
    guide = make_guide(hierarchical_model)
    guide(SCHOOLS_Y, SCHOOLS_SIGMA)
    idata = to_inference_data(hierarchical_model, guide, SCHOOLS_Y, SCHOOLS_SIGMA, num_samples=300)
    assert set(idata.groups()) == {"posterior", "sample_stats", "log_likelihood", "observed_data"}
    post = idata.posterior
    assert set(post.data_vars) == {"mu", "tau", "eta", "theta"}
    assert post["mu"].dims == ("chain", "draw") and post["mu"].shape == (1, 300)
    assert post["eta"].dims == ("chain", "draw", "school") and post["eta"].shape == (1, 300, 8)
    assert post["theta"].shape == (1, 300, 8)
    assert (post["tau"].values > 0).all()
    np.testing.assert_allclose(
        post["theta"].values,
        post["mu"].values[..., None] + post["tau"].values[..., None] * post["eta"].values,
        rtol=1e-5,
    )
    assert set(idata.sample_stats.data_vars) == {"log_weight", "log_joint", "log_guide"}
    np.testing.assert_allclose(
        idata.sample_stats["log_weight"],
        idata.sample_stats["log_joint"] - idata.sample_stats["log_guide"],
        rtol=1e-6,
    )
    ll = idata.log_likelihood["obs"]
    assert ll.dims == ("chain", "draw", "school") and ll.shape == (1, 300, 8)
    np.testing.assert_array_equal(idata.observed_data["obs"].values, SCHOOLS_Y.numpy())
    # the pointwise log-likelihood is that of the drawn theta
    expected = dist.Normal(torch.as_tensor(post["theta"].values), SCHOOLS_SIGMA).log_prob(
        SCHOOLS_Y
    )
    np.testing.assert_allclose(ll.values, expected.numpy(), rtol=1e-4, atol=1e-4)
    assert {"elbo", "iw_elbo", "pareto_k", "ess"} <= set(idata.attrs)
    az = _arviz()
    assert set(az.summary(idata, var_names=["mu", "tau"]).index) == {"mu", "tau"}


def test_loo_from_guide_draws_matches_arviz_on_posterior_draws():
    """LOO from a (wider) guide with the weight correction equals PSIS-LOO of exact draws."""
    az = _arviz()
    exact = to_inference_data(model, gaussian_guide(1.0), Y, num_samples=4000)
    reference = az.loo(exact, pointwise=True)
    wide = to_inference_data(model, gaussian_guide(1.5), Y, num_samples=4000)
    result = loo(wide)
    assert result.pointwise.shape == (5,) and result.pareto_k.shape == (5,)
    assert result.elpd_loo == pytest.approx(reference.elpd_loo, abs=0.05)
    assert result.p_loo == pytest.approx(reference.p_loo, abs=0.05)
    assert (result.pareto_k < 0.7).all()
    resampled = to_inference_data(model, gaussian_guide(1.5), Y, num_samples=4000, resample=True)
    assert resampled.attrs["resampled"] == 1
    with pytest.raises(ValueError, match="arviz.loo"):
        loo(resampled)


def test_unvectorised_draws_and_model_only_sites():
    def partly_guided_model(y):
        extra = pyro.sample("extra", dist.Normal(0.0, 1.0))  # not in the guide: from the prior
        model(y)
        return extra

    guide = gaussian_guide(1.0)
    res = importance_sample(partly_guided_model, guide, Y, num_samples=50, vectorize=False)
    assert res.samples["extra"].shape == (50,) and res.samples["mu"].shape == (50,)
    # the prior draw of "extra" is its own proposal: it leaves the weights exact
    assert torch.allclose(res.log_weights, torch.full((50,), LOG_Z, dtype=torch.float64))
    vec = importance_sample(partly_guided_model, guide, Y, num_samples=50, chunk_size=16)
    assert torch.allclose(vec.log_weights, res.log_weights)
    assert vec.log_likelihood["y"].shape == res.log_likelihood["y"].shape == (50, 5)


def test_a_model_that_does_not_vectorise_says_so():
    def bad_model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu * torch.ones(len(y)), 1.0).to_event(1), obs=y)

    with pytest.raises(ValueError, match="vectorize=False"):
        importance_sample(bad_model, gaussian_guide(1.0), Y, num_samples=10)
    res = importance_sample(bad_model, gaussian_guide(1.0), Y, num_samples=10, vectorize=False)
    assert res.log_weights.shape == (10,)


def test_modules_are_scored_in_eval_mode_and_restored():
    guide = AutoFlowGuide(hierarchical_model, "iaf", num_layers=1)
    guide(SCHOOLS_Y, SCHOOLS_SIGMA)
    modes = []
    network = guide.flow.parts[0].network  # a module called as one (transforms are not)
    network.register_forward_pre_hook(lambda module, _: modes.append(module.training))
    guide.train()
    importance_sample(hierarchical_model, guide, SCHOOLS_Y, SCHOOLS_SIGMA, num_samples=10)
    assert guide.training and guide.flow.training
    assert modes and not any(modes)
