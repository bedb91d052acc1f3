"""Eight schools: Pyro's autoguides against normalizing-flow guides, checked against NUTS draws.

    mu ~ N(0, 5^2),  tau ~ half-Cauchy(5),  theta_j = mu + tau * eta_j,  eta_j ~ N(0, 1),
    y_j ~ N(theta_j, sigma_j),  j = 1..8            (non-centred; --centered: theta_j ~ N(mu, tau))

The posterior has a funnel between tau and the school effects. Every guide gets the same SVI
step budget and is scored on fresh draws: ELBO, IW-ELBO, PSIS k-hat and time. When the
posteriordb reference draws (Stan NUTS, 10 000 draws) are found in ``--data-dir``, each guide's
posterior means and standard deviations of (theta, mu, tau) are compared with them, in units
of the reference standard deviation; without them that column is skipped. A PNG shows
(mu, tau) for each guide, over the reference draws (grey) when present.

    python examples/vi_eight_schools.py                   # outputs/vi_eight_schools.png
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from pyro_flows.infer import add_comparison_arguments, compare_from_args, format_table, pair_plot

DEFAULT_GUIDES = "AutoNormal,AutoMultivariateNormal,AutoIAFNormal,flow:iaf,flow:maf"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REFERENCE = "posteriordb/eight_schools-eight_schools_noncentered.draws.npz"
# Rubin (1981): the coaching effects and their standard errors.
Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--centered", action="store_true", help="centred parameterisation")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("PYRO_FLOWS_DATA", str(DEFAULT_DATA)),
        help="folder holding posteriordb/ (reference draws; optional)",
    )
    add_comparison_arguments(
        parser,
        guides=DEFAULT_GUIDES,
        out="outputs/vi_eight_schools.png",
        num_layers=3,
        hidden="40,40",
        num_particles=8,
        num_samples=10_000,
    )
    return parser.parse_args(argv)


def noncentered(y: torch.Tensor, sigma: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", len(y)):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * eta)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def centered(y: torch.Tensor, sigma: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def load_reference(data_dir: str) -> dict[str, np.ndarray] | None:
    """The NUTS draws of theta[1..8], mu, tau as {name: (S, ...)}, or None when absent."""
    path = Path(data_dir) / REFERENCE
    if not path.exists():
        return None
    npz = np.load(path)
    draws = npz["draws"].reshape(-1, npz["draws"].shape[-1])
    names = [str(n) for n in npz["names"]]
    col = {n: i for i, n in enumerate(names)}
    theta = draws[:, [col[f"theta[{j}]"] for j in range(1, 9)]]
    return {"theta": theta, "mu": draws[:, col["mu"]], "tau": draws[:, col["tau"]]}


def moment_errors(samples: dict[str, torch.Tensor], reference: dict[str, np.ndarray]) -> dict:
    """Largest |mean error| and |sd error| over theta, mu, tau, in reference-sd units."""
    mean_err, sd_err = 0.0, 0.0
    for name, ref in reference.items():
        draws = samples[name].double().numpy().reshape(len(samples[name]), -1)
        ref = ref.reshape(len(ref), -1)
        ref_sd = ref.std(0)
        mean_err = max(mean_err, float(np.max(np.abs(draws.mean(0) - ref.mean(0)) / ref_sd)))
        sd_err = max(sd_err, float(np.max(np.abs(draws.std(0) - ref_sd) / ref_sd)))
    return {"mean": mean_err, "sd": sd_err}


def main(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    model = centered if args.centered else noncentered
    reports = compare_from_args(model, args, Y, SIGMA)
    reference = load_reference(args.data_dir)
    extra = {}
    errors = {}
    if reference is None:
        print(f"(no reference draws under {args.data_dir}: moment errors skipped)")
    else:
        errors = {k: moment_errors(r.draws.samples, reference) for k, r in reports.items()}
        extra = {
            "mean err": {k: e["mean"] for k, e in errors.items()},
            "sd err": {k: e["sd"] for k, e in errors.items()},
        }
    kind = "centred" if args.centered else "non-centred"
    print(f"eight schools ({kind}), {args.num_steps} SVI steps per guide")
    print(format_table(reports, extra=extra))
    if reference is not None:
        print("mean/sd err: largest error over theta, mu, tau, in units of the NUTS posterior sd")
    ref_xy = None if reference is None else (reference["mu"], reference["tau"])
    path = pair_plot(
        reports,
        ["mu", "tau"],
        args.out,
        reference=ref_xy,
        title=f"Eight schools ({kind}): (mu, tau) of each guide, NUTS draws in grey",
        limits=((-10, 25), (0, 30)),
    )
    print(f"wrote {path}")
    return {
        k: {"elbo": r.elbo, "pareto_k": r.pareto_k, "seconds": r.seconds, **errors.get(k, {})}
        for k, r in reports.items()
    }


if __name__ == "__main__":
    main(parse_args())
