"""The multi-scale Glow distribution: exact log-density, round trips, temperature, classes."""

import io
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import Normal

from pyro_flows.dequantization import DequantizedFlow, UniformDequantization
from pyro_flows.glow import Glow, GlowDistribution


def perturbed(model, seed=0, scale=0.1):
    """Moves every parameter off its (identity) initialisation, in float64."""
    model = model.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def images(n, shape=(1, 4, 4), seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("num_classes", [None, 3])
def test_log_prob_is_the_change_of_variables_of_the_whitening_map(num_classes):
    torch.manual_seed(0)
    model = Glow(
        (1, 4, 4), num_levels=2, num_steps=2, hidden_channels=[6], num_classes=num_classes
    )
    model = perturbed(model)
    x = images(3)
    y = None if num_classes is None else torch.tensor([0, 2, 1])
    model.log_prob(x, y)  # initialises the ActNorms; then freeze them off their init
    perturbed(model, seed=5, scale=0.05)
    eps, log_prob = model.encode(x, y)
    assert eps.shape == (3, 16) and log_prob.shape == (3,)
    for i in range(3):
        yi = None if y is None else y[i]
        jac = torch.autograd.functional.jacobian(lambda v, yi=yi: model.encode(v, yi)[0], x[i])
        expected = (
            Normal(0.0, 1.0).log_prob(eps[i]).sum()
            + torch.linalg.slogdet(jac.reshape(16, 16)).logabsdet
        )
        assert torch.allclose(log_prob[i], expected, atol=1e-10)


def test_decode_inverts_encode_and_temperature_scales_the_noise():
    torch.manual_seed(0)
    model = perturbed(Glow((2, 8, 8), num_levels=3, num_steps=1, hidden_channels=[8]))
    x = images(4, (2, 8, 8))
    model.log_prob(x)
    eps, _ = model.encode(x)
    assert torch.allclose(model.decode(eps), x, atol=1e-10)
    # temperature 0 gives the deterministic "mode" path, identical for every draw
    cold = model.sample(5, temperature=0.0)
    assert torch.allclose(cold, cold[:1].expand(5, -1, -1, -1))
    assert torch.allclose(model.decode(0.7 * eps), model.decode(eps, temperature=0.7))
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-1.0)


def test_distribution_api_shapes_and_bits_per_dim():
    torch.manual_seed(0)
    model = Glow((1, 8, 8), num_levels=2, num_steps=1, hidden_channels=[8])
    x = torch.randn(6, 1, 8, 8)
    d = model()
    assert isinstance(d, GlowDistribution) and d.event_shape == (1, 8, 8)
    assert d.log_prob(x).shape == (6,)
    assert d.sample((2, 3)).shape == (2, 3, 1, 8, 8)
    assert torch.allclose(model.bits_per_dim(x), -model.log_prob(x) / (64 * math.log(2)))
    assert model.rsample(4).requires_grad
    # an untrained Glow is a standard normal after ActNorm: check the bits/dim of N(0, I) data
    fresh = Glow((1, 8, 8), num_levels=2, num_steps=1, hidden_channels=[8]).double()
    z = torch.randn(4000, 1, 8, 8, dtype=torch.float64)
    fresh.log_prob(z)  # initialise on the data
    nats = -fresh.log_prob(z).mean().item() / 64
    assert abs(nats - 0.5 * math.log(2 * math.pi * math.e)) < 0.01
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 1, 8, 8\)"):
        model.log_prob(torch.randn(2, 1, 8, 9))
    with pytest.raises(ValueError, match="divisible by 2\\*\\*num_levels"):
        Glow((1, 6, 6), num_levels=2)
    with pytest.raises(ValueError, match="not class-conditional"):
        model.log_prob(x, torch.zeros(6, dtype=torch.long))


def test_class_conditional_prior_and_labels():
    torch.manual_seed(0)
    model = perturbed(Glow((1, 4, 4), num_steps=1, hidden_channels=[6], num_classes=4))
    x = images(5)
    lp0 = model.log_prob(x, torch.zeros(5, dtype=torch.long))
    lp3 = model.log_prob(x, torch.full((5,), 3))
    assert (lp0 - lp3).abs().min() > 1e-6
    # one image under every label, labels broadcast against the batch
    assert model.log_prob(x[0], torch.arange(4)).shape == (4,)
    assert model.sample(3, y=torch.arange(4)).shape == (3, 4, 1, 4, 4)
    assert model(torch.arange(4)).expand((2, 4)).batch_shape == (2, 4)
    with pytest.raises(ValueError, match=r"labels in \[0, 3\]"):
        model.log_prob(x, torch.full((5,), 4))
    with pytest.raises(ValueError, match="class-conditional"):
        model.log_prob(x)
    with pytest.raises(TypeError, match="integer tensor"):
        model.log_prob(x, torch.zeros(5))


def test_state_dict_round_trip_keeps_actnorm_and_pyro_sample():
    torch.manual_seed(0)
    a = Glow((1, 8, 8), num_levels=2, num_steps=2, hidden_channels=[8])
    x = 3.0 + torch.randn(16, 1, 8, 8)
    a.log_prob(x)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = Glow((1, 8, 8), num_levels=2, num_steps=2, hidden_channels=[8])
    b.load_state_dict(torch.load(buffer))
    other = torch.randn(16, 1, 8, 8)  # would re-initialise a fresh ActNorm differently
    assert torch.equal(a.log_prob(other), b.log_prob(other.clone()))

    def model(data):
        pyro.module("glow", a)
        with pyro.plate("data", len(data)):
            pyro.sample("x", a(), obs=data)

    trace = pyro.poutine.trace(model).get_trace(x)
    trace.compute_log_prob()
    assert torch.allclose(trace.nodes["x"]["log_prob"], a.log_prob(x))
    assert any(k.startswith("glow$$$levels.0.") for k in pyro.get_param_store().keys())
    assert a().expand((3,)).sample((2,)).shape == (2, 3, 1, 8, 8)


def test_glow_with_uniform_dequantization_trains():
    torch.manual_seed(0)
    levels = 4
    glow = Glow((1, 4, 4), num_levels=1, num_steps=2, hidden_channels=[16])
    model = DequantizedFlow(glow, UniformDequantization((1, 4, 4), levels))
    # two "digits": a bar and its complement, so the data has strong pixel dependence
    bar = torch.zeros(1, 4, 4)
    bar[..., 1:3] = levels - 1
    data = torch.stack([bar, levels - 1 - bar]).repeat(32, 1, 1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = model.bits_per_dim(data).mean().item()
    for _ in range(150):
        opt.zero_grad()
        loss = model.bits_per_dim(data).mean()
        loss.backward()
        opt.step()
    end = model.bits_per_dim(data).mean().item()
    # two equally likely images: 1/16 bit/dim is the floor; the dequantization costs a little
    assert end < 0.5 * start and end < 0.6, (start, end)
    assert isinstance(glow(), dist.TorchDistribution)
