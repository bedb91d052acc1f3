import math

import numpy as np
import pyro
import pytest
import torch
from scipy import stats

from pyro_flows.datasets import TOY_DATASETS, Checkerboard, EightGaussians, toy_distribution

SIGMA = 0.5 / math.sqrt(2)
RADIUS = 4 / math.sqrt(2)


def _grid(lo, hi, h):
    """Midpoints of a square grid of spacing h over [lo, hi]^2, in float64."""
    t = torch.arange(lo + h / 2, hi, h, dtype=torch.float64)
    return torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)


def _ffjord_checkerboard(n, gen):
    """FFJORD's checkerboard sampler, written out as in the paper's code (float64)."""
    x1 = torch.rand(n, generator=gen, dtype=torch.float64) * 4 - 2
    x2_ = (
        torch.rand(n, generator=gen, dtype=torch.float64)
        - torch.randint(0, 2, (n,), generator=gen).double() * 2
    )
    x2 = x2_ + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 2


def _chi_square_pvalue(samples, log_prob, lo, hi, bins, sub=16):
    """p-value of a chi-square test of the binned samples against the binned density."""
    h = (hi - lo) / bins
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    # expected bin masses by the midpoint rule on a sub-grid of every bin
    fine = _grid(lo, hi, h / sub)
    p = (log_prob(fine).exp() * (h / sub) ** 2).reshape(bins, sub, bins, sub).sum((1, 3))
    counts, _, _ = np.histogram2d(
        samples[:, 0].numpy(), samples[:, 1].numpy(), bins=[edges.numpy(), edges.numpy()]
    )
    counts = torch.as_tensor(counts).flatten()
    p = p.flatten()
    n = samples.shape[0]
    keep = p * n >= 5
    obs = torch.cat([counts[keep], (n - counts[keep].sum()).reshape(1)])
    exp = torch.cat([p[keep] * n, (n - (p[keep] * n).sum()).reshape(1)])
    if exp[-1] < 5:  # fold a negligible remainder into the last kept bin
        obs, exp = obs[:-1], exp[:-1]
        obs[-1] += n - obs.sum()
        exp[-1] += n - exp.sum()
    return stats.chisquare(obs.numpy(), exp.numpy()).pvalue


def test_registry():
    assert TOY_DATASETS == ("8gaussians", "checkerboard")
    assert isinstance(toy_distribution("8gaussians"), EightGaussians)
    assert isinstance(toy_distribution("checkerboard"), Checkerboard)
    for name in TOY_DATASETS:
        assert isinstance(toy_distribution(name), pyro.distributions.TorchDistribution)


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="two_moons") as err:
        toy_distribution("two_moons")
    for name in TOY_DATASETS:
        assert name in str(err.value)


