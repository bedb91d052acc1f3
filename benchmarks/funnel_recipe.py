"""The recipe (``fit_guide``) on Neal's 10-D funnel: ELBO gap and sd(v), raw and resampled.

The funnel's v has sd 3; a reverse-KL guide under-covers the neck (v << 0), so sd(v) of the
guide's own draws falls short. This script prints, per variant of the recipe and seed, the
ELBO gap (log Z = 0), PSIS k-hat, and sd(v) of the guide's draws and of the
importance-resampled draws (``GuideFit.resample``)::

    python benchmarks/funnel_recipe.py --seeds 0,1
    python benchmarks/funnel_recipe.py --variants default,lr5e-3 --num-steps 3000

Results are in docs/tutorials/variational_inference.md (funnel paragraph).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vi_guides import funnel  # noqa: E402 - the same model as the main benchmark

from pyro_flows.infer import fit_guide  # noqa: E402

#: Keyword arguments of fit_guide per variant name.
VARIANTS = {
    "default": {},
    "lr1e-2": {"learning_rates": (1e-2,)},
    "lr5e-3": {"learning_rates": (5e-3,)},
    "bound8": {"flow_kwargs": {"log_scale_bound": 8.0}},
    "iwae": {"estimator": "iwae"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="default,lr1e-2,lr5e-3,bound8")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--num-steps", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| variant | seed | gap | k-hat | sd(v) guide | sd(v) resampled | s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.variants.split(","):
        rows = []
        for seed in (int(s) for s in args.seeds.split(",")):
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = fit_guide(funnel, num_steps=args.num_steps, progress=False, **VARIANTS[name])
            row = {
                "gap": -fit.elbo,
                "k": fit.pareto_k,
                "sd": float(fit.draws.samples["v"].std()),
                "sd_rs": float(fit.resample(10_000)["v"].std()),
                "s": time.perf_counter() - t0,
            }
            rows.append(row)
            print(
                f"| {name} | {seed} | {row['gap']:.3f} | {row['k']:.2f} | {row['sd']:.2f} "
                f"| {row['sd_rs']:.2f} | {row['s']:.0f} |",
                flush=True,
            )
        means = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
        print(
            f"| {name} | mean | {means['gap']:.3f} | {means['k']:.2f} | {means['sd']:.2f} "
            f"| {means['sd_rs']:.2f} | {means['s']:.0f} |",
            flush=True,
        )
        print(json.dumps({name: rows}), file=sys.stderr)


if __name__ == "__main__":
    main()
