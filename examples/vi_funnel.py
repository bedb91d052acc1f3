"""Neal's funnel in 10-D: Pyro's autoguides against normalizing-flow guides (ELBO, k-hat, time).

    v ~ N(0, 3^2),   x_i | v ~ N(0, e^v),   i = 1..9.

The density is normalised, so log Z = 0 and the ELBO gap is -ELBO. Every guide gets the same
SVI step budget; each is then scored on fresh draws: ELBO (+- its standard error), the
importance-weighted ELBO, PSIS k-hat (ArviZ) and the standard deviation of v (true value 3).
A PNG shows (v, x_1) for each guide over exact draws (grey), drawn with ArviZ's pair plot.

    python examples/vi_funnel.py                          # outputs/vi_funnel.png
    python examples/vi_funnel.py --num-steps 5000 --guides AutoIAFNormal,flow:maf
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch

from pyro_flows.infer import add_comparison_arguments, compare_from_args, format_table, pair_plot

DEFAULT_GUIDES = "AutoNormal,AutoMultivariateNormal,AutoIAFNormal,flow:iaf,flow:maf"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=10, help="total dimension (v and D-1 x's)")
    add_comparison_arguments(
        parser,
        guides=DEFAULT_GUIDES,
        out="outputs/vi_funnel.png",
        num_layers=3,
        hidden="40,40",
        num_particles=8,
        num_samples=10_000,
    )
    return parser.parse_args(argv)


def make_model(dim: int):
    def funnel():
        v = pyro.sample("v", dist.Normal(0.0, 3.0))
        scale = torch.exp(v / 2).unsqueeze(-1)
        pyro.sample("x", dist.Normal(0.0, scale).expand(v.shape + (dim - 1,)).to_event(1))

    return funnel


def main(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    model = make_model(args.dim)
    reports = compare_from_args(model, args)
    std_v = {k: r.draws.samples["v"].std().item() for k, r in reports.items()}
    print(f"Neal's funnel, D={args.dim}, {args.num_steps} SVI steps per guide; log Z = 0")
    print(format_table(reports, log_z=0.0, extra={"sd(v)": std_v}))
    print("true sd(v) = 3; k-hat < 0.7: importance sampling from the guide is usable")

    g = torch.Generator().manual_seed(args.seed)
    v = 3 * torch.randn(2000, generator=g)
    x1 = torch.exp(v / 2) * torch.randn(2000, generator=g)
    path = pair_plot(
        reports,
        ["v", "x"],
        args.out,
        coords={"x_dim_0": [0]},
        reference=(v.numpy(), x1.numpy()),
        title=f"Neal's funnel ({args.dim}-D): guide draws over exact draws (grey)",
        limits=((-10, 10), (-30, 30)),
    )
    print(f"wrote {path}")
    return {
        k: {
            "elbo": r.elbo,
            "gap": -r.elbo,
            "iw_elbo": r.iw_elbo,
            "pareto_k": r.pareto_k,
            "sd_v": std_v[k],
            "seconds": r.seconds,
        }
        for k, r in reports.items()
    }


if __name__ == "__main__":
    main(parse_args())
