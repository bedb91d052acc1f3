"""The conformance suite every pyro_flows transform passes.

A transform joins it with one line in ``TRANSFORMS``: a factory ``make(D)`` returning a
``TransformModule`` (or a ``ConditionalTransformModule``, which the suite conditions on a
context of size ``CONTEXT_DIM``), the smallest D it accepts, and whether it can invert data.
Transforms on other event shapes (images) give ``event(D)``, the input event shape for D
(default ``(D,)``); ``image(make)`` runs an image transform once, on ``IMAGE``, wherever the
suite sweeps D. Outputs may have another event shape (``t.forward_shape``, e.g. a squeeze).
"""

import inspect
import io
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as pyro_T
import pytest
import torch
from pyro.distributions import TransformModule
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormalizingFlow
from pyro.optim import Adam

import pyro_flows.transforms as T
from pyro_flows.flows import _ALIASES, FAMILIES, build

CONTEXT_DIM = 3
DIMS = (1, 2, 5, 16)
BATCHES = ((), (7,), (3, 4))
IMAGE = (2, 4, 4)  # small enough for the autograd Jacobian (32 x 32 per row)


def vector(dim):
    return (dim,)


@dataclass(frozen=True)
class Case:
    make: Callable[[int], torch.nn.Module]
    min_dim: int = 1
    invertible: bool = True  # False: no analytic inverse (scores only its own samples)
    atol: float = 1e-9  # round trip, float64
    ladj_atol: float = 1e-8  # log|det J| against autograd, float64
    smooth: bool = True  # density smooth enough to integrate on a grid
    max_dim: int = 16
    event: Callable[[int], tuple[int, ...]] = vector  # the input event shape for D


def image(make, **kwargs):
    """An image transform, built on ``IMAGE`` and checked once (at D = 2) in the D sweeps."""
    return Case(lambda d: make(IMAGE), min_dim=2, max_dim=2, event=lambda d: IMAGE, **kwargs)


def initialized(t, shape, seed=7):
    """Runs ActNorm's data-dependent initialisation (the suite then moves parameters off it)."""
    g = torch.Generator().manual_seed(seed)
    t.inv(0.5 + 0.8 * torch.randn(16, *shape, generator=g))
    assert all(bool(m.initialized) for m in t.modules() if isinstance(m, T.ActNorm))
    return t


def glow_vector(d):
    return initialized(T.glow_step(d, hidden_dims=[24]), (d,))


# Pyro's own families are wrapped, not re-written: they are held to Pyro's float64 precision
# (its splines and NAF clamp with small epsilons), and Pyro's splines start with densities too
# peaked for a grid integral. Stacked in 16-D, Pyro's spline inverses (each accurate to ~1e-8)
# compound to errors of ~1e-2 once parameters move, so they are checked up to 5-D.
PYRO = {"atol": 1e-6, "ladj_atol": 1e-6}
PYRO_SPLINE = {"smooth": False, "max_dim": 5, **PYRO}


