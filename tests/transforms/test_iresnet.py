"""Family-specific checks of invertible residual networks: Lipschitz bound, estimators, inverse."""

import math

import pytest
import torch
from torch.autograd.functional import jacobian

import pyro_flows.transforms as T
from pyro_flows.flows import normalizing_flow
from pyro_flows.nn import LipschitzConvNet, LipschitzMLP, LipschitzNorm, lipschitz_norm
from pyro_flows.transforms.iresnet import _logdet_exact

F64 = torch.float64


def perturbed(module, scale=0.2, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def exact_logdet(t, x):
    _, lin = t.network.linearize(x, t.context)
    return _logdet_exact(lin)


def max_singular_value_of_g(network, x):
    """sigma_max of the autograd Jacobian of g at each row of x (rows are independent)."""
    jac = jacobian(lambda v: network(v).sum(0), x)  # (D, N, D): d g(x_n)_i / d x_n,j
    return torch.linalg.matrix_norm(jac.permute(1, 0, 2), ord=2)


# -- spectral normalisation -----------------------------------------------------------------------
def test_norm_rescales_only_above_the_coefficient():
    torch.manual_seed(0)
    small = torch.randn(6, 4, dtype=F64)
    small = 0.5 * small / torch.linalg.matrix_norm(small, ord=2)
    norm = LipschitzNorm(small, coeff=0.9)
    assert torch.equal(norm(small), small)  # inside the ball: untouched
    big = 3.0 * small
    sigma = torch.linalg.matrix_norm(norm(big), ord=2).item()
    assert sigma == pytest.approx(0.9, rel=1e-5)


def test_power_iterations_persist_across_steps():
    torch.manual_seed(0)
    layer = LipschitzMLP(4, [64, 64], lipschitz=0.9).double().layers[1]
    weight = layer.weight
    first = layer.norm.power_iteration(weight.detach())  # from the random start
    assert first > 3
    with torch.no_grad():  # a small optimizer-like step
        weight.add_(1e-3 * torch.randn_like(weight))
    again = layer.norm.power_iteration(weight.detach())
    assert again < first
    assert "norm.u" in layer.state_dict() and "norm.v" in layer.state_dict()
    # repeated calls with unchanged weights see one function (no iteration, identical output)
    w1 = layer.normalized_weight()
    u = layer.norm.u.clone()
    w2 = layer.normalized_weight()
    assert torch.equal(w1, w2) and torch.equal(u, layer.norm.u)


@pytest.mark.parametrize("activation", ["elu", "lipswish"])
def test_lipschitz_bound_holds_after_training(activation):
    c = 0.8
    torch.manual_seed(0)
    flow = normalizing_flow(
        "residual_flow",
        2,
        num_layers=1,
        hidden_dims=[32, 32],
        lipschitz=c,
        activation=activation,
        inverse=True,
    ).double()
    block = next(m for m in flow.transform.modules() if isinstance(m, T.InvertibleResNet))
    data = 4.0 * torch.randn(256, 2, dtype=F64)  # wide data: the weights are pushed outwards
    opt = torch.optim.Adam(flow.parameters(), lr=0.05)
    for _ in range(15):
        opt.zero_grad()
        (-flow.log_prob(data).mean()).backward()
        opt.step()
    raw = [
        torch.linalg.matrix_norm(layer.weight.detach(), ord=2) for layer in block.network.layers
    ]
    assert max(raw) > c  # the normalisation was active
    for layer in block.network.layers:
        assert torch.linalg.matrix_norm(layer.normalized_weight(), ord=2) <= c * (1 + 1e-4)
    x = 3.0 * torch.randn(100, 2, dtype=F64)
    assert max_singular_value_of_g(block.network, x).max() <= c + 1e-4


def test_conv_layers_bound_the_operator_norm():
    torch.manual_seed(0)
    net = perturbed(LipschitzConvNet((2, 4, 4), [3], lipschitz=0.7).double(), scale=1.0)
    for layer in net.layers:
        weight = layer.normalized_weight()
        zero = torch.zeros(*layer.input_shape, dtype=F64)
        op = jacobian(lambda v, f=layer.linear, w=weight: f(v, w), zero)
        op = op.reshape(math.prod(layer.output_shape), math.prod(layer.input_shape))
        assert torch.linalg.matrix_norm(op, ord=2) == pytest.approx(0.7, rel=1e-4)
    # the same parametrization through torch's machinery on a plain Conv2d
    conv = torch.nn.Conv2d(2, 3, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.mul_(10.0)
    lipschitz_norm(conv, coeff=0.5, input_shape=(2, 4, 4))
    op = jacobian(conv, torch.zeros(1, 2, 4, 4, dtype=F64)).reshape(48, 32)
    assert torch.linalg.matrix_norm(op, ord=2) == pytest.approx(0.5, rel=1e-4)


# -- log-determinant estimators -------------------------------------------------------------------
def test_russian_roulette_is_unbiased():
    torch.manual_seed(0)
    roulette = T.residual_flow(3, hidden_dims=[16], lipschitz=0.7, estimator="russian_roulette")
    t = perturbed(roulette.double())
    x = torch.randn(1, 3, dtype=F64).expand(10, 3)
    exact = exact_logdet(t, x[:1]).item()
    # one roulette draw per call: the means of 1000 calls are independent estimates
    est = torch.stack([t._ladj(x, None).detach().mean() for _ in range(1000)])
    se = est.std().item() / math.sqrt(est.numel())
    assert abs(est.mean().item() - exact) < 3 * se
    assert est.std() > 0  # it is random


def test_neumann_gradient_is_unbiased():
    torch.manual_seed(0)
    t = T.residual_flow(
        3, hidden_dims=[16], lipschitz=0.7, n_samples=4, estimator="russian_roulette"
    )
    t = perturbed(t.double())
    x = torch.randn(1, 3, dtype=F64)
    # the parameters J_g depends on (not the output bias)
    params = [t.network.layers[0].bias, t.network.layers[0].weight, t.network.layers[1].weight]
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(exact_logdet(t, x).sum(), params)])
    chunks = []
    for _ in range(40):
        est = t._ladj(x.expand(100, 3), None).mean()
        chunks.append(torch.cat([g.flatten() for g in torch.autograd.grad(est, params)]))
    chunks = torch.stack(chunks)
    se = chunks.std(0) / math.sqrt(len(chunks))
    z = (chunks.mean(0) - exact).abs() / se
    assert (z < 4).float().mean() > 0.95  # a z-score above 4 on 5% of 50 coordinates: biased


