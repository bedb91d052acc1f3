import math

import pytest
import torch

from pyro_flows.matching import (
    LinearPath,
    RectifiedFlowPath,
    VariancePreservingPath,
    get_path,
)

PATHS = {
    "linear": LinearPath(),
    "linear_sigma": LinearPath(sigma_min=0.1),
    "rectified": RectifiedFlowPath(),
    "vp_cosine": VariancePreservingPath(),
    "vp_linear": VariancePreservingPath("linear", beta_min=0.1, beta_max=20.0),
}


@pytest.fixture
def rows(float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g)


@pytest.mark.parametrize("name", PATHS)
def test_velocity_is_the_time_derivative(name, rows):
    path = PATHS[name]
    x0, x1 = rows
    t = torch.rand(50, dtype=torch.float64).mul(0.98).add(0.01).requires_grad_()
    xt = path.sample(x0, x1, t)
    # Rows are independent, so d(sum over rows of x_t[:, j]) / dt gives each row's derivative.
    deriv = torch.stack(
        [torch.autograd.grad(xt[:, j].sum(), t, retain_graph=True)[0] for j in range(3)], -1
    )
    u = path.velocity(x0, x1, t.detach())
    assert torch.allclose(u, deriv, atol=1e-10, rtol=1e-10)
    # the conditional field u_t(x | x1) evaluated at x_t is the same velocity
    cond = path.conditional_velocity(xt.detach(), x1, t.detach())
    assert torch.allclose(cond, u, atol=1e-8)


@pytest.mark.parametrize("name", ["linear", "rectified", "vp_cosine"])
def test_boundary_conditions(name, rows):
    path = PATHS[name]
    x0, x1 = rows
    zeros, ones = torch.zeros(50), torch.ones(50)
    assert torch.allclose(path.sample(x0, x1, zeros), x0, atol=1e-12)
    assert torch.allclose(path.sample(x0, x1, ones), x1, atol=1e-12)


def test_sigma_min_leaves_a_gaussian_of_width_sigma_min(rows):
    x0, x1 = rows
    path = LinearPath(sigma_min=0.1)
    assert torch.allclose(path.sample(x0, x1, torch.zeros(50)), x0)
    assert torch.allclose(path.sample(x0, x1, torch.ones(50)), x1 + 0.1 * x0)
    assert torch.allclose(path.velocity(x0, x1, torch.rand(50)), x1 - 0.9 * x0)


def test_vp_linear_schedule_values(rows):
    x0, x1 = rows
    path = PATHS["vp_linear"]
    a0, b0 = path.coefficients(torch.tensor(0.0, dtype=torch.float64))
    # alpha(0) = exp(-(beta_min + (beta_max - beta_min) / 2) / 2)
    assert a0.item() == pytest.approx(math.exp(-0.5 * (0.1 + 0.5 * 19.9)), rel=1e-12)
    assert (a0**2 + b0**2).item() == pytest.approx(1.0)
    assert torch.allclose(path.sample(x0, x1, torch.ones(50)), x1)


def test_get_path_and_errors():
    assert isinstance(get_path("vp"), VariancePreservingPath)
    with pytest.raises(ValueError, match="unknown path 'ot'"):
        get_path("ot")
    with pytest.raises(ValueError, match="sigma_min"):
        LinearPath(sigma_min=1.0)
    with pytest.raises(ValueError, match="schedule"):
        VariancePreservingPath("quadratic")
    with pytest.raises(ValueError, match="beta_max"):
        VariancePreservingPath("linear", beta_min=1.0, beta_max=0.5)