TRANSFORMS = {
    "planar": Case(T.planar),
    "radial": Case(T.radial),
    "conditional_planar": Case(lambda d: T.conditional_planar(d, CONTEXT_DIM, hidden_dims=[24])),
    "conditional_radial": Case(lambda d: T.conditional_radial(d, CONTEXT_DIM, hidden_dims=[24])),
    "affine_coupling": Case(lambda d: T.affine_coupling(d, hidden_dims=[24]), min_dim=2),
    "affine_coupling_alternate": Case(
        lambda d: T.affine_coupling(d, hidden_dims=[24], mask="alternate", flip=True), min_dim=2
    ),
    # the density-estimation form: the affine map acts from data to noise, soft clamp, random
    # start (a non-identity start exercises the log-determinant's sign)
    "affine_coupling_density": Case(
        lambda d: T.affine_coupling(
            d, hidden_dims=[24], direction="density", log_scale_clamp="soft", identity_init=False
        ),
        min_dim=2,
    ),
    "maf": Case(lambda d: T.maf(d, hidden_dims=[24]), min_dim=2),
    "maf_random_order": Case(lambda d: T.maf(d, hidden_dims=[24], order="random"), min_dim=2),
    "iaf": Case(lambda d: T.iaf(d, hidden_dims=[24]), min_dim=2),
    "maf_residual": Case(lambda d: T.maf(d, hidden_dims=[24, 24], residual=True), 2),
    "affine_coupling_residual": Case(
        lambda d: T.affine_coupling(d, hidden_dims=[24, 24], residual=True), min_dim=2
    ),
    "permutation": Case(T.permutation, min_dim=1),
    "reverse": Case(T.reverse),
    # conditional layers accept D = 1: an affine map (or spline) whose parameters see c only
    "conditional_affine_coupling": Case(
        lambda d: T.conditional_affine_coupling(d, CONTEXT_DIM, hidden_dims=[24])
    ),
    "conditional_affine_coupling_density": Case(
        lambda d: T.conditional_affine_coupling(
            d, CONTEXT_DIM, hidden_dims=[24], direction="density", identity_init=False
        )
    ),
    "conditional_maf": Case(lambda d: T.conditional_maf(d, CONTEXT_DIM, hidden_dims=[24])),
    "conditional_iaf": Case(lambda d: T.conditional_iaf(d, CONTEXT_DIM, hidden_dims=[24])),
    "conditional_iaf_residual": Case(
        lambda d: T.conditional_iaf(d, CONTEXT_DIM, hidden_dims=[24, 24], residual=True)
    ),
    # stacks built by name, including Pyro's families behind the same door
    # Stacked MAFs sample by a D-pass recursion; with random parameters three layers scale a
    # 16-D output to ~1e12, beyond what an absolute float64 tolerance can measure, so the stack
    # is checked up to 5-D (single layers, above, up to 16-D).
    "build_maf": Case(lambda d: build("maf", d, 3, hidden_dims=[24]), min_dim=2, max_dim=5),
    "build_conditional_realnvp": Case(
        lambda d: build("realnvp", d, 2, context_dim=CONTEXT_DIM, hidden_dims=[24])
    ),
    "build_conditional_maf": Case(
        lambda d: build("maf", d, 3, context_dim=CONTEXT_DIM, hidden_dims=[24]), max_dim=5
    ),
    "build_planar": Case(lambda d: build("planar", d, 3)),
    "build_conditional_radial": Case(lambda d: build("radial", d, 2, context_dim=CONTEXT_DIM)),
    "build_spline": Case(lambda d: build("spline", d, 2), **PYRO_SPLINE),
    "elementwise_spline": Case(
        lambda d: T.elementwise_spline(d, identity_init=False), **PYRO_SPLINE
    ),
    "build_spline_coupling": Case(
        lambda d: build("spline_coupling", d, 2), min_dim=2, **PYRO_SPLINE
    ),
    "build_spline_autoregressive": Case(
        lambda d: build("spline_autoregressive", d, 2), min_dim=2, **PYRO_SPLINE
    ),
    "build_conditional_spline_autoregressive": Case(
        lambda d: build("spline_autoregressive", d, 2, context_dim=CONTEXT_DIM), **PYRO_SPLINE
    ),
    "masked_spline_autoregressive": Case(
        lambda d: T.masked_spline_autoregressive(d, hidden_dims=[24]), min_dim=2, **PYRO_SPLINE
    ),
    "conditional_masked_spline_autoregressive": Case(
        lambda d: T.conditional_masked_spline_autoregressive(d, CONTEXT_DIM, hidden_dims=[24]),
        **PYRO_SPLINE,
    ),
    "build_nsf": Case(lambda d: build("nsf", d, 2), min_dim=2, **PYRO_SPLINE),
    "build_conditional_nsf": Case(
        lambda d: build("nsf", d, 2, context_dim=CONTEXT_DIM), **PYRO_SPLINE
    ),
    "build_nsf_quadratic": Case(
        lambda d: build("nsf", d, 2, order="quadratic"), min_dim=2, **PYRO_SPLINE
    ),
    "build_conditional_nsf_quadratic": Case(
        lambda d: build("nsf", d, 2, context_dim=CONTEXT_DIM, order="quadratic"), **PYRO_SPLINE
    ),
    "build_naf": Case(lambda d: build("naf", d, 2), min_dim=2, invertible=False, **PYRO),
    "build_conditional_naf": Case(
        lambda d: build("naf", d, 2, context_dim=CONTEXT_DIM), invertible=False, **PYRO
    ),
    "build_bnaf": Case(lambda d: build("bnaf", d, 2), min_dim=2, invertible=False, **PYRO),
    # residual flows: fixed-point inverse to ~1e-13; the exact log-det (the suite's reference)
    "iresnet": Case(lambda d: T.iresnet(d, hidden_dims=[16], estimator="exact")),
    "residual_flow_inverse": Case(
        lambda d: T.residual_flow(d, hidden_dims=[16], estimator="exact", inverse=True)
    ),
    "conditional_iresnet": Case(
        lambda d: T.conditional_iresnet(d, CONTEXT_DIM, hidden_dims=[16], estimator="exact")
    ),
    "conditional_residual_flow": Case(
        lambda d: T.conditional_residual_flow(d, CONTEXT_DIM, hidden_dims=[16], estimator="exact")
    ),
    # the builder's layers: two blocks with an elementwise affine map between them
    "iresnet_layer": Case(lambda d: T.iresnet_layer(d, hidden_dims=[8], estimator="exact")),
    "residual_flow_layer_inverse": Case(
        lambda d: T.residual_flow_layer(d, hidden_dims=[8], estimator="exact", inverse=True)
    ),
    "conditional_iresnet_layer": Case(
        lambda d: T.conditional_iresnet_layer(d, CONTEXT_DIM, hidden_dims=[8], estimator="exact")
    ),
    "conditional_residual_flow_layer": Case(
        lambda d: T.conditional_residual_flow_layer(
            d, CONTEXT_DIM, hidden_dims=[8], estimator="exact"
        )
    ),
    "conv_iresnet": image(lambda s: T.conv_iresnet(s, hidden_channels=[4], estimator="exact")),
    # ODE flows: accurate to the solver's tolerances (solves are costly: up to 5-D); fixed
    # steps for the conditional one keep rows bit-independent under different batchings
    "ffjord": Case(
        lambda d: T.ffjord(d, hidden_dims=[8], trace="exact", rtol=1e-9, atol=1e-9),
        atol=1e-8,
        ladj_atol=1e-8,
        max_dim=5,
    ),
    "conditional_ffjord": Case(
        lambda d: T.conditional_ffjord(
            d, CONTEXT_DIM, hidden_dims=[8], trace="exact", method="rk4", step_size=0.1
        ),
        atol=1e-8,
        ladj_atol=1e-8,
        max_dim=5,
    ),
    # Glow blocks on vectors (event_dim=1) and images (event_dim=3); ActNorm is checked after
    # its data-dependent initialisation
    "actnorm": Case(lambda d: initialized(T.actnorm(d), (d,))),
    "invertible_conv1x1": Case(T.invertible_conv1x1),
    "invertible_conv1x1_plain": Case(lambda d: T.invertible_conv1x1(d, lu=False)),
    "glow_step": Case(glow_vector, min_dim=2),
    "actnorm_image": image(lambda s: initialized(T.actnorm(s), s)),
    "invertible_conv1x1_image": image(T.invertible_conv1x1),
    "invertible_conv1x1_plain_image": image(lambda s: T.invertible_conv1x1(s, lu=False)),
    "image_affine_coupling": image(lambda s: T.image_affine_coupling(s, hidden_channels=[8])),
    "conditional_image_affine_coupling": image(
        lambda s: T.conditional_image_affine_coupling(s, CONTEXT_DIM, hidden_channels=[8])
    ),
    "squeeze": image(T.squeeze),
    # the data-end standardisation of NormalizingFlow (statistics as buffers)
    "standardization": Case(
        lambda d: T.Standardization(torch.linspace(-1.0, 1.0, d), torch.linspace(0.5, 2.0, d))
    ),
    "glow_step_image": image(lambda s: initialized(T.glow_step(s, hidden_dims=[8]), s)),
}
NAMES = list(TRANSFORMS)
INVERTIBLE = [n for n in NAMES if TRANSFORMS[n].invertible]
PARAMETER_FREE = ("permutation", "reverse", "squeeze", "standardization")  # nothing to train


