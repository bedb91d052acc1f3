import math

import pyro
import pytest
import torch
from pyro import poutine

from pyro_flows.infer import fit_svi
from pyro_flows.models import MLP, PIVAE, Gaussian, Poisson1D


def analytic(p, k=1):
    x = p.grid.double()
    return torch.cat([torch.sin(math.pi * x), math.pi**2 * torch.sin(k * math.pi * x)])


def test_residual_on_analytic_solution_is_second_order(float64):
    errors = []
    for g in (17, 33, 65):
        p = Poisson1D(g)
        r = p.residual(analytic(p))
        # truncation error of the 3-point Laplacian: pi^4 h^2 / 12 sin(pi x) to leading order
        assert r.abs().max() <= math.pi**4 * p.dx**2 / 12
        assert r.abs().max() >= 0.99 * math.pi**4 * p.dx**2 / 12 * math.sin(math.pi * 0.5)
        assert r[0] == 0 and r[-1] == pytest.approx(0, abs=1e-10)
        errors.append(r.abs().max().item())
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.01)
    assert errors[1] / errors[2] == pytest.approx(4.0, rel=0.01)


def test_residual_large_on_wrong_solutions(float64):
    p = Poisson1D(33)
    # u = sin(pi x) but f = pi^2 sin(2 pi x): off by up to 2 pi^2
    assert p.residual(analytic(p, k=2)).abs().max() > 15
    # the right u shifted by 0.1 breaks the boundary conditions: 0.1 / h^2 = 102.4
    u, f = p.split(analytic(p))
    r = p.residual(torch.cat([u + 0.1, f]))
    assert r[0].item() == pytest.approx(102.4) and r[1:-1].abs().max() < 0.01
    # a quadratic is reproduced exactly by the finite differences: u = x(1 - x)/2, f = 1
    x = p.grid.double()
    assert p.residual(torch.cat([x * (1 - x) / 2, torch.ones_like(x)])).abs().max() < 1e-9


def test_simulated_data(float64):
    p = Poisson1D(17, length_scale=0.2, std=2.0, mean=1.0)
    sensors = p.sensors(3, 5)
    assert sensors.tolist() == [4, 8, 12, 17, 21, 25, 29, 33]
    fields, x = p.simulate(20_000, sensors, noise=0.1, generator=torch.Generator().manual_seed(1))
    assert fields.shape == (20_000, 34) and x.shape == (20_000, 8)
    assert p.residual(fields).abs().max() < 1e-9  # the finite-difference solution is exact
    assert (x - fields[:, sensors]).std().item() == pytest.approx(0.1, rel=0.02)
    _, f = p.split(fields)
    g = p.grid.double()
    kernel = 4.0 * torch.exp(-((g[:, None] - g) ** 2) / (2 * 0.2**2))
    assert torch.allclose(torch.cov(f.T), kernel, atol=0.15)
    assert torch.allclose(f.mean(0), torch.ones(17), atol=0.05)


def make_pivae(p, sensors, **kwargs):
    return PIVAE(
        MLP(len(sensors), 16, [32]),
        MLP(3, 2 * p.num_points, [32, 32]),
        Gaussian(0.05, index=sensors),
        3,
        p.residual,
        **kwargs,
    )


@pytest.mark.parametrize("batch_size, synthetic_batch_size", [(8, 5), (None, None)])
def test_factors_in_log_joint_equal_minus_alpha_times_penalty(
    float64, batch_size, synthetic_batch_size
):
    p = Poisson1D(9)
    sensors = p.sensors(2, 3)
    _, x = p.simulate(40, sensors, generator=torch.Generator().manual_seed(0))
    vae = make_pivae(
        p,
        sensors,
        alpha_data=0.3,
        alpha_synthetic=2.5,
        num_synthetic=20,
        synthetic_batch_size=synthetic_batch_size,
    ).double()
    guide_tr = poutine.trace(vae.guide).get_trace(x, batch_size=batch_size)
    tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(
        x, batch_size=batch_size
    )
    tr.compute_log_prob()
    nodes = tr.nodes
    idx = nodes["data"]["value"]
    b = len(idx)
    z = guide_tr.nodes["z"]["value"]
    assert nodes["physics_data"]["scale"] == pytest.approx(40 / b)
    # the reconstructions D(z), z ~ q(z | x), and the synthetic decodings D(Z_2)
    l_d = vae.penalty(vae.decoder(z)).mean()
    j = nodes["synthetic"]["value"]
    l_s = vae.penalty(vae.decoder(vae.z_syn[j])).mean()
    assert len(j) == min(synthetic_batch_size or b, 20)
    assert nodes["physics_data"]["log_prob_sum"].item() == pytest.approx(
        -0.3 * l_d.item(), rel=1e-12
    )
    assert nodes["physics_synthetic"]["log_prob_sum"].item() == pytest.approx(
        -2.5 * l_s.item(), rel=1e-12
    )
    # and they are part of the log-joint that SVI differentiates
    vae_terms = nodes["x"]["log_prob_sum"] + nodes["z"]["log_prob_sum"]
    assert tr.log_prob_sum().item() == pytest.approx(
        (vae_terms - 0.3 * l_d - 2.5 * l_s).item(), rel=1e-12
    )


