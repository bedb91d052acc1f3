"""Flow matching against maximum-likelihood FFJORD on 2-D toys, with trajectory plots.

For each toy (``8gaussians``, ``checkerboard``), one vector field network (the same
architecture for every method) is trained three ways:

- FFJORD: maximum likelihood through the ODE solver (dopri5, exact trace), ``fit``;
- flow matching with independent pairs (linear path, sigma_min = 0), ``fit_flow_matching``;
- flow matching with minibatch optimal-transport pairs (exact, in blocks of 128 rows).

FFJORD uses batch 256 and lr 3e-3, flow matching batch 1024 and lr 1e-2 (its regression
target is noisy), all with a cosine schedule.

Each trained field is scored as a ``FlowMatchingPrior`` (dopri5, exact trace) on fresh test
points: test NLL and KL(p || q) (the toys' log-densities are exact), training wall time and
the function evaluations a dopri5 sample costs. The figure shows, per toy, the data, each
method's density, and the trajectories x(t) of the same base points under each field: the OT
field's are nearly straight.

    python examples/flow_matching_2d.py                    # both toys, outputs/flow_matching_2d.png
    python examples/flow_matching_2d.py --dataset checkerboard --fm-steps 8000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch

from pyro_flows.datasets import TOY_DATASETS, fit_metrics, grid_log_density, toy_distribution
from pyro_flows.distributed import resolve_device
from pyro_flows.distributions import NormalizingFlow
from pyro_flows.matching import FlowMatchingPrior, OTCoupling, fit_flow_matching, trajectory
from pyro_flows.nn import VectorField
from pyro_flows.training import fit
from pyro_flows.transforms import FFJORD

LIMIT = 4.5  # plots show [-LIMIT, LIMIT]^2
METHODS = ("ffjord", "fm_independent", "fm_ot")
LABELS = {"ffjord": "FFJORD (ML)", "fm_independent": "FM independent", "fm_ot": "FM OT"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=[*TOY_DATASETS, "all"], default="all")
    parser.add_argument("--hidden", default="64,64,64", help="hidden sizes, comma-separated")
    parser.add_argument("--ffjord-steps", type=int, default=500, help="FFJORD Adam steps")
    parser.add_argument("--fm-steps", type=int, default=4000, help="flow-matching Adam steps")
    parser.add_argument("--batch-size", type=int, default=256, help="FFJORD's minibatch")
    parser.add_argument("--lr", type=float, default=3e-3, help="FFJORD's learning rate")
    parser.add_argument("--fm-batch-size", type=int, default=1024, help="FM's minibatch")
    parser.add_argument("--fm-lr", type=float, default=1e-2, help="FM's learning rate")
    parser.add_argument("--ot-block", type=int, default=128, help="OT solved in blocks")
    parser.add_argument("--rtol", type=float, default=1e-5, help="dopri5 tolerance (both)")
    parser.add_argument("--num-samples", type=int, default=20_000, help="training rows")
    parser.add_argument("--num-test", type=int, default=5_000, help="fresh test rows")
    parser.add_argument("--grid", type=int, default=100, help="density grid size per axis")
    parser.add_argument("--num-paths", type=int, default=32, help="trajectories drawn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present, else the CPU), cpu, cuda or cuda:N",
    )
    parser.add_argument("--out", default="outputs/flow_matching_2d.png", help="PNG path")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    try:
        resolve_device(args.device)
    except ValueError as e:  # e.g. cuda asked for without CUDA: one line
        parser.error(str(e))
    return args


def make_field(hidden: Sequence[int]) -> VectorField:
    """The field every method trains: FFJORD's default architecture (tanh, concat-squash)."""
    return VectorField(2, list(hidden), activation="tanh")


