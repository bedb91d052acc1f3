"""Dequantization: the bits/dim accounting, the logit's log-det, IW estimates against exact P(x)."""

import math

import pytest
import torch
from torch.distributions import Normal

from pyro_flows.dequantization import (
    DequantizedFlow,
    LogitTransform,
    UniformDequantization,
    VariationalDequantization,
    bits_per_dim,
)


class LogisticFlow(torch.nn.Module):
    """The density of w = logit(alpha + (1 - 2 alpha) v) when v is uniform on (0, 1)^D."""

    def __init__(self, alpha, event_ndim):
        super().__init__()
        self.alpha, self.event_ndim = alpha, event_ndim

    def log_prob(self, w):
        lp = torch.nn.functional.logsigmoid(w) + torch.nn.functional.logsigmoid(-w)
        lp = lp - math.log(1 - 2 * self.alpha)
        return lp.flatten(lp.dim() - self.event_ndim).sum(-1)


class GaussianFlow(torch.nn.Module):
    """A standard normal on the logit: P(x) has a closed form through the normal CDF."""

    def log_prob(self, w):
        return Normal(0.0, 1.0).log_prob(w).sum(-1)


def exact_log_prob(x, levels, alpha):
    """log P(x) of GaussianFlow: the normal mass of the logit image of the cell [x, x+1)/L."""

    def logit_edge(k):
        p = alpha + (1 - 2 * alpha) * k / levels
        return torch.log(p) - torch.log1p(-p)

    normal = Normal(0.0, 1.0)
    mass = normal.cdf(logit_edge(x + 1)) - normal.cdf(logit_edge(x))
    return mass.log().sum(-1)


@pytest.mark.parametrize("levels", [2, 17, 256])
@pytest.mark.parametrize("shape", [(5,), (1, 4, 4)], ids=str)
def test_uniform_over_levels_gives_log2_levels_bits_per_dim(levels, shape):
    # The model that makes v uniform on the unit cube gives every x probability L^-D: every
    # term of the bound (flow log-density, logit log-det, -D log L, -log q) is needed for it.
    alpha = 0.05
    model = DequantizedFlow(
        LogisticFlow(alpha, len(shape)), UniformDequantization(shape, levels), alpha=alpha
    ).double()
    x = torch.randint(0, levels, (20, *shape)).double()
    bpd = model.bits_per_dim(x)
    assert bpd.shape == (20,)
    assert torch.allclose(bpd, torch.full((20,), math.log2(levels), dtype=torch.float64))
    iw = model.bits_per_dim(x, num_samples=8)
    assert torch.allclose(iw, torch.full((20,), math.log2(levels), dtype=torch.float64))


def test_variational_noise_costs_its_entropy_and_iw_approaches_the_exact_answer():
    # An untrained q is exactly uniform; moved off it, the bound pays KL(q || uniform) > 0 and
    # the IW estimate approaches the exact log2(L) from above as K grows.
    torch.manual_seed(0)
    levels, shape = 17, (1, 2, 2)
    deq = VariationalDequantization(shape, levels, num_steps=1, hidden_channels=[4])
    model = DequantizedFlow(LogisticFlow(0.05, 3), deq).double()
    x = torch.randint(0, levels, (50, *shape)).double()
    untrained = model.bits_per_dim(x)
    assert torch.allclose(untrained, torch.full_like(untrained, math.log2(levels)))
    with torch.no_grad():
        for p in deq.parameters():
            p.add_(0.3 * torch.randn_like(p))
        elbo = model.bits_per_dim(x).mean().item()
        iw = [model.bits_per_dim(x, num_samples=k).mean().item() for k in (10, 1000)]
    exact = math.log2(levels)
    assert elbo > iw[0] > iw[1] > exact - 0.01
    assert elbo > exact + 0.1 and iw[1] - exact < 0.25 * (elbo - exact)  # most of the gap closed


