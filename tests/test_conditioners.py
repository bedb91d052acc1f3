"""Conditioner networks: Pyro's MADE and DenseNN with contiguous outputs, and residual stacks."""

import pytest
import torch
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from pyro.nn import ConditionalDenseNN as PyroConditionalDenseNN
from pyro.nn import DenseNN as PyroDenseNN

from pyro_flows.nn import MADE, ConditionalDenseNN, ConditionalMADE, DenseNN


def _randomise(net: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()


@pytest.mark.parametrize("batch", [(), (7,), (3, 4)])
@pytest.mark.parametrize("param_dims", [[1, 1], [1, 1, 1]])
def test_outputs_equal_pyros(batch, param_dims):
    torch.manual_seed(0)
    ours = MADE(5, [12, 12], param_dims=param_dims, permutation=torch.randperm(5)).double()
    theirs = AutoRegressiveNN(5, [12, 12], param_dims=param_dims).double()
    _randomise(ours)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(*batch, 5, dtype=torch.float64)
    for a, b in zip(ours(x), theirs(x), strict=True):
        assert a.is_contiguous()
        assert a.shape == (*batch, 5)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "ours, theirs, param_dims",
    [
        (ConditionalMADE, ConditionalAutoRegressiveNN, [1, 1]),
        (ConditionalDenseNN, PyroConditionalDenseNN, [3, 3]),
    ],
)
def test_conditional_outputs_equal_pyros(ours, theirs, param_dims):
    torch.manual_seed(1)
    ours = ours(4, 3, [10], param_dims=param_dims).double()
    theirs = theirs(4, 3, [10], param_dims=param_dims).double()
    _randomise(ours)
    theirs.load_state_dict(ours.state_dict())
    x, c = torch.randn(6, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    for a, b in zip(ours(x, c), theirs(x, c), strict=True):
        assert a.is_contiguous()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_outputs_are_autoregressive():
    # Output i may depend only on the inputs earlier in the order.
    torch.manual_seed(2)
    perm = torch.tensor([2, 0, 3, 1])
    net = MADE(4, [16], param_dims=[1, 1], permutation=perm).double()
    _randomise(net)
    x = torch.randn(4, dtype=torch.float64)
    rank = torch.argsort(perm)  # position of each input in the order
    for head in range(2):
        jac = torch.autograd.functional.jacobian(lambda v, h=head: net(v)[h], x)
        allowed = rank[None, :] < rank[:, None]
        assert (jac[~allowed] == 0).all()
        assert (jac[allowed] != 0).any()


def test_unsupported_settings_fall_back_to_pyro():
    # Skip connections and non-unit param_dims keep Pyro's own output shapes.
    torch.manual_seed(3)
    net = MADE(3, [9], param_dims=[1, 2], skip_connections=True)
    x = torch.randn(5, 3)
    reference = AutoRegressiveNN(3, [9], param_dims=[1, 2], skip_connections=True)
    reference.load_state_dict(net.state_dict())
    for a, b in zip(net(x), reference(x), strict=True):
        assert torch.equal(a, b)
    assert [a.shape for a in net(x)] == [(5, 1, 3), (5, 2, 3)]


def test_scales_multiply_the_outputs():
    torch.manual_seed(4)
    net = MADE(4, [10], param_dims=[1, 1]).double()
    _randomise(net)
    x = torch.randn(3, 4, dtype=torch.float64)
    mu, s = net(x)
    mu2, s2 = net(x, scales=(2.0, 0.25))
    torch.testing.assert_close(mu2, 2.0 * mu, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(s2, 0.25 * s, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="one entry per parameter"):
        net(x, scales=(1.0,))


@pytest.mark.parametrize("param_dims", [[3, 3], [2, 3], [3]])
def test_dense_outputs_equal_pyros(param_dims):
    torch.manual_seed(5)
    ours = DenseNN(4, [12, 12], param_dims=param_dims).double()
    theirs = PyroDenseNN(4, [12, 12], param_dims=param_dims).double()
    _randomise(ours)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    a, b = ours(x), theirs(x)
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


def test_residual_layers_add_to_their_input():
    # h1 = W0 x + b0; h2 = h1 + W1 relu(h1) + b1; out = W2 relu(h2) + b2, by hand.
    torch.manual_seed(7)
    net = DenseNN(3, [8, 8], param_dims=[2, 2], residual=True).double()
    _randomise(net)
    x = torch.randn(4, 3, dtype=torch.float64)
    l0, l1, l2 = net.layers
    h1 = l0(x)
    h2 = h1 + l1(torch.relu(h1))
    out = l2(torch.relu(h2))
    a, b = net(x)
    torch.testing.assert_close(torch.cat([a, b], -1), out, rtol=1e-12, atol=1e-12)


def test_residual_layers_start_at_zero_and_need_one_width():
    net = MADE(3, [8, 8, 8], residual=True)
    for layer in net.layers[1:-1]:
        assert not layer.weight.any() and not layer.bias.any()
    with pytest.raises(ValueError, match="one width"):
        MADE(3, [8, 16], residual=True)
    with pytest.raises(ValueError, match="one width"):
        DenseNN(3, [8], param_dims=[1, 1], residual=True)


def test_residual_made_stays_autoregressive():
    torch.manual_seed(8)
    perm = torch.tensor([1, 3, 0, 2])
    net = MADE(4, [12, 12, 12], param_dims=[1, 1], permutation=perm, residual=True).double()
    _randomise(net)
    x = torch.randn(4, dtype=torch.float64)
    rank = torch.argsort(perm)
    allowed = rank[None, :] < rank[:, None]
    for head in range(2):
        jac = torch.autograd.functional.jacobian(lambda v, h=head: net(v)[h], x)
        assert (jac[~allowed] == 0).all()
        assert (jac[allowed] != 0).any()
