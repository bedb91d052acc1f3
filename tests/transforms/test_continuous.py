"""FFJORD-specific checks: the ODE solution, trace estimators, adjoint gradients, NFE, penalties."""

import math

import pytest
import torch
from torch import nn

import pyro_flows.transforms as T
from pyro_flows.flows import build, normalizing_flow
from pyro_flows.nn import (
    ConcatSquashLinear,
    VectorField,
    divergence,
    hutchinson_noise,
    jacobian_frobenius,
    kinetic_energy,
    ode_regularization,
)
from pyro_flows.transforms._ode import METHODS, NFECounter, integrate

F64 = torch.float64


def perturbed(module, seed=1, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def points(n, dim, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=F64)


class Linear(nn.Module):
    """f(t, x) = A x: the flow is exp(tA), log|det| = t tr(A), ||J||_F^2 = ||A||_F^2."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, t, x):
        return x @ self.a.T


def row_jacobians(f, x):
    jac = torch.autograd.functional.jacobian(lambda v: f(v).sum(0), x)  # (D, n, D)
    return jac.permute(1, 0, 2)


# -- the ODE solution ---------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 5])
def test_inverse_and_exact_ladj_match_autograd(dim):
    torch.manual_seed(0)
    t = perturbed(T.ffjord(dim, hidden_dims=[16], trace="exact", rtol=1e-10, atol=1e-10).double())
    x = 1.5 * points(6, dim)
    y = t(x)
    ladj = t.log_abs_det_jacobian(x, y)
    expected = torch.linalg.slogdet(row_jacobians(t.with_cache(0), x)).logabsdet
    t.with_cache(1)
    assert (ladj - expected).abs().max() < 1e-8
    x_back = t.inv(y.clone())
    assert (x_back - x).abs().max() < 1e-8
    # the inverse solve gives the forward log-determinant at its output
    assert (t.inv.log_abs_det_jacobian(y.clone(), x_back) + expected).abs().max() < 1e-8


def test_round_trip_at_issue_tolerances():
    torch.manual_seed(0)
    t = perturbed(T.ffjord(5, hidden_dims=[32, 32], rtol=1e-8, atol=1e-8).double())
    x = 2.0 * points(50, 5)
    assert (t.inv(t(x).clone()) - x).abs().max() < 1e-5


def test_linear_field_is_exact():
    a = torch.tensor([[0.3, -1.0], [0.5, -0.2]], dtype=F64)
    t = T.FFJORD(2, Linear(a), end_time=0.7, rtol=1e-11, atol=1e-11)
    x = points(4, 2)
    y = t(x)
    assert torch.allclose(y, x @ torch.linalg.matrix_exp(0.7 * a).T, rtol=0, atol=1e-9)
    ladj = t.log_abs_det_jacobian(x, y)
    assert torch.allclose(ladj, torch.full((4,), 0.7 * a.trace().item(), dtype=F64), atol=1e-9)


def test_fixed_step_and_other_adaptive_methods():
    torch.manual_seed(0)
    x = points(5, 3)
    ref = perturbed(T.ffjord(3, hidden_dims=[16], rtol=1e-10, atol=1e-10).double())
    y_ref = ref(x)
    for kw in [
        {"method": "rk4", "step_size": 0.02},
        {"method": "dopri8"},
        {"method": "bosh3", "rtol": 1e-7, "atol": 1e-7},
    ]:
        t = perturbed(T.ffjord(3, hidden_dims=[16], **{"rtol": 1e-9, "atol": 1e-9, **kw}).double())
        t.load_state_dict(ref.state_dict())
        assert (t(x) - y_ref).abs().max() < 1e-6, kw


# -- trace estimators ---------------------------------------------------------------------------
@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased(noise):
    torch.manual_seed(0)
    dim, n = 4, 2000
    kw = {"hidden_dims": [16], "method": "rk4", "step_size": 0.25}
    exact = perturbed(T.ffjord(dim, trace="exact", **kw).double())
    hutch = T.ffjord(dim, trace="hutchinson", noise=noise, **kw).double()
    hutch.load_state_dict(exact.state_dict())
    x = points(1, dim).expand(n, dim)  # n independent probes for one point (rows independent)
    with torch.no_grad():
        target = exact.log_abs_det_jacobian(x[:1], exact(x[:1]))
        estimates = hutch.log_abs_det_jacobian(x, hutch(x))
        # the probe does not touch the trajectory
        assert torch.allclose(hutch(x)[:3], exact(x[:3]), rtol=0, atol=1e-12)
    se = estimates.std() / math.sqrt(n)
    assert estimates.std() > 0
    assert (estimates.mean() - target).abs() < 3 * se


def test_hutchinson_probe_is_fixed_for_the_whole_solve():
    a = torch.tensor([[0.3, -1.0, 0.2], [0.5, -0.2, 0.1], [0.0, 0.4, 0.6]], dtype=F64)
    t = T.FFJORD(3, Linear(a), trace="hutchinson", noise="rademacher", rtol=1e-10, atol=1e-10)
    x = points(8, 3)
    torch.manual_seed(4)
    ladj = t.log_abs_det_jacobian(x, t(x))
    torch.manual_seed(4)
    eps = hutchinson_noise(x, "rademacher")
    assert torch.allclose(ladj, ((eps @ a.T) * eps).sum(-1), atol=1e-9)


def test_auto_trace_is_exact_for_small_dim_and_in_eval():
    assert T.ffjord(3, hidden_dims=[8]).exact
    t = T.ffjord(20, hidden_dims=[8])
    assert not t.exact
    assert t.eval().exact
    assert not T.ffjord(20, hidden_dims=[8], eval_exact_dim=10).eval().exact
    assert not T.ffjord(3, hidden_dims=[8], trace="hutchinson").eval().exact
    ct = T.conditional_ffjord(20, 2, hidden_dims=[8]).eval()
    assert ct.condition(torch.zeros(2)).exact  # the conditioned transform inherits eval mode


def test_divergence_helpers():
    x = points(5, 3).requires_grad_()
    v = torch.stack([x[:, 0] * x[:, 1], x[:, 1] ** 2, torch.sin(x[:, 2])], -1)
    expected = x[:, 1] + 2 * x[:, 1] + torch.cos(x[:, 2])
    assert torch.allclose(divergence(v, x), expected)
    eps = hutchinson_noise(x)
    assert divergence(v, x, eps).shape == (5,)
    assert torch.equal(divergence(torch.ones_like(x), x), torch.zeros(5, dtype=F64))
    with pytest.raises(ValueError, match="noise"):
        hutchinson_noise(x, "uniform")


# -- adjoint ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "trace, norm", [("exact", "seminorm"), ("hutchinson", "seminorm"), ("exact", "full")]
)
def test_adjoint_gradients_equal_backprop(trace, norm):
    torch.manual_seed(0)
    kw = {"hidden_dims": [16], "trace": trace, "rtol": 1e-10, "atol": 1e-10}
    direct = perturbed(T.ffjord(3, **kw).double())
    adjoint = T.ffjord(3, adjoint=True, adjoint_options={"norm": norm}, **kw).double()
    adjoint.load_state_dict(direct.state_dict())
    y = 1.5 * points(8, 3)
    grads = []
    for t in (direct, adjoint):
        torch.manual_seed(7)  # the same probe in both
        x = t.inv(y)
        loss = (x.pow(2).sum(-1) - t.log_abs_det_jacobian(x, y)).sum()
        grads.append(torch.autograd.grad(loss, list(t.parameters())))
    for g_direct, g_adjoint in zip(*grads, strict=True):
        assert torch.allclose(g_adjoint, g_direct, rtol=1e-6, atol=1e-8)
    assert adjoint.nfe.backward > 0 and direct.nfe.backward == 0


def test_adjoint_gradients_reach_the_context():
    torch.manual_seed(0)
    kw = {"hidden_dims": [16], "rtol": 1e-10, "atol": 1e-10}
    direct = perturbed(T.conditional_ffjord(2, 3, **kw).double())
    adjoint = T.conditional_ffjord(2, 3, adjoint=True, **kw).double()
    adjoint.load_state_dict(direct.state_dict())
    x = points(4, 2)
    grads = []
    for module in (direct, adjoint):
        c = points(4, 3, seed=5).requires_grad_()
        y = module.condition(c)(x)
        grads.append(torch.autograd.grad(y.pow(2).sum(), [c, *module.parameters()]))
    assert grads[0][0].abs().sum() > 0
    for g_direct, g_adjoint in zip(*grads, strict=True):
        assert torch.allclose(g_adjoint, g_direct, rtol=1e-6, atol=1e-8)


# -- NFE ----------------------------------------------------------------------------------------
def test_nfe_counter_counts():
    t = T.ffjord(2, hidden_dims=[8], method="rk4", step_size=0.25)
    assert t.nfe == NFECounter()
    x = torch.randn(3, 2)
    y = t(x)
    assert (t.nfe.forward, t.nfe.backward, t.nfe.solves) == (16, 0, 1)  # 4 steps x 4 stages
    assert t(x) is y and t.nfe.solves == 1  # answered from the cache: no solve
    t.inv(y.clone())
    assert (t.nfe.forward, t.nfe.solves) == (32, 2)
    t.nfe.reset()
    assert t.nfe.total == 0
    adj = T.ffjord(2, hidden_dims=[8], method="rk4", step_size=0.25, adjoint=True)
    adj(torch.randn(3, 2)).sum().backward()
    assert adj.nfe.forward == 16 and adj.nfe.backward == 16
    cond = T.conditional_ffjord(2, 1, hidden_dims=[8], method="rk4", step_size=0.5)
    cond.condition(torch.zeros(1))(x)
    cond.condition(torch.ones(1))(x)
    assert cond.nfe.forward == 16 and cond.nfe.solves == 2


# -- regularisers -------------------------------------------------------------------------------
def test_regularizers_zero_for_zero_field_positive_otherwise():
    x = points(6, 2)
    zero = T.ffjord(2, hidden_dims=[8], regularize=True).double()
    with torch.no_grad():
        for p in zero.field.layers[-1].parameters():
            p.zero_()
    zero(x)
    terms = zero.regularization_terms()
    assert torch.equal(terms["kinetic"], torch.zeros(6, dtype=F64))
    assert torch.equal(terms["jacobian"], torch.zeros(6, dtype=F64))
    assert ode_regularization(zero, kinetic=1.0, jacobian=1.0) == 0

    torch.manual_seed(0)
    flow = normalizing_flow("ffjord", 2, num_layers=2, hidden_dims=[8], regularize=True).double()
    nll = -flow.log_prob(x).mean()
    penalty = ode_regularization(flow, kinetic=0.1, jacobian=0.1)
    assert penalty > 0
    (nll + penalty).backward()
    assert all(p.grad is not None for p in flow.parameters())
    for trace in ["exact", "hutchinson"]:
        t = perturbed(T.ffjord(2, hidden_dims=[8], regularize=True, trace=trace).double())
        t.inv(x)  # backwards in time: the integrals are still >= 0
        terms = t.regularization_terms()
        assert (terms["kinetic"] > 0).all() and (terms["jacobian"] > 0).all()


def test_regularizers_of_a_linear_field():
    a = torch.tensor([[0.3, -1.0], [0.5, -0.2]], dtype=F64)
    t = T.FFJORD(2, Linear(a), end_time=0.5, regularize=True, rtol=1e-10, atol=1e-10)
    x = points(3, 2)
    t(x)
    terms = t.regularization_terms()
    assert torch.allclose(terms["jacobian"], 0.5 * a.pow(2).sum().expand(3), atol=1e-9)
    ts = torch.linspace(0, 0.5, 2001, dtype=F64)
    path = torch.stack([x @ torch.linalg.matrix_exp(s * a).T for s in ts])  # (time, n, D)
    kinetic = torch.trapezoid((path @ a.T).pow(2).sum(-1), ts, dim=0)
    assert torch.allclose(terms["kinetic"], kinetic, rtol=1e-6)
    cond = T.conditional_ffjord(2, 1, hidden_dims=[8], regularize=True)
    cond.condition(torch.zeros(1))(x.float())
    assert ode_regularization(cond, kinetic=1.0) > 0


def test_regularizer_integrands():
    x = points(4, 3).requires_grad_()
    assert torch.equal(kinetic_energy(torch.zeros(4, 3)), torch.zeros(4))
    assert torch.equal(jacobian_frobenius(0 * x, x), torch.zeros(4, dtype=F64))
    v = torch.tanh(x) * 2
    assert (kinetic_energy(v) > 0).all()
    assert torch.allclose(jacobian_frobenius(v, x), (2 / torch.cosh(x) ** 2).pow(2).sum(-1))
    with pytest.raises(ValueError, match="regularize=True"):
        ode_regularization(T.ffjord(2, hidden_dims=[8]))


# -- options ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"trace": "stochastic"}, r"trace .*\['auto', 'exact', 'hutchinson'\]"),
        ({"noise": "uniform"}, r"noise .*\['gaussian', 'rademacher'\]"),
        ({"method": "rk45"}, "method .*dopri5"),
        ({"rtol": 0.0}, "rtol"),
        ({"atol": -1e-6}, "atol"),
        ({"rtol": float("nan")}, "rtol"),
        ({"end_time": 0.0}, "end_time"),
        ({"end_time": -1.0}, "end_time"),
        ({"method": "rk4"}, "step_size"),
        ({"method": "rk4", "step_size": 0}, "step_size"),
        ({"step_size": 0.1}, "fixed-step"),
        ({"options": {"norm": "seminorm"}}, "norm"),
        ({"adjoint": True, "adjoint_options": {"norm": "max"}}, "seminorm"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        T.ffjord(2, hidden_dims=[8], **kwargs)
    with pytest.raises(ValueError, match=match):
        T.conditional_ffjord(2, 1, hidden_dims=[8], **kwargs)


def test_bad_arguments_raise():
    with pytest.raises(TypeError, match="field"):
        T.FFJORD(2, lambda t, x: x)
    with pytest.raises(TypeError, match="adjoint"):
        T.ffjord(2, adjoint="yes")
    with pytest.raises(ValueError, match="activation"):
        T.ffjord(2, activation="relu")
    with pytest.raises(ValueError, match="context"):
        VectorField(2, [8], context_dim=2)(torch.tensor(0.0), torch.zeros(2))
    assert "dopri5" in METHODS and "rk4" in METHODS


class _WrongShape(nn.Module):
    def forward(self, t, x):
        return x[..., :1]


def test_field_must_return_the_shape_of_x():
    with pytest.raises(ValueError, match="shape"):
        T.FFJORD(2, _WrongShape())(torch.zeros(3, 2))


# -- pieces -------------------------------------------------------------------------------------
def test_integrate_is_reusable():
    x0 = torch.ones(3, dtype=F64)
    counter = NFECounter()
    x1 = integrate(lambda t, x: -x, x0, 0.0, 2.0, rtol=1e-10, atol=1e-10, counter=counter)
    assert torch.allclose(x1, x0 * math.exp(-2.0), atol=1e-9) and counter.forward > 0
    back = integrate(lambda t, x: -x, x1, 2.0, 0.0, method="rk4", step_size=0.01)
    assert torch.allclose(back, x0, atol=1e-8)
    a, b = integrate(
        lambda t, s: (s[1], -s[0]), (x0, 0 * x0), 0.0, math.pi / 2, rtol=1e-10, atol=1e-10
    )
    assert torch.allclose(a, 0 * x0, atol=1e-8) and torch.allclose(b, -x0, atol=1e-8)
    field = VectorField(3, [8]).double()
    x = points(4, 3).requires_grad_()
    out = integrate(field, x, 0.0, 1.0, adjoint=True)
    out.sum().backward()
    assert x.grad is not None and field.layers[0].linear.weight.grad is not None


def test_vector_field_shapes_and_time_inputs():
    f = VectorField(2, [8], time_freqs=3, concat_squash=False).double()
    x = points(5, 2)
    scalar = f(torch.tensor(0.3, dtype=F64), x)
    per_row = f(torch.full((5,), 0.3, dtype=F64), x)
    column = f(torch.full((5, 1), 0.3, dtype=F64), x)
    assert torch.allclose(scalar, per_row) and torch.allclose(scalar, column)
    layer = ConcatSquashLinear(2, 4, 1).double()
    assert layer(x, torch.zeros(1, dtype=F64)).shape == (5, 4)


def test_float32_with_tight_tolerances_and_build():
    t = T.ffjord(3, hidden_dims=[8], rtol=1e-12, atol=1e-12)  # floored to what float32 reaches
    x = torch.randn(4, 3)
    assert (t.inv(t(x).clone()) - x).abs().max() < 1e-4
    stack = build(
        "ffjord", 2, num_layers=2, hidden_dims=[8], context_dim=2, method="rk4", step_size=0.25
    )
    assert stack.condition(torch.zeros(2))(torch.randn(3, 2)).shape == (3, 2)
    assert "dopri5" in T.ffjord(2, hidden_dims=[8]).extra_repr()


def test_copy_and_pickle_after_a_regularized_pass():
    import copy
    import io

    t = T.ffjord(2, hidden_dims=[8], regularize=True)
    x = torch.randn(3, 2)
    y = t(x)
    clone = copy.deepcopy(t)
    buffer = io.BytesIO()
    torch.save(t, buffer)
    assert torch.equal(clone(x.clone()), y)
    field = VectorField(2, [8])
    before = field.layers[0].linear.weight.clone()
    field.reset_parameters()
    assert not torch.equal(before, field.layers[0].linear.weight)
