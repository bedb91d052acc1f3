"""Fit FFJORD (a continuous normalizing flow) to 2-D toy densities; plot density and trajectories.

For each toy (``8gaussians``, ``checkerboard``) one FFJORD layer, dz/dt = f(t, z) from base
noise at t = 0 to data at t = T, is fitted by maximum likelihood with the exact trace. The
figure shows, per toy, the data, the model density, and the paths z(t) of a few base points
through time. The script prints the test NLL, an unbiased estimate of KL(p || q) (the mean of
log p(x) - log q(x) over fresh test points) and the number of field evaluations per step.

    python examples/ffjord_2d.py                          # both toys, outputs/ffjord_2d.png
    python examples/ffjord_2d.py --dataset checkerboard --num-steps 2000
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
from pyro_flows.flows import normalizing_flow
from pyro_flows.training import fit
from pyro_flows.transforms import FFJORD
from pyro_flows.transforms._ode import integrate

LIMIT = 4.5  # plots show [-LIMIT, LIMIT]^2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=[*TOY_DATASETS, "all"], default="all")
    parser.add_argument("--hidden", default="64,64,64", help="hidden sizes, comma-separated")
    parser.add_argument("--activation", default="tanh", help="tanh, softplus, elu or silu")
    parser.add_argument("--end-time", type=float, default=1.0, help="integration time T")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--adjoint", action="store_true", help="adjoint gradients")
    parser.add_argument("--num-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--num-samples", type=int, default=20_000, help="training rows")
    parser.add_argument("--num-test", type=int, default=5_000, help="fresh test rows")
    parser.add_argument("--grid", type=int, default=120, help="density grid size per axis")
    parser.add_argument("--num-paths", type=int, default=24, help="trajectories drawn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (ODE solves are many small ops)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present, else the CPU), cpu, cuda or cuda:N",
    )
    parser.add_argument("--out", default="outputs/ffjord_2d.png", help="PNG path")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    try:
        resolve_device(args.device)
    except ValueError as e:  # e.g. cuda asked for without CUDA: one line
        parser.error(str(e))
    return args


def _ffjord_layer(flow: torch.nn.Module) -> FFJORD:
    return next(m for m in flow.modules() if isinstance(m, FFJORD))


def trajectories(layer: FFJORD, z0: torch.Tensor, num_times: int = 41) -> torch.Tensor:
    """The paths z(t) of the points ``z0`` at ``num_times`` times in [0, T]: (times, n, 2)."""
    times = np.linspace(0.0, layer.end_time, num_times)
    s = layer.solver
    path = [z0]
    with torch.no_grad():
        for t0, t1 in zip(times[:-1], times[1:], strict=True):
            z = integrate(
                layer.field,
                path[-1],
                float(t0),
                float(t1),
                method=s.method,
                rtol=s.rtol,
                atol=s.atol,
                step_size=s.step_size,
            )
            path.append(z)
    return torch.stack(path)


def run_one(name: str, args: argparse.Namespace, axes: Sequence[plt.Axes]) -> dict[str, float]:
    """Trains FFJORD on the toy ``name``, draws its row of panels and returns its metrics."""
    device = resolve_device(args.device)
    target = toy_distribution(name)
    gen = torch.Generator().manual_seed(args.seed)
    train = target.sample((args.num_samples,), generator=gen)
    test = target.sample((args.num_test,), generator=gen)

    torch.manual_seed(args.seed)
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    flow = normalizing_flow(
        "ffjord",
        2,
        num_layers=1,
        hidden_dims=hidden,
        activation=args.activation,
        end_time=args.end_time,
        rtol=args.rtol,
        atol=args.atol,
        adjoint=args.adjoint,
    )
    flow = flow.to(device)
    layer = _ffjord_layer(flow)

    t0 = time.perf_counter()
    history = fit(
        flow,
        train,
        num_steps=args.num_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        progress=not args.no_progress,
        seed=args.seed,
        eval_every=max(50, args.num_steps // 10),
    )
    seconds = time.perf_counter() - t0
    steps = history.num_steps

    flow.eval()
    layer.nfe.reset()
    result = {
        **fit_metrics(target, flow, test.to(device), chunk_size=4096),
        "seconds": seconds,
        "seconds_per_step": seconds / steps,
        "eval_nfe": layer.nfe.forward / layer.nfe.solves,
    }

    span = [[-LIMIT, LIMIT], [-LIMIT, LIMIT]]
    data_np = test.numpy()
    axes[0].hist2d(data_np[:, 0], data_np[:, 1], bins=100, range=span, cmap="viridis")
    axes[0].set_title(f"{name}: data")
    density = grid_log_density(flow, LIMIT, args.grid, device, chunk_size=4096).exp().numpy()
    extent = (-LIMIT, LIMIT, -LIMIT, LIMIT)
    axes[1].imshow(density, origin="lower", extent=extent, cmap="viridis", aspect="equal")
    axes[1].set_title(f"FFJORD density (KL {result['kl']:.3f})")
    z0 = torch.randn(args.num_paths, 2, generator=gen).to(device)
    path = trajectories(layer, z0).cpu().numpy()
    axes[2].imshow(density, origin="lower", extent=extent, cmap="Greys", aspect="equal")
    colors = plt.cm.plasma(np.linspace(0, 1, path.shape[0]))
    for k in range(path.shape[1]):
        axes[2].plot(path[:, k, 0], path[:, k, 1], color="tab:blue", lw=0.8, alpha=0.7)
    axes[2].scatter(path[0, :, 0], path[0, :, 1], s=10, color=colors[0], label="t = 0 (base)")
    axes[2].scatter(path[-1, :, 0], path[-1, :, 1], s=10, color=colors[-1], label="t = T (data)")
    axes[2].legend(loc="lower right", fontsize=7)
    axes[2].set_title("trajectories z(t)")
    for ax in axes:
        ax.set_xlim(-LIMIT, LIMIT)
        ax.set_ylim(-LIMIT, LIMIT)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    return result


def main(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    names = list(TOY_DATASETS) if args.dataset == "all" else [args.dataset]
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    fig, axes = plt.subplots(len(names), 3, figsize=(12, 4 * len(names)), squeeze=False)
    results = {}
    for name, row in zip(names, axes, strict=True):
        r = run_one(name, args, row)
        results[name] = r
        print(
            f"{name:>12}: test NLL {r['test_nll']:.4f} ± {r['test_nll_se']:.4f}, "
            f"true entropy {r['entropy']:.4f}, "
            f"KL(p||q) ≈ {r['kl']:.4f} ± {r['kl_se']:.4f} "
            f"(fit {r['seconds']:.1f} s, {r['seconds_per_step']:.3f} s/step, "
            f"{r['eval_nfe']:.0f} NFE per density solve)"
        )
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    torch.set_num_threads(threads)
    return results


if __name__ == "__main__":
    main(parse_args())