def test_bound_and_iw_estimate_against_exact_probability():
    levels, alpha = 8, 0.05
    model = DequantizedFlow(GaussianFlow(), UniformDequantization(1, levels), alpha=alpha).double()
    x = torch.arange(levels, dtype=torch.float64)[:, None]
    exact = exact_log_prob(x, levels, alpha)
    torch.manual_seed(0)
    log_w = model.log_weights(x, num_samples=64)
    assert log_w.shape == (64, levels)
    elbo = log_w.mean(0)
    iw = torch.logsumexp(log_w, 0) - math.log(64)
    assert (iw >= elbo).all()  # Jensen, on the very same draws
    # in expectation: bound < IW_1 = bound <= IW_4 <= ... <= log P(x)
    estimates = []
    for k in (1, 2, 4, 256):
        torch.manual_seed(1)
        reps = torch.stack([model.importance_weighted(x, num_samples=k) for _ in range(200)])
        estimates.append(reps.mean(0))
    gaps = [(exact - e).mean().item() for e in estimates]
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[0] > 0.01 and abs(gaps[-1]) < 2e-3
    torch.manual_seed(2)
    exact_elbo = torch.stack([model.elbo(x, num_samples=64) for _ in range(50)]).mean(0)
    assert (exact_elbo - exact).mean() < -0.01


def test_logit_transform_log_det_and_inverse():
    t = LogitTransform(alpha=0.1, event_dim=3)
    v = torch.rand(4, 2, 3, 3, dtype=torch.float64)
    w = t(v)
    assert torch.allclose(t.inv(w), v, atol=1e-12)
    jac = torch.autograd.functional.jacobian(lambda a: t(a).sum(0), v)  # elementwise map
    diag = jac.reshape(2 * 3 * 3, 4, 2 * 3 * 3).diagonal(dim1=0, dim2=2)
    assert torch.allclose(t.log_abs_det_jacobian(v, w), diag.abs().log().sum(-1), atol=1e-10)
    with pytest.raises(ValueError, match="alpha"):
        LogitTransform(alpha=0.5)


def test_variational_log_q_against_autograd_and_cells():
    torch.manual_seed(0)
    levels, shape = 5, (1, 2, 2)
    deq = VariationalDequantization(shape, levels, num_steps=2, hidden_channels=[6]).double()
    with torch.no_grad():
        for p in deq.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randint(0, levels, shape).double()
    eps = torch.randn(4, 1, 1, dtype=torch.float64)
    v, log_q = deq(x, noise=eps)
    assert torch.equal(torch.floor(v * levels), x)  # u in [0, 1): v stays in x's cell
    u_of_eps = lambda e: (deq(x, noise=e)[0] * levels - x).flatten()  # noqa: E731
    jac = torch.autograd.functional.jacobian(u_of_eps, eps).reshape(4, 4)
    logistic = torch.nn.functional.logsigmoid(eps) + torch.nn.functional.logsigmoid(-eps)
    expected = logistic.sum() - torch.linalg.slogdet(jac).logabsdet
    assert torch.allclose(log_q, expected, atol=1e-10)


def test_bad_data_and_helpers():
    deq = UniformDequantization((3,), levels=4)
    with pytest.raises(ValueError, match=r"x must hold integers in \[0, 3\]"):
        deq(torch.tensor([0.0, 1.0, 4.0]))
    with pytest.raises(ValueError, match="not integers"):
        deq(torch.tensor([0.0, 1.5, 2.0]))
    with pytest.raises(ValueError, match="x must have shape"):
        deq(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="levels"):
        UniformDequantization(3, levels=1)
    with pytest.raises(ValueError, match="even H and W"):
        VariationalDequantization((1, 3, 3), levels=4)
    with pytest.raises(TypeError, match="dequantizer"):
        DequantizedFlow(GaussianFlow(), "uniform")
    assert math.isclose(bits_per_dim(torch.tensor(-10 * math.log(2.0)), 10).item(), 1.0)
    model = DequantizedFlow(GaussianFlow(), UniformDequantization(1, 8))
    assert torch.equal(
        model.sample(torch.tensor([[-50.0], [0.0], [50.0]])).flatten(),
        torch.tensor([0.0, 4.0, 7.0]),
    )