# -- helpers ------------------------------------------------------------------------------------
def make_module(name, dim, seed=0):
    """Builds the module in float32, moves it to float64 and moves parameters off their init."""
    torch.manual_seed(seed)
    module = TRANSFORMS[name].make(dim).to(torch.float64)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def context_shape(module):
    """The context event shape of a conditional module (an image for image couplings)."""
    if isinstance(module, T.ConditionalImageAffineCoupling):
        return (module.context_channels, *module.event_shape[1:])
    return (CONTEXT_DIM,)


def context_for(batch, seed=2, shape=(CONTEXT_DIM,)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, *shape, generator=g, dtype=torch.float64)


def as_transform(module, batch=()):
    if isinstance(module, ConditionalTransformModule):
        return module.condition(context_for(batch, shape=context_shape(module)))
    return module


def skip_small(name, dim):
    if TRANSFORMS[name].event(dim) == IMAGE and dim != 2:
        pytest.skip(f"{name} is an image transform, checked once (at D = 2) on {IMAGE}")
    if dim < TRANSFORMS[name].min_dim:
        pytest.skip(f"{name} needs input_dim >= {TRANSFORMS[name].min_dim}")
    if dim > TRANSFORMS[name].max_dim:
        pytest.skip(f"{name} is checked up to input_dim {TRANSFORMS[name].max_dim}")


