"""ActNorm initialises from data only when untouched since construction (issue: its first
inverse used to overwrite parameters set by hand, trained forwards, or loaded)."""

import pytest
import torch

import pyro_flows.transforms as T
from pyro_flows.flows import normalizing_flow
from pyro_flows.training import fit


def data(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 3.0 + 5.0 * torch.randn(32, *shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(3,), (3, 2, 2)], ids=str)
def test_untouched_layer_initialises_on_first_inverse(shape):
    t = T.actnorm(shape).double()
    t.inv(data(shape))
    assert bool(t.initialized)
    assert torch.allclose(t.loc.flatten(), data(shape).movedim(1, 0).reshape(3, -1).mean(1))


@pytest.mark.parametrize("shape", [(3,), (3, 2, 2)], ids=str)
def test_forward_first_fixes_the_layer_and_round_trips(shape):
    t = T.actnorm(shape).double()
    x = torch.randn(8, *shape, dtype=torch.float64)
    y = t(x)
    assert bool(t.initialized)
    assert torch.equal(t.inv(y.clone()), x)  # was: re-initialised from y, inv(t(x)) != x
    assert not t.loc.any() and not t.log_scale.any()


def test_hand_set_parameters_are_kept():
    t = T.actnorm(3).double()
    with torch.no_grad():
        t.loc.copy_(torch.tensor([1.0, -2.0, 0.5]))
        t.log_scale.copy_(torch.tensor([0.3, 0.0, -1.0]))
    x = torch.randn(8, 3, dtype=torch.float64)
    y = x * t.log_scale.exp() + t.loc
    assert torch.allclose(t.inv(y.clone()), x, atol=1e-12)
    assert t.loc.tolist() == [1.0, -2.0, 0.5] and bool(t.initialized)


def test_trained_forwards_only_is_kept():
    """A layer trained through forward passes (a Glow guide in SVI) is never re-initialised."""
    t = T.actnorm(3).double()
    opt = torch.optim.Adam(t.parameters(), lr=0.1)
    for _ in range(3):
        z = torch.randn(16, 3, dtype=torch.float64)
        loss = (t(z) - 5.0).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    loc = t.loc.detach().clone()
    x = torch.randn(8, 3, dtype=torch.float64)
    y = t(x).detach()
    assert torch.allclose(t.inv(y.clone()), x, atol=1e-12)
    assert torch.equal(t.loc, loc)


def test_loaded_layer_is_kept_even_from_an_uninitialised_state():
    t = T.actnorm(3).double()
    t.load_state_dict(T.actnorm(3).double().state_dict())
    assert bool(t.initialized)
    y = data((3,))
    assert torch.equal(t.inv(y), y)  # the identity it was given, not the data's statistics


def test_reset_parameters_makes_the_layer_untouched_again():
    t = T.actnorm(3).double()
    t.load_state_dict(T.actnorm(3).double().state_dict())
    t.reset_parameters()
    assert not t.initialized
    t.inv(data((3,)))
    assert t.loc.abs().max() > 1.0


def test_flow_sampled_before_fit_still_standardises():
    """Sampling a fresh Glow flow flips its ActNorms' flags only: fit still standardises."""
    torch.manual_seed(0)
    flow = normalizing_flow("glow", 2, 2, hidden_dims=[8])
    flow.sample((4,))
    assert all(bool(m.initialized) for m in flow.modules() if isinstance(m, T.ActNorm))
    assert flow.is_untouched()
    x = 100.0 + 20.0 * torch.randn(200, 2)
    fit(flow, x, num_steps=2, batch_size=32, progress=False, seed=0)
    assert bool(flow.standardized)
