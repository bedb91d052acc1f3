"""Family-specific checks of the planar flow: an inverse for any input, to float64 precision."""

import importlib
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from pyro_flows.transforms.planar import (
    ConditionalPlanar,
    ConditionedPlanar,
    Planar,
    conditional_planar,
    planar,
)

# the helper function shadows the module name in pyro_flows.transforms
planar_module = importlib.import_module("pyro_flows.transforms.planar")

F64 = torch.float64


def make(dim, wu=None, scale=1.0, seed=0):
    """A float64 planar layer; ``wu`` sets w^T u, hence c = w^T u_hat = softplus(wu) - 1."""
    torch.manual_seed(seed)
    t = planar(dim).double()
    with torch.no_grad():
        t.u.normal_(0.0, scale)
        t.w.normal_(0.0, scale)
        t.b.normal_(0.0, scale)
        if wu is not None:  # move u along w to set w^T u exactly
            w = t.w
            t.u.add_((wu - (w * t.u).sum()) * w / (w * w).sum())
    return t


def c_of(t):
    return (t.w * t.u_hat).sum().item()


def rel_err(a, b):
    return ((a - b).abs() / (1.0 + b.abs())).max().item()


def ladj_reference(t, x):
    jac = jacobian(t.with_cache(0)._call, x)  # x is one point: (D, D)
    t.with_cache(1)
    return torch.linalg.slogdet(jac).logabsdet


# -- the constraint -------------------------------------------------------------------------------
@pytest.mark.parametrize("wu", [-50.0, -7.0, 0.0, 3.0, 50.0])
def test_constraint_w_dot_u_hat(wu):
    t = make(4, wu=wu)
    expected = math.log1p(math.exp(wu)) - 1.0 if wu < 40 else wu - 1.0
    assert c_of(t) == pytest.approx(expected, rel=1e-13, abs=1e-15)
    assert c_of(t) > -1.0


# -- inverse of arbitrary inputs ------------------------------------------------------------------
@pytest.mark.parametrize("dim", [1, 2, 5])
def test_inverse_of_arbitrary_y(dim):
    t = make(dim)
    g = torch.Generator().manual_seed(1)
    scales = torch.logspace(-3, 3, 400, dtype=F64).unsqueeze(-1)  # |y| from 1e-3 to 1e3
    y = torch.randn(400, dim, generator=g, dtype=F64) * scales
    x = t.inv(y)
    assert rel_err(t(x.clone()), y) < 1e-13
    z = torch.randn(400, dim, generator=g, dtype=F64) * scales
    assert rel_err(t.inv(t(z).clone()), z) < 1e-13


@pytest.mark.parametrize("batch", [(), (3,), (2, 4)], ids=str)
def test_inverse_batch_shapes(batch):
    t = make(3)
    y = torch.randn(*batch, 3, dtype=F64)
    x = t.inv(y)
    assert x.shape == y.shape
    assert t.inv.log_abs_det_jacobian(y, x).shape == batch
    assert rel_err(t(x.clone()), y) < 1e-13


@pytest.mark.parametrize("wu", [-7.0, -12.0])
def test_inverse_near_invertibility_boundary(wu):
    # c = softplus(wu) - 1 is -0.99909 (wu = -7) or -0.999994 (wu = -12): the layer nearly folds.
    t = make(3, wu=wu)
    assert -1.0 < c_of(t) < -0.999
    g = torch.Generator().manual_seed(2)
    z = 3.0 * torch.randn(2000, 3, generator=g, dtype=F64)
    # points right in the flat region, w^T z + b ~ 0, where df/dz nearly vanishes along w
    w = t.w.detach()
    z[:500] += ((-t.b.detach() - z[:500] @ w) / (w @ w)).unsqueeze(-1) * w
    z[:500] += 1e-2 * torch.randn(500, 3, generator=g, dtype=F64)
    y = t(z)
    # the inverse is only as well conditioned as the layer: error ~ eps / softplus(wu)
    tol = 1e-12 if wu == -7.0 else 1e-10
    assert rel_err(t.inv(y.clone()), z) < tol
    # backward stable everywhere: f(f^{-1}(y)) = y to rounding
    assert rel_err(t(t.inv(y.clone()).clone()), y) < 1e-13


