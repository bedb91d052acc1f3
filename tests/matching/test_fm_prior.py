import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from fm_gaussian import GaussianField
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_flows.distributions import NormalizingFlow
from pyro_flows.matching import (
    FlowMatchingPrior,
    GuidedField,
    cnf_distribution,
    flag_context,
    make_solver,
    solve_field,
)
from pyro_flows.nn import VectorField
from pyro_flows.transforms import FFJORD

MU, S = [1.0, -2.0], 0.5


def _target():
    return dist.Normal(torch.tensor(MU), S).to_event(1)


def test_log_prob_matches_ffjord_on_the_same_field(float64):
    torch.manual_seed(0)
    field = VectorField(3, [16, 16], time_freqs=2)
    prior = FlowMatchingPrior(field, rtol=1e-9, atol=1e-9)
    flow = NormalizingFlow(FFJORD(3, field, trace="exact", rtol=1e-9, atol=1e-9), 3)
    x = torch.randn(20, 3)
    assert torch.allclose(prior.log_prob(x), flow.log_prob(x), atol=1e-7)
    # and samples go where FFJORD's forward map sends the same base draws
    torch.manual_seed(1)
    z = torch.randn(5, 3)
    ffjord = FFJORD(3, field, rtol=1e-9, atol=1e-9)
    assert torch.allclose(solve_field(field, z, rtol=1e-9, atol=1e-9), ffjord(z), atol=1e-7)


def test_exact_gaussian_field_gives_the_gaussian(float64):
    prior = FlowMatchingPrior(GaussianField(MU, S), rtol=1e-10, atol=1e-10)
    x = torch.randn(50, 2) + torch.tensor(MU)
    assert torch.allclose(prior.log_prob(x), _target().log_prob(x), atol=1e-7)
    draws = prior.sample((4000,))
    assert torch.allclose(draws.mean(0), torch.tensor(MU), atol=4 * S / math.sqrt(4000))
    assert torch.allclose(draws.std(0), torch.tensor([S, S]), rtol=0.05)


@pytest.mark.parametrize(
    "method,steps,order", [("euler", 1, 1), ("midpoint", 2, 2), ("heun", 2, 2), ("rk4", 4, 4)]
)
def test_fixed_step_solvers_converge_at_their_order(float64, method, steps, order):
    field = GaussianField(MU, S)
    z = torch.randn(200, 2)
    truth = solve_field(field, z, rtol=1e-11, atol=1e-11)
    errors = []
    for n in (8, 16):
        prior = FlowMatchingPrior(field, method=method, num_steps=n)
        prior.nfe.reset()
        x = solve_field(field, z, method=method, num_steps=n, counter=prior.nfe)
        assert prior.nfe.forward == n * steps
        errors.append((x - truth).abs().max().item())
    # halving the step divides the error by about 2^order (at least 0.7 of it here)
    assert errors[0] / errors[1] > 0.7 * 2**order


def test_hutchinson_trace_is_unbiased(float64):
    settings = dict(method="rk4", num_steps=10)
    prior = FlowMatchingPrior(GaussianField(MU, S), trace="hutchinson", **settings)
    exact = FlowMatchingPrior(GaussianField(MU, S), trace="exact", **settings)
    x = torch.tensor([MU])
    # one probe per solve, shared by the rows: average many solves of one row
    estimates = torch.cat([prior.log_prob(x) for _ in range(400)])
    se = estimates.std().item() / math.sqrt(400)
    assert se > 0  # the estimator is random...
    assert abs(estimates.mean().item() - exact.log_prob(x).item()) < 4 * se  # ...and unbiased
    assert exact.log_prob(x).item() == pytest.approx(_target().log_prob(x).item(), abs=1e-3)


def test_conditional_prior_shapes_and_gradients(float64):
    field = GaussianField(torch.zeros(2), S, conditional=True)
    prior = FlowMatchingPrior(field, method="rk4", num_steps=20)
    y = torch.randn(6, 2, requires_grad=True)
    p = prior.condition(y)
    assert p.batch_shape == (6,) and p.event_shape == (2,)
    z = p.rsample()
    assert z.shape == (6, 2) and p.rsample((3,)).shape == (3, 6, 2)
    zq = torch.randn(6, 2)
    lp = p.log_prob(zq)
    assert lp.shape == (6,)
    assert torch.allclose(lp, dist.Normal(y, S).to_event(1).log_prob(zq), atol=1e-5)
    (grad,) = torch.autograd.grad(lp.sum(), y)
    assert torch.allclose(grad, (zq - y) / S**2, atol=1e-4)
    # rsample is differentiable in the context: z = y + s * eps
    (gz,) = torch.autograd.grad(z.sum(), y)
    assert torch.allclose(gz, torch.ones_like(y), atol=1e-4)