def test_synthetic_latents_drawn_once_from_prior_with_contexts():
    p = Poisson1D(9)
    sensors = p.sensors(2, 3)
    _, x = p.simulate(30, sensors)
    y = torch.randn(30, 2)
    vae = PIVAE(
        MLP(len(sensors), 8),
        MLP(5, 18),
        Gaussian(0.05, index=sensors),
        3,
        p.residual,
        context_dim=2,
        num_synthetic=500,
        prior=lambda y: pyro.distributions.Normal(
            y[..., :1].expand(*y.shape[:-1], 3), 0.1
        ).to_event(1),
    )
    x = x.float()
    vae.model(x, y, batch_size=10)
    z_syn = vae.z_syn.clone()
    vae.model(x, y, batch_size=10)
    assert torch.equal(vae.z_syn, z_syn) and z_syn.shape == (500, 3)
    # each synthetic latent was drawn from p(z | y) for the context stored with it
    assert torch.allclose(z_syn.mean(-1), vae.y_syn[:, 0], atol=0.3)
    assert set(vae.y_syn[:, 1].tolist()) <= set(y[:, 1].tolist())


def test_physics_penalty_lowers_residual_of_samples():
    p = Poisson1D(17, std=5.0, mean=5.0)
    sensors = p.sensors(3, 5)
    _, x = p.simulate(300, sensors, generator=torch.Generator().manual_seed(0))
    x = x.float()
    residual = {}
    for alpha in (0.0, 1e-2):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = make_pivae(p, sensors, alpha_data=alpha, alpha_synthetic=alpha, num_synthetic=300)
        fit_svi(vae.model, vae.guide, x, num_steps=400, lr=1e-2, batch_size=50)
        fields = vae.decode(vae.prior_distribution(None).sample((500,)))
        residual[alpha] = p.residual(fields).pow(2).mean().sqrt().item()
        if alpha:
            ld, ls = vae.physics_losses(x)
            assert math.isfinite(ld) and math.isfinite(ls)
    assert residual[1e-2] < residual[0.0] / 5


def test_pivae_bad_arguments():
    p = Poisson1D(9)
    sensors = p.sensors(2, 3)
    with pytest.raises(TypeError, match="residual must be a function"):
        make_pivae(p, sensors).__class__(MLP(5, 8), MLP(3, 18), Gaussian(1.0), 3, "poisson")
    with pytest.raises(ValueError, match="alpha_data must be a number >= 0"):
        make_pivae(p, sensors, alpha_data=-1.0)
    with pytest.raises(ValueError, match="num_synthetic must be an integer >= 1"):
        make_pivae(p, sensors, num_synthetic=0)
    vae = PIVAE(MLP(5, 8), MLP(3, 18), Gaussian(0.1, index=sensors), 3, lambda out, y: out.sum())
    with pytest.raises(ValueError, match=r"residual must return a tensor of shape \(\*batch, R\)"):
        vae.model(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"fields must have shape \(\.\.\., 18\)"):
        p.residual(torch.randn(3, 17))
    with pytest.raises(ValueError, match="at most 7 u-sensors"):
        p.sensors(8, 3)


def test_vectorized_particles():
    p = Poisson1D(9)
    sensors = p.sensors(2, 3)
    _, x = p.simulate(30, sensors)
    vae = make_pivae(p, sensors, alpha_data=1e-3, alpha_synthetic=1e-3, num_synthetic=20)
    elbo = pyro.infer.Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    assert math.isfinite(elbo.loss(vae.model, vae.guide, x.float(), batch_size=10))
