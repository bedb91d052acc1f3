"""NormalizingFlow's data-end standardisation: the initialisation rule, persistence, and fits
that do not depend on the data's units."""

import copy
import math

import numpy as np
import pytest
import torch

from pyro_flows.datasets import toy_distribution
from pyro_flows.distributions import NormalizingFlow
from pyro_flows.flows import build, normalizing_flow
from pyro_flows.training import fit
from pyro_flows.transforms import Standardization, robust_loc_scale

A = torch.tensor([0.05, 20.0])
B = torch.tensor([100.0, -100.0])


def data(n=600, seed=0, dtype=None):
    g = torch.Generator().manual_seed(seed)
    x = toy_distribution("8gaussians").sample((n,), generator=g)
    return x.to(dtype or torch.get_default_dtype())


def quick_fit(flow, x, context=None, steps=5):
    return fit(flow, x, context=context, num_steps=steps, batch_size=64, progress=False, seed=1)


# -- the statistics -------------------------------------------------------------------------------
def test_robust_loc_scale_values(float64):
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(20_000, generator=g)
    heavy = normal.clone()
    heavy[:200] = 1e6  # 1% of wild values: the standard deviation explodes, the IQR does not
    clusters = torch.where(normal > 0, 100.0, -100.0) + normal  # two far modes: IQR > sd
    mostly_zero = torch.zeros(20_000)
    mostly_zero[:100] = 5.0  # IQR 0: falls back to the standard deviation
    constant = torch.full((20_000,), 3.0)
    x = torch.stack([normal, heavy, clusters, mostly_zero, constant], -1)
    loc, scale = robust_loc_scale(x)
    assert loc.dtype == torch.float64 and loc.shape == (5,)
    assert abs(scale[0] - 1) < 0.03 and abs(loc[0]) < 0.03
    assert 1 < scale[1] < 1.1 and abs(loc[1]) < 0.05  # the bulk's 2%-98% range, not 1e5
    assert torch.isclose(scale[2], clusters.std(unbiased=False), rtol=1e-12)
    assert torch.isclose(scale[3], mostly_zero.std(unbiased=False), rtol=1e-12)
    assert scale[4] == 1 and loc[4] == 3
    # a heavy-tailed column: wider than its IQR says, so 96% stays within 2.05 scales (a
    # spline's box covers the data, not just the bulk)
    t2 = torch.distributions.StudentT(2.0).sample((20_000,))
    (loc_t,), (scale_t,) = robust_loc_scale(t2[:, None])
    iqr = (t2.quantile(0.75) - t2.quantile(0.25)) / 1.349
    assert scale_t > 1.5 * iqr
    assert ((t2 - loc_t).abs() < 2.0537 * scale_t).double().mean() > 0.95
    # equivariant: a x + b gives a loc + b, a scale
    loc2, scale2 = robust_loc_scale(7.0 * x - 3.0)
    assert torch.allclose(loc2, 7 * loc - 3, rtol=1e-12, atol=1e-9)
    assert torch.allclose(scale2[:4], 7 * scale[:4], rtol=1e-12)


def test_robust_loc_scale_checks():
    with pytest.raises(ValueError, match="at least 2 rows"):
        robust_loc_scale(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        robust_loc_scale(torch.tensor([[0.0], [math.nan]]))


def test_standardization_layer(float64):
    t = Standardization.identity(3)
    x = torch.randn(50, 3) * torch.tensor([1.0, 10.0, 0.1]) + 5
    t.initialize(x)
    loc, scale = robust_loc_scale(x)
    assert torch.equal(t.loc, loc) and torch.equal(t.scale, scale)
    z = torch.randn(4, 3)
    y, ladj = t.call_and_ladj(z)
    assert torch.allclose(y, loc + scale * z) and torch.allclose(ladj, scale.log().sum())
    assert torch.allclose(t.inv(y.clone()), z)
    with pytest.raises(ValueError, match="every scale must be > 0"):
        t.set_(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="data must have 3 columns"):
        t.initialize(torch.randn(5, 2))


# -- an unfitted flow is the bare transform ------------------------------------------------------
def test_unfitted_flow_is_exactly_the_bare_transform():
    torch.manual_seed(0)
    flow = normalizing_flow("maf", 2, 2, hidden_dims=[8])
    bare = NormalizingFlow(flow.transform, 2, standardize=False)
    x = data(20)
    assert torch.equal(flow.log_prob(x), bare.log_prob(x))
    assert torch.equal(flow().log_prob(x), bare().log_prob(x))
    assert len(flow().transforms) == 1
    assert not bool(flow.standardized) and flow.is_untouched()
    assert {"standardization.loc", "standardization.scale", "standardized"} <= set(
        flow.state_dict()
    )
    assert "standardized" not in bare.state_dict()


# -- the initialisation rule ---------------------------------------------------------------------
def test_fit_initialises_an_untouched_flow(float64):
    flow = normalizing_flow("maf", 2, 2, hidden_dims=[8])
    y = A * data() + B
    quick_fit(flow, y)
    assert bool(flow.standardized) and not flow.is_untouched()
    # fit's training rows are 90% of y; their statistics are those of y up to sampling noise
    loc, scale = robust_loc_scale(y)
    assert torch.allclose(flow.standardization.loc, loc, rtol=0.02)
    assert torch.allclose(flow.standardization.scale, scale, rtol=0.1)
    assert len(flow().transforms) == 2


def test_moves_and_copies_are_not_touches(float64):
    torch.manual_seed(0)
    flow = normalizing_flow("realnvp", 2, 2, hidden_dims=[8]).float().double()
    clone = copy.deepcopy(flow)
    assert flow.is_untouched() and clone.is_untouched()
    flow.sample((3,))
    flow.log_prob(data(10))
    assert flow.is_untouched()  # passes change nothing


def test_fit_does_not_reinitialise_an_initialised_flow(float64):
    flow = normalizing_flow("maf", 2, 2, hidden_dims=[8])
    quick_fit(flow, data(seed=0))
    loc = flow.standardization.loc.clone()
    assert not flow.initialize_from_data(A * data(seed=1) + B)
    quick_fit(flow, A * data(seed=1) + B)  # a second fit goes on in the units it has
    assert torch.equal(flow.standardization.loc, loc)


def test_fit_does_not_initialise_a_hand_set_flow(float64):
    flow = normalizing_flow("maf", 2, 2, hidden_dims=[8])
    flow.set_standardization(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))
    quick_fit(flow, A * data() + B)
    assert flow.standardization.loc.tolist() == [1.0, 2.0]
    assert flow.standardization.scale.tolist() == [3.0, 4.0]


