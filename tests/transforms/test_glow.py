"""Glow blocks beyond the conformance suite: ActNorm's initialisation, LU log-det, squeeze."""

import io
import math

import pytest
import torch

import pyro_flows.transforms as T


# -- ActNorm ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3,), (3, 4, 5)], ids=str)
def test_actnorm_initialises_on_first_batch_of_data(shape):
    t = T.actnorm(shape)
    assert not t.initialized
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.5, 2.0, 7.0]).reshape(3, *([1] * (len(shape) - 1)))
    y = 4.0 + scale * torch.randn(64, *shape, generator=g, dtype=torch.float64)
    t = t.double()
    x = t.inv(y)
    assert bool(t.initialized)
    channels = x.movedim(1, 0).reshape(3, -1)
    assert torch.allclose(channels.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(channels.std(1, unbiased=False), torch.ones(3, dtype=torch.float64))
    # log|det| of the data -> noise direction is -HW sum(log std)
    pixels = 1 if len(shape) == 1 else shape[1] * shape[2]
    expected = -pixels * y.movedim(1, 0).reshape(3, -1).std(1, unbiased=False).log().sum()
    ladj = t.inv.log_abs_det_jacobian(y, x)
    assert ladj.shape == (64,) and torch.allclose(ladj, expected.expand(64), atol=1e-9)
    # a second batch does not re-initialise
    before = t.loc.detach().clone()
    t.inv(y[:8] * 10)
    assert torch.equal(t.loc, before)


def test_actnorm_state_dict_restores_without_reinitialising():
    trained = T.actnorm((2, 3, 3))
    trained.inv(1.0 + 3.0 * torch.randn(16, 2, 3, 3))
    with torch.no_grad():
        trained.loc.add_(0.7)  # "training" moves parameters off the data-dependent init
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    fresh = T.actnorm((2, 3, 3))
    fresh.load_state_dict(torch.load(buffer))
    assert bool(fresh.initialized)
    y = torch.randn(16, 2, 3, 3)
    assert torch.equal(fresh.inv(y), trained.inv(y.clone()))
    assert torch.equal(fresh.loc, trained.loc)
    assert "initialized=True" in repr(fresh)


def test_actnorm_forward_first_keeps_identity_and_bad_batches_fail():
    t = T.actnorm(4)
    x = torch.randn(5, 4)
    assert torch.equal(t(x), x) and bool(t.initialized)  # a forward pass first: identity, kept
    with pytest.raises(ValueError, match="at least 2 values per channel"):
        T.actnorm(4).inv(torch.randn(4))
    with pytest.raises(ValueError, match=r"y must have shape \(\.\.\., 4\)"):
        T.actnorm(4).inv(torch.randn(3, 5))
    with pytest.raises(ValueError, match="event_shape"):
        T.actnorm((2, 3))
    with pytest.raises(ValueError, match="eps"):
        T.actnorm(3, eps=-1.0)
    t.initialize(torch.randn(10, 4) * 3)
    assert bool(t.initialized)


# -- 1x1 convolution ----------------------------------------------------------------------------
@pytest.mark.parametrize("lu", [True, False])
def test_conv1x1_log_det_matches_slogdet_and_inverse(lu):
    torch.manual_seed(0)
    t = T.invertible_conv1x1((6, 3, 5), lu=lu).double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    w = t.matrix()
    assert torch.allclose(t.inverse_matrix() @ w, torch.eye(6, dtype=torch.float64), atol=1e-12)
    expected = 15 * torch.linalg.slogdet(w).logabsdet
    x = torch.randn(4, 6, 3, 5, dtype=torch.float64)
    y = t(x)
    assert torch.allclose(t.log_abs_det_jacobian(x, y), expected.expand(4), atol=1e-10)
    # the same channel mixing as a 1x1 conv2d
    conv = torch.nn.functional.conv2d(x, w[:, :, None, None])
    assert torch.allclose(y, conv, atol=1e-12)
    assert t.sign == int(torch.sign(torch.linalg.det(w)).item())


def test_conv1x1_starts_as_rotation_and_lu_keeps_structure():
    t = T.invertible_conv1x1(5, generator=torch.Generator().manual_seed(3))
    w = t.matrix().detach()
    assert torch.allclose(w @ w.T, torch.eye(5), atol=1e-5)
    assert abs(t.log_abs_det().item()) < 1e-5
    with torch.no_grad():
        t.lower.add_(1.0)  # the masked entries (on/above the diagonal) must not matter
        t.upper.add_(torch.tril(torch.ones(5, 5)))
    lower, upper = t._factors()
    assert torch.equal(torch.diagonal(lower), torch.ones(5))
    assert torch.equal(torch.tril(upper, -1), torch.zeros(5, 5))
    with pytest.raises(TypeError, match="lu"):
        T.invertible_conv1x1(3, lu="yes")


# -- squeeze ------------------------------------------------------------------------------------
def test_squeeze_moves_each_patch_into_channels():
    x = torch.arange(2 * 4 * 6.0).reshape(1, 2, 4, 6)
    y = T.squeeze((2, 4, 6))(x)
    assert y.shape == (1, 8, 2, 3)
    # channel 4c + 2i + j holds pixel (2h + i, 2w + j) of channel c
    for c in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(y[0, 4 * c + 2 * i + j], x[0, c, i::2, j::2])
    assert torch.equal(T.unsqueeze_image(y), x)
    with pytest.raises(ValueError, match="even H and W"):
        T.squeeze((1, 3, 4))


# -- image coupling -----------------------------------------------------------------------------
def test_image_coupling_starts_at_identity_and_checks_shapes():
    t = T.image_affine_coupling((3, 4, 4), hidden_channels=[8])
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(t(x), x)
    assert torch.equal(t.log_abs_det_jacobian(x, t(x)), torch.zeros(2))
    with pytest.raises(ValueError, match="C >= 2"):
        T.image_affine_coupling((1, 4, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 3, 4, 4\)"):
        t(torch.randn(2, 3, 4, 5))


def test_conditional_image_coupling_uses_the_context():
    torch.manual_seed(0)
    t = T.conditional_image_affine_coupling((2, 4, 4), 3, hidden_channels=[8]).double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    c = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    y = t.condition(c)(x)
    rows = torch.stack([t.condition(c[i])(x[i]) for i in range(5)])
    assert torch.allclose(y, rows, atol=1e-12)
    assert (t.condition(c[1])(x[0]) - y[0]).abs().max() > 1e-6
    assert torch.allclose(t.condition(c).inv(y.clone()), x, atol=1e-12)
    with pytest.raises(ValueError, match="context"):
        t.condition(torch.randn(5, 2, 4, 4))


def test_glow_step_vector_and_image_orders():
    step = T.glow_step((4, 4, 4), hidden_dims=[8])
    coupling, conv, act = step.parts
    assert isinstance(coupling, T.ImageAffineCoupling)
    assert isinstance(conv, T.InvertibleConv1x1) and isinstance(act, T.ActNorm)
    y = 2.0 + 3.0 * torch.randn(32, 4, 4, 4)
    z, ladj = step.inv.call_and_ladj(y)  # ActNorm sees the data first and initialises
    assert bool(act.initialized)
    # the coupling is the identity at init, the conv a rotation: z is standardised data
    assert abs(z.mean().item()) < 1e-5 and math.isclose(z.pow(2).mean().item(), 1, rel_tol=1e-4)
    assert isinstance(T.glow_step(4).parts[0], T.AffineCoupling)
