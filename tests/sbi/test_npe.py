import pyro
import pyro.distributions as dist
import pytest
import torch
from sbi_gaussian import PRIOR, exact_posterior, simulate_pairs
from torch import nn

from pyro_flows.density import ModelFileError
from pyro_flows.sbi import FMPE, NPE, ModelPrior, ModelSimulator, simulate

X_OBS = torch.tensor([[0.5, -1.0], [1.5, 0.5]])
#: Tolerances after the short fit below: the posterior mean within 0.12 (0.3 posterior sd,
#: sd = 0.42) and every covariance entry within 0.06 (the variance is 0.18).
MEAN_TOL, COV_TOL = 0.12, 0.06


@pytest.fixture(scope="module")
def npe():
    torch.manual_seed(0)
    theta, x = simulate_pairs(2000)
    est = NPE(
        PRIOR, num_layers=2, hidden_dims=[32], num_steps=400, lr=3e-3, progress=False, seed=0
    )
    return est.fit(theta, x)


def test_gaussian_linear_mean_and_covariance(npe):
    for x_o in X_OBS:
        exact = exact_posterior(x_o)
        draws = npe.sample(4000, x_o)
        assert (draws.mean(0) - exact.mean).abs().max() < MEAN_TOL
        assert (torch.cov(draws.T) - exact.covariance_matrix).abs().max() < COV_TOL
    # the density agrees with the exact one where the posterior lives
    draws = exact_posterior(X_OBS[0]).sample((500,))
    gap = npe.posterior(X_OBS[0]).log_prob(draws) - exact_posterior(X_OBS[0]).log_prob(draws)
    assert gap.abs().mean() < 0.15


def test_posterior_shapes_batch_and_pyro_sample(npe):
    post = npe.posterior(X_OBS)
    assert post.batch_shape == (2,) and post.event_shape == (2,)
    assert post.sample((7,)).shape == (7, 2, 2)
    lp = npe.log_prob(torch.zeros(2, 2), X_OBS)
    assert lp.shape == (2,) and torch.allclose(lp, post.log_prob(torch.zeros(2, 2)))

    def guide():
        return pyro.sample("theta", npe.posterior(X_OBS[0]))

    trace = pyro.poutine.trace(guide).get_trace()
    assert trace.nodes["theta"]["value"].shape == (2,)
    with pyro.plate("draws", 5):
        assert guide().shape == (5, 2)


def test_no_mass_leaks_outside_a_bounded_prior():
    prior = dist.Uniform(torch.tensor([0.0, -1.0]), torch.tensor([1.0, 1.0])).to_event(1)
    theta = prior.sample((1000,))
    x = theta + 0.3 * torch.randn_like(theta)  # posteriors pile up against the bounds
    npe = NPE(prior, num_layers=1, hidden_dims=[16], num_steps=100, progress=False, seed=0)
    npe.fit(theta, x)
    draws = npe.sample(20000, torch.tensor([1.2, -1.3]))  # beyond the corner of the box
    assert bool(prior.support.check(draws).all())
    assert draws[:, 0].max() < 1 and draws[:, 1].min() > -1


def test_model_prior_sites_stay_in_support():
    def model():
        rate = pyro.sample("rate", dist.Gamma(2.0, 2.0))
        p = pyro.sample("p", dist.Beta(1.0, 1.0))
        with pyro.plate("obs", 4):
            pyro.sample("x", dist.Normal(rate * p, 0.2), obs=torch.zeros(4))

    prior = ModelPrior(model)
    theta, x = simulate(ModelSimulator(prior), prior, 800, progress=False, seed=0)
    npe = NPE(prior, num_layers=1, hidden_dims=[16], num_steps=100, progress=False, seed=0)
    draws = npe.fit(theta, x).sample(5000, x[0])
    assert bool((draws[:, 0] > 0).all()) and bool(((draws[:, 1] > 0) & (draws[:, 1] < 1)).all())


