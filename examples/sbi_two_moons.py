"""Amortised posterior estimation on the two-moons task, written as a Pyro model.

The model (a variant of the sbibm task of Lueckmann et al., 2021): a uniform prior on
:math:`\\theta \\in [-1, 1]^2`, a nuisance angle :math:`a \\sim U(-\\pi/2, \\pi/2)`, and

    x = (0.1 cos a + 0.25, 0.1 sin a) + (-|θ1 + θ2| / √2, (-θ1 + θ2) / √2) + N(0, 0.01² I),

whose posterior for an observation near the origin is two crescents. The script

1. simulates (θ, x) from the model's prior predictive (``simulate`` of ``ModelPrior``);
2. fits NPE (a conditional MAF) and FMPE (conditional flow matching) on the same simulations;
3. conditions both on x_o = (0, 0) and compares them with a reference posterior computed on a
   grid (the likelihood integrates the angle out numerically), by C2ST;
4. checks calibration over fresh simulations: SBC ranks and expected coverage.

It writes three figures into ``--outdir``: ``sbi_pairplot.png`` (the posteriors),
``sbi_coverage.png`` (expected coverage curves) and ``sbi_ranks.png`` (NPE's SBC ranks).

    python examples/sbi_two_moons.py                         # 10^4 simulations, a few minutes
    python examples/sbi_two_moons.py --num-simulations 2000 --num-steps 500
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch

from pyro_flows.sbi import (
    FMPE,
    NPE,
    ModelPrior,
    ModelSimulator,
    c2st,
    expected_coverage,
    plot_coverage,
    plot_sbc_ranks,
    sbc,
    simulate,
)

NOISE = 0.01


def two_moons(x: torch.Tensor | None = None) -> None:
    """The two-moons model; ``x`` is the observation (None: sampled)."""
    theta = pyro.sample("theta", dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1))
    a = pyro.sample("angle", dist.Uniform(-math.pi / 2, math.pi / 2))
    pyro.sample("x", dist.Normal(moon_mean(theta, a), NOISE).to_event(1), obs=x)


def moon_mean(theta: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The noise-free simulation for parameters ``(..., 2)`` and angles ``(...)``."""
    t1, t2 = theta[..., 0], theta[..., 1]
    p = torch.stack([0.1 * torch.cos(a) + 0.25, 0.1 * torch.sin(a)], dim=-1)
    shift = torch.stack([-(t1 + t2).abs(), -t1 + t2], dim=-1) / math.sqrt(2)
    return p + shift


def reference_posterior(x_o: torch.Tensor, num: int, grid: int = 400) -> torch.Tensor:
    """Draws from p(theta | x_o) on a grid over [-1, 1]^2, the angle integrated out."""
    side = torch.linspace(-1, 1, grid, dtype=torch.float64)
    theta = torch.cartesian_prod(side, side)
    angles = torch.linspace(-math.pi / 2, math.pi / 2, 512, dtype=torch.float64)
    log_lik = torch.empty(theta.shape[0], dtype=torch.float64)
    for i in range(0, theta.shape[0], 4000):
        m = moon_mean(theta[i : i + 4000, None, :], angles[None, :])
        lp = dist.Normal(m, NOISE).log_prob(x_o.double()).sum(-1)
        log_lik[i : i + 4000] = torch.logsumexp(lp, -1)
    weights = torch.softmax(log_lik, 0)
    idx = torch.multinomial(weights, num, replacement=True)
    cell = 2 / (grid - 1)
    return (theta[idx] + cell * (torch.rand(num, 2, dtype=torch.float64) - 0.5)).float()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--num-steps", type=int, default=3000, help="most Adam steps per fit")
    parser.add_argument("--num-sbc", type=int, default=200, help="pairs for SBC and coverage")
    parser.add_argument("--num-posterior", type=int, default=2000, help="draws for C2ST/plots")
    parser.add_argument("--grid", type=int, default=400, help="reference grid points per axis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--outdir", default="outputs/sbi_two_moons")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    torch.manual_seed(args.seed)
    progress = not args.no_progress
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)

    prior = ModelPrior(two_moons, latent_sites=["theta"], observed_sites=["x"])
    simulator = ModelSimulator(prior)
    theta, x = simulate(simulator, prior, args.num_simulations, progress=progress)
    x_o = torch.zeros(2)
    reference = reference_posterior(x_o, args.num_posterior, args.grid)

    estimators = {
        "NPE": NPE(prior, num_steps=args.num_steps, lr=1e-3, progress=progress, seed=args.seed),
        "FMPE": FMPE(
            prior,
            num_steps=args.num_steps,
            lr=1e-3,
            method="rk4",
            ode_steps=20,
            progress=progress,
            seed=args.seed,
        ),
    }
    theta_test, x_test = simulate(simulator, prior, args.num_sbc, progress=False)
    results: dict[str, dict[str, float]] = {}
    draws, coverages = {}, {}
    for name, est in estimators.items():
        start = time.perf_counter()
        est.fit(theta, x)
        seconds = time.perf_counter() - start
        draws[name] = est.sample(args.num_posterior, x_o)
        coverages[name] = expected_coverage(est, theta_test, x_test, num_posterior_samples=100)
        results[name] = {
            "train_seconds": seconds,
            "c2st": c2st(reference, draws[name]),
            "coverage_max_error": coverages[name].max_error(),
            "outside_prior": float((draws[name].abs() > 1).any(-1).float().mean()),
        }
        print(
            f"{name:5s} trained {seconds:6.1f} s | C2ST vs reference "
            f"{results[name]['c2st']:.3f} | coverage max error "
            f"{results[name]['coverage_max_error']:.3f} | draws outside the prior "
            f"{results[name]['outside_prior']:.0%}"
        )
    ranks = sbc(estimators["NPE"], theta_test, x_test, num_posterior_samples=100)
    results["NPE"]["sbc_passed"] = float(ranks.passed())
    print(f"NPE SBC: chi2 p-values {ranks.chi2_pvalues.round(3)}, passed: {ranks.passed()}")

    # the posteriors at x_o
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.1), sharex=True, sharey=True)
    for ax, (name, d) in zip(axes, [("reference", reference), *draws.items()], strict=True):
        ax.scatter(d[:, 0], d[:, 1], s=1, alpha=0.3, color="k" if name == "reference" else "C0")
        title = name if name == "reference" else f"{name} (C2ST {results[name]['c2st']:.2f})"
        ax.set_title(title, fontsize=10)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
        ax.set_xlabel(r"$\theta_1$")
    axes[0].set_ylabel(r"$\theta_2$")
    fig.tight_layout()
    fig.savefig(outdir / "sbi_pairplot.png", dpi=90)

    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    for name, cov in coverages.items():
        plot_coverage(cov, ax=ax, label=name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "sbi_coverage.png", dpi=90)

    fig = plot_sbc_ranks(ranks, names=[r"$\theta_1$", r"$\theta_2$"])
    fig.savefig(outdir / "sbi_ranks.png", dpi=90)
    plt.close("all")
    return results


if __name__ == "__main__":
    main(parse_args())
