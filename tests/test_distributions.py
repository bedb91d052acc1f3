"""NormalizingFlow: a module that gives Pyro distributions, plain and conditional."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_flows.flows import normalizing_flow


@pytest.mark.parametrize("name", ["planar", "radial", "realnvp", "maf", "iaf", "spline_coupling"])
def test_shapes_and_registration(name):
    flow = normalizing_flow(name, 3, num_layers=2)
    assert isinstance(flow(), dist.TransformedDistribution)
    assert flow.sample((4, 5)).shape == (4, 5, 3)
    x = flow.rsample((6,))
    assert x.requires_grad
    assert flow.log_prob(x.detach()).shape == (6,)
    pyro.module("flow", flow)
    assert set(pyro.get_param_store().keys()) == {
        f"flow$$${n}" for n, _ in flow.named_parameters()
    }


def test_conditional_shapes():
    flow = normalizing_flow("maf", 2, num_layers=2, context_dim=4)
    c = torch.randn(5, 4)
    assert flow.sample((3,), context=c).shape == (3, 5, 2)
    assert flow.sample((3,), context=c[0]).shape == (3, 2)
    assert flow.log_prob(torch.randn(5, 2), c).shape == (5,)
    assert flow(c).batch_shape == (5,)


def test_to_float64_moves_base_and_transform():
    flow = normalizing_flow("realnvp", 2, num_layers=2).to(torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    assert flow.log_prob(x).dtype == torch.float64
    assert flow.sample((2,)).dtype == torch.float64


def test_flow_as_model_prior_and_guide_in_svi():
    prior = normalizing_flow("maf", 2, num_layers=2)
    guide_flow = normalizing_flow("iaf", 2, num_layers=2)
    obs = torch.tensor([0.5, -1.0])

    def model():
        pyro.module("prior", prior)
        z = pyro.sample("z", prior())
        pyro.sample("obs", dist.Normal(z, 1.0).to_event(1), obs=obs)

    def guide():
        pyro.module("guide", guide_flow)
        pyro.sample("z", guide_flow())

    before = [p.detach().clone() for p in guide_flow.parameters()]
    svi = SVI(model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step() for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(not torch.equal(a, b) for a, b in zip(before, guide_flow.parameters(), strict=True))


def test_constructor_checks():
    from pyro_flows.distributions import NormalizingFlow
    from pyro_flows.flows import build

    with pytest.raises(ValueError, match="context_dim is required"):
        NormalizingFlow(build("maf", 2, context_dim=3), 2)
    with pytest.raises(ValueError, match="transform is not conditional"):
        NormalizingFlow(build("maf", 2), 2, context_dim=3)


@pytest.mark.parametrize("name", ["planar", "realnvp", "maf", "iaf", "spline_autoregressive"])
@pytest.mark.parametrize("context_dim", [None, 3])
def test_one_pass_log_prob_equals_transformed_distribution(name, context_dim):
    if name == "spline_autoregressive" and context_dim is None:
        name = "spline_coupling"
    flow = normalizing_flow(name, 4, num_layers=3, context_dim=context_dim).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(6, 4, dtype=torch.float64)
    c = None if context_dim is None else torch.randn(6, context_dim, dtype=torch.float64)
    expected = flow(c).log_prob(x.clone())
    assert torch.allclose(flow.log_prob(x, c), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("context_dim", [None, 3])
def test_mixture_base_one_pass_log_prob_equals_transformed_distribution(context_dim):
    from pyro_flows.bases import GaussianMixture

    torch.manual_seed(0)
    base = GaussianMixture(2, 3)
    with torch.no_grad():
        base.logits.normal_()
        base.lower.normal_()
    flow = normalizing_flow("maf", 2, num_layers=2, context_dim=context_dim)
    flow = type(flow)(flow.transform, 2, context_dim=context_dim, base=base).double()
    c = None if context_dim is None else torch.randn(5, 3, dtype=torch.float64)
    x = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(x, c), flow(c).log_prob(x))
    assert flow.sample((4,), c).shape == ((4, 2) if c is None else (4, 5, 2))
    assert {n for n, _ in flow.named_parameters()} >= {"base.logits", "base.loc", "base.lower"}


def _counted_networks(flow):
    """Counts the network passes of a MAF/IAF flow (one per layer per pass)."""
    calls = []
    for m in flow.modules():
        if type(m).__name__ in ("MADE", "ConditionalMADE"):
            m.register_forward_hook(lambda *_: calls.append(1))
    return calls


def _perturbed(name, context_dim=None):
    torch.manual_seed(0)
    flow = normalizing_flow(name, 3, num_layers=3, context_dim=context_dim).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return flow


@pytest.mark.parametrize("context_dim", [None, 2])
def test_sample_is_scored_from_the_draw_record_without_a_pass(context_dim):
    flow = _perturbed("iaf", context_dim)
    c = None if context_dim is None else torch.randn(5, context_dim, dtype=torch.float64)
    x = flow.sample((5,) if c is None else (), c)
    calls = _counted_networks(flow)
    with torch.no_grad():  # as the draw: a no-grad record cannot answer a call that wants a graph
        from_record = flow.log_prob(x, c)
        assert calls == []  # no network pass: the draw's noise and log-det answer
        recomputed = flow.log_prob(x.clone(), c)  # a fresh tensor: the D-pass inverse of an IAF
        assert len(calls) == 3 * 3
        torch.testing.assert_close(from_record, recomputed, rtol=0, atol=1e-10)
        z = flow.inverse(x, c)
        assert len(calls) == 3 * 3
        torch.testing.assert_close(z, flow.inverse(x.clone(), c), rtol=0, atol=1e-10)
    # No layer keeps the draw's tensors: only the flow's one record does.
    assert all(getattr(m, "_saved", None) is None for m in flow.transform.modules())


@torch.no_grad()
def test_draw_record_never_answers_for_changed_parameters_data_or_context():
    flow = _perturbed("iaf", context_dim=2)
    c = torch.randn(4, 2, dtype=torch.float64)
    x = flow.sample((), c)
    calls = _counted_networks(flow)
    other = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(x, other), flow.log_prob(x.clone(), other))
    assert len(calls) == 2 * 3 * 3  # another context: recomputed (twice)
    c.add_(1.0)  # the same context tensor, changed in place
    calls.clear()
    flow.log_prob(x, c)
    assert len(calls) == 3 * 3

    flow = _perturbed("iaf")
    x = flow.sample((6,))
    next(flow.parameters()).add_(0.5)  # as an optimizer step would
    calls = _counted_networks(flow)
    torch.testing.assert_close(flow.log_prob(x), flow.log_prob(x.clone()))
    assert len(calls) == 2 * 3 * 3
    x = flow.sample((6,))
    x.mul_(2.0)  # the draw itself, changed in place
    calls.clear()
    torch.testing.assert_close(flow.log_prob(x), flow.log_prob(x.clone()))
    assert len(calls) == 2 * 3 * 3


def test_no_grad_draw_scored_with_grad_gives_gradients():
    flow = _perturbed("iaf")
    x = flow.sample((6,))  # drawn without a graph
    lp = flow.log_prob(x)  # grad mode: the record may not answer, the inverse runs
    lp.sum().backward()
    assert all(p.grad is not None for p in flow.parameters())
    expected = flow(None).log_prob(x.clone())
    torch.testing.assert_close(lp.detach(), expected.detach(), rtol=0, atol=1e-10)


def test_clear_cache_frees_the_draw_record_and_the_layers_caches():
    flow = _perturbed("iaf")
    x = flow.sample((4,))
    y = flow.rsample((4,))  # with grad: the layers' caches hold this draw
    assert any(getattr(m, "_saved", None) is not None for m in flow.modules())
    flow.clear_cache()
    assert all(getattr(m, "_saved", None) is None for m in flow.modules())
    calls = _counted_networks(flow)
    with torch.no_grad():
        flow.log_prob(x)
    assert len(calls) == 3 * 3  # the record is gone: the D-pass inverse runs
    del y


def test_iresnet_sampling_defers_its_log_det_estimate():
    from pyro_flows.transforms.iresnet import _ResidualBlock

    flow = normalizing_flow("iresnet", 2, num_layers=2).double()
    estimates = []
    original = _ResidualBlock._logdet

    def counted(self, *args, **kwargs):
        estimates.append(1)
        return original(self, *args, **kwargs)

    _ResidualBlock._logdet = counted
    try:
        x = flow.sample((5,))
        assert estimates == []  # drawing alone never estimates the log-determinant
        with torch.no_grad():
            from_record = flow.log_prob(x)
        assert len(estimates) == 4  # asked for: once per block (2 per layer), from the record
    finally:
        _ResidualBlock._logdet = original
    assert torch.isfinite(from_record).all()
