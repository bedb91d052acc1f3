"""Flow guides at their defaults never crash and never go NaN (issue 16, item 1).

A 250-latent hierarchical model trains at the defaults; a Laplace warm start survives a Hessian
that is not positive definite; fit_svi skips non-finite steps, counts them and names the
parameter when they persist; MADE widths below the input size are widened with a warning.
"""

import math
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoNormal

import pyro_flows.transforms as T
from pyro_flows.infer import AutoFlowGuide, SkippedStepsWarning, fit_svi
from pyro_flows.infer.guides import LaplaceFallbackWarning, _laplace_gaussian
from pyro_flows.nn import HiddenWidthWarning

# -- a hierarchical model with 248 group effects, a mean and a spread: 250 latents ----------------
GROUPS = 248


def group_data(per_group=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    effects = 1.0 + 0.3 * torch.randn(GROUPS, generator=g)
    group = torch.arange(GROUPS).repeat_interleave(per_group)
    y = effects[group] + 0.5 * torch.randn(len(group), generator=g)
    return y, group


def group_model(y, group):
    """Vague priors, centred group effects: how a user first writes a hierarchical model."""
    mu = pyro.sample("mu", dist.Normal(0.0, 100.0))
    tau = pyro.sample("tau", dist.HalfNormal(100.0))
    with pyro.plate("groups", GROUPS):
        a = pyro.sample("a", dist.Normal(mu, tau))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(a[..., group], 0.5), obs=y)


@pytest.mark.parametrize("flow", [None, "maf", "iaf"])
def test_250_latents_train_at_the_defaults(flow):
    y, group = group_data()
    guide = AutoFlowGuide(group_model) if flow is None else AutoFlowGuide(group_model, flow)
    # the budget, cut to 50 steps; any skipped step would warn (warnings are errors)
    losses = fit_svi(group_model, guide, y, group, num_steps=50, lr=5e-3, num_particles=4)
    assert guide.latent_dim == 250
    # one hidden layer of 3D + 1 per MADE, as Pyro's AutoIAFNormal, in every layer
    nets = [m.network for m in guide.flow.parts if hasattr(m, "network")]
    assert len(nets) == 3 and {tuple(net.hidden_dims) for net in nets} == {(751,)}
    assert all(math.isfinite(v) for v in losses)
    assert all(bool(torch.isfinite(p).all()) for p in guide.parameters())
    # The start is the prior's centre, not random prior draws (init_to_median's sample medians
    # put the group effects tens of units away: a loss near 1e5 that 3000 steps of lr 5e-3
    # cannot walk back). Each observation costs a few nats at the centre.
    assert losses[0] < 20 * len(y)
    assert sum(losses[-10:]) < sum(losses[:10])
    draws = guide.sample_posterior(100, y, group)
    assert draws["a"].shape == (100, GROUPS) and bool(torch.isfinite(draws["a"]).all())


# -- the Laplace warm start with a Hessian that is not positive definite --------------------------
def flat_direction_model(y=None):
    """``free``'s prior is cancelled by a factor and no data see it: the Hessian is singular."""
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    free = pyro.sample("free", dist.Normal(0.0, 1.0))
    pyro.factor("flat", -dist.Normal(0.0, 1.0).log_prob(free))
    pyro.sample("y", dist.Normal(x, 0.5), obs=y)


