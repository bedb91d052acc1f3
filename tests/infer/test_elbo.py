import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import RenyiELBO, Trace_ELBO
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalMessenger,
)
from pyro.infer.autoguide.initialization import init_to_value

from pyro_flows.infer import (
    ELBO_ESTIMATORS,
    AutoFlowGuide,
    TraceIW_ELBO,
    TraceSTL_ELBO,
    fit_svi,
    make_elbo,
)

D, N, SIGMA = 3, 5, 0.7


@pytest.fixture
def data(float64):
    return torch.randn(N, D) + 1.0


def conjugate_model(x, positive=False):
    """z ~ N(0, I_D) (or log z, for positive=True); x_i ~ N(z (or log z), SIGMA^2 I)."""
    if positive:
        z = pyro.sample("z", dist.LogNormal(torch.zeros(D), 1.0).to_event(1))
        mean = z.log()
    else:
        mean = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
    with pyro.plate("data", N):
        pyro.sample("x", dist.Normal(mean, SIGMA).to_event(1), obs=x)


def posterior(x):
    """The closed-form posterior of z (of log z when positive): mean and (isotropic) sd."""
    precision = 1.0 + N / SIGMA**2
    return x.sum(0) / SIGMA**2 / precision, precision**-0.5


def exact_guide(kind, x, positive=False, shift=0.0, stretch=1.0):
    """A guide set exactly to the posterior (in the unconstrained space), or moved from it."""
    mean, sd = posterior(x)
    mean, sd = mean + shift, sd * stretch
    value = mean.exp() if positive else mean
    init = init_to_value(values={"z": value})
    if kind == "normal":
        guide = AutoNormal(conjugate_model, init_loc_fn=init, init_scale=sd)
    elif kind == "diagonal":
        guide = AutoDiagonalNormal(conjugate_model, init_loc_fn=init, init_scale=sd)
    elif kind == "mvn":
        guide = AutoMultivariateNormal(conjugate_model, init_loc_fn=init, init_scale=sd)
    else:  # RealNVP couplings start as permutations: with an isotropic S, q is the posterior
        gaussian = AutoDiagonalNormal(conjugate_model, init_loc_fn=init, init_scale=sd)
        guide = AutoFlowGuide(conjugate_model, "affine_coupling", num_layers=2)
        guide.init_from(gaussian, x, positive=positive)
    guide(x, positive=positive)  # creates the parameters (and draws no more randomness)
    return guide


def gradients(elbo, model, guide, *args, **kwargs):
    params = [p for p in guide.parameters() if p.requires_grad]
    loss = elbo.differentiable_loss(model, guide, *args, **kwargs)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [
            torch.zeros_like(p) if g is None else g.reshape(-1)
            for p, g in zip(params, grads, strict=True)
        ]
    )


def gradient_variance(elbo, model, guide, *args, draws=50, **kwargs):
    grads = torch.stack([gradients(elbo, model, guide, *args, **kwargs) for _ in range(draws)])
    return grads.var(0).max().item()


# -- values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("num_particles, vectorize", [(1, False), (4, False), (4, True)])
@pytest.mark.parametrize("kind", ["normal", "mvn", "flow"])
def test_stl_value_equals_trace_elbo(data, kind, num_particles, vectorize):
    guide = exact_guide(kind, data, shift=0.3, stretch=1.5)  # off the posterior: values vary
    kw = {"num_particles": num_particles, "vectorize_particles": vectorize}
    for method in ("loss", "differentiable_loss", "loss_and_grads"):
        values = []
        for elbo in (Trace_ELBO(**kw), TraceSTL_ELBO(**kw)):
            pyro.set_rng_seed(3)
            value = getattr(elbo, method)(conjugate_model, guide, data)
            values.append(float(torch.as_tensor(value).detach()))
        assert values[0] == pytest.approx(values[1], abs=1e-10), method