def train(method: str, train_rows: torch.Tensor, args: argparse.Namespace) -> tuple:
    """Trains one field; returns it and the training wall time in seconds."""
    torch.manual_seed(args.seed)
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    field = make_field(hidden)
    start = time.perf_counter()
    if method == "ffjord":
        flow = NormalizingFlow(FFJORD(2, field, trace="exact", rtol=args.rtol, atol=args.rtol), 2)
        fit(
            flow,
            train_rows,
            num_steps=args.ffjord_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            val_fraction=0.0,
            progress=not args.no_progress,
            seed=args.seed,
            device=args.device,
        )
        return field, time.perf_counter() - start
    coupling = OTCoupling(args.ot_block) if method == "fm_ot" else "independent"
    history = fit_flow_matching(
        field,
        train_rows,
        coupling=coupling,
        num_steps=args.fm_steps,
        batch_size=args.fm_batch_size,
        lr=args.fm_lr,
        progress=not args.no_progress,
        seed=args.seed,
        device=args.device,
    )
    return field, history.seconds


def run_one(name: str, args: argparse.Namespace, axes: Sequence[plt.Axes]) -> dict:
    """Trains the three methods on the toy ``name``, draws its row of panels, returns metrics."""
    device = resolve_device(args.device)
    target = toy_distribution(name)
    gen = torch.Generator().manual_seed(args.seed)
    train_rows = target.sample((args.num_samples,), generator=gen)
    test = target.sample((args.num_test,), generator=gen)
    z0 = torch.randn(args.num_paths, 2, generator=gen).to(device)
    span = [[-LIMIT, LIMIT], [-LIMIT, LIMIT]]
    extent = (-LIMIT, LIMIT, -LIMIT, LIMIT)
    data_np = test.numpy()
    axes[0].hist2d(data_np[:, 0], data_np[:, 1], bins=100, range=span, cmap="viridis")
    axes[0].set_title(f"{name}: data")
    results = {}
    times = np.linspace(0.0, 1.0, 21)
    for i, method in enumerate(METHODS):
        field, seconds = train(method, train_rows, args)
        field.eval()
        prior = FlowMatchingPrior(field, rtol=args.rtol, atol=args.rtol)
        metrics = fit_metrics(target, prior, test.to(device), chunk_size=2048)
        prior.nfe.reset()
        prior.sample((1000,))
        metrics.update(seconds=seconds, sample_nfe=prior.nfe.forward)
        results[method] = metrics
        density = grid_log_density(prior, LIMIT, args.grid, device, chunk_size=2048).exp().numpy()
        ax = axes[1 + i]
        ax.imshow(density, origin="lower", extent=extent, cmap="Greys", aspect="equal")
        path = trajectory(field, z0, times, rtol=args.rtol, atol=args.rtol).cpu().numpy()
        for k in range(path.shape[1]):
            ax.plot(path[:, k, 0], path[:, k, 1], color="tab:blue", lw=0.7, alpha=0.8)
        ax.scatter(path[0, :, 0], path[0, :, 1], s=6, color="tab:orange", label="t = 0")
        ax.scatter(path[-1, :, 0], path[-1, :, 1], s=6, color="tab:red", label="t = 1")
        ax.set_title(f"{LABELS[method]}: KL {metrics['kl']:.3f}, {seconds:.0f} s", fontsize=9)
    axes[1].legend(loc="lower right", fontsize=7)
    for ax in axes:
        ax.set_xlim(-LIMIT, LIMIT)
        ax.set_ylim(-LIMIT, LIMIT)
        ax.set_xticks([])
        ax.set_yticks([])
    return results


def main(args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    names = list(TOY_DATASETS) if args.dataset == "all" else [args.dataset]
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    fig, axes = plt.subplots(len(names), 4, figsize=(16, 4 * len(names)), squeeze=False)
    results = {}
    print("| dataset | method | test NLL | KL(p‖q) | train time (s) | NFE per dopri5 sample |")
    print("|---|---|---|---|---|---|")
    for name, row in zip(names, axes, strict=True):
        results[name] = run_one(name, args, row)
        for method, r in results[name].items():
            print(
                f"| {name} | {LABELS[method]} | {r['test_nll']:.4f} ± {r['test_nll_se']:.4f} | "
                f"{r['kl']:.4f} ± {r['kl_se']:.4f} | {r['seconds']:.1f} | {r['sample_nfe']} |"
            )
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    torch.set_num_threads(threads)
    return results


if __name__ == "__main__":
    main(parse_args())