@pytest.mark.parametrize("wu", [25.0, 60.0])
@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_inverse_large_c(wu, scale):
    # c ~ 24 or 59; at wu = 25 a softplus with torch's default threshold (20) would make c and
    # w^T u_hat disagree by 1e-11
    t = make(4, wu=wu)
    g = torch.Generator().manual_seed(3)
    z = scale * torch.randn(300, 4, generator=g, dtype=F64)
    z[:100] -= ((z[:100] @ t.w.detach() + t.b.detach()) / (t.w.detach() @ t.w.detach())).unsqueeze(
        -1
    ) * t.w.detach()  # w^T z + b = 0: where the layer moves points the most
    assert rel_err(t.inv(t(z).clone()), z) < 1e-13


def test_inverse_at_w_zero_is_a_translation():
    t = make(3)
    with torch.no_grad():
        t.w.zero_()
    z = torch.randn(5, 3, dtype=F64, requires_grad=True)
    y = t(z)
    assert torch.allclose(y, z + t.u * torch.tanh(t.b), rtol=0, atol=1e-15)
    x = t.inv(y.clone())
    assert rel_err(x, z) < 1e-15
    (x.sum() + t.log_abs_det_jacobian(z, y).sum()).backward()
    for p in t.parameters():
        assert torch.isfinite(p.grad).all()


def test_inverse_passes_nan_through():
    t = make(2)
    y = torch.tensor([[0.5, 1.0], [math.nan, 0.0]], dtype=F64)
    x = t.inv(y)
    assert torch.isfinite(x[0]).all() and torch.isnan(x[1]).all()


def test_unconverged_solver_raises(monkeypatch):
    monkeypatch.setattr(planar_module, "_max_iterations", lambda dtype: 1)
    t = make(3)
    with pytest.raises(RuntimeError, match="did not converge"):
        t.inv(10 * torch.randn(50, 3, dtype=F64))


def test_float32_inverse():
    torch.manual_seed(0)
    t = planar(3)
    z = torch.randn(100, 3)
    assert rel_err(t.inv(t(z).clone()), z) < 1e-5


# -- gradients of the inverse ---------------------------------------------------------------------
@pytest.mark.parametrize("wu", [0.5, -6.0])
def test_inverse_gradcheck(wu):
    t = make(3, wu=wu)
    y = torch.randn(4, 3, dtype=F64, requires_grad=True)
    params = [t.u.detach().clone().requires_grad_(), t.w.detach().clone().requires_grad_()]
    b = t.b.detach().clone().requires_grad_()

    def inverse(y, u, w, b):
        return planar_module._planar_inverse(y, u, w, b)

    assert torch.autograd.gradcheck(inverse, (y, *params, b))


def test_inverse_gradients_match_inverse_jacobian():
    t = make(3)
    y = torch.randn(3, dtype=F64)
    x = t.inv(y.clone())
    j_inv = jacobian(lambda v: t.with_cache(0).inv(v), y)
    j_fwd = jacobian(lambda v: t.with_cache(0)(v), x)
    assert torch.allclose(j_inv @ j_fwd, torch.eye(3, dtype=F64), rtol=0, atol=1e-12)


# -- log|det J| -----------------------------------------------------------------------------------
@pytest.mark.parametrize("wu", [-12.0, -3.0, 0.0, 2.0, 45.0])
@pytest.mark.parametrize("dim", [1, 4])
def test_ladj_matches_autograd(dim, wu):
    t = make(dim, wu=wu)
    g = torch.Generator().manual_seed(4)
    for scale in (0.01, 1.0, 30.0):
        x = scale * torch.randn(dim, generator=g, dtype=F64)
        y = t(x)
        expected = ladj_reference(t, x)
        ladj = t.log_abs_det_jacobian(x, y)
        assert (ladj - expected).abs() < 1e-11 * (1 + expected.abs())
        assert (t.inv.log_abs_det_jacobian(y.clone(), x.clone()) + expected).abs() < 1e-11
        _, ladj_inv = planar_module._planar_inverse(y, t.u, t.w, t.b)
        assert (ladj_inv - expected).abs() < 1e-11 * (1 + expected.abs())