def local_model(x):
    """A global and a local latent: IW bounds take one log-mean-exp per data point."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


@pytest.mark.parametrize("estimator", ["dreg", "standard"])
@pytest.mark.parametrize("vectorize", [False, True])
@pytest.mark.parametrize("model", ["conjugate", "local"])
def test_iw_value_equals_renyi_alpha_zero(data, model, vectorize, estimator):
    model, x = (conjugate_model, data) if model == "conjugate" else (local_model, data[:, 0])
    guide = AutoNormal(model, init_scale=0.5)
    guide(x)
    for method in ("loss", "differentiable_loss", "loss_and_grads"):
        values = []
        for elbo in (
            RenyiELBO(alpha=0, num_particles=5, vectorize_particles=vectorize),
            TraceIW_ELBO(5, estimator, vectorize_particles=vectorize),
        ):
            pyro.set_rng_seed(4)
            if method == "differentiable_loss" and isinstance(elbo, RenyiELBO):
                value = elbo.loss(model, guide, x)  # Renyi has no differentiable_loss
            else:
                value = getattr(elbo, method)(model, guide, x)
            values.append(float(torch.as_tensor(value).detach()))
        assert values[0] == pytest.approx(values[1], abs=1e-10), method
    pyro.set_rng_seed(4)
    elbo_value = Trace_ELBO().loss(model, guide, x)
    pyro.set_rng_seed(4)
    assert TraceIW_ELBO(1, estimator).loss(model, guide, x) == pytest.approx(elbo_value, abs=1e-10)


# -- gradients against hand-written estimators ----------------------------------------------
def simple_guide(x):
    loc = pyro.param("loc", lambda: torch.linspace(0.0, 1.0, D))
    scale = pyro.param("scale", lambda: torch.full((D,), 0.8), constraint=constraints.positive)
    pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def log_joint(x, z, prior_loc=0.0):
    prior = dist.Normal(prior_loc + torch.zeros(D), 1.0).to_event(1).log_prob(z)
    return prior + dist.Normal(z, SIGMA).to_event(1).log_prob(x).sum()


def param_grads(loss):
    store = pyro.get_param_store()
    params = [store.get_param(n).unconstrained() for n in ("loc", "scale")]
    return torch.cat(torch.autograd.grad(loss, params))


def draw(num):
    loc, scale = pyro.param("loc"), pyro.param("scale")
    return [dist.Normal(loc, scale).to_event(1).rsample() for _ in range(num)]


def test_stl_gradient_is_the_path_derivative(data):
    simple_guide(data)
    pyro.set_rng_seed(5)
    ours = param_grads(TraceSTL_ELBO().differentiable_loss(conjugate_model, simple_guide, data))
    pyro.set_rng_seed(5)
    (z,) = draw(1)
    loc, scale = pyro.param("loc"), pyro.param("scale")
    log_q = dist.Normal(loc.detach(), scale.detach()).to_event(1).log_prob(z)
    expected = param_grads(-(log_joint(data, z) - log_q))
    assert torch.allclose(ours, expected, atol=1e-12)
    pyro.set_rng_seed(5)
    full = param_grads(Trace_ELBO().differentiable_loss(conjugate_model, simple_guide, data))
    assert not torch.allclose(full, expected, atol=1e-3)  # the score term was really dropped


def test_dreg_gradient_matches_formula(data):
    simple_guide(data)
    K = 3
    pyro.set_rng_seed(6)
    loss = TraceIW_ELBO(K, "dreg").differentiable_loss(conjugate_model, simple_guide, data)
    ours = param_grads(loss)
    pyro.set_rng_seed(6)
    zs = draw(K)
    loc, scale = pyro.param("loc"), pyro.param("scale")
    q, q_fixed = (
        dist.Normal(a, b).to_event(1) for a, b in ((loc, scale), (loc.detach(), scale.detach()))
    )
    log_w = torch.stack([log_joint(data, z) - q.log_prob(z) for z in zs])
    path = torch.stack([log_joint(data, z) - q_fixed.log_prob(z) for z in zs])
    weights = torch.softmax(log_w.detach(), 0)
    expected = param_grads(-(weights**2 * path).sum())
    assert torch.allclose(ours, expected, atol=1e-12)
    bound = torch.logsumexp(log_w, 0) - math.log(K)
    assert loss.item() == pytest.approx(-bound.item(), abs=1e-12)


@pytest.mark.parametrize("flow", ["iaf", "maf", "affine_coupling"])
def test_stl_gradient_of_flow_guides_matches_a_frozen_copy(data, flow):
    """log q at the draw with the parameters held fixed, by a copy whose parameters are constants.

    The flows cache their last pass: the rescoring must run the inverse, not reuse the pass
    that drew the sample (the default IAF inverts in D passes, MAF is used inverted).
    """
    guide = AutoFlowGuide(conjugate_model, flow, num_layers=2, hidden_dims=[8])
    guide(data, positive=True)
    params = [p for p in guide.parameters() if p.requires_grad]

    def grads(loss):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    pyro.set_rng_seed(8)
    ours = grads(TraceSTL_ELBO().differentiable_loss(conjugate_model, guide, data, positive=True))
    pyro.set_rng_seed(8)
    guide_trace = pyro.poutine.trace(guide).get_trace(data, positive=True)
    replayed = pyro.poutine.replay(conjugate_model, trace=guide_trace)
    log_p = pyro.poutine.trace(replayed).get_trace(data, positive=True).log_prob_sum()
    guide_trace.compute_log_prob()
    latent = f"_{guide._pyro_name}_latent"
    u = guide_trace.nodes[latent]["value"]
    log_jacobians = guide_trace.nodes["z"]["log_prob_sum"]  # the Delta site of the positive z
    frozen = copy.deepcopy(guide)
    frozen.requires_grad_(False)
    log_q = frozen.get_posterior(data).log_prob(u.clone()) + log_jacobians
    assert torch.allclose(ours, grads(log_q - log_p), atol=1e-12)


def model_with_parameter(x):
    mu0 = pyro.param("mu0", lambda: torch.full((D,), 0.2))
    z = pyro.sample("z", dist.Normal(mu0, 1.0).to_event(1))
    with pyro.plate("data", N):
        pyro.sample("x", dist.Normal(z, SIGMA).to_event(1), obs=x)


@pytest.mark.parametrize("vectorize", [False, True])
def test_dreg_gives_model_parameters_the_iwae_gradient(data, vectorize):
    simple_guide(data)
    model_with_parameter(data)
    store = pyro.get_param_store()
    params = [store.get_param(n).unconstrained() for n in ("mu0", "loc", "scale")]
    grads = {}
    for estimator in ("dreg", "standard"):
        pyro.set_rng_seed(7)
        elbo = TraceIW_ELBO(4, estimator, vectorize_particles=vectorize)
        loss = elbo.differentiable_loss(model_with_parameter, simple_guide, data)
        grads[estimator] = torch.autograd.grad(loss, params)
    assert torch.allclose(grads["dreg"][0], grads["standard"][0], atol=1e-12)  # theta
    assert grads["dreg"][0].abs().max() > 1e-3
    assert not torch.allclose(grads["dreg"][1], grads["standard"][1], atol=1e-3)  # phi


# -- zero variance at the posterior ---------------------------------------------------------
@pytest.mark.parametrize(
    "kind, positive",
    [("normal", False), ("normal", True), ("diagonal", False), ("mvn", True), ("flow", False)],
)
def test_gradient_variance_vanishes_at_the_posterior(data, kind, positive):
    guide = exact_guide(kind, data, positive=positive)
    kw = {"positive": positive}
    stl = gradient_variance(TraceSTL_ELBO(), conjugate_model, guide, data, **kw)
    dreg = TraceIW_ELBO(4, "dreg", vectorize_particles=True)
    dreg = gradient_variance(dreg, conjugate_model, guide, data, **kw)
    assert stl < 1e-10
    assert dreg < 1e-10
    assert gradient_variance(Trace_ELBO(), conjugate_model, guide, data, **kw) > 1e-3
    iwae = TraceIW_ELBO(4, "standard", vectorize_particles=True)
    assert gradient_variance(iwae, conjugate_model, guide, data, **kw) > 1e-3


def subsampled_model(x):
    with pyro.plate("data", len(x), subsample_size=4) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, SIGMA), obs=x[idx])


def subsampled_guide(x):
    precision = 1.0 + 1.0 / SIGMA**2
    loc = pyro.param("loc", lambda: x / SIGMA**2 / precision)
    scale = pyro.param("scale", lambda: torch.full_like(x, precision**-0.5), constraints.positive)
    with pyro.plate("data", len(x), subsample_size=4) as idx:
        pyro.sample("z", dist.Normal(loc[idx], scale[idx]))


@pytest.mark.parametrize(
    "elbo",
    [TraceSTL_ELBO(), TraceSTL_ELBO(3, vectorize_particles=True), TraceIW_ELBO(3, "dreg")],
    ids=["stl", "stl-vectorized", "dreg"],
)
def test_zero_variance_with_subsampling(float64, elbo):
    x = torch.randn(12)
    subsampled_guide(x)
    store = pyro.get_param_store()
    params = [store.get_param(n).unconstrained() for n in ("loc", "scale")]
    grads = []
    for _ in range(50):  # the rescoring run must use the same mini-batch
        loss = elbo.differentiable_loss(subsampled_model, subsampled_guide, x)
        grads.append(torch.cat(torch.autograd.grad(loss, params)))
    assert torch.stack(grads).abs().max() < 1e-10
    loss = Trace_ELBO().differentiable_loss(subsampled_model, subsampled_guide, x)
    assert torch.cat(torch.autograd.grad(loss, params)).abs().max() > 1e-2


# -- training -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "elbo",
    [TraceSTL_ELBO(), TraceIW_ELBO(4, "dreg", vectorize_particles=True)],
    ids=["stl", "dreg"],
)
def test_svi_converges_to_the_posterior(data, elbo):
    guide = AutoNormal(conjugate_model)
    fit_svi(conjugate_model, guide, data, num_steps=400, lr=0.05, elbo=elbo)
    mean, sd = posterior(data)
    assert torch.allclose(guide.locs.z, mean, atol=0.02)
    assert torch.allclose(guide.scales.z, torch.full_like(mean, sd), rtol=0.03)


def test_flow_guide_trains_with_stl(data):
    guide = AutoFlowGuide(conjugate_model, "affine_coupling", num_layers=2, hidden_dims=[8])
    elbo = TraceSTL_ELBO(num_particles=4, vectorize_particles=True)
    losses = fit_svi(conjugate_model, guide, data, num_steps=200, lr=0.03, elbo=elbo)
    mean, sd = posterior(data)
    draws = guide.sample_posterior(4000, data)["z"]
    assert all(math.isfinite(v) for v in losses)
    assert torch.allclose(draws.mean(0), mean, atol=0.05)
    assert torch.allclose(draws.std(0), torch.full_like(mean, sd), rtol=0.1)


# -- errors and the factory -----------------------------------------------------------------
def discrete_model():
    pyro.sample("coin", dist.Bernoulli(0.3))
    pyro.sample("z", dist.Normal(0.0, 1.0))


def discrete_guide():
    pyro.sample(
        "coin", dist.Bernoulli(pyro.param("p", torch.tensor(0.5), constraints.unit_interval))
    )
    pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))


@pytest.mark.parametrize("elbo", [TraceSTL_ELBO(), TraceIW_ELBO(2), TraceIW_ELBO(2, "standard")])
def test_non_reparameterised_site_is_refused(elbo):
    with pytest.raises(ValueError, match=r"guide site 'coin' is drawn from Bernoulli"):
        elbo.differentiable_loss(discrete_model, discrete_guide)
    with pytest.raises(ValueError, match="'coin'"):
        elbo.loss(discrete_model, discrete_guide)


def test_guide_messenger_is_refused():
    guide = AutoNormalMessenger(discrete_model)
    with pytest.raises(TypeError, match="GuideMessenger"):
        TraceSTL_ELBO().differentiable_loss(discrete_model, guide)


def test_make_elbo():
    assert ELBO_ESTIMATORS == ("dreg", "elbo", "iwae", "stl")
    assert type(make_elbo("elbo")) is Trace_ELBO
    stl = make_elbo("stl", num_particles=4)
    assert isinstance(stl, TraceSTL_ELBO) and stl.vectorize_particles and stl.num_particles == 4
    assert make_elbo("iwae", 6).estimator == "standard"
    dreg = make_elbo("dreg", 6, vectorize_particles=False)
    assert (dreg.estimator, dreg.num_particles, dreg.vectorize_particles) == ("dreg", 6, False)
    assert not make_elbo("stl").vectorize_particles  # one particle: nothing to vectorise
    with pytest.raises(ValueError, match="unknown name 'renyi'"):
        make_elbo("renyi")
    with pytest.raises(ValueError, match="num_particles"):
        make_elbo("dreg", 0)
    with pytest.raises(ValueError, match="unknown estimator 'iwae'"):
        TraceIW_ELBO(4, "iwae")
    with pytest.raises(ValueError, match="num_particles"):
        TraceIW_ELBO(0)