def shapes(name, dim, t=None):
    """The input and output event shapes of ``name`` at ``dim`` (``t`` gives the output)."""
    shape = tuple(TRANSFORMS[name].event(dim))
    if t is None:
        t = as_transform(make_module(name, dim))
    return shape, tuple(t.forward_shape(torch.Size(shape)))


def data(batch, shape, seed=3):
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    g = torch.Generator().manual_seed(seed)
    return 1.5 * torch.randn(*batch, *shape, generator=g, dtype=torch.float64)


def base_dist(shape, batch=()):
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    zeros = torch.zeros(shape, dtype=torch.float64)
    return dist.Normal(zeros, 1.0).to_event(len(shape)).expand(batch)


def batched_jacobian(f, x, event_ndim=1):
    """Per-row Jacobians of f on x of shape (*batch, *event), the event flattened to D entries.

    Checks that rows do not interact; returns shape (*batch, D, D).
    """
    batch = x.shape[: x.dim() - event_ndim]
    dim = x[(0,) * len(batch)].numel()
    flat = x.reshape(-1, dim)
    n = flat.shape[0]
    jac = torch.autograd.functional.jacobian(lambda v: f(v.reshape(x.shape)).reshape(n, dim), flat)
    blocks = jac[torch.arange(n), :, torch.arange(n), :]  # (n, D, D)
    off = jac.clone()
    off[torch.arange(n), :, torch.arange(n), :] = 0
    assert off.abs().max() == 0, "outputs of one row depend on the inputs of another"
    return blocks.reshape(*batch, dim, dim)


# -- 1. contract --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_contract(name):
    module = make_module(name, 5)
    t = as_transform(module)
    ndim = len(TRANSFORMS[name].event(5))
    assert isinstance(module, (TransformModule, ConditionalTransformModule))
    assert isinstance(t, TransformModule)
    assert t.domain.event_dim == ndim and t.codomain.event_dim == ndim
    assert t.bijective
    assert t.inv.inv is t
    assert isinstance(t.inv, torch.nn.Module)
    assert set(t.inv.parameters()) == set(t.parameters()) == set(module.parameters())
    assert repr(t)