def test_series_bias_falls_with_terms():
    torch.manual_seed(0)
    net = perturbed(LipschitzMLP(4, [16], lipschitz=0.9).double(), scale=1.0)
    x = 2.0 * torch.randn(1, 4, dtype=F64).expand(20000, 4)
    exact = exact_logdet(T.InvertibleResNet(4, net), x[:1]).item()

    def estimates(n):
        t = T.InvertibleResNet(4, net, estimator="series", n_terms=n, probe="rademacher")
        torch.manual_seed(1)  # the same probes for every n (common random numbers)
        return t._ladj(x, None).detach()

    # With shared probes, est_n - est_40 is the truncation bias plus noise that shrinks with it.
    reference = estimates(40)
    se = reference.std().item() / math.sqrt(len(reference))
    assert abs(reference.mean().item() - exact) < 3 * se  # 40 terms: no visible bias
    biases = [(estimates(n) - reference).mean().abs().item() for n in (1, 2, 4, 8, 16)]
    assert all(b1 > b2 for b1, b2 in zip(biases, biases[1:], strict=False)), biases
    assert biases[-1] < 0.01 * biases[0]


def test_eval_mode_is_exact_and_deterministic():
    torch.manual_seed(0)
    t = perturbed(T.residual_flow(3, hidden_dims=[16], estimator="russian_roulette").double())
    x = torch.randn(5, 3, dtype=F64)
    train = [t.log_abs_det_jacobian(x, t(x.clone())) for _ in range(2)]
    assert not torch.equal(train[0], train[1])  # stochastic in train mode
    t.eval()
    a = t.log_abs_det_jacobian(x, t(x.clone()))
    b = t.log_abs_det_jacobian(x, t(x.clone()))
    assert torch.equal(a, b)
    assert torch.allclose(a, exact_logdet(t, x), rtol=0, atol=1e-12)
    # a conditional module's mode reaches the transforms it conditions
    ct = T.conditional_residual_flow(3, 2, hidden_dims=[16]).double().eval()
    assert ct.condition(torch.zeros(2, dtype=F64)).current_estimator == "exact"


