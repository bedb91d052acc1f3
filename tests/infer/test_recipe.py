import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_flows.infer import GuideFit, fit_guide, recipe_flow_size


def conjugate(y):
    # mu ~ N(0, 1), y_i ~ N(mu, 0.5^2) (two latents: mu and a free N(1, 2^2) coordinate)
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("free", dist.Normal(1.0, 2.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 0.5), obs=y)


def test_fit_guide_recovers_a_conjugate_posterior():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    y = torch.tensor([0.3, 1.1, 0.8, 0.5], dtype=torch.float64)
    fit = fit_guide(conjugate, y, num_steps=200, num_samples=2000, progress=False)
    precision = 1 + len(y) / 0.25
    mean, sd = (y.sum() / 0.25 / precision).item(), precision**-0.5
    draws = fit.resample()
    assert isinstance(fit, GuideFit)
    assert abs(draws["mu"].mean().item() - mean) < 0.1 * sd + 0.02
    assert abs(math.log(draws["mu"].std().item() / sd)) < 0.15
    assert abs(draws["free"].std().item() - 2.0) < 0.2
    assert fit.pareto_k < 0.7 and math.isfinite(fit.elbo) and fit.iw_elbo >= fit.elbo - 1e-9
    assert fit.choices["flow"] == "iaf" and fit.choices["estimator"] == "elbo"
    assert fit.choices["lr"] in fit.choices["search"]
    # the budget is the one given: search, warm start and fit together
    assert len(fit.losses) <= 200
    assert "ELBO" in str(fit) and "k-hat" in str(fit)


def test_fit_guide_one_latent_uses_a_one_dimensional_family():
    def model():
        pyro.sample("x", dist.Gamma(3.0, 2.0))

    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    fit = fit_guide(model, num_steps=120, num_samples=2000, progress=False)
    assert fit.choices["flow"] == "planar"
    assert abs(fit.resample()["x"].mean().item() - 1.5) < 0.15


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"estimator": "bogus"}, "estimator"),
        ({"learning_rates": []}, "learning_rates"),
        ({"learning_rates": [0.01, -1.0]}, "learning_rates"),
        ({"search_fraction": 0.5}, "search_fraction"),
        ({"num_steps": 0}, "num_steps"),
    ],
)
def test_fit_guide_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_guide(conjugate, torch.zeros(3), progress=False, **kwargs)


def test_recipe_widths_follow_the_dimension():
    assert recipe_flow_size(1)[1] == [32, 32]
    assert recipe_flow_size(90)[1] == [180, 180]
    assert recipe_flow_size(1000)[1] == [256, 256]


def test_fit_guide_auto_estimator_is_stl_for_one_pass_inverses():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    y = torch.tensor([0.3, 1.1], dtype=torch.float64)
    fit = fit_guide(
        conjugate, y, flow="affine_coupling", num_steps=60, num_samples=200, progress=False,
        warm_start=False,
    )
    assert fit.choices["estimator"] == "stl" and fit.choices["start"] == "default"
