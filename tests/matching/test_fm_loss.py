import pytest
import torch
from fm_gaussian import GaussianField, minimum

from pyro_flows.matching import LinearPath, cfm_loss, fit_flow_matching
from pyro_flows.nn import VectorField

MU, S = [1.0, -2.0], 0.5


def _draws(n, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 2, generator=g, dtype=dtype)
    x1 = torch.tensor(MU, dtype=dtype) + S * torch.randn(n, 2, generator=g, dtype=dtype)
    t = torch.rand(n, generator=g, dtype=dtype)
    return x0, x1, t


def test_exact_field_attains_the_closed_form_minimum(float64):
    # From N(0, I) to N(mu, s^2 I) on the sigma_min = 0 path the minimum is D s pi / 2.
    x0, x1, t = _draws(400_000, 0)
    per_row = cfm_loss(GaussianField(MU, S), x0, x1, LinearPath(0.0), t=t, reduction="none")
    se = per_row.std().item() / len(per_row) ** 0.5
    assert abs(per_row.mean().item() - minimum(2, S)) < 4 * se
    assert se < 0.004  # the check is tight: 4 SE is under 1 % of the minimum (1.5708)


def test_any_other_field_does_worse(float64):
    x0, x1, t = _draws(100_000, 1)
    exact = GaussianField(MU, S)
    shifted = GaussianField([1.2, -2.0], S)
    assert cfm_loss(shifted, x0, x1, t=t) > cfm_loss(exact, x0, x1, t=t) + 0.03


def test_trained_field_reaches_the_minimum():
    torch.manual_seed(0)
    data = torch.tensor(MU) + S * torch.randn(20_000, 2)
    field = VectorField(2, [64, 64], time_freqs=4)
    fit_flow_matching(field, data, num_steps=1500, batch_size=256, lr=3e-3, seed=0, progress=False)
    x0, x1, t = _draws(100_000, 2, torch.float32)
    with torch.no_grad():
        trained = cfm_loss(field, x0, x1, t=t, reduction="none")
        exact = cfm_loss(GaussianField(MU, S), x0, x1, t=t, reduction="none")
    # Same draws for both: the difference estimates E||v_theta - u*||^2 with little noise.
    excess = (trained - exact).mean().item()
    assert exact.mean().item() == pytest.approx(minimum(2, S), rel=0.02)
    assert 0.0 < excess < 0.05  # stated tolerance: within 0.05 (3 %) of D s pi / 2


def test_loss_errors():
    field = VectorField(2, [8])
    with pytest.raises(ValueError, match="same shape"):
        cfm_loss(field, torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="t must have shape"):
        cfm_loss(field, torch.randn(3, 2), torch.randn(3, 2), t=torch.rand(4))
    with pytest.raises(ValueError, match="reduction"):
        cfm_loss(field, torch.randn(3, 2), torch.randn(3, 2), reduction="sum")
