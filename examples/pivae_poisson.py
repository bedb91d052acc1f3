"""Physics-informed VAE on the 1-D stochastic Poisson equation u'' = -f, u(0) = u(1) = 0.

The forcing f is a Gaussian random field; each training example is a pair (u, f) solved by
finite differences and observed only at a few noisy sensors (5 of u, 9 of f by default). The
decoder generates both fields on the whole grid; the residual is the discrete equation
(pyro_flows.models.Poisson1D). Two VAEs, identical but for the physics penalty
(alpha_data = alpha_synthetic = 0 vs --alpha), are trained with SVI, and fields generated from
their priors are compared with true fields: residual, mean and covariance of u and f, and the
held-out ELBO.

    python examples/pivae_poisson.py                       # outputs/pivae_poisson.png
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import pyro
import torch

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from pyro_flows.distributed import resolve_device  # noqa: E402
from pyro_flows.infer import fit_svi  # noqa: E402
from pyro_flows.models import MLP, PIVAE, CoordinateDecoder, Gaussian, Poisson1D, elbo  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-train", type=int, default=1000, help="training pairs")
    parser.add_argument("--num-test", type=int, default=4000, help="reference pairs and draws")
    parser.add_argument("--num-points", type=int, default=33, help="grid size G")
    parser.add_argument("--length-scale", type=float, default=0.25, help="of the forcing")
    parser.add_argument(
        "--decoder", choices=["coordinate", "mlp"], default="coordinate", help="decoder network"
    )
    parser.add_argument("--num-u", type=int, default=5, help="u sensors (interior)")
    parser.add_argument("--num-f", type=int, default=17, help="f sensors")
    parser.add_argument("--noise-u", type=float, default=0.01, help="u-sensor noise sd")
    parser.add_argument("--noise-f", type=float, default=0.2, help="f-sensor noise sd")
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--hidden", default="64,64", help="hidden sizes, comma-separated")
    parser.add_argument("--prior", default="maf", help="'normal' or a flow family, e.g. maf")
    parser.add_argument("--alpha", type=float, default=3000.0, help="weight of both penalties")
    parser.add_argument("--num-synthetic", type=int, default=2000, help="size of Z_syn")
    parser.add_argument("--num-steps", type=int, default=4000, help="SVI steps per model")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--device",
        default="auto",
        help="where SVI trains: auto (CUDA when present, else the CPU), cpu, cuda or cuda:N "
        "(the evaluation runs on the CPU)",
    )
    parser.add_argument("--out", default="outputs/pivae_poisson.png", help="PNG path")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    try:
        resolve_device(args.device)
    except ValueError as e:  # e.g. cuda asked for without CUDA: one line
        parser.error(str(e))
    return args


def field_stats(physics: Poisson1D, fields: torch.Tensor, ref: torch.Tensor) -> dict:
    """Residual of ``fields`` and errors of their mean/covariance against reference fields."""
    out = {"residual": physics.residual(fields).pow(2).mean().sqrt().item()}
    for name, a, b in zip("uf", physics.split(fields), physics.split(ref), strict=True):
        out[f"mean_{name}"] = (a.mean(0) - b.mean(0)).pow(2).mean().sqrt().item()
        cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
        out[f"cov_{name}"] = (torch.linalg.norm(cov_a - cov_b) / torch.linalg.norm(cov_b)).item()
    return out


def noise_levels(args: argparse.Namespace) -> torch.Tensor:
    return torch.tensor([args.noise_u] * args.num_u + [args.noise_f] * args.num_f)


def make_model(args, physics, sensors, alpha):
    hidden = [int(h) for h in args.hidden.split(",")]
    return PIVAE(
        MLP(len(sensors), hidden[-1], hidden[:-1] or hidden),
        CoordinateDecoder(args.latent_dim, physics.grid, 2, hidden)
        if args.decoder == "coordinate"
        else MLP(args.latent_dim, 2 * physics.num_points, list(reversed(hidden))),
        Gaussian(noise_levels(args), index=sensors),
        args.latent_dim,
        physics.residual,
        alpha_data=alpha,
        alpha_synthetic=alpha,
        num_synthetic=args.num_synthetic,
        prior=args.prior,
        hidden_dims=[32, 32],
    )


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    physics = Poisson1D(args.num_points, length_scale=args.length_scale, std=1.0, mean=1.0)
    sensors = physics.sensors(args.num_u, args.num_f)
    _, x_train = physics.simulate(args.num_train, sensors, noise_levels(args), gen)
    test_fields, x_test = physics.simulate(args.num_test, sensors, noise_levels(args), gen)
    x_train, x_test = x_train.float(), x_test.float()

    results, samples = {}, {}
    for label, alpha in (("VAE", 0.0), (f"PI-VAE (alpha={args.alpha:g})", args.alpha)):
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        vae = make_model(args, physics, sensors, alpha).to(device)
        t0 = time.perf_counter()
        fit_svi(
            vae.model,
            vae.guide,
            x_train,
            num_steps=args.num_steps,
            lr=args.lr,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            device=device,
        )
        seconds = time.perf_counter() - t0
        vae.cpu()  # its parameters (those of the guide too) come back for the evaluation
        with torch.no_grad():
            z = vae.prior_distribution(None).sample((args.num_test,))
            fields = vae.decode(z).double()
        stats = field_stats(physics, fields, test_fields)
        stats["test_elbo"] = elbo(vae, x_test, num_samples=20).mean().item()
        stats["seconds"] = seconds
        results[label] = stats
        samples[label] = fields
    results["true fields"] = field_stats(physics, test_fields, test_fields)

    print_table(results, args)
    plot(physics, test_fields, samples, args.out)
    print(f"wrote {args.out}")
    return results


def print_table(results: dict, args: argparse.Namespace) -> None:
    print(
        f"\n{args.num_train} training pairs, {args.num_u} u- and {args.num_f} f-sensors, "
        f"noise sd {args.noise_u} (u), {args.noise_f} (f); statistics of {args.num_test} generated vs true fields\n"
    )
    print(
        "| model | RMS residual | mean err u | cov err u | mean err f | cov err f "
        "| test ELBO (nats) | train (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        extra = f"{r['test_elbo']:.2f} | {r['seconds']:.0f}" if "test_elbo" in r else "- | -"
        print(
            f"| {label} | {r['residual']:.3g} | {r['mean_u']:.4f} | {r['cov_u']:.3f} "
            f"| {r['mean_f']:.3f} | {r['cov_f']:.3f} | {extra} |"
        )
    labels = [k for k in results if k != "true fields"]
    ratio = results[labels[0]]["residual"] / results[labels[1]]["residual"]
    print(f"\nresidual lowered {ratio:.1f}x by the physics penalty")


def plot(physics: Poisson1D, true: torch.Tensor, samples: dict, out: str) -> None:
    x = physics.grid.numpy()
    columns = {"true": true, **samples}
    fig = Figure(figsize=(4 * len(columns), 6), layout="constrained")
    axes = fig.subplots(2, len(columns), sharey="row")
    for j, (label, fields) in enumerate(columns.items()):
        for i, (name, field) in enumerate(zip("uf", physics.split(fields), strict=True)):
            ax = axes[i, j]
            ax.plot(x, field[:20].T.numpy(), lw=0.8, alpha=0.7)
            mean, sd = field.mean(0).numpy(), field.std(0).numpy()
            ax.plot(x, mean, "k", lw=2)
            ax.fill_between(x, mean - 2 * sd, mean + 2 * sd, color="k", alpha=0.1)
            ax.set_title(f"{label}: {name}(x)", fontsize=9)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(parse_args())