# -- 2. inverse round trip ----------------------------------------------------------------------
@pytest.mark.parametrize("batch", BATCHES, ids=str)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("name", INVERTIBLE)
def test_inverse_round_trip(name, dim, batch):
    skip_small(name, dim)
    t = as_transform(make_module(name, dim), batch)
    shape, out = shapes(name, dim, t)
    x = data(batch, shape)
    y = t(x)
    assert y.shape == (*batch, *out) and y.dtype == torch.float64
    atol = TRANSFORMS[name].atol
    assert t.inv(y) is x  # the cache answers for the pair it just made...
    assert (t.inv(y.clone()) - x).abs().max() < atol  # ...but not for a fresh tensor
    y0 = data(batch, out, seed=4)
    x0 = t.inv(y0)
    assert (t(x0.clone()) - y0).abs().max() < atol


# -- 3. log|det J| against autograd -------------------------------------------------------------
@pytest.mark.parametrize("batch", BATCHES, ids=str)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("name", NAMES)
def test_log_abs_det_jacobian(name, dim, batch):
    skip_small(name, dim)
    t = as_transform(make_module(name, dim), batch)
    shape, _ = shapes(name, dim, t)
    x = data(batch, shape)
    y = t(x)
    jac = batched_jacobian(t.with_cache(0), x, len(shape))
    expected = torch.linalg.slogdet(jac).logabsdet
    t.with_cache(1)
    ladj = t.log_abs_det_jacobian(x, y)
    atol = TRANSFORMS[name].ladj_atol
    assert ladj.shape == batch
    assert (ladj - expected).abs().max() < atol
    uncached = t.log_abs_det_jacobian(x.clone(), y.clone())
    assert (uncached - expected).abs().max() < atol
    if TRANSFORMS[name].invertible:
        assert (t.inv.log_abs_det_jacobian(y, x) + expected).abs().max() < atol


# -- 4. inside TransformedDistribution ----------------------------------------------------------
@pytest.mark.parametrize("dim", (2, 5))
@pytest.mark.parametrize("name", INVERTIBLE)
def test_transformed_distribution_log_prob(name, dim):
    skip_small(name, dim)
    batch = (6,)
    t = as_transform(make_module(name, dim), batch)
    shape, out = shapes(name, dim, t)
    y = data(batch, out)
    d = dist.TransformedDistribution(base_dist(shape), [t])
    log_prob = d.log_prob(y)
    x = t.inv(y.clone())
    jac = batched_jacobian(t.with_cache(0), x, len(shape))
    expected = base_dist(shape).log_prob(x) - torch.linalg.slogdet(jac).logabsdet
    assert (log_prob - expected).abs().max() < TRANSFORMS[name].ladj_atol


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in INVERTIBLE
        if TRANSFORMS[n].min_dim <= 2 and TRANSFORMS[n].smooth and TRANSFORMS[n].event(2) == (2,)
    ],
)
def test_density_integrates_to_one(name):
    t = as_transform(make_module(name, 2, seed=5))
    d = dist.TransformedDistribution(base_dist(2), [t])
    lim, n = 12.0, 601
    grid = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xy = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = d.log_prob(xy).exp().reshape(n, n)
    h = (grid[1] - grid[0]).item()
    mass = torch.trapezoid(torch.trapezoid(density, dx=h), dx=h).item()
    assert abs(mass - 1) < 1e-3
    assert density.std() > 0.01 * density.mean()  # parameters are non-trivial


# -- 5. shapes and gradients --------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_sample_shapes_and_gradients(name):
    dim, batch = 5, (4,)
    module = make_module(name, dim)
    t = as_transform(module, batch)
    shape, out = shapes(name, dim, t)
    assert t.forward_shape(torch.Size((2, *batch, *shape))) == (2, *batch, *out)
    assert t.inverse_shape(torch.Size((2, *batch, *out))) == (2, *batch, *shape)
    d = dist.TransformedDistribution(base_dist(shape, batch), [t])
    assert d.sample((3,)).shape == (3, *batch, *out)
    z = d.rsample((3,))
    assert z.shape == (3, *batch, *out)
    if TRANSFORMS[name].invertible:
        loss = -d.log_prob(data((3, *batch), out)).sum()  # maximum likelihood of data
    else:  # reverse KL to a standard normal: scores its own samples
        loss = (d.log_prob(z) + 0.5 * z.pow(2).sum(-1)).sum()
    assert loss.shape == ()
    if not list(module.parameters()):
        return
    loss.backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