def test_classifier_free_guidance_mixes_the_fields():
    class Constant(torch.nn.Module):  # velocity c with the context, 0 without
        def forward(self, t, x, context):
            return context[..., :-1].expand_as(x) * context[..., -1:]

    c = torch.tensor([[1.0, -1.0]])
    for w in (0.0, 1.0, 2.5):
        guided = GuidedField(Constant(), w)
        assert torch.allclose(guided(torch.tensor(0.5), torch.zeros(1, 2), c), w * c)
    prior = FlowMatchingPrior(
        Constant(), input_dim=2, context=c, guidance=3.0, method="euler", num_steps=1
    )
    assert torch.allclose(prior.inverse(torch.zeros(1, 2)), -3.0 * c)
    assert torch.equal(flag_context(c, 0.0), torch.zeros(1, 3))


def _model(prior, y, noise):
    z = pyro.sample("z", prior)
    pyro.sample("y", dist.Normal(z, noise).to_event(1), obs=y)


def _posterior(y, noise):
    precision = 1 / S**2 + 1 / noise**2
    mean = (torch.tensor(MU) / S**2 + y / noise**2) / precision
    return mean, precision**-0.5


def test_prior_under_svi():
    prior = cnf_distribution(GaussianField(MU, S), method="rk4", num_steps=8)
    y, noise = torch.tensor([2.0, 0.0]), 0.5
    guide = AutoNormal(_model)
    svi = SVI(_model, guide, pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.995}), Trace_ELBO())
    for _ in range(500):
        svi.step(prior, y, noise)
    mean, sd = _posterior(y, noise)
    loc = pyro.param("AutoNormal.locs.z").detach()
    scale = pyro.param("AutoNormal.scales.z").detach()
    assert torch.allclose(loc, mean, atol=0.1)
    assert torch.allclose(scale, torch.full((2,), sd), rtol=0.2)


def test_prior_under_nuts():
    prior = cnf_distribution(GaussianField(MU, S), method="rk4", num_steps=6)
    y, noise = torch.tensor([2.0, 0.0]), 0.5
    mcmc = MCMC(NUTS(_model), num_samples=150, warmup_steps=100, disable_progbar=True)
    mcmc.run(prior, y, noise)
    z = mcmc.get_samples()["z"]
    mean, sd = _posterior(y, noise)
    assert torch.allclose(z.mean(0), mean, atol=4 * sd / math.sqrt(150) + 0.05)
    assert torch.allclose(z.std(0), torch.full((2,), sd), rtol=0.3)


def test_prior_in_a_plate_expands():
    prior = FlowMatchingPrior(VectorField(2, [8]), method="euler", num_steps=2)

    def model():
        with pyro.plate("rows", 4):
            return pyro.sample("z", prior)

    trace = pyro.poutine.trace(model).get_trace()
    site = trace.nodes["z"]
    assert site["value"].shape == (4, 2) and site["fn"].batch_shape == (4,)
    assert trace.log_prob_sum().isfinite()


def test_prior_errors():
    field = VectorField(2, [8])
    with pytest.raises(ValueError, match="fixed-step: pass num_steps"):
        FlowMatchingPrior(field, method="rk4")
    with pytest.raises(ValueError, match="num_steps applies"):
        FlowMatchingPrior(field, method="dopri5", num_steps=4)
    with pytest.raises(ValueError, match="unknown method"):
        make_solver("leapfrog")
    with pytest.raises(ValueError, match="event shape"):
        FlowMatchingPrior(field, dist.Normal(torch.zeros(2), 1.0))
    with pytest.raises(ValueError, match=r"base must have event shape \(2,\)"):
        FlowMatchingPrior(field, dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pytest.raises(ValueError, match="guidance needs a context"):
        FlowMatchingPrior(field, guidance=2.0)
    with pytest.raises(ValueError, match="value must have shape|event_shape"):
        FlowMatchingPrior(field).log_prob(torch.zeros(3))
    with pytest.raises(ValueError, match="input_dim"):
        FlowMatchingPrior(torch.nn.Linear(2, 2))


def test_conditional_prior_trains_inside_an_elbo():
    # p(z | y) of a conditional VAE: gradients reach the field, the context and z
    field = VectorField(2, [16], context_dim=3)
    p = FlowMatchingPrior(field, method="rk4", num_steps=4).condition(
        torch.randn(5, 3, requires_grad=True)
    )
    z = torch.randn(5, 2, requires_grad=True)
    p.log_prob(z).sum().backward()
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in field.parameters())
    assert p.context.grad.abs().sum() > 0 and z.grad.abs().sum() > 0