def test_fit_does_not_initialise_a_trained_flow(float64):
    """A flow trained by the user's own loop (or SVI) keeps the units it was trained in."""
    flow = normalizing_flow("maf", 2, 2, hidden_dims=[8])
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    x = data()
    (-flow.log_prob(x).mean()).backward()
    opt.step()
    assert not flow.is_untouched()
    quick_fit(flow, A * x + B)
    assert not bool(flow.standardized)
    assert flow.standardization.loc.tolist() == [0.0, 0.0]


def test_loaded_flow_is_not_reinitialised_and_state_round_trips(float64):
    torch.manual_seed(0)
    fitted = normalizing_flow("maf", 2, 2, hidden_dims=[8], context_dim=1)
    x = A * data() + B
    c = 50.0 + 10.0 * torch.randn(x.shape[0], 1)
    quick_fit(fitted, x, c)
    assert bool(fitted.standardized)
    assert torch.allclose(fitted.context_standardization.loc, robust_loc_scale(c)[0], rtol=0.02)

    torch.manual_seed(1)
    other = normalizing_flow("maf", 2, 2, hidden_dims=[8], context_dim=1)
    other.load_state_dict(fitted.state_dict())
    assert torch.equal(other.log_prob(x[:7], c[:7]), fitted.log_prob(x[:7], c[:7]))
    # a state of an unfitted flow is loaded too: fit must then leave it as it is
    torch.manual_seed(2)
    fresh = normalizing_flow("maf", 2, 2, hidden_dims=[8], context_dim=1)
    fresh.load_state_dict(
        normalizing_flow("maf", 2, 2, hidden_dims=[8], context_dim=1).state_dict()
    )
    assert not fresh.initialize_from_data(x, c)
    assert not bool(fresh.standardized)


def test_state_saved_before_standardisation_loads_as_the_bare_flow(float64):
    torch.manual_seed(0)
    old = NormalizingFlow(build("maf", 2, 2, hidden_dims=[8]), 2, standardize=False)
    state = old.state_dict()  # the keys a flow had before the standardisation existed
    new = normalizing_flow("maf", 2, 2, hidden_dims=[8])
    new.load_state_dict(state)  # strict
    x = A * data(20) + B
    assert torch.equal(new.log_prob(x), old.log_prob(x))
    assert not new.initialize_from_data(x)


def test_initialize_checks():
    flow = normalizing_flow("maf", 2, 2, hidden_dims=[8], context_dim=1)
    with pytest.raises(ValueError, match="needs the context rows"):
        flow.initialize(torch.randn(10, 2))
    with pytest.raises(ValueError, match="data must have shape"):
        flow.initialize(torch.randn(10, 3), torch.randn(10, 1))
    with pytest.raises(ValueError, match="one row per row of data"):
        flow.initialize(torch.randn(10, 2), torch.randn(9, 1))
    with pytest.raises(ValueError, match="standardize=False"):
        normalizing_flow("maf", 2, standardize=False).initialize(torch.randn(10, 2))
    with pytest.raises(TypeError, match="standardize must be True or False"):
        NormalizingFlow(build("maf", 2), 2, standardize=1)