# -- fixed-point inverse --------------------------------------------------------------------------
def test_inverse_error_falls_geometrically():
    c = 0.9
    torch.manual_seed(0)
    t = perturbed(T.iresnet(4, hidden_dims=[32], lipschitz=c, on_nonconvergence="ignore"), 1.0)
    t = t.double()
    y = 3.0 * torch.randn(8, 4, dtype=F64)
    x_star = t.inv(y)
    errors = []
    for k in range(1, 13):
        t.options = type(t.options)(**{**t.options.__dict__, "max_iterations": k})
        errors.append((t.inv(y.clone()) - x_star).norm(dim=-1))  # k + 1 passes of g
        assert t.last_solve.iterations == k
    errors = torch.stack(errors)
    assert (errors[1:] <= c * errors[:-1] + 1e-14).all()  # a contraction, row by row
    # and on the whole: the log-error falls linearly, at a rate below log(c)
    logs = errors.max(-1).values.log()
    slope = (logs[-1] - logs[0]) / (len(logs) - 1)
    assert slope < math.log(c)


def test_nonconvergence_is_reported_or_raised():
    torch.manual_seed(0)
    y = 2.0 * torch.randn(4, 3)
    t = perturbed(T.iresnet(3, hidden_dims=[16], max_iterations=2), 1.0)
    with pytest.warns(RuntimeWarning, match="did not converge in 2 iterations"):
        t.inv(y)
    assert not t.last_solve.converged and t.last_solve.error > 0
    t = perturbed(T.iresnet(3, hidden_dims=[16], max_iterations=2, on_nonconvergence="raise"), 1.0)
    with pytest.raises(RuntimeError, match="did not converge"):
        t.inv(y)
    t = perturbed(
        T.iresnet(3, hidden_dims=[16], max_iterations=2, on_nonconvergence="ignore"), 1.0
    )
    t.inv(y)  # no warning (warnings are errors in this suite)
    assert t.last_solve == T.FixedPointInfo(2, t.last_solve.error, False)
    t = perturbed(T.iresnet(3, hidden_dims=[16]), 1.0)
    t.inv(y)
    assert t.last_solve.converged and t.last_solve.error <= 256 * torch.finfo(y.dtype).eps


def test_inverse_of_any_input_and_non_finite_rows():
    torch.manual_seed(0)
    t = perturbed(T.iresnet(3, hidden_dims=[16])).double()
    y = torch.randn(4, 3, dtype=F64) * torch.tensor([[1.0], [1e3], [1e-3], [1.0]], dtype=F64)
    y[3, 1] = math.nan
    x = t.inv(y)
    assert torch.isnan(x[3]).all()
    assert ((t(x[:3]) - y[:3]).abs() / (1 + y[:3].abs()) < 1e-12).all()


def test_implicit_gradient_of_the_inverse():
    torch.manual_seed(0)
    t = perturbed(T.iresnet(3, hidden_dims=[16], lipschitz=0.9)).double()
    y = torch.randn(5, 3, dtype=F64)
    w = torch.randn(5, 3, dtype=F64)
    bias = t.network.layers[0].bias
    (grad,) = torch.autograd.grad((t.inv(y.clone()) * w).sum(), bias)
    h, numeric = 1e-6, torch.zeros_like(bias)
    for i in range(bias.numel()):
        with torch.no_grad():
            bias[i] += h
            plus = (t.inv(y.clone()) * w).sum()
            bias[i] -= 2 * h
            minus = (t.inv(y.clone()) * w).sum()
            bias[i] += h
        numeric[i] = (plus - minus) / (2 * h)
    assert torch.allclose(grad, numeric, rtol=1e-6, atol=1e-8)


