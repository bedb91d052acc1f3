"""Bad input gets a ValueError/TypeError that names the argument and what was expected."""

import numpy as np
import pytest
import torch

import pyro_flows.transforms as T
from pyro_flows._validation import check_positive_float
from pyro_flows.flows import build, normalizing_flow


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: T.planar(0), "input_dim must be an integer >= 1, got 0"),
        (lambda: T.radial(-3), "input_dim must be an integer >= 1"),
        (lambda: T.maf(1), "input_dim must be an integer >= 2, got 1"),
        (lambda: T.iaf(1), "input_dim must be an integer >= 2"),
        (lambda: T.affine_coupling(1), "input_dim must be an integer >= 2, got 1"),
        (lambda: T.maf(4, hidden_dims=[0]), "every entry of hidden_dims must be an integer >= 1"),
        (lambda: T.maf(4, order="sideways"), "unknown order 'sideways'"),
        (lambda: T.maf(3, order=[0, 0, 1]), "order must be a permutation of range"),
        (lambda: T.affine_coupling(4, mask="diagonal"), "unknown mask 'diagonal'"),
        (lambda: T.affine_coupling(3, mask=[True, True, True]), "mask must leave at least one"),
        (lambda: T.affine_coupling(3, mask=[True, False]), r"boolean tensor of shape \(3,\)"),
        (lambda: T.affine_coupling(4, log_scale_bound=-1.0), "log_scale_bound must be a positive"),
        (lambda: T.conditional_maf(3, 0), "context_dim must be an integer >= 1"),
        (lambda: T.Permutation(torch.tensor([0, 2])), "perm must be a permutation"),
        (lambda: build("glowworm", 2), "unknown flow 'glowworm'; expected one of"),
        (lambda: build("maf", 2, num_layers=0), "num_layers must be an integer >= 1"),
        (lambda: build("maf", 2, permutation="shuffle"), "unknown permutation 'shuffle'"),
        (lambda: build("planar", 2, hidden_dims=[8]), "flow 'planar' takes no hidden_dims"),
        (lambda: build("spline_coupling", 2, context_dim=2), "has no conditional variant"),
        (lambda: build("nsf", 2, order="cubic"), "unknown order 'cubic'"),
        (lambda: build("nsf", 2, count_bins=1), "count_bins must be an integer >= 2"),
    ],
)
def test_bad_hyper_parameters(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: T.affine_coupling(4, log_scale_bound="5"), TypeError, "log_scale_bound must"),
        (lambda: T.maf(3, log_scale_bound=True), TypeError, "log_scale_bound must be a positive"),
        (lambda: T.maf(3, log_scale_bound=0.0), ValueError, "log_scale_bound must be a positive"),
        (lambda: T.ffjord(2, rtol=float("nan")), ValueError, "rtol must be a positive number"),
        (lambda: T.ffjord(2, atol=float("inf")), ValueError, "atol must be finite, got inf"),
        (lambda: T.ffjord(2, rtol="1e-5"), TypeError, "rtol must be a positive number"),
    ],
)
def test_positive_numbers_type_error_for_a_kind_value_error_for_a_value(call, error, match):
    # _validation's rule: TypeError for the wrong kind of argument, ValueError for a bad value
    with pytest.raises(error, match=match):
        call()
    assert check_positive_float(np.float32(0.5), "x") == 0.5


def test_non_integer_dims_are_type_errors():
    with pytest.raises(TypeError, match="input_dim must be an integer"):
        T.planar(2.5)
    with pytest.raises(TypeError, match="hidden_dims must be a sequence"):
        T.maf(3, hidden_dims=16)


@pytest.mark.parametrize("name", ["planar", "radial", "affine_coupling", "maf", "iaf"])
def test_wrong_event_shape(name):
    t = build(name, 3, num_layers=1)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 3\).*got shape \(5, 4\)"):
        t(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"y must have shape \(\.\.\., 3\)"):
        t.inv(torch.randn(2))


def test_flow_rejects_nan_and_inf_data():
    flow = normalizing_flow("maf", 2, num_layers=2)
    x = torch.randn(10, 2)
    x[3, 1] = float("nan")
    x[7, 0] = float("inf")
    with pytest.raises(ValueError, match="x contains 2 NaN or infinite value"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2\)"):
        flow.log_prob(torch.randn(10, 3))


def test_conditional_flow_context_errors():
    flow = normalizing_flow("maf", 2, num_layers=2, context_dim=3)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"this flow is conditional: pass a context of shape"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 3\)"):
        flow.log_prob(x, torch.randn(4, 2))
    context = torch.randn(4, 3)
    context[0, 0] = float("nan")
    with pytest.raises(ValueError, match="context contains 1 NaN"):
        flow.log_prob(x, context)
    with pytest.raises(ValueError, match="pass a context"):
        T.conditional_iaf(2, 3).condition(None)
    plain = normalizing_flow("maf", 2, num_layers=2)
    with pytest.raises(ValueError, match="context was given but this flow is not conditional"):
        plain.log_prob(x, torch.randn(4, 3))


def test_non_invertible_family_says_so():
    flow = normalizing_flow("naf", 2, num_layers=1)
    z = flow.rsample((3,))
    assert torch.isfinite(flow(None).log_prob(z)).all()  # its own samples: from the cache
    with pytest.raises(NotImplementedError, match="no analytic inverse"):
        flow.log_prob(torch.randn(3, 2))