# -- log-densities, samples and inverses through the standardisation ----------------------------
@pytest.mark.parametrize("context_dim", [None, 2])
def test_standardised_density_is_the_change_of_variables(float64, context_dim):
    torch.manual_seed(0)
    flow = normalizing_flow("maf", 3, 2, hidden_dims=[8], context_dim=context_dim)
    loc, scale = torch.tensor([1.0, -50.0, 3.0]), torch.tensor([0.1, 20.0, 2.0])
    cloc, cscale = torch.tensor([10.0, -1.0]), torch.tensor([5.0, 0.5])
    if context_dim:
        flow.set_standardization(loc, scale, cloc, cscale)
    else:
        flow.set_standardization(loc, scale)
    bare = NormalizingFlow(flow.transform, 3, context_dim=context_dim, standardize=False)
    x = loc + scale * torch.randn(6, 3)
    c = None if context_dim is None else cloc + cscale * torch.randn(6, 2)
    cs = None if c is None else (c - cloc) / cscale
    expected = bare.log_prob((x - loc) / scale, cs) - scale.log().sum()
    assert torch.allclose(flow.log_prob(x, c), expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(flow(c).log_prob(x), expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(flow.inverse(x, c), bare.inverse((x - loc) / scale, cs), atol=1e-12)
    # samples: the draw record, Pyro's path, and a fresh pass agree; the inverse round-trips
    torch.manual_seed(3)
    y = flow.sample((4,), c)
    torch.manual_seed(3)
    z = torch.randn(4, *(() if c is None else (6,)), 3)
    assert torch.allclose(flow.inverse(y.clone(), c), z, atol=1e-10)
    assert torch.allclose(flow.log_prob(y, c), flow.log_prob(y.clone(), c), atol=1e-10)
    yr = flow.rsample((4,), c)
    assert torch.allclose(flow(c).log_prob(yr), flow.log_prob(yr.detach().clone(), c), atol=1e-10)
    # log|det| of the whole map against autograd (one row, unconditional part)
    if context_dim is None:
        jac = torch.autograd.functional.jacobian(lambda v: flow().transforms[1](v), z[0])
        assert torch.isclose(
            flow().transforms[1].log_abs_det_jacobian(z[0], flow().transforms[1](z[0])),
            torch.linalg.slogdet(jac).logabsdet,
        )


# -- equivariance: fitting a x + b trains the very same layers ----------------------------------
@pytest.mark.parametrize("name", ["maf", "affine_coupling", "nsf", "glow"])
def test_fit_is_exactly_equivariant(float64, name):
    x = data(400)
    flows = []
    for d in (x, A * x + B):
        torch.manual_seed(0)
        flow = normalizing_flow(name, 2, 2, hidden_dims=[8])
        fit(flow, d, num_steps=20, batch_size=64, lr=1e-2, progress=False, seed=4)
        flows.append(flow)
    test = data(50, seed=9)
    lq = flows[0].log_prob(test)
    lq_units = flows[1].log_prob(A * test + B) + A.log().sum()
    assert torch.allclose(lq, lq_units, rtol=1e-8, atol=1e-8), (lq - lq_units).abs().max()


def test_conditional_fit_is_exactly_equivariant(float64):
    x = data(400)
    c = torch.randn(400, 1, generator=torch.Generator().manual_seed(5))
    flows = []
    for d, e in ((x, c), (A * x + B, 1e3 * c - 7.0)):
        torch.manual_seed(0)
        flow = normalizing_flow("maf", 2, 2, hidden_dims=[8], context_dim=1)
        fit(flow, d, context=e, num_steps=20, batch_size=64, lr=1e-2, progress=False, seed=4)
        flows.append(flow)
    lq = flows[0].log_prob(x[:30], c[:30])
    lq_units = flows[1].log_prob(A * x[:30] + B, 1e3 * c[:30] - 7.0) + A.log().sum()
    assert torch.allclose(lq, lq_units, rtol=1e-8, atol=1e-8)


@pytest.mark.slow
def test_kl_does_not_depend_on_units():
    """Three families fitted on 8 gaussians and on its 20x + shift copy (float32, as users)."""
    p = toy_distribution("8gaussians")
    g = torch.Generator().manual_seed(0)
    x, test = p.sample((4000,), generator=g), p.sample((5000,), generator=g)
    a, b = torch.tensor([20.0, 20.0]), torch.tensor([100.0, -100.0])
    for name in ("maf", "affine_coupling", "nsf"):
        kls = []
        for y, t, log_a in ((x, test, 0.0), (a * x + b, a * test + b, 2 * math.log(20.0))):
            torch.manual_seed(0)
            flow = normalizing_flow(name, 2, 3, hidden_dims=[32, 32])
            fit(flow, y, num_steps=500, batch_size=256, lr=2e-3, progress=False, seed=0)
            with torch.no_grad():
                kl = (p.log_prob(test.double()) - log_a - flow.log_prob(t).double()).mean()
            kls.append(kl.item())
        assert np.isfinite(kls).all()
        assert kls[0] < 1.05, (name, kls)  # learnt: N(0, I) scaled to the data scores 1.12
        assert abs(kls[0] - kls[1]) < 0.05, (name, kls)
