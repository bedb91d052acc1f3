"""A flow-matching prior learned from an earlier study's posterior draws, reused in a new study.

Sequential Bayes: the posterior of parameters theta = (a, b) from an earlier study is known only
through draws (here a banana-shaped posterior drawn exactly, standing in for MCMC output). A
vector field is trained on these draws by flow matching (OT coupling), and the trained field
becomes the prior of a new study, a linear regression y_i = a x_i + b + noise, fitted with NUTS
(default) or SVI:

    theta ~ FlowMatchingPrior(field)              # density by the ODE, exact trace
    y_i ~ Normal(a x_i + b, sigma)

The exact posterior is known on a grid (the banana's density is exact), so the script prints
the posterior means and standard deviations from NUTS/SVI next to the exact ones, and plots the
earlier draws with the learned prior's density, then the new posterior's draws over the exact
posterior's contours.

    python examples/flow_matching_prior.py                       # NUTS, outputs/flow_matching_prior.png
    python examples/flow_matching_prior.py --inference svi --svi-steps 2000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal

from pyro_flows.distributed import resolve_device
from pyro_flows.matching import cnf_distribution, fit_flow_matching
from pyro_flows.nn import VectorField

BEND, WIDTH = 0.8, 0.4  # the earlier posterior: a ~ N(0, 1), b | a ~ N(BEND (a^2 - 1), WIDTH^2)
TRUE_THETA = (1.2, 0.35)
SPAN = ((-3.5, 3.5), (-2.5, 6.0))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inference", choices=["nuts", "svi"], default="nuts")
    parser.add_argument("--num-draws", type=int, default=20_000, help="earlier-study draws")
    parser.add_argument("--fm-steps", type=int, default=3000, help="flow-matching steps")
    parser.add_argument("--hidden", default="64,64", help="field hidden sizes")
    parser.add_argument("--ode-steps", type=int, default=8, help="rk4 steps of the prior")
    parser.add_argument("--num-obs", type=int, default=5, help="observations in the new study")
    parser.add_argument("--noise", type=float, default=1.0, help="observation noise sigma")
    parser.add_argument("--warmup", type=int, default=300, help="NUTS warmup steps")
    parser.add_argument("--num-samples", type=int, default=500, help="NUTS / SVI draws")
    parser.add_argument("--svi-steps", type=int, default=1500)
    parser.add_argument("--grid", type=int, default=150, help="exact-posterior grid per axis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--device",
        default="auto",
        help="where the flow-matching prior trains: auto (CUDA when present, else the CPU), cpu, "
        "cuda or cuda:N (the small inference after it runs on the CPU)",
    )
    parser.add_argument("--out", default="outputs/flow_matching_prior.png", help="PNG path")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    try:
        resolve_device(args.device)
    except ValueError as e:  # e.g. cuda asked for without CUDA: one line
        parser.error(str(e))
    return args


def earlier_posterior() -> dist.Distribution:
    """The earlier study's posterior (only its draws are used to learn the prior)."""
    return _Banana()


class _Banana(dist.TorchDistribution):
    support = dist.constraints.real_vector
    arg_constraints: dict = {}

    def __init__(self) -> None:
        super().__init__(torch.Size(), torch.Size([2]))

    def sample(self, sample_shape=()):  # noqa: D102
        a = torch.randn(sample_shape)
        b = BEND * (a**2 - 1) + WIDTH * torch.randn(sample_shape)
        return torch.stack([a, b], -1)

    def log_prob(self, value):  # noqa: D102
        a, b = value[..., 0], value[..., 1]
        return dist.Normal(0.0, 1.0).log_prob(a) + dist.Normal(BEND * (a**2 - 1), WIDTH).log_prob(
            b
        )


def model(prior: dist.Distribution, x: torch.Tensor, y: torch.Tensor | None, noise: float):
    theta = pyro.sample("theta", prior)
    with pyro.plate("obs", len(x)):
        pyro.sample("y", dist.Normal(theta[..., :1] * x + theta[..., 1:], noise), obs=y)


def grid_posterior(x: torch.Tensor, y: torch.Tensor, noise: float, n: int):
    """The exact posterior on an n x n grid: (a, b, normalised density, mean, sd)."""
    a = torch.linspace(*SPAN[0], n, dtype=torch.float64)
    b = torch.linspace(*SPAN[1], n, dtype=torch.float64)
    aa, bb = torch.meshgrid(a, b, indexing="ij")
    theta = torch.stack([aa, bb], -1)
    log_post = earlier_posterior().log_prob(theta) + dist.Normal(
        aa.unsqueeze(-1) * x.double() + bb.unsqueeze(-1), noise
    ).log_prob(y.double()).sum(-1)
    w = (log_post - log_post.max()).exp()
    w = w / w.sum()
    mean = (w.unsqueeze(-1) * theta).sum((0, 1))
    sd = ((w.unsqueeze(-1) * (theta - mean) ** 2).sum((0, 1))).sqrt()
    return aa, bb, w, mean, sd