# -- 6. Pyro integration ------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in NAMES if n not in PARAMETER_FREE])
def test_svi_with_flow_guide(name):
    dim = 3
    module = make_module(name, dim)
    shape, out = shapes(name, dim)
    n = torch.Size(out).numel()
    target = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64).repeat(n)[:n].reshape(out)

    def model():
        pyro.sample("z", dist.Normal(target, 0.5).to_event(len(out)))

    def flow():
        return dist.TransformedDistribution(base_dist(shape), [as_transform(module)])

    def guide():
        pyro.module("flow", module)
        pyro.sample("z", flow())

    # The ELBO Pyro computes (the guide scoring its own draw) is the one the flow defines on
    # the same draw as a fresh tensor, so SVI optimises the flow's own density.
    pyro.set_rng_seed(11)
    loss = Trace_ELBO().loss(model, guide)
    pyro.set_rng_seed(11)
    q = flow()
    z = q.rsample()
    fresh = z.detach().clone() if TRANSFORMS[name].invertible else z
    expected = q.log_prob(fresh) - dist.Normal(target, 0.5).to_event(len(out)).log_prob(fresh)
    assert abs(loss - expected.item()) < 1e-6 * max(1.0, abs(loss))

    before = [p.detach().clone() for p in module.parameters()]
    svi = SVI(model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


@pytest.mark.parametrize("name", ["affine_coupling", "maf", "iaf", "build_spline_coupling"])
def test_auto_normalizing_flow(name):
    def model():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def init_transform_fn(d):
        return TRANSFORMS[name].make(d)

    guide = AutoNormalizingFlow(model, partial(pyro_T.iterated, 2, init_transform_fn))
    svi = SVI(model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    assert all(torch.isfinite(torch.tensor([svi.step() for _ in range(2)])))


# -- 7. persistence -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    dim, batch = 5, (4,)
    a, b = make_module(name, dim, seed=0), make_module(name, dim, seed=10)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer))
    ta, tb = as_transform(a, batch), as_transform(b, batch)
    shape, out = shapes(name, dim, ta)
    x = data(batch, shape)
    assert torch.equal(ta(x), tb(x.clone()))
    assert torch.equal(ta.log_abs_det_jacobian(x, ta(x)), tb.log_abs_det_jacobian(x, tb(x)))
    if TRANSFORMS[name].invertible:
        y = data(batch, out)
        assert torch.equal(ta.inv(y), tb.inv(y.clone()))


# -- 8. conditioning ----------------------------------------------------------------------------
CONDITIONAL = [n for n in NAMES if isinstance(TRANSFORMS[n].make(2), ConditionalTransformModule)]


@pytest.mark.parametrize("name", CONDITIONAL)
def test_conditional_contexts(name):
    dim = min(4, TRANSFORMS[name].max_dim)
    module = make_module(name, dim)
    shape, out = shapes(name, dim)
    cshape = context_shape(module)
    contexts = context_for((7,), shape=cshape)
    x = data((7,), shape)
    batched = module.condition(contexts)(x)
    rows = torch.stack([module.condition(contexts[i])(x[i]) for i in range(7)])
    assert torch.allclose(batched, rows, rtol=0, atol=1e-12)
    assert (batched[0] - module.condition(contexts[1])(x[0])).abs().max() > 1e-6
    # one context for the whole batch, and one point under many contexts
    assert module.condition(contexts[0])(x).shape == (7, *out)
    assert module.condition(contexts)(x[0]).shape == (7, *out)
    with pytest.raises(ValueError, match="context"):
        module.condition(None)
    with pytest.raises(ValueError, match="context"):
        module.condition(torch.zeros(7, cshape[0] + 1, *cshape[1:], dtype=torch.float64))


