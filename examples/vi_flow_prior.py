"""A fitted flow as a prior: yesterday's posterior becomes today's prior, in a Pyro model.

A Poisson regression, y ~ Poisson(exp(alpha + beta x)), with prior alpha, beta ~ N(0, 2^2), is
observed in two studies. Sequential Bayes: the posterior after study A, p(theta | A), is the
prior for study B, and p(theta | A, B) must come out the same as from both studies at once.

1. Fit an AutoFlowGuide to study A; importance-resample its draws (PSIS) towards p(theta | A).
2. Fit a MAF to those draws (``fit_flow_prior``): a density, fast to score anywhere.
3. Use it in the model of study B: ``pyro.sample("theta", flow_prior(flow))``, and fit another
   AutoFlowGuide.
4. Compare with p(theta | A, B) computed exactly on a grid (the model is 2-D): errors of
   means and standard deviations, in units of the posterior sd, and k-hat of the last guide.

    python examples/vi_flow_prior.py                      # outputs/vi_flow_prior.png
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure

from pyro_flows.infer import (
    AutoFlowGuide,
    fit_flow_prior,
    fit_svi,
    flow_prior,
    importance_sample,
)

TRUE_THETA = (1.0, 0.8)
PRIOR_SD = 2.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-points", type=int, default=12, help="observations per study")
    parser.add_argument("--num-steps", type=int, default=1500, help="SVI steps per fit")
    parser.add_argument("--fit-steps", type=int, default=1500, help="steps of the prior fit")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--num-samples", type=int, default=20_000, help="guide draws")
    parser.add_argument("--num-layers", type=int, default=3)
    parser.add_argument("--hidden", default="32,32", help="hidden sizes, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default="outputs/vi_flow_prior.png", help="PNG path")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


def simulate(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = 2 * torch.rand(n, generator=gen) - 1
    rate = torch.exp(TRUE_THETA[0] + TRUE_THETA[1] * x)
    return x, torch.poisson(rate, generator=gen)


def make_model(prior: dist.Distribution):
    def model(x: torch.Tensor, y: torch.Tensor) -> None:
        theta = pyro.sample("theta", prior)
        log_rate = theta[..., 0] + theta[..., 1] * x  # (n,), or (S, n) under S draws
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Poisson(log_rate.exp()), obs=y)

    return model


def grid_posterior(studies: list, n: int = 400) -> tuple[torch.Tensor, ...]:
    """Exact p(theta | studies) with the N(0, 2^2) prior on an n x n grid: points and weights."""
    a = torch.linspace(-1.5, 3.0, n, dtype=torch.float64)
    b = torch.linspace(-2.5, 3.5, n, dtype=torch.float64)
    aa, bb = torch.meshgrid(a, b, indexing="ij")
    theta = torch.stack([aa, bb], -1).reshape(-1, 2)
    logp = dist.Normal(0.0, PRIOR_SD).log_prob(theta).sum(-1)
    for x, y in studies:
        log_rate = theta[:, :1] + theta[:, 1:] * x.double()
        logp = logp + dist.Poisson(log_rate.exp()).log_prob(y.double()).sum(-1)
    w = torch.softmax(logp, 0)
    return theta, w, aa, bb


def weighted_moments(theta: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = (w[:, None] * theta).sum(0)
    sd = (w[:, None] * (theta - mean) ** 2).sum(0).sqrt()
    return mean, sd


def fit_guide(model, args, hidden, *data):
    pyro.clear_param_store()
    guide = AutoFlowGuide(model, "iaf", num_layers=args.num_layers, hidden_dims=hidden)
    fit_svi(
        model,
        guide,
        *data,
        num_steps=args.num_steps,
        lr=args.lr,
        num_particles=8,
        progress=not args.no_progress,
    )
    return guide, importance_sample(model, guide, *data, num_samples=args.num_samples)


def main(args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    gen = torch.Generator().manual_seed(args.seed)
    study_a, study_b = simulate(args.num_points, gen), simulate(args.num_points, gen)
    base_prior = dist.Normal(torch.zeros(2), PRIOR_SD).to_event(1)

    # 1. posterior after study A, as importance-resampled guide draws
    _, res_a = fit_guide(make_model(base_prior), args, hidden, *study_a)
    draws_a = res_a.resample(generator=gen)["theta"]

    # 2. a MAF fitted to them: the flow prior
    flow, _ = fit_flow_prior(
        draws_a,
        num_layers=args.num_layers,
        hidden_dims=hidden,
        num_steps=args.fit_steps,
        lr=3e-3,
        progress=not args.no_progress,
        seed=args.seed,
    )
    prior_b = flow_prior(flow)

    # 3. study B with the flow prior
    _, res_b = fit_guide(make_model(prior_b), args, hidden, *study_b)
    draws_b = res_b.samples["theta"].double()

    # 4. against the exact posterior given both studies
    theta, w, aa, bb = grid_posterior([study_a, study_b])
    mean, sd = weighted_moments(theta, w)
    mean_err = ((draws_b.mean(0) - mean).abs() / sd).max().item()
    sd_err = ((draws_b.std(0) - sd).abs() / sd).max().item()
    theta_a, w_a, _, _ = grid_posterior([study_a])
    mean_a, sd_a = weighted_moments(theta_a, w_a)
    prior_err = ((flow.sample((20_000,)).double().mean(0) - mean_a).abs() / sd_a).max().item()

    print(f"study A: ELBO {res_a.elbo():.3f}, k-hat {res_a.pareto_k():.2f}")
    print(f"flow prior vs exact p(theta | A): largest mean error {prior_err:.3f} sd")
    print(f"study B with the flow prior: ELBO {res_b.elbo():.3f}, k-hat {res_b.pareto_k():.2f}")
    print(
        f"p(theta | A, B) sequential vs exact: mean error {mean_err:.3f} sd, "
        f"sd error {100 * sd_err:.1f}%"
    )
    print(f"exact mean {mean.numpy().round(3)}, sd {sd.numpy().round(3)}")

    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    panels = [
        ("exact p(theta | A) and flow prior draws", [study_a], flow.sample((2000,))),
        ("exact p(theta | A, B) and sequential draws", [study_a, study_b], draws_b[:2000]),
        ("exact p(theta | B) alone", [study_b], None),
    ]
    for ax, (title, studies, pts) in zip(axes, panels, strict=True):
        _, wg, _, _ = grid_posterior(studies)
        dens = wg.reshape(aa.shape).numpy()
        levels = (dens.max() * np.array([0.02, 0.1, 0.3, 0.6, 0.9])).tolist()
        ax.contour(aa.numpy(), bb.numpy(), dens, levels=levels, colors="k", linewidths=0.8)
        if pts is not None:
            pts = pts.detach().numpy()
            ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("alpha")
    axes[0].set_ylabel("beta")
    lo, hi = (mean_a - 5 * sd_a).tolist(), (mean_a + 5 * sd_a).tolist()
    axes[0].set_xlim(lo[0], hi[0])
    axes[0].set_ylim(lo[1], hi[1])
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return {
        "mean_error_sd": mean_err,
        "sd_error": sd_err,
        "prior_mean_error_sd": prior_err,
        "pareto_k_a": res_a.pareto_k(),
        "pareto_k_b": res_b.pareto_k(),
    }


if __name__ == "__main__":
    main(parse_args())
