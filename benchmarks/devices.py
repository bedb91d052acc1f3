"""Throughput of MAF, NSF, Glow and FFJORD on every available device: log_prob, sample, train step.

For each device (the CPU, every CUDA device, and Apple's MPS when present, or those given with
``--devices``) and each family, a ``NormalizingFlow(build(family, D, K), D)`` is timed on:

* ``log_prob``: the log-density of ``--rows`` rows under ``torch.no_grad()``;
* ``sample``: drawing ``--rows`` rows under ``torch.no_grad()`` (MAF and NSF invert their
  autoregressive layers one dimension at a time, FFJORD solves its ODE);
* ``train step``: one Adam step on a minibatch of ``--batch`` rows (forward, backward, update),
  which is what :func:`pyro_flows.training.fit` repeats.

Each figure is the median over ``--repeats`` timed calls after one warm-up call, with
``torch.cuda.synchronize()`` around CUDA calls, and is printed as rows per second (steps per
second for the train step). The same command answers "how fast on a GPU" on any machine
that has one; where there is none, only the CPU rows are printed.

Run ``python benchmarks/devices.py --help``; the numbers are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from pyro_flows.distributions import NormalizingFlow
from pyro_flows.flows import build

FAMILIES = ("maf", "nsf", "glow", "ffjord")


def available_devices() -> list[str]:
    """The CPU, each CUDA device and MPS, where present."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """The median wall time of ``fn()`` in seconds, after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_flow(family: str, dim: int, layers: int, hidden: int) -> NormalizingFlow:
    """The flow of ``family`` that the benchmark times."""
    kwargs = {} if family == "glow" else {"hidden_dims": [hidden, hidden]}
    return NormalizingFlow(build(family, dim, layers, **kwargs), dim)


def bench(family: str, device: torch.device, args: argparse.Namespace) -> dict[str, float]:
    """Rows per second of log_prob and sample, and train steps per second, on ``device``."""
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    flow = make_flow(family, args.dim, args.layers, args.hidden).to(device=device, dtype=dtype)
    x = torch.randn(args.rows, args.dim, device=device, dtype=dtype)
    batch = x[: args.batch]
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4)

    def log_prob() -> None:
        with torch.no_grad():
            flow.log_prob(x)

    def sample() -> None:
        with torch.no_grad():
            flow.sample((args.rows,))

    def step() -> None:
        loss = -flow.log_prob(batch).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return {
        "log_prob rows/s": args.rows / timed(log_prob, device, args.repeats),
        "sample rows/s": args.rows / timed(sample, device, args.repeats),
        "train steps/s": 1 / timed(step, device, args.repeats),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Prints one table row per device and family."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", help="comma-separated devices (default: every available one)")
    p.add_argument("--flows", default=",".join(FAMILIES), help="comma-separated families")
    p.add_argument("--dim", type=int, default=8, help="data dimension D")
    p.add_argument("--layers", type=int, default=4, help="flow layers K")
    p.add_argument("--hidden", type=int, default=64, help="hidden width of each network")
    p.add_argument("--rows", type=int, default=4096, help="rows per log_prob / sample call")
    p.add_argument("--batch", type=int, default=512, help="minibatch rows of a train step")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per figure")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else available_devices()
    names = [n.strip() for n in args.flows.split(",") if n.strip()]
    print(
        f"D={args.dim}, K={args.layers}, hidden {args.hidden}x2, {args.rows} rows per call, "
        f"batch {args.batch}, {args.dtype}, median of {args.repeats}; "
        f"CPU threads {torch.get_num_threads()}"
    )
    if not any(d.startswith("cuda") for d in devices):
        print("no CUDA device here: the GPU rows were not run")
    header = f"{'device':<10} {'flow':<7} {'log_prob rows/s':>16} {'sample rows/s':>14} "
    header += f"{'train steps/s':>14}"
    print(header)
    print("-" * len(header))
    for name in devices:
        device = torch.device(name)
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else name
        for family in names:
            r = bench(family, device, args)
            print(
                f"{name:<10} {family:<7} {r['log_prob rows/s']:>16,.0f} "
                f"{r['sample rows/s']:>14,.0f} {r['train steps/s']:>14,.1f}"
            )
        if device.type == "cuda":
            print(f"           ({name}: {label})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