@pytest.mark.parametrize("name", TOY_DATASETS)
@pytest.mark.parametrize("shape", [(), (5,), (2, 3)])
def test_shapes(name, shape):
    p = toy_distribution(name)
    assert p.event_shape == (2,) and p.batch_shape == ()
    x = p.sample(shape)
    assert x.shape == (*shape, 2) and x.dtype == torch.get_default_dtype()
    assert p.log_prob(x).shape == shape
    assert p.support.check(x).shape == shape
    assert p.support.check(x).all()
    assert p.expand([4]).sample().shape == (4, 2)


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_dtypes(name, float64):
    p = toy_distribution(name)
    assert p.sample((3,)).dtype == torch.float64
    assert p.log_prob(torch.zeros(3, 2, dtype=torch.float32)).dtype == torch.float32
    assert p.log_prob(torch.zeros(3, 2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_sampling_is_reproducible(name):
    p = toy_distribution(name)
    a = p.sample((100,), generator=torch.Generator().manual_seed(1))
    b = p.sample((100,), generator=torch.Generator().manual_seed(1))
    c = p.sample((100,), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = p.sample((100,))
    torch.manual_seed(3)
    assert torch.equal(d, p.sample((100,)))


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_log_prob_rejects_wrong_shape(name):
    with pytest.raises(ValueError, match="value"):
        toy_distribution(name).log_prob(torch.zeros(4, 3))


def test_eight_gaussians_density_integrates_to_one():
    p = EightGaussians()
    h = 0.05
    assert (p.log_prob(_grid(-8, 8, h)).exp().sum() * h * h).item() == pytest.approx(1, abs=1e-9)


def test_eight_gaussians_log_prob_matches_explicit_mixture():
    p = EightGaussians()
    angles = np.arange(8) * np.pi / 4
    centres = RADIUS * np.stack([np.cos(angles), np.sin(angles)], 1)
    x = np.random.default_rng(0).uniform(-5, 5, size=(200, 2))
    dens = sum(stats.multivariate_normal(c, SIGMA**2 * np.eye(2)).pdf(x) for c in centres) / 8
    lp = p.log_prob(torch.as_tensor(x))
    np.testing.assert_allclose(lp.numpy(), np.log(dens), rtol=1e-10, atol=1e-10)
    # far from every centre the log-sum-exp stays finite (no underflow to -inf)
    assert torch.isfinite(p.log_prob(torch.tensor([[100.0, -100.0]]))).all()


def test_eight_gaussians_samples_match_density():
    p = EightGaussians()
    x = p.sample((100_000,), generator=torch.Generator().manual_seed(0)).double()
    assert _chi_square_pvalue(x, p.log_prob, -4.5, 4.5, bins=18) > 1e-3
    # every component gets 1/8 of the points, with standard deviation 0.5 / sqrt(2)
    centres = p.centres(torch.float64)
    k = torch.cdist(x, centres).argmin(1)
    freq = torch.bincount(k, minlength=8).double() / x.shape[0]
    assert torch.allclose(freq, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.005)
    assert (x - centres[k]).std().item() == pytest.approx(SIGMA, rel=0.01)
    assert torch.allclose(x.mean(0), p.mean.double(), atol=0.03)
    assert torch.allclose(x.var(0), p.variance.double(), rtol=0.02)


def test_eight_gaussians_entropy():
    p = EightGaussians()
    gaussian = math.log(2 * math.pi * math.e * SIGMA**2)
    h = p.entropy().item()
    # overlaps make it a little lower than that of eight disjoint components
    assert gaussian < h < gaussian + math.log(8)
    assert gaussian + math.log(8) - h == pytest.approx(0.00634, abs=2e-4)
    x = p.sample((200_000,), generator=torch.Generator().manual_seed(0)).double()
    nlp = -p.log_prob(x)
    se = nlp.std().item() / math.sqrt(x.shape[0])
    assert abs(nlp.mean().item() - h) < 4 * se


def test_checkerboard_log_prob_values():
    p = Checkerboard()
    inside = torch.tensor([[0.5, 0.5], [-3.5, -3.5], [-1.0, -1.0], [3.9, 3.9], [-4.0, -4.0]])
    outside = torch.tensor(
        [
            [-0.5, 0.5],
            [-1.0, 1.0],
            [0.5, -0.5],
            [2.5, 0.5],
            [4.0, 0.5],
            [0.5, 4.0],
            [5.0, 5.0],
            [-4.5, -3.5],
        ]
    )
    assert torch.equal(p.log_prob(inside), torch.full((5,), -math.log(32)))
    assert torch.equal(p.log_prob(outside), torch.full((8,), -math.inf))
    assert p.support.check(inside).all() and not p.support.check(outside).any()


def test_checkerboard_density_integrates_to_one():
    p = Checkerboard()
    # aligned grid: the midpoint rule is exact
    h = 0.05
    assert (p.log_prob(_grid(-5, 5, h)).exp().sum() * h * h).item() == pytest.approx(1, abs=1e-9)
    # unaligned grid: approximately
    h = 0.037
    assert (p.log_prob(_grid(-5, 5, h)).exp().sum() * h * h).item() == pytest.approx(1, abs=0.02)


def test_checkerboard_support_is_ffjords():
    gen = torch.Generator().manual_seed(0)
    x = _ffjord_checkerboard(50_000, gen)
    assert torch.isfinite(Checkerboard().log_prob(x)).all()


def test_checkerboard_samples_match_density():
    p = Checkerboard()
    x = p.sample((64_000,), generator=torch.Generator().manual_seed(0)).double()
    assert torch.isfinite(p.log_prob(x)).all()
    assert _chi_square_pvalue(x, p.log_prob, -4, 4, bins=16, sub=4) > 1e-3
    assert torch.allclose(x.mean(0), p.mean.double(), atol=0.05)
    assert torch.allclose(x.var(0), p.variance.double(), rtol=0.02)
    # the squares make the coordinates correlated: E[x1 x2] = 1
    assert (x[:, 0] * x[:, 1]).mean().item() == pytest.approx(1, abs=0.05)


def test_checkerboard_float32_samples_stay_in_support():
    # float32 rounding must never push a draw onto the closed edge of a square
    x = Checkerboard().sample((1_000_000,), generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32
    assert torch.isfinite(Checkerboard().log_prob(x)).all()


def test_checkerboard_entropy():
    assert Checkerboard().entropy().item() == pytest.approx(math.log(32), abs=1e-7)


def test_usable_in_a_pyro_model():
    def model():
        pyro.sample("a", EightGaussians(), obs=torch.zeros(2))
        pyro.sample("b", Checkerboard(), obs=torch.tensor([0.5, 0.5]))

    trace = pyro.poutine.trace(model).get_trace()
    trace.compute_log_prob()
    assert trace.nodes["b"]["log_prob"].item() == pytest.approx(-math.log(32))
    assert torch.isfinite(trace.nodes["a"]["log_prob"])