def main(args: argparse.Namespace) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()

    # 1. the earlier study's posterior draws, and a flow-matching prior learned from them
    draws = earlier_posterior().sample((args.num_draws,))
    field = VectorField(2, [int(h) for h in args.hidden.split(",") if h.strip()], time_freqs=4)
    history = fit_flow_matching(
        field,
        draws,
        coupling="ot",
        num_steps=args.fm_steps,
        batch_size=256,
        lr=3e-3,
        progress=not args.no_progress,
        seed=args.seed,
        device=args.device,
    )
    field = field.cpu()  # the five-observation study is too small to gain from a GPU
    prior = cnf_distribution(field, method="rk4", num_steps=args.ode_steps, freeze=True)
    with torch.no_grad():
        test = earlier_posterior().sample((2000,))
        prior_kl = (earlier_posterior().log_prob(test) - prior.log_prob(test)).mean().item()

    # 2. the new study
    x = torch.linspace(-1.0, 1.0, args.num_obs)
    y = TRUE_THETA[0] * x + TRUE_THETA[1] + args.noise * torch.randn(args.num_obs)
    if args.inference == "nuts":
        mcmc = MCMC(
            NUTS(model),
            num_samples=args.num_samples,
            warmup_steps=args.warmup,
            disable_progbar=args.no_progress,
        )
        mcmc.run(prior, x, y, args.noise)
        posterior = mcmc.get_samples()["theta"]
    else:
        guide = AutoMultivariateNormal(model)
        optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.999})
        svi = SVI(model, guide, optim, Trace_ELBO())
        bar = range(args.svi_steps)
        if not args.no_progress:
            from tqdm import trange

            bar = trange(args.svi_steps, desc="SVI")
        for _ in bar:
            svi.step(prior, x, y, args.noise)
        with torch.no_grad():
            posterior = torch.stack(
                [guide(prior, x, y, args.noise)["theta"] for _ in range(args.num_samples)]
            )
    aa, bb, w, mean, sd = grid_posterior(x, y, args.noise, args.grid)
    result = {
        "fm_seconds": history.seconds,
        "prior_kl": prior_kl,
        "posterior_mean": posterior.mean(0).tolist(),
        "posterior_sd": posterior.std(0).tolist(),
        "exact_mean": mean.tolist(),
        "exact_sd": sd.tolist(),
    }
    print(
        f"flow-matching prior: {history.seconds:.1f} s of training, KL(earlier || prior) ≈ "
        f"{prior_kl:.3f} nats"
    )
    for i, name in enumerate(("a", "b")):
        print(
            f"{name}: {args.inference} {result['posterior_mean'][i]:+.3f} ± "
            f"{result['posterior_sd'][i]:.3f}   exact {mean[i].item():+.3f} ± {sd[i].item():.3f}"
        )

    # 3. the figure
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    with torch.no_grad():
        grid_pts = torch.stack([aa, bb], -1).float().reshape(-1, 2)
        prior_density = torch.cat([prior.log_prob(c) for c in grid_pts.split(4096)]).exp()
    prior_density = prior_density.reshape(aa.shape)
    d = draws[:3000].numpy()
    axes[0].scatter(d[:, 0], d[:, 1], s=2, alpha=0.3, color="grey", label="earlier draws")
    axes[0].contour(aa, bb, prior_density, levels=6, cmap="viridis")
    axes[0].set_title(f"learned FM prior (KL {prior_kl:.3f} nats)")
    axes[0].legend(loc="upper right", fontsize=8)
    p = posterior.numpy()
    axes[1].scatter(p[:, 0], p[:, 1], s=3, alpha=0.5, color="tab:blue", label=args.inference)
    axes[1].contour(aa, bb, w, levels=6, cmap="Reds")
    axes[1].scatter(*TRUE_THETA, marker="*", s=120, color="k", label="true θ")
    axes[1].set_title("new posterior: draws vs exact (contours)")
    axes[1].legend(loc="upper right", fontsize=8)
    for i, (name, grid) in enumerate((("a", aa[:, 0]), ("b", bb[0]))):
        marginal = w.sum(1 - i)
        step = float(grid[1] - grid[0])
        axes[2].hist(p[:, i], bins=40, density=True, alpha=0.4, label=f"{name} ({args.inference})")
        axes[2].plot(grid, marginal / step, label=f"{name} exact")
    axes[2].set_title("marginals")
    axes[2].legend(fontsize=8)
    for ax in axes[:2]:
        ax.set_xlim(*SPAN[0])
        ax.set_ylim(*SPAN[1])
        ax.set_xlabel("a")
        ax.set_ylabel("b")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    torch.set_num_threads(threads)
    return result


if __name__ == "__main__":
    main(parse_args())