def test_custom_embedding_and_save_load(tmp_path):
    theta, x = simulate_pairs(300)
    emb = nn.Sequential(nn.Linear(2, 8), nn.Tanh())
    npe = NPE(
        PRIOR,
        num_layers=1,
        hidden_dims=[8],
        embedding_net=emb,
        num_steps=20,
        progress=False,
        seed=0,
    ).fit(theta, x)
    assert any(p is emb[0].weight for p in npe.flow_.parameters())  # trained with the flow
    path = tmp_path / "npe.pt"
    npe.save(path)
    with pytest.raises(ValueError, match="custom embedding_net"):
        NPE.load(path, PRIOR)
    loaded = NPE.load(path, PRIOR, embedding_net=nn.Sequential(nn.Linear(2, 8), nn.Tanh()))
    assert torch.allclose(loaded.log_prob(theta[:5], x[:5]), npe.log_prob(theta[:5], x[:5]))
    other = dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1)
    with pytest.raises(ValueError, match="support"):
        NPE.load(path, other, embedding_net=emb)


def test_save_load_default_embedding(tmp_path):
    theta, x = simulate_pairs(300)
    npe = NPE(PRIOR, num_layers=1, hidden_dims=[8], num_steps=20, progress=False).fit(theta, x)
    npe.save(tmp_path / "m.pt")
    loaded = NPE.load(tmp_path / "m.pt", PRIOR)
    assert torch.equal(loaded.log_prob(theta[:5], x[:5]), npe.log_prob(theta[:5], x[:5]))
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    key = next(iter(payload["state_dict"]))
    payload["state_dict"][key] = payload["state_dict"][key] + 1.0  # a corrupt file
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="checksum"):
        NPE.load(tmp_path / "bad.pt", PRIOR)
    with pytest.raises(ModelFileError, match="not a file written by FMPE.save"):
        FMPE.load(tmp_path / "m.pt", PRIOR)


def test_bad_input_is_refused_with_a_clear_message():
    prior = dist.Uniform(torch.zeros(2), torch.ones(2)).to_event(1)
    theta = prior.sample((50,))
    x = theta.clone()
    npe = NPE(prior, num_layers=1, hidden_dims=[8], num_steps=5, progress=False)
    with pytest.raises(RuntimeError, match="not fitted"):
        npe.posterior(torch.zeros(2))
    bad = theta.clone()
    bad[3, 0] = 1.5
    with pytest.raises(ValueError, match="1 row.*outside the prior's support"):
        npe.fit(bad, x)
    nan_x = x.clone()
    nan_x[7, 1] = float("nan")
    with pytest.raises(ValueError, match="x has 1 row.*NaN"):
        npe.fit(theta, nan_x)
    with pytest.raises(ValueError, match=r"theta must have shape \(n, 2\)"):
        npe.fit(theta[:, :1], x)
    with pytest.raises(ValueError, match="one row per row of theta"):
        npe.fit(theta, x[:10])
    with pytest.raises(TypeError, match="unknown setting 'epochs'"):
        npe.fit(theta, x, epochs=3)
    npe.fit(theta, x)
    with pytest.raises(ValueError, match=r"x_o must have shape \(2,\)"):
        npe.posterior(torch.zeros(3))
    with pytest.raises(ValueError, match="unknown flow"):
        NPE(prior, flow="nope")
    with pytest.raises(ValueError, match="no conditional variant"):
        NPE(prior, flow="glow")
    with pytest.raises(ValueError, match="event shape"):
        NPE(dist.Normal(torch.zeros(2), 1.0))
    with pytest.raises(ValueError, match="unknown embedding_net"):
        NPE(prior, embedding_net="cnn")


def test_fitted_npe_passes_sbc(npe):
    from pyro_flows.sbi import sbc

    theta, x = simulate_pairs(300, seed=5)  # fresh pairs, not trained on
    result = sbc(npe, theta, x, num_posterior_samples=100)
    assert result.passed(), (result.chi2_pvalues, result.ks_pvalues)


def test_npe_of_one_parameter_with_the_default_flow():
    # A conditional MAF of one variable is an affine map whose shift and scale follow x.
    torch.manual_seed(0)
    prior = dist.Normal(torch.zeros(1), 1.0).to_event(1)
    theta = prior.sample((600,))
    x = theta + 0.3 * torch.randn_like(theta)
    npe = NPE(prior, num_steps=300, progress=False, seed=0).fit(theta, x)
    draws = npe.sample(2000, torch.tensor([1.0]))
    # exact posterior: N(1 / (1 + 0.09), 0.09 / 1.09)
    assert abs(float(draws.mean()) - 1 / 1.09) < 0.15
    assert abs(float(draws.std()) - (0.09 / 1.09) ** 0.5) < 0.1
