"""The defaults MAF and affine coupling won the equal-size benchmark with (docs/benchmarks.md).

Masked fan-in initialisation of MADE, identity-start elementwise affine maps between the
layers of ``build``, and the default hidden sizes.
"""

import math

import pytest
import torch
from pyro.nn import AutoRegressiveNN

import pyro_flows.transforms as T
from pyro_flows.flows import build, elementwise_affine, normalizing_flow
from pyro_flows.nn import MADE, ConditionalMADE
from pyro_flows.nn.dense import default_hidden_dims


@pytest.mark.parametrize("conditional", [False, True])
def test_made_hidden_units_start_with_the_dense_init_of_their_own_fan_in(conditional):
    torch.manual_seed(0)
    if conditional:
        net = ConditionalMADE(8, 3, [512, 512], param_dims=[1, 1])
    else:
        net = MADE(8, [512, 512], param_dims=[1, 1])
    for layer in list(net.layers)[:-1]:
        kept = layer.mask.bool()
        m = layer.mask.sum(-1, keepdim=True)
        # W_ij * sqrt(m_i) over the kept entries must be U(-1, 1): std 1/sqrt(3), max <= 1.
        scaled = (layer.weight * m.sqrt())[kept]
        assert scaled.abs().max() <= 1.0 + 1e-6
        assert abs(scaled.std().item() - 1 / math.sqrt(3)) < 0.01
        # Torch's rule on the full width would give units with m_i < n a smaller std.
        assert (m < layer.in_features).any()
    last = net.layers[-1]  # the output layer keeps torch's init: the flow's start is unchanged
    assert last.weight.abs().max() <= 1 / math.sqrt(last.in_features) + 1e-6


def test_made_fan_in_init_false_is_pyros_init():
    torch.manual_seed(3)
    ours = MADE(4, [16, 16], param_dims=[1, 1], fan_in_init=False)
    torch.manual_seed(3)
    pyro = AutoRegressiveNN(4, [16, 16], param_dims=[1, 1])
    for a, b in zip(ours.parameters(), pyro.parameters(), strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(3)
    scaled = MADE(4, [16, 16], param_dims=[1, 1])
    assert not torch.equal(scaled.layers[0].weight, pyro.layers[0].weight)


def test_elementwise_affine_starts_at_the_identity_and_data_do_not_reset_it():
    t = elementwise_affine(3)
    y = 5.0 + 3.0 * torch.randn(100, 3)
    x = t.inv(y)  # an untouched ActNorm would set itself from these data here
    assert torch.equal(x, y)
    assert torch.count_nonzero(t.loc) == 0 and torch.count_nonzero(t.log_scale) == 0
    assert torch.equal(t.log_abs_det_jacobian(x, y), torch.zeros(100))


@pytest.mark.parametrize("name", ["maf", "affine_coupling"])
def test_build_puts_identity_affines_around_maf_and_coupling_layers(name):
    torch.manual_seed(0)
    with_affine = build(name, 3, 2, hidden_dims=[16])
    torch.manual_seed(0)
    without = build(name, 3, 2, hidden_dims=[16], elementwise_affine=False)
    kinds = [type(p) for p in with_affine.parts]
    assert kinds.count(T.ActNorm) == 3  # before each of the 2 layers and after the last
    assert kinds[0] is T.ActNorm and kinds[-1] is T.ActNorm
    assert T.ActNorm not in [type(p) for p in without.parts]
    # 2D parameters per affine map, nothing else added
    extra = sum(p.numel() for p in with_affine.parameters())
    assert extra - sum(p.numel() for p in without.parameters()) == 3 * 2 * 3
    # Same network weights (the affines draw no random numbers) and identity affines: the
    # same flow at the start, in both directions, log-determinant included.
    z = torch.randn(7, 3)
    torch.testing.assert_close(with_affine(z), without(z))
    x = torch.randn(7, 3)
    torch.testing.assert_close(with_affine.inv(x), without.inv(x))


def test_affines_train_and_the_log_prob_counts_them():
    torch.manual_seed(0)
    flow = normalizing_flow("maf", 2, 2, hidden_dims=[8], standardize=False)
    affines = [p for p in flow.transform.parts if isinstance(p, T.ActNorm)]
    with torch.no_grad():
        affines[-1].log_scale.fill_(math.log(2.0))  # the data end: doubles every coordinate
    torch.manual_seed(0)
    plain = normalizing_flow(
        "maf", 2, 2, hidden_dims=[8], standardize=False, elementwise_affine=False
    )
    x = torch.randn(5, 2)
    # q(x) = q_plain(x / 2) / 4 in 2-D
    expected = plain.log_prob(x / 2) - 2 * math.log(2.0)
    torch.testing.assert_close(flow.log_prob(x), expected)


def test_elementwise_affine_defaults_by_family_and_checks_its_type():
    assert T.ActNorm not in [type(p) for p in build("iaf", 3, 2, hidden_dims=[8]).parts]
    parts = build("iaf", 3, 2, hidden_dims=[8], elementwise_affine=True).parts
    assert T.ActNorm in [type(p) for p in parts]
    cond = build("maf", 3, 2, context_dim=2, hidden_dims=[8])
    assert cond.condition(torch.randn(2))(torch.randn(4, 3)).shape == (4, 3)
    with pytest.raises(TypeError, match="elementwise_affine"):
        build("maf", 3, elementwise_affine="yes")


def test_default_hidden_dims_follow_the_benchmark_sizes():
    assert default_hidden_dims(2) == [64, 64]
    assert default_hidden_dims(9) == [64, 64]
    assert default_hidden_dims(10) == [128, 128]
    assert default_hidden_dims(32) == [128, 128]
    assert default_hidden_dims(50) == [200, 200]
    assert default_hidden_dims(6, 4) == [128, 128]
    assert T.maf(2).network.hidden_dims == [64, 64]
    assert T.maf(12).network.hidden_dims == [128, 128]
    assert T.conditional_maf(3, 2).network.hidden_dims == [64, 64]
    assert T.affine_coupling(2).conditioner.hidden_dims == [64, 64]
    assert T.conditional_affine_coupling(40, 2).conditioner.hidden_dims == [168, 168]
    assert T.iaf(3).network.hidden_dims == [10]  # a guide's default stays Pyro's 3D + 1


def test_elementwise_spline_starts_at_the_identity_and_fits_one_skewed_column():
    import numpy as np

    from pyro_flows.density import DensityEstimator

    t = T.elementwise_spline(3)
    x = 4 * torch.randn(50, 3, dtype=torch.float32)  # inside and outside the box [-5, 5]
    assert torch.allclose(t(x), x, atol=2e-3)
    assert t.log_abs_det_jacobian(x, t(x)).abs().max() < 5e-3
    # Pyro's random start left 13-16% of a one-column fit's samples beyond the data's range
    y = np.random.default_rng(0).gamma(2.0, 3.0, size=(400, 1))
    est = DensityEstimator(flow="spline", num_steps=300, seed=0, progress=False).fit(y)
    draws = np.asarray(est.sample(5000)).ravel()
    assert (draws < y.min() - 1.0).mean() < 0.02