def test_warm_start_falls_back_when_the_hessian_is_singular():
    y = torch.tensor(2.0)
    guide = AutoFlowGuide(
        flat_direction_model, "iaf", warm_start=500, warm_start_lr=0.05, init_scale=0.7
    )
    # Without the fallback Pyro's laplace_approximation fails in linalg (singular Hessian).
    # y is passed by keyword: the MAP fit must see it (it used to drop keyword arguments).
    with pytest.warns(LaplaceFallbackWarning, match="eigenvalue fallback.*scale 0.7"):
        guide(y=y)
    loc, scale = guide.loc.detach(), guide.scale.detach()
    names = [name for name, _ in guide.prototype_trace.iter_stochastic_nodes()]
    x, free = names.index("x"), names.index("free")
    # x: the posterior N(1.6, 0.2) (prior N(0, 1), one observation 2 with sd 0.5)
    assert loc[x] == pytest.approx(1.6, abs=0.05)
    assert scale[x] == pytest.approx(math.sqrt(0.2), rel=0.02)
    assert scale[free] == pytest.approx(0.7, rel=1e-4)
    losses = fit_svi(flat_direction_model, guide, num_steps=20, lr=5e-3, y=y)
    assert all(math.isfinite(v) for v in losses)


def test_laplace_gaussian_fallbacks():
    loc = torch.tensor([1.0, -1.0])
    # positive definite: the plain Laplace approximation, no warning
    h = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    _, scale_tril = _laplace_gaussian(loc, h)
    assert torch.allclose(scale_tril @ scale_tril.T, torch.linalg.inv(h), atol=1e-6)
    # a saddle: the negative direction gets the fallback scale, the other keeps its curvature
    with pytest.warns(LaplaceFallbackWarning, match="eigenvalue fallback"):
        _, scale_tril = _laplace_gaussian(loc, torch.tensor([[4.0, 0.0], [0.0, -1.0]]), 0.3)
    assert torch.allclose(scale_tril, torch.diag(torch.tensor([0.5, 0.3])))
    # a NaN entry: the diagonal where it is usable
    with pytest.warns(LaplaceFallbackWarning, match="diagonal fallback"):
        _, scale_tril = _laplace_gaussian(loc, torch.tensor([[4.0, math.nan], [0.0, 0.0]]), 0.3)
    assert torch.allclose(scale_tril, torch.diag(torch.tensor([0.5, 0.3])))
    with pytest.raises(FloatingPointError, match="MAP fit"):
        _laplace_gaussian(torch.tensor([math.nan, 0.0]), h)


# -- fit_svi's guard against non-finite steps -----------------------------------------------------
def normal_model():
    pyro.sample("x", dist.Normal(torch.zeros(3), 1.0).to_event(1))


def poison_gradient(tensor, steps):
    """Makes ``tensor``'s gradient NaN on the given backward passes (counted from 1)."""
    count = [0]

    def hook(grad):
        count[0] += 1
        return grad * math.nan if count[0] in steps else grad

    tensor.register_hook(hook)


def first_weight(guide):
    return guide.flow.parts[0].network.layers[0].weight


def test_non_finite_steps_are_skipped_counted_and_the_lr_lowered():
    guide = AutoFlowGuide(normal_model, "iaf", num_layers=1)
    guide()
    weight = first_weight(guide)
    poison_gradient(weight, steps={3, 4, 10})
    with pytest.warns(SkippedStepsWarning, match=r"skipped 3 of 30 steps .*steps 3, 4, 10\)"):
        losses = fit_svi(normal_model, guide, num_steps=30, lr=1e-2)
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert all(bool(torch.isfinite(p).all()) for p in guide.parameters())

    # when every step is non-finite, fit_svi raises, and no update was applied
    pyro.clear_param_store()
    guide = AutoFlowGuide(normal_model, "iaf", num_layers=1)
    guide()
    poison_gradient(first_weight(guide), steps={1})
    before = [p.detach().clone() for p in guide.parameters()]
    with pytest.raises(FloatingPointError, match="from step 1 to step 1"):
        fit_svi(normal_model, guide, num_steps=1, lr=1e-2)
    assert all(torch.equal(a, b) for a, b in zip(before, guide.parameters(), strict=True))


