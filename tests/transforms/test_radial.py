"""Family-specific checks of the radial flow: a closed-form inverse, to float64 precision."""

import importlib
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from pyro_flows.transforms.radial import (
    ConditionalRadial,
    ConditionedRadial,
    Radial,
    conditional_radial,
    radial,
)

# the helper function shadows the module name in pyro_flows.transforms
radial_module = importlib.import_module("pyro_flows.transforms.radial")

F64 = torch.float64


def softplus(v):
    return math.log1p(math.exp(v)) if v < 40 else v


def make(dim, alpha_raw=None, beta_raw=None, seed=0):
    """A float64 radial layer; alpha = softplus(alpha_raw), alpha + beta = softplus(beta_raw)."""
    torch.manual_seed(seed)
    t = radial(dim).double()
    with torch.no_grad():
        t.z0.normal_()
        t.alpha_raw.normal_()
        t.beta_raw.normal_()
        if alpha_raw is not None:
            t.alpha_raw.fill_(alpha_raw)
        if beta_raw is not None:
            t.beta_raw.fill_(beta_raw)
    return t


def rel_err(a, b):
    return ((a - b).abs() / (1.0 + b.abs())).max().item()


def ladj_reference(t, x):
    jac = jacobian(t.with_cache(0)._call, x)  # x is one point: (D, D)
    t.with_cache(1)
    return torch.linalg.slogdet(jac).logabsdet


def test_constraints():
    t = make(3, alpha_raw=-2.0, beta_raw=-30.0)
    assert t.alpha.item() == pytest.approx(softplus(-2.0), rel=1e-15)
    assert (t.alpha + t.beta).item() > 0  # beta > -alpha, even at 1e-13 from the boundary


# -- inverse of arbitrary inputs ------------------------------------------------------------------
@pytest.mark.parametrize("dim", [1, 2, 5])
def test_inverse_of_arbitrary_y(dim):
    t = make(dim)
    g = torch.Generator().manual_seed(1)
    scales = torch.logspace(-3, 3, 400, dtype=F64).unsqueeze(-1)  # |y - z0| from 1e-3 to 1e3
    y = t.z0.detach() + torch.randn(400, dim, generator=g, dtype=F64) * scales
    x = t.inv(y)
    assert rel_err(t(x.clone()), y) < 1e-13
    z = t.z0.detach() + torch.randn(400, dim, generator=g, dtype=F64) * scales
    assert rel_err(t.inv(t(z).clone()), z) < 1e-13


@pytest.mark.parametrize("beta_raw", [-3.0, 0.0, 4.0, 50.0])
@pytest.mark.parametrize("alpha_raw", [-5.0, 0.0, 5.0])
def test_inverse_parameter_grid(alpha_raw, beta_raw):
    t = make(3, alpha_raw, beta_raw)
    g = torch.Generator().manual_seed(2)
    z = t.z0.detach() + torch.randn(200, 3, generator=g, dtype=F64) * torch.logspace(
        -3, 3, 200, dtype=F64
    ).unsqueeze(-1)
    assert rel_err(t.inv(t(z).clone()), z) < 1e-13


@pytest.mark.parametrize("beta_raw", [-10.0, -25.0])
def test_inverse_near_invertibility_boundary(beta_raw):
    # alpha + beta = softplus(beta_raw) ~ 5e-5 or 1e-11: the layer nearly collapses a ball
    # around z0 to a point, so the inverse expands it; the test keeps r >= 1e-2.
    t = make(3, alpha_raw=0.0, beta_raw=beta_raw)
    with torch.no_grad():
        t.z0.zero_()
    g = torch.Generator().manual_seed(3)
    d = torch.randn(1000, 3, generator=g, dtype=F64)
    d = d / d.norm(dim=-1, keepdim=True) * torch.logspace(-2, 3, 1000, dtype=F64).unsqueeze(-1)
    y = t(d)
    assert rel_err(t.inv(y.clone()), d) < 1e-12
    # the quadratic's cancellation-free root: y arbitrarily close to z0 (r' down to 1e-300)
    y = d / d.norm(dim=-1, keepdim=True) * torch.logspace(-300, 0, 1000, dtype=F64).unsqueeze(-1)
    x = t.inv(y)
    assert ((t(x.clone()) - y).abs() / y.abs().clamp(min=1e-300)).max() < 1e-13


def test_inverse_at_center():
    t = make(4)
    z0 = t.z0.detach().clone()
    y = t(z0.clone())
    assert torch.equal(y, z0)
    x = t.inv(z0.clone())
    assert torch.equal(x, z0)


# -- gradients ------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta_raw", [0.3, -8.0])
def test_inverse_gradcheck(beta_raw):
    t = make(3, beta_raw=beta_raw)
    y = (t.z0.detach() + torch.randn(4, 3, dtype=F64)).requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in (t.z0, t.alpha_raw, t.beta_raw)]
    assert torch.autograd.gradcheck(radial_module._radial_inverse, (y, *params))


def test_gradients_finite_at_center():
    t = make(3)
    z0 = t.z0.detach().clone().requires_grad_()
    y, ladj = radial_module._radial_forward(z0, t.z0, t.alpha_raw, t.beta_raw)
    x, ladj_inv = radial_module._radial_inverse(z0, t.z0, t.alpha_raw, t.beta_raw)
    (y.sum() + ladj + x.sum() + ladj_inv).backward()
    for g in (z0.grad, t.z0.grad, t.alpha_raw.grad, t.beta_raw.grad):
        assert torch.isfinite(g).all()
    # the layer is differentiable at z0 with Jacobian (1 + beta / alpha) I
    jac = jacobian(t.with_cache(0)._call, t.z0.detach().clone())
    scale = (1 + t.beta / t.alpha).item()
    assert torch.allclose(jac, scale * torch.eye(3, dtype=F64), rtol=0, atol=1e-14)
    jac_inv = jacobian(t.with_cache(0).inv, t.z0.detach().clone())
    assert torch.allclose(jac_inv, torch.eye(3, dtype=F64) / scale, rtol=0, atol=1e-13)


