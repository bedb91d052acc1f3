import pytest
import torch

from pyro_flows.models import (
    MLP,
    Bernoulli,
    ConvDecoder,
    ConvEncoder,
    DequantizedLogistic,
    DiscretizedLogistic,
    Gaussian,
    likelihood,
)


def test_discretized_logistic_probabilities(float64):
    loc = torch.tensor([[-1.0], [3.3], [7.0], [16.5]])
    scale = torch.tensor([[0.2], [1.5], [0.05], [4.0]])
    d = DiscretizedLogistic(loc, scale, num_levels=17)
    levels = torch.arange(17.0)
    p = d.log_prob(levels).exp()
    assert torch.allclose(p.sum(-1), torch.ones(4), atol=1e-12)
    # cell probabilities from the CDF directly, outer cells extended to -inf / +inf
    edges = torch.cat([torch.tensor([-torch.inf]), levels[:-1] + 0.5, torch.tensor([torch.inf])])
    cdf = torch.sigmoid((edges - loc) / scale)
    assert torch.allclose(p, cdf[:, 1:] - cdf[:, :-1], atol=1e-12)
    assert torch.allclose(d.mean, (p * levels).sum(-1, keepdim=True))
    # far in the tails the log-probability stays finite (computed in log space)
    far = DiscretizedLogistic(torch.tensor(0.0), torch.tensor(0.01), 17).log_prob(
        torch.tensor(9.0)
    )
    assert torch.isfinite(far) and far < -800


def test_discretized_logistic_samples_follow_probabilities():
    d = DiscretizedLogistic(torch.tensor(2.3), torch.tensor(0.8), num_levels=5)
    s = d.sample((40_000,))
    freq = torch.stack([(s == k).float().mean() for k in range(5)])
    p = d.log_prob(torch.arange(5.0)).exp()
    assert torch.allclose(freq, p, atol=0.01)
    assert d.variance > 0
    with pytest.raises(ValueError, match="support"):
        d.log_prob(torch.tensor(1.5))


def test_likelihood_layouts():
    out = torch.randn(3, 2 * 64)
    lik = DequantizedLogistic(17)
    assert lik(out).event_shape == (64,) and lik(out).batch_shape == (3,)
    assert lik(out).base_dist.loc[0, 0] == pytest.approx(16 * out[0, 0].item(), rel=1e-6)
    g = Gaussian(scale=None, index=torch.tensor([1, 3]))
    d = g(torch.arange(8.0).expand(2, 8))
    assert d.base_dist.loc.tolist() == [[1.0, 3.0]] * 2  # locs 0..3, scales 4..7, indices 1, 3
    assert torch.allclose(
        d.base_dist.scale, torch.nn.functional.softplus(torch.tensor([5.0, 7.0])) + 1e-3
    )
    assert Bernoulli()(torch.zeros(2, 3)).log_prob(torch.ones(2, 3)).tolist() == pytest.approx(
        [3 * -0.693147] * 2, abs=1e-5
    )
    per_sensor = Gaussian(torch.tensor([0.1, 2.0]), index=torch.tensor([0, 2]))
    assert per_sensor(torch.zeros(3)).base_dist.scale.tolist() == pytest.approx([0.1, 2.0])
    with pytest.raises(ValueError, match="scale must be a positive number or a 1-D tensor"):
        Gaussian(torch.tensor([0.1, -1.0]))
    with pytest.raises(ValueError, match="2 decoder outputs per feature"):
        lik(torch.randn(3, 5))
    with pytest.raises(ValueError, match="scale must be a positive number"):
        Gaussian(scale=0.0)
    with pytest.raises(TypeError, match="index must be a 1-D integer tensor"):
        Gaussian(1.0, index=torch.tensor([0.5]))
    with pytest.raises(ValueError, match="num_levels must be an integer >= 2"):
        likelihood("dequantized", num_levels=1)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 7, 5)])
def test_conv_nets_shapes(shape):
    d = shape[0] * shape[1] * shape[2]
    enc, dec = ConvEncoder(shape, 6), ConvDecoder(4, shape, out_channels=2)
    assert enc(torch.randn(2, 3, d)).shape == (2, 3, 6)
    assert dec(torch.randn(2, 3, 4)).shape == (2, 3, 2 * d)
    assert MLP(4, 2, [8])(torch.randn(5, 4)).shape == (5, 2)
    with pytest.raises(ValueError, match="image_shape must be"):
        ConvEncoder((8, 8), 6)
    with pytest.raises(ValueError, match="channels must have two entries"):
        ConvDecoder(4, shape, channels=[8])


def test_coordinate_decoder_layout():
    from pyro_flows.models import CoordinateDecoder

    grid = torch.linspace(0, 1, 5)
    dec = CoordinateDecoder(3, grid, num_fields=2, hidden_dims=[8])
    z = torch.randn(4, 3)
    out = dec(z)
    assert out.shape == (4, 10)
    # field k at grid point i is the network at [z, x_i], output k
    direct = dec.net(torch.cat([z[1], grid[3:4]]))
    assert torch.allclose(out[1, 3], direct[0]) and torch.allclose(out[1, 5 + 3], direct[1])
    with pytest.raises(ValueError, match="coords must be a tensor"):
        CoordinateDecoder(3, torch.zeros(2, 2, 2))
