"""Does a flow's fit depend on the data's units? KL(p || q) on a toy X and on a·X + b.

For every family of the builder that can score data, a flow is built with
``normalizing_flow(name, 2, ...)`` and fitted with ``fit`` on three copies of one 2-D toy
sample: X itself, 0.05·X + 100 and 20·X − 100 (the same seed, so the same initial network and
the same minibatch stream each time). Each fit is scored by the unbiased estimate

    KL(p' || q) = E_{p'}[log p'(y) - log q(y)],   p'(y) = p((y - b) / a) / a^D,

on test points mapped the same way. KL is invariant under an affine change of units, so an
equivariant fit gives the same number in all three columns. Two modes: ``raw``, the flow built
with ``standardize=False`` (the behaviour before the data-end standardisation existed), and
``default``, the flow as built (standardised by ``fit``). The ``extreme`` toy is 8 gaussians
scaled by 3 (coordinates up to about ±9, outside the splines' default box).

Run ``python benchmarks/scale_equivariance.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import inspect
import math
import time

import torch

from pyro_flows.datasets import toy_distribution
from pyro_flows.flows import FAMILIES, normalizing_flow
from pyro_flows.training import fit

#: Families that can score data (NAF/BNAF have no analytic inverse).
DENSITY_FAMILIES = tuple(n for n, f in FAMILIES.items() if f.invertible)
UNITS = {"X": (1.0, 0.0), "0.05X+100": (0.05, 100.0), "20X-100": (20.0, -100.0)}


def make_flow(name: str, hidden: int, layers: int, standardize: bool) -> torch.nn.Module:
    """A small flow of family ``name``; FFJORD gets one block, the rest ``layers`` layers."""
    kwargs = {}
    if "hidden_dims" in inspect.signature(FAMILIES[name].make).parameters:
        kwargs["hidden_dims"] = [hidden, hidden]
    num_layers = 1 if name == "ffjord" else layers
    # standardize=False: the flow as it was before the data-end standardisation existed
    return normalizing_flow(name, 2, num_layers, standardize=standardize, **kwargs)


def run_one(
    name: str, toy: str, units: str, standardize: bool, seed: int, args: argparse.Namespace
) -> float:
    """KL of one fit (nats); inf when the fit diverges."""
    p = toy_distribution("8gaussians")
    stretch = 3.0 if toy == "extreme" else 1.0
    g = torch.Generator().manual_seed(1000 + seed)
    train = stretch * p.sample((args.num_train,), generator=g)
    test = stretch * p.sample((args.num_test,), generator=g)
    a, b = UNITS[units]
    torch.manual_seed(seed)
    flow = make_flow(name, args.hidden, args.layers, standardize)
    steps = max(args.num_steps // 5, 50) if name == "ffjord" else args.num_steps
    try:
        fit(
            flow,
            a * train + b,
            num_steps=steps,
            batch_size=256,
            lr=args.lr,
            progress=False,
            seed=seed,
            val_fraction=0.1,
        )
    except (FloatingPointError, ValueError, RuntimeError):
        return math.inf
    with torch.no_grad():
        y = a * test + b
        log_q = torch.cat([flow.log_prob(t) for t in y.split(4096)]).double()
        log_p = p.log_prob(test.double() / stretch) - 2 * math.log(stretch) - 2 * math.log(a)
    kl = (log_p - log_q).mean().item()
    return kl if math.isfinite(kl) else math.inf


def mean_se(values: list[float]) -> str:
    """``mean ± SE`` (SE over seeds; one seed prints the mean alone)."""
    if any(not math.isfinite(v) for v in values):
        return "diverged"
    m = sum(values) / len(values)
    if len(values) < 2:
        return f"{m:.3f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{m:.3f} ± {sd / math.sqrt(len(values)):.3f}"


def main(args: argparse.Namespace) -> None:
    """Prints one markdown table per toy: family × mode rows, one column per change of units."""
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    families = args.families or DENSITY_FAMILIES
    modes = {"raw": False, "default": True}
    for toy in args.toys:
        print(f"\n### {toy}: KL(p‖q) in nats, mean ± SE over {args.repeats} seed(s)\n")
        print("| family | mode | " + " | ".join(UNITS) + " | spread |")
        print("|---|---|" + "---|" * (len(UNITS) + 1))
        for name in families:
            for mode in args.modes:
                t0 = time.time()
                cells, means = [], []
                for units in UNITS:
                    kls = [
                        run_one(name, toy, units, modes[mode], s, args)
                        for s in range(args.repeats)
                    ]
                    cells.append(mean_se(kls))
                    means.append(sum(kls) / len(kls))
                spread = max(means) - min(means)
                spread_s = f"{spread:.3f}" if math.isfinite(spread) else "—"
                print(f"| {name} | {mode} | " + " | ".join(cells) + f" | {spread_s} |", flush=True)
                if args.verbose:
                    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="*", choices=DENSITY_FAMILIES, default=None)
    ap.add_argument("--toys", nargs="+", choices=("8gaussians", "extreme"), default=["8gaussians"])
    ap.add_argument("--modes", nargs="+", choices=("raw", "default"), default=["raw", "default"])
    ap.add_argument("--repeats", type=int, default=3, help="seeds per cell")
    ap.add_argument("--num-steps", type=int, default=800)
    ap.add_argument("--num-train", type=int, default=10_000)
    ap.add_argument("--num-test", type=int, default=20_000)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--verbose", action="store_true")
    return ap.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