def test_a_non_finite_loss_is_skipped():
    calls = [0]

    def sometimes_nan():
        calls[0] += 1
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        if calls[0] in (5, 6):
            pyro.factor("boom", x * math.nan)

    with pytest.warns(SkippedStepsWarning, match="skipped 2 of 20 steps"):
        losses = fit_svi(sometimes_nan, AutoNormal(sometimes_nan), num_steps=20)
    assert sum(not math.isfinite(v) for v in losses) == 2
    assert math.isfinite(pyro.param("AutoNormal.locs.x").item())


def test_persistent_non_finite_gradients_raise_naming_the_parameter():
    guide = AutoFlowGuide(normal_model, "iaf", num_layers=1)
    guide()
    poison_gradient(first_weight(guide), steps=set(range(1, 1000)))
    name = re.escape("AutoFlowGuide.flow.0.network.layers.0.weight")
    with pytest.raises(FloatingPointError, match=f"5 non-finite steps in a row.*{name}.*lr"):
        fit_svi(normal_model, guide, num_steps=30, max_bad_steps=5)
    assert "flow" in name and all(bool(torch.isfinite(p).all()) for p in guide.parameters())
    # a parameter that arrives NaN makes the guide's distributions invalid: named too
    with torch.no_grad():
        first_weight(guide)[0, 0] = math.nan
    with pytest.raises(FloatingPointError, match=f"invalid.*non-finite values of {name}"):
        fit_svi(normal_model, guide, num_steps=30, max_bad_steps=3)


def test_fit_svi_takes_any_elbo():
    from pyro.infer import TraceMeanField_ELBO

    def guide():
        loc = pyro.param("loc", torch.ones(3))
        scale = pyro.param("scale", torch.full((3,), 0.5), constraint=constraints.positive)
        pyro.sample("x", dist.Normal(loc, scale).to_event(1))

    losses = fit_svi(normal_model, guide, num_steps=5, elbo=TraceMeanField_ELBO())
    # without data, TraceMeanField_ELBO's loss is the closed-form KL(guide || prior): exact
    posterior = dist.Normal(pyro.param("loc"), pyro.param("scale"))
    kl = torch.distributions.kl_divergence(posterior, dist.Normal(0.0, 1.0)).sum().item()
    assert TraceMeanField_ELBO().loss(normal_model, guide) == pytest.approx(kl, rel=1e-6)
    assert losses[0] == pytest.approx(3 * (0.5 + (0.25 - 1) / 2 - math.log(0.5)), rel=1e-6)
    with pytest.raises(TypeError, match="elbo must be a pyro.infer.ELBO"):
        fit_svi(normal_model, guide, num_steps=1, elbo="trace")


# -- widths below the input size are widened, with a warning --------------------------------------
@pytest.mark.parametrize("make", [T.maf, T.iaf])
def test_narrow_made_widths_are_widened(make):
    with pytest.warns(HiddenWidthWarning, match=r"\[3, 8\] are narrower .* \(6\); widened to"):
        t = make(6, hidden_dims=[3, 8])
    assert t.network.hidden_dims == [6, 8]
    z = torch.randn(5, 6, dtype=torch.float64)
    t = t.double()
    x = t(z)
    assert torch.allclose(t.inv(x.clone()), z, atol=1e-8)
    # the log-determinant is that of the autograd Jacobian, which is triangular in MADE's order
    jac = torch.autograd.functional.jacobian(lambda v: t(v.clone()), z[0])
    assert t.log_abs_det_jacobian(z[:1], t(z[:1])).item() == pytest.approx(
        torch.linalg.slogdet(jac)[1].item(), abs=1e-8
    )


def test_a_guide_with_too_narrow_widths_warns_and_trains():
    y, group = group_data(per_group=1)
    with pytest.warns(HiddenWidthWarning, match=r"\(250\); widened to \[250, 250\]"):
        guide = AutoFlowGuide(group_model, "maf", num_layers=2, hidden_dims=[64, 64])
        losses = fit_svi(group_model, guide, y, group, num_steps=5, lr=5e-3, num_particles=2)
    assert all(math.isfinite(v) for v in losses)
