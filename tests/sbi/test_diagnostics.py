import builtins

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from sbi_gaussian import NOISE, PRIOR, exact_posterior, log_likelihood, simulate_pairs

from pyro_flows.infer import ImportanceSamples
from pyro_flows.sbi import (
    ModelPrior,
    c2st,
    expected_coverage,
    importance_sample_posterior,
    plot_coverage,
    plot_sbc_ranks,
    sbc,
)


def too_narrow(x):
    post = exact_posterior(x)
    return dist.MultivariateNormal(post.mean, 0.3 * post.covariance_matrix)


def too_wide(x):
    post = exact_posterior(x)
    return dist.MultivariateNormal(post.mean, 3.0 * post.covariance_matrix)


def test_sbc_exact_passes_and_too_narrow_fails():
    theta, x = simulate_pairs(500, seed=1)
    exact = sbc(exact_posterior, theta, x, num_posterior_samples=100)
    assert exact.ranks.shape == (500, 2) and int(exact.ranks.max()) <= 100
    assert exact.passed() and exact.chi2_pvalues.min() > 0.01 / 4
    narrow = sbc(too_narrow, theta, x, num_posterior_samples=100)
    assert not narrow.passed()
    assert narrow.chi2_pvalues.max() < 1e-6 and narrow.ks_pvalues.max() < 1e-6
    # a too-narrow posterior puts the truth in the extreme ranks (a U shape)
    r = narrow.ranks.float() / 100
    assert ((r < 0.1) | (r > 0.9)).float().mean() > 0.35


def test_expected_coverage_reads_calibration():
    theta, x = simulate_pairs(400, seed=2)
    exact = expected_coverage(exact_posterior, theta, x, num_posterior_samples=200)
    assert exact.max_error() < 0.08
    assert exact.coverage[0] == 0 and exact.coverage[-1] == 1
    narrow = expected_coverage(too_narrow, theta, x, num_posterior_samples=200)
    wide = expected_coverage(too_wide, theta, x, num_posterior_samples=200)
    mid = narrow.levels == 0.5
    assert narrow.coverage[mid] < 0.3 and wide.coverage[mid] > 0.7  # over- and under-confident


def test_plots_draw():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    theta, x = simulate_pairs(100)
    fig = plot_sbc_ranks(sbc(exact_posterior, theta, x, num_posterior_samples=20))
    assert len(fig.axes) == 2
    ax = plot_coverage(expected_coverage(exact_posterior, theta, x, num_posterior_samples=20))
    assert len(ax.lines) == 2
    plt.close("all")


def test_c2st_separates_and_mixes():
    from sklearn.linear_model import LogisticRegression

    a = torch.randn(300, 2)
    assert abs(c2st(a, torch.randn(300, 2)) - 0.5) < 0.08
    # N(0, I) vs N(2, I): the Bayes classifier is right with probability Phi(sqrt(2)) = 0.92
    assert 0.85 < c2st(a, torch.randn(300, 2) + 2.0) < 0.96
    assert c2st(a, torch.randn(300, 2) + 5.0, classifier=LogisticRegression()) > 0.97
    with pytest.raises(ValueError, match="unknown classifier"):
        c2st(a, a, classifier="svm")
    with pytest.raises(ValueError, match="as many columns"):
        c2st(a, a[:, :1])


def test_c2st_without_sklearn_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        c2st(torch.randn(10, 2), torch.randn(10, 2))


def test_importance_sampling_corrects_a_biased_posterior():
    x_o = torch.tensor([1.0, -0.5])
    exact = exact_posterior(x_o)
    sd = exact.covariance_matrix.diagonal().sqrt()
    # q: shifted by half a posterior sd and 30% too wide -- a plausible NPE error
    biased = dist.MultivariateNormal(exact.mean + 0.5 * sd, 1.3 * exact.covariance_matrix)
    res = importance_sample_posterior(biased, x_o, PRIOR, log_likelihood, num_samples=8000)
    assert isinstance(res, ImportanceSamples)
    assert res.pareto_k() < 0.5 and 0.3 * 8000 < res.ess() < 0.95 * 8000
    draws = res.resample()["theta"]
    raw = res.samples["theta"]
    assert (raw.mean(0) - exact.mean).abs().max() > 0.4 * sd.min()  # q alone is off
    assert ((draws.mean(0) - exact.mean).abs() < 0.1 * sd).all()  # corrected
    cov = torch.cov(draws.T)
    assert (cov - exact.covariance_matrix).abs().max() < 0.1 * exact.covariance_matrix.max()
    # log p(x_o): the IW-ELBO matches the evidence N(x_o; 0, I + NOISE)
    evidence = dist.MultivariateNormal(torch.zeros(2), torch.eye(2) + NOISE).log_prob(x_o)
    assert abs(res.iw_elbo() - evidence.item()) < 0.02
    # a q much too narrow: the weights have a heavy tail and k-hat says so
    narrow = dist.MultivariateNormal(exact.mean, 0.1 * exact.covariance_matrix)
    bad = importance_sample_posterior(narrow, x_o, PRIOR, log_likelihood, num_samples=4000)
    assert bad.pareto_k() > 0.7 and bad.ess() < 0.1 * 4000


def test_importance_sampling_with_a_pyro_model():
    def model():
        theta = pyro.sample("theta", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))
        pyro.sample("x", dist.MultivariateNormal(theta, NOISE), obs=torch.zeros(2))

    prior = ModelPrior(model)
    x_o = torch.tensor([0.3, 0.8])
    exact = exact_posterior(x_o)
    biased = dist.MultivariateNormal(exact.mean - 0.2, 1.5 * exact.covariance_matrix)
    res = importance_sample_posterior(biased, x_o, prior, num_samples=8000)
    assert set(res.samples) == {"theta"}
    lw_exact = PRIOR.log_prob(res.samples["theta"]) + log_likelihood(res.samples["theta"], x_o)
    assert torch.allclose(res.log_joint.float(), lw_exact, atol=1e-4)
    assert ((res.resample()["theta"].mean(0) - exact.mean).abs() < 0.05).all()


def test_bad_arguments():
    theta, x = simulate_pairs(20)
    with pytest.raises(ValueError, match="as many rows"):
        sbc(exact_posterior, theta, x[:10])
    with pytest.raises(TypeError, match="posterior must be"):
        sbc(3, theta, x)
    with pytest.raises(ValueError, match="levels"):
        expected_coverage(exact_posterior, theta, x, levels=[0.5, 2.0])
    with pytest.raises(ValueError, match="log_likelihood is required"):
        importance_sample_posterior(exact_posterior, x[0], PRIOR)
    with pytest.raises(ValueError, match="one observation"):
        importance_sample_posterior(exact_posterior(x[0]), x[:2], PRIOR, log_likelihood)
    assert np.isfinite(sbc(exact_posterior, theta, x, num_posterior_samples=9).ks_pvalues).all()