# -- 9. no stale cache (Pyro issue #2564) -------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in INVERTIBLE if n not in PARAMETER_FREE])
def test_no_stale_cache_after_optimizer_step(name):
    dim = 3
    module = make_module(name, dim)
    t = as_transform(module)
    shape, out = shapes(name, dim, t)
    d = dist.TransformedDistribution(base_dist(shape), [t])
    y = data((16,), out)  # the same data tensor at every step
    opt = torch.optim.Adam(module.parameters(), lr=0.05)
    values = []
    for _ in range(3):
        opt.zero_grad()
        loss = -d.log_prob(y).mean()
        loss.backward()  # a second backward through a stale graph would raise here
        opt.step()
        values.append(loss.item())
        fresh = as_transform(module).inv(y.clone())
        assert torch.equal(t.inv(y), fresh)  # the inverse uses the new parameters
    assert len(set(values)) == 3


# -- 10. dtype and device (Pyro issue #2761) ----------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_no_tensor_created_on_default_device(name):
    dim, batch = 4, (5,)
    module = make_module(name, dim)  # built in float32, moved to float64
    x = data(batch, TRANSFORMS[name].event(dim))
    reference = as_transform(module, batch)(x.clone())
    t = as_transform(module, batch)
    # Any tensor made inside a pass without an explicit device would land on "meta"
    # and fail to mix with the real tensors.
    with torch.device("meta"):
        y = t(x)
        ladj = t.log_abs_det_jacobian(x, y)
        if TRANSFORMS[name].invertible:
            x_back = t.inv(y.clone())
    assert y.dtype == torch.float64 and ladj.dtype == torch.float64
    assert torch.equal(y, reference)
    if TRANSFORMS[name].invertible:
        assert (x_back - x).abs().max() < TRANSFORMS[name].atol


@pytest.mark.parametrize("name", NAMES)
def test_float32_works(name):
    dim = 4
    torch.manual_seed(0)
    module = TRANSFORMS[name].make(dim)
    t = as_transform(module, (5,))
    if isinstance(module, ConditionalTransformModule):
        t = module.condition(context_for((5,), shape=context_shape(module)).float())
    x = data((5,), TRANSFORMS[name].event(dim)).float()
    y = t(x)
    assert y.dtype == torch.float32 and torch.isfinite(t.log_abs_det_jacobian(x, y)).all()
    if TRANSFORMS[name].invertible:
        assert (t.inv(y.clone()) - x).abs().max() < 1e-3


# -- 11. registry completeness ------------------------------------------------------------------
def has_case(name):
    """Whether ``TRANSFORMS`` holds a case ``name`` or a variant of it (``name_...``)."""
    return any(n == name or n.startswith(name + "_") for n in NAMES)


def is_helper(name):
    """Whether ``pyro_flows.transforms.<name>`` builds a layer (its return type says so)."""
    returns = typing.get_type_hints(getattr(T, name)).get("return")
    layer = (torch.distributions.Transform, ConditionalTransformModule)
    return inspect.isclass(returns) and issubclass(returns, layer)


HELPERS = [n for n in T.__all__ if n[0].islower() and is_helper(n)]


def test_registry_covers_every_helper():
    assert {"maf", "conditional_maf", "glow_step", "squeeze"} <= set(HELPERS)
    assert not {"coupling_mask", "conv_net", "precise_softplus"} & set(HELPERS)
    missing = [n for n in HELPERS if not has_case(n)]
    assert not missing, f"helpers without a contract case in TRANSFORMS: {missing}"


def test_registry_covers_every_family():
    def covered(key):
        names = [key] + [alias for alias, target in _ALIASES.items() if target == key]
        by_build = any(f"build_{n}" in NAMES or f"build_conditional_{n}" in NAMES for n in names)
        return by_build or has_case(key) or has_case(FAMILIES[key].make.__name__)

    missing = [key for key in FAMILIES if not covered(key)]
    assert not missing, f"FAMILIES without a contract case in TRANSFORMS: {missing}"


