"""Bayesian logistic regression on scikit-learn's breast-cancer data: autoguides against flows.

    w ~ N(0, I_30),   b ~ N(0, 5^2),   y_n ~ Bernoulli(sigmoid(b + x_n . w)),

on standardised features of 80% of the 569 tumours; the other 20% are held out. Every guide
gets the same SVI step budget and is scored on fresh draws: ELBO, importance-weighted ELBO
(a bound on log p(y)), PSIS k-hat, PSIS-LOO of the training data computed from the guide's
draws (pyro_flows.infer.loo) and the held-out log predictive density per point, with draws
importance-resampled towards the posterior. A PNG shows two coefficients for each guide.

    python examples/vi_logistic_regression.py             # outputs/vi_logistic_regression.png
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch

from pyro_flows.infer import (
    add_comparison_arguments,
    compare_from_args,
    format_table,
    loo,
    pair_plot,
)

DEFAULT_GUIDES = "AutoNormal,AutoMultivariateNormal,AutoIAFNormal,flow:iaf,flow:maf"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_comparison_arguments(
        parser,
        guides=DEFAULT_GUIDES,
        out="outputs/vi_logistic_regression.png",
        num_layers=2,
        hidden="64",
        num_particles=4,
        num_samples=4000,
    )
    return parser.parse_args(argv)


def load_data(seed: int) -> tuple[torch.Tensor, ...]:
    """Standardised breast-cancer features and labels, split 80/20 at random."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.float32)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.8 * len(y))
    train, test = perm[:n_train], perm[n_train:]
    mean, std = x[train].mean(0), x[train].std(0)
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 5.0))
    logits = (x * w).sum(-1) + b  # (n,), or (S, n) under a plate of S draws
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def heldout_lpd(draws: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over test points of log E_posterior p(y_n | x_n), from (resampled) draws."""
    logits = draws["w"] @ x.T + draws["b"].unsqueeze(-1)  # (S, n)
    log_lik = dist.Bernoulli(logits=logits).log_prob(y)
    s = log_lik.shape[0]
    return (torch.logsumexp(log_lik, 0) - math.log(s)).mean().item()


def main(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    x, y, x_test, y_test = load_data(args.seed)
    reports = compare_from_args(model, args, x, y)
    gen = torch.Generator().manual_seed(args.seed)
    lpd = {
        k: heldout_lpd(r.draws.resample(generator=gen), x_test, y_test) for k, r in reports.items()
    }
    elpd = {k: loo(r.draws.to_inference_data()).elpd_loo for k, r in reports.items()}
    print(f"breast cancer, {len(y)} train / {len(y_test)} test, {args.num_steps} SVI steps")
    print(format_table(reports, extra={"elpd_loo": elpd, "test lpd": lpd}))
    path = pair_plot(
        reports,
        ["w"],
        args.out,
        coords={"w_dim_0": [0, 1]},
        title="Logistic regression: w[0] against w[1] for each guide",
    )
    print(f"wrote {path}")
    return {
        k: {
            "elbo": r.elbo,
            "iw_elbo": r.iw_elbo,
            "pareto_k": r.pareto_k,
            "elpd_loo": elpd[k],
            "test_lpd": lpd[k],
            "seconds": r.seconds,
        }
        for k, r in reports.items()
    }


if __name__ == "__main__":
    main(parse_args())