@pytest.mark.parametrize("wu", [-20.0, -30.0])
def test_ladj_keeps_precision_at_the_fold(wu):
    # At w^T z + b = 0, log|det J| = log(1 + c) = log softplus(wu) = wu + O(e^wu); computing
    # log1p(c) from c = softplus(wu) - 1 would lose every digit of 1 + c ~ 1e-9 .. 1e-13.
    t = make(2, wu=wu)
    w = t.w.detach()
    z = (-t.b.detach() / (w @ w)) * w
    ladj = t.log_abs_det_jacobian(z, t(z))
    expected = math.log(math.log1p(math.exp(wu)))
    assert ladj.item() == pytest.approx(expected, rel=1e-13)


# -- conditional ----------------------------------------------------------------------------------
def test_conditional_batched_contexts():
    torch.manual_seed(0)
    module = conditional_planar(3, 2, hidden_dims=[16]).double()
    contexts = torch.randn(6, 2, dtype=F64)
    z = torch.randn(6, 3, dtype=F64)
    t = module.condition(contexts)
    assert isinstance(t, ConditionedPlanar)
    assert set(t.parameters()) == set(module.parameters())
    y = t(z)
    rows = torch.stack([module.condition(contexts[i])(z[i]) for i in range(6)])
    assert torch.allclose(y, rows, rtol=0, atol=1e-13)
    same_z = module.condition(contexts)(z[0])  # one point under six contexts
    assert same_z.shape == (6, 3) and (same_z[0] - same_z[1]).abs().max() > 1e-6
    assert rel_err(t.inv(y.clone()), z) < 1e-13
    assert t.log_abs_det_jacobian(z, y).shape == (6,)
    # one context for a whole batch of points
    t1 = module.condition(contexts[0])
    z2 = torch.randn(4, 5, 3, dtype=F64)
    assert rel_err(t1.inv(t1(z2).clone()), z2) < 1e-13


def test_conditional_ladj_and_gradients():
    torch.manual_seed(1)
    module = conditional_planar(2, 3).double()
    context = torch.randn(3, dtype=F64)
    t = module.condition(context)
    x = torch.randn(2, dtype=F64)
    assert (t.log_abs_det_jacobian(x, t(x)) - ladj_reference(t, x)).abs() < 1e-12
    y = torch.randn(5, 2, dtype=F64)
    (t.inv(y).square().sum() - t.inv.log_abs_det_jacobian(y, t.inv(y)).sum()).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_conditional_planar_direct_constructor():
    hypernet = torch.nn.Linear(2, 3 + 3 + 1)

    class Split(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = hypernet

        def forward(self, c):
            h = self.net(c)
            return h[..., :3], h[..., 3:6], h[..., 6:]

    module = ConditionalPlanar(3, 2, Split()).double()
    t = module.condition(torch.randn(4, 2, dtype=F64))
    z = torch.randn(4, 3, dtype=F64)
    assert rel_err(t.inv(t(z).clone()), z) < 1e-13


# -- arguments -----------------------------------------------------------------------------------
def test_bad_arguments():
    with pytest.raises(ValueError, match="input_dim"):
        planar(0)
    with pytest.raises(TypeError, match="input_dim"):
        planar(2.0)
    with pytest.raises(ValueError, match="context_dim"):
        conditional_planar(2, 0)
    with pytest.raises(TypeError, match="hidden_dims"):
        conditional_planar(2, 2, hidden_dims=8)
    with pytest.raises(TypeError, match="hypernet"):
        ConditionalPlanar(2, 2, hypernet=lambda c: c)
    with pytest.raises(ValueError, match="x"):
        Planar(3)(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="y"):
        Planar(3).inv(torch.zeros(4, 2))


def test_reset_parameters_bounds():
    t = Planar(16)
    bound = 1 / math.sqrt(16)
    for p in t.parameters():
        assert p.abs().max() <= bound
    assert (t.w * t.w).sum() > 0