def test_exports_are_each_modules_list_once_and_sorted():
    lists = {m: sys.modules[f"pyro_flows.transforms.{m}"].__all__ for m in T._MODULES}
    names = [n for names in lists.values() for n in names]
    assert len(names) == len(set(names)), "a name is exported by two modules"
    assert T.__all__ == sorted(names)
    assert all(hasattr(T, n) and not inspect.ismodule(getattr(T, n)) for n in T.__all__)
    package = Path(T.__file__).parent
    public = {p.stem for p in package.glob("*.py") if not p.stem.startswith("_")}
    assert public == set(lists), "a public module of pyro_flows.transforms is not exported"


# -- 12. train and eval modes give the same map -------------------------------------------------
# Layers with a stochastic log-det estimate in train mode (i-ResNet's Hutchinson/Russian-roulette
# estimators) are registered with estimator="exact", so every case must agree across modes.
@pytest.mark.parametrize("name", NAMES)
def test_train_and_eval_give_the_same_map(name):
    dim, batch = min(3, TRANSFORMS[name].max_dim), (4,)
    if dim < TRANSFORMS[name].min_dim:
        dim = TRANSFORMS[name].min_dim
    module = make_module(name, dim)
    shape, out = shapes(name, dim)
    x, y0 = data(batch, shape), data(batch, out, seed=4)
    results = {}
    for mode in (True, False):
        module.train(mode)
        t = as_transform(module, batch)
        y = t(x.clone())
        ladj = t.log_abs_det_jacobian(x.clone(), y.clone())
        x0 = t.inv(y0.clone()) if TRANSFORMS[name].invertible else None
        results[mode] = (y, ladj, x0)
    (y_tr, ladj_tr, x0_tr), (y_ev, ladj_ev, x0_ev) = results[True], results[False]
    tol = TRANSFORMS[name].ladj_atol
    assert (y_tr - y_ev).abs().max() < TRANSFORMS[name].atol
    assert (ladj_tr - ladj_ev).abs().max() < tol
    if TRANSFORMS[name].invertible:
        assert (x0_tr - x0_ev).abs().max() < TRANSFORMS[name].atol


# -- 13. conditional layers of one variable -----------------------------------------------------
@pytest.mark.parametrize("name", sorted(k for k, f in FAMILIES.items() if f.make_conditional))
def test_every_conditional_family_accepts_one_variable(name):
    family = FAMILIES[name]
    assert family.smallest_dim(context_dim=CONTEXT_DIM) == family.conditional_min_dim == 1
    torch.manual_seed(0)
    flow = build(name, 1, 2, context_dim=CONTEXT_DIM).to(torch.float64)
    contexts = context_for((6,))
    x = data((6,), 1)
    y = flow.condition(contexts)(x)
    assert y.shape == (6, 1) and torch.isfinite(y).all()
    if family.min_dim > 1:
        with pytest.raises(ValueError, match="input_dim must be an integer >= 2"):
            build(name, 1, 2)


@pytest.mark.parametrize(
    "name", ["conditional_maf", "conditional_iaf", "conditional_affine_coupling"]
)
def test_conditional_affine_layer_of_one_variable(name):
    # y = a(c) x + b(c): the scale and shift come from the context alone
    module = make_module(name, 1)
    contexts = context_for((6,))
    t = module.condition(contexts)
    x = data((6,), 1)
    y = t(x)
    shift = t(torch.zeros_like(x))
    scale = t.log_abs_det_jacobian(x, y).exp()
    assert torch.allclose(y, scale[:, None] * x + shift, rtol=0, atol=1e-12)
    other = t.log_abs_det_jacobian(x + 1.0, t(x + 1.0))
    assert torch.allclose(other.exp(), scale, rtol=0, atol=1e-12)  # the scale ignores x
    assert scale.std() > 1e-3 and shift.std() > 1e-3  # ...but not the context


def test_a_conditional_coupling_mask_must_transform_a_feature():
    assert not T.coupling_mask(1, conditional=True).any()
    with pytest.raises(ValueError, match="mask must transform at least one feature"):
        T.conditional_affine_coupling(1, CONTEXT_DIM, flip=True)
    with pytest.raises(ValueError, match="mask must leave at least one feature unchanged"):
        T.affine_coupling(2, mask=[False, False])