# -- convolutional variant ------------------------------------------------------------------------
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("batch", [(), (3,)], ids=str)
def test_conv_round_trip_and_log_det(batch, inverse):
    torch.manual_seed(0)
    t = T.conv_iresnet(
        (2, 4, 4), hidden_channels=[4], estimator="exact", activation="lipswish", inverse=inverse
    )
    t = perturbed(t.double())
    assert t.domain.event_dim == 3 and t.codomain.event_dim == 3
    x = 1.5 * torch.randn(*batch, 2, 4, 4, dtype=F64)
    y = t(x)
    assert y.shape == x.shape
    assert t.inv(y) is x
    assert (t.inv(y.clone()) - x).abs().max() < 1e-9
    ladj = t.log_abs_det_jacobian(x, y)
    assert ladj.shape == batch
    rows = x.reshape(-1, 2, 4, 4)
    expected = torch.stack(
        [
            torch.linalg.slogdet(
                jacobian(lambda v: t.with_cache(0)._call(v), r).reshape(32, 32)
            ).logabsdet
            for r in rows
        ]
    ).reshape(batch)
    t.with_cache(1)
    assert (ladj - expected).abs().max() < 1e-8
    assert (t.inv.log_abs_det_jacobian(y, x) + expected).abs().max() < 1e-8
    with pytest.raises(ValueError, match=r"\(\.\.\., 2, 4, 4\)"):
        t(torch.zeros(3, 2, 4, 5, dtype=F64))


def test_conv_stochastic_estimators_run():
    torch.manual_seed(0)
    x = torch.randn(6, 1, 3, 3)
    for est in ("series", "russian_roulette"):
        t = T.conv_iresnet((1, 3, 3), hidden_channels=[4], estimator=est)
        y = t(x)
        ladj = t.log_abs_det_jacobian(x, y)
        (ladj.sum() + y.sum()).backward()
        assert ladj.shape == (6,) and all(p.grad is not None for p in t.parameters())


# -- options --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"estimator": "hutchinson"}, "estimator"),
        ({"eval_estimator": "auto"}, "eval_estimator"),
        ({"lipschitz": 1.0}, "lipschitz"),
        ({"lipschitz": -0.5}, "lipschitz"),
        ({"n_terms": 0}, "n_terms"),
        ({"n_samples": 0}, "n_samples"),
        ({"geometric_p": 1.0}, "geometric_p"),
        ({"probe": "uniform"}, "probe"),
        ({"tol": 0.0}, "tol"),
        ({"max_iterations": 0}, "max_iterations"),
        ({"on_nonconvergence": "stop"}, "on_nonconvergence"),
        ({"activation": "relu"}, "activation"),
        ({"hidden_dims": []}, "hidden_dims"),
        ({"inverse": "yes"}, "inverse"),
    ],
)
def test_bad_options_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        T.iresnet(3, **kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"kernel_size": 2}, "kernel_size"),
        ({"input_shape": (2, 4)}, "input_shape"),
        ({"hidden_channels": []}, "hidden_channels"),
        ({"lipschitz": 2.0}, "lipschitz"),
    ],
)
def test_bad_conv_options_raise_naming_the_argument(kwargs, name):
    kwargs = {"input_shape": (2, 4, 4), **kwargs}
    with pytest.raises(ValueError, match=name):
        T.conv_iresnet(**kwargs)


def test_network_must_be_contractive():
    net = LipschitzMLP(3, [8], lipschitz=1.5)
    with pytest.raises(ValueError, match="lipschitz"):
        T.InvertibleResNet(3, net)
    with pytest.raises(ValueError, match="context_dim"):
        T.ConditionalInvertibleResNet(3, 2, LipschitzMLP(3, [8]))


# -- defaults (issue 19: residual flows at defaults) ----------------------------------------------
@pytest.mark.parametrize(
    "helper, stochastic",
    [(T.iresnet, "series"), (T.residual_flow, "russian_roulette")],
    ids=["iresnet", "residual_flow"],
)
def test_default_estimator_is_exact_in_small_dimensions(helper, stochastic):
    from pyro_flows.transforms.iresnet import EXACT_MAX_DIM

    assert helper(2).options.estimator == "exact"
    assert helper(EXACT_MAX_DIM).options.estimator == "exact"
    assert helper(EXACT_MAX_DIM + 1).options.estimator == stochastic
    assert helper(2, estimator="series").options.estimator == "series"  # explicit wins
    conditional = T.conditional_iresnet if helper is T.iresnet else T.conditional_residual_flow
    assert conditional(2, 3).options.estimator == "exact"
    assert conditional(EXACT_MAX_DIM + 1, 3).options.estimator == stochastic


