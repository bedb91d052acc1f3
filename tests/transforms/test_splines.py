"""The NSF wrapper of Pyro's spline autoregressive layer: both spline orders, identity start."""

import pyro.distributions.transforms as pyro_T
import pytest
import torch

import pyro_flows.transforms as T


def test_pyro_helper_cannot_build_quadratic_splines_but_ours_can():
    # pyro-ppl/pyro#3130: the helper emits the linear spline's four parameter sets.
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="unpack"):
        pyro_T.spline_autoregressive(3, order="quadratic")(x)
    t = T.masked_spline_autoregressive(3, hidden_dims=[16], order="quadratic")
    assert t.transform.arn.param_dims == [8, 8, 7]
    torch.testing.assert_close(t(t.inv(x).clone()), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("order", ["linear", "quadratic"])
@pytest.mark.parametrize("conditional", [False, True])
def test_splines_start_at_the_identity(order, conditional):
    torch.manual_seed(0)
    if conditional:
        t = T.conditional_masked_spline_autoregressive(4, 2, hidden_dims=[16], order=order)
        t = t.double().condition(torch.randn(3, 2, dtype=torch.float64))
    else:
        t = T.masked_spline_autoregressive(4, hidden_dims=[16], order=order).double()
    x = 2.5 * torch.rand(3, 4, dtype=torch.float64) * 2 - 2.5  # inside the interval [-3, 3]
    y = t(x)
    assert (y - x).abs().max() < 2e-4
    assert t.log_abs_det_jacobian(x, y).abs().max() < 4e-3  # Pyro's end slopes are 0.999

    torch.manual_seed(0)
    random = T.masked_spline_autoregressive(4, hidden_dims=[16], order=order, identity_init=False)
    assert (random.double()(x) - x).abs().max() > 1e-2


@pytest.mark.parametrize("conditional", [False, True])
def test_masked_spline_layer_is_autoregressive_in_the_natural_order(conditional):
    # Pyro's MADE draws a random input order unless given one; the builder's reverse
    # permutations only alternate the order between layers if each layer keeps the natural one.
    torch.manual_seed(0)
    dim = 6
    if conditional:
        layer = T.conditional_masked_spline_autoregressive(dim, 2, hidden_dims=[24])
    else:
        layer = T.masked_spline_autoregressive(dim, hidden_dims=[24])
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))  # away from the identity start
    if conditional:
        layer = layer.condition(torch.randn(2))
    x = torch.randn(dim)
    jac = torch.autograd.functional.jacobian(lambda v: layer.inv(v), x)
    assert jac.abs().triu(1).max() < 1e-6  # z_i depends on x_1..x_i only
    assert jac.abs().tril(-1).max() > 1e-3  # and does depend on earlier coordinates