def test_inverse_gradients_match_inverse_jacobian():
    t = make(3)
    y = torch.randn(3, dtype=F64)
    x = t.inv(y.clone())
    j_inv = jacobian(lambda v: t.with_cache(0).inv(v), y)
    j_fwd = jacobian(lambda v: t.with_cache(0)(v), x)
    assert torch.allclose(j_inv @ j_fwd, torch.eye(3, dtype=F64), rtol=0, atol=1e-12)


# -- log|det J| -----------------------------------------------------------------------------------
@pytest.mark.parametrize("beta_raw", [-20.0, -1.0, 0.5, 45.0])
@pytest.mark.parametrize("dim", [1, 4])
def test_ladj_matches_autograd(dim, beta_raw):
    t = make(dim, beta_raw=beta_raw)
    g = torch.Generator().manual_seed(4)
    for scale in (1e-3, 1.0, 30.0):
        x = t.z0.detach() + scale * torch.randn(dim, generator=g, dtype=F64)
        y = t(x)
        expected = ladj_reference(t, x)
        ladj = t.log_abs_det_jacobian(x, y)
        assert (ladj - expected).abs() < 1e-11 * (1 + expected.abs())
        assert (t.inv.log_abs_det_jacobian(y.clone(), x.clone()) + expected).abs() < 1e-11 * (
            1 + expected.abs()
        )


@pytest.mark.parametrize("beta_raw", [-20.0, -30.0])
def test_ladj_keeps_precision_near_the_boundary(beta_raw):
    # At z = z0, log|det J| = D log((alpha + beta) / alpha); computing 1 + beta / alpha from
    # beta = softplus(beta') - alpha would lose every digit of alpha + beta ~ 1e-9 .. 1e-13.
    dim = 3
    t = make(dim, alpha_raw=0.0, beta_raw=beta_raw)
    z0 = t.z0.detach().clone()
    ladj = t.log_abs_det_jacobian(z0, t(z0))
    expected = dim * (math.log(softplus(beta_raw)) - math.log(math.log(2.0)))
    assert ladj.item() == pytest.approx(expected, rel=1e-13)


# -- conditional ----------------------------------------------------------------------------------
def test_conditional_batched_contexts():
    torch.manual_seed(0)
    module = conditional_radial(3, 2, hidden_dims=[16]).double()
    contexts = torch.randn(6, 2, dtype=F64)
    z = torch.randn(6, 3, dtype=F64)
    t = module.condition(contexts)
    assert isinstance(t, ConditionedRadial)
    assert set(t.parameters()) == set(module.parameters())
    y = t(z)
    rows = torch.stack([module.condition(contexts[i])(z[i]) for i in range(6)])
    assert torch.allclose(y, rows, rtol=0, atol=1e-13)
    same_z = module.condition(contexts)(z[0])  # one point under six contexts
    assert same_z.shape == (6, 3) and (same_z[0] - same_z[1]).abs().max() > 1e-6
    assert rel_err(t.inv(y.clone()), z) < 1e-13
    assert t.log_abs_det_jacobian(z, y).shape == (6,)
    t1 = module.condition(contexts[0])  # one context for a whole batch of points
    z2 = torch.randn(4, 5, 3, dtype=F64)
    assert rel_err(t1.inv(t1(z2).clone()), z2) < 1e-13


def test_conditional_ladj_and_gradients():
    torch.manual_seed(1)
    module = conditional_radial(2, 3).double()
    t = module.condition(torch.randn(3, dtype=F64))
    x = torch.randn(2, dtype=F64)
    assert (t.log_abs_det_jacobian(x, t(x)) - ladj_reference(t, x)).abs() < 1e-12
    y = torch.randn(5, 2, dtype=F64)
    (t.inv(y).square().sum() - t.inv.log_abs_det_jacobian(y, t.inv(y)).sum()).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_one_dimensional():
    t = make(1)
    z = torch.linspace(-5, 5, 11, dtype=F64).unsqueeze(-1) + t.z0.detach()
    y = t(z)
    assert rel_err(t.inv(y.clone()), z) < 1e-14
    assert (y[1:] > y[:-1]).all()  # increasing in 1-D
    for i in range(11):
        assert (t.log_abs_det_jacobian(z[i], y[i]) - ladj_reference(t, z[i])).abs() < 1e-12


def test_float32_inverse():
    torch.manual_seed(0)
    t = radial(3)
    z = torch.randn(100, 3)
    assert rel_err(t.inv(t(z).clone()), z) < 1e-5


# -- arguments -----------------------------------------------------------------------------------
def test_bad_arguments():
    with pytest.raises(ValueError, match="input_dim"):
        radial(0)
    with pytest.raises(TypeError, match="input_dim"):
        radial(True)
    with pytest.raises(ValueError, match="context_dim"):
        conditional_radial(2, -1)
    with pytest.raises(ValueError, match="hidden_dims"):
        conditional_radial(2, 2, hidden_dims=[8, 0])
    with pytest.raises(TypeError, match="hypernet"):
        ConditionalRadial(2, 2, hypernet=None)
    with pytest.raises(ValueError, match="x"):
        Radial(3)(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="y"):
        Radial(3).inv(torch.zeros(4, 2))


def test_reset_parameters_bounds():
    t = Radial(9)
    for p in t.parameters():
        assert p.abs().max() <= 1 / 3