def test_default_estimator_validates_its_arguments():
    from pyro_flows.transforms.iresnet import default_estimator

    assert default_estimator(3) == "exact"
    assert default_estimator(40, "russian_roulette") == "russian_roulette"
    with pytest.raises(ValueError, match="stochastic"):
        default_estimator(40, "hutchinson")
    with pytest.raises(ValueError, match="input_dim"):
        default_estimator(0)


def test_default_size_and_affine_maps_match_maf():
    """normalizing_flow("iresnet", 2): 5 layers of 2 blocks, MAF's size, affine maps between."""
    from pyro_flows.nn.dense import default_hidden_dims

    assert [layer.out_features for layer in T.iresnet(2).network.layers[:-1]] == [64, 64]
    assert default_hidden_dims(2) == [64, 64]
    conditional = T.conditional_iresnet(6, 5)
    assert [layer.out_features for layer in conditional.network.layers[:-1]] == [128, 128]
    maf_size = sum(p.numel() for p in normalizing_flow("maf", 2).parameters())
    for name in ("iresnet", "residual_flow"):
        flow = normalizing_flow(name, 2)
        modules = list(flow.transform.modules())
        blocks = [m for m in modules if isinstance(m, T.InvertibleResNet)]
        affine = [m for m in modules if isinstance(m, T.ActNorm)]
        assert len(blocks) == 10 and len(affine) == 6 + 5  # around the layers, inside them
        widths = {layer.out_features for b in blocks for layer in b.network.layers[:-1]}
        assert widths == {45}  # 64 / sqrt(2): two blocks have one wide block's parameters
        activation = "elu" if name == "iresnet" else "lipswish"
        assert all(b.network.activation == activation for b in blocks)
        size = sum(p.numel() for p in flow.parameters())
        assert abs(size - maf_size) < 0.02 * maf_size  # equal size, within 2%


def test_layer_of_blocks_options():
    layer = T.iresnet_layer(3, hidden_dims=[8], blocks=3, inverse=True, lipschitz=0.5)
    kinds = [type(p).__name__ for p in layer.parts]
    assert kinds == ["InvertibleResNet", "ActNorm"] * 2 + ["InvertibleResNet"]
    blocks = layer.parts[::2]
    assert all(b.options.inverse and b.network.lipschitz == 0.5 for b in blocks)
    assert all([m.out_features for m in b.network.layers[:-1]] == [8] for b in blocks)
    x = torch.randn(4, 3)
    assert torch.allclose(layer(layer.inv(x)), x, atol=1e-4)
    assert len(T.residual_flow_layer(2, blocks=1).parts) == 1
    cond = T.conditional_residual_flow_layer(2, 3)
    assert torch.isfinite(cond.condition(torch.randn(3)).inv(x[:, :2])).all()
    with pytest.raises(ValueError, match="blocks"):
        T.iresnet_layer(2, blocks=0)


def test_residual_flow_starts_lipswish_at_the_default_beta():
    from pyro_flows.nn import LipSwish
    from pyro_flows.transforms.iresnet import LIPSWISH_BETA

    acts = [m for m in T.residual_flow(2).modules() if isinstance(m, LipSwish)]
    assert len(acts) == 2 and LIPSWISH_BETA == 5.0
    assert all(torch.allclose(a.beta, torch.tensor(LIPSWISH_BETA)) for a in acts)
    acts = [m for m in T.residual_flow(2, lipswish_beta=2.0).modules() if isinstance(m, LipSwish)]
    assert all(torch.allclose(a.beta, torch.tensor(2.0)) for a in acts)
    assert all(
        torch.allclose(a.beta, torch.tensor(1.0))
        for a in LipschitzMLP(2, [4], activation="lipswish").activations
    )
    with pytest.raises(ValueError, match="beta"):
        T.residual_flow(2, lipswish_beta=0.0)
