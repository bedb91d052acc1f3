"""Residual flows: KL on 2-D toys against MAF at their defaults, and the Neumann gradient's cost.

Two tables, one run:

1. KL(p || q) on the 2-D toys ("8gaussians", "checkerboard") of flows built as a user would,
   ``normalizing_flow(name, 2, **kwargs)`` (5 layers at the families' default sizes: MAF
   23 084 parameters, i-ResNet 23 014, Residual Flow 23 034), each fitted with
   ``pyro_flows.training.fit(flow, train, num_steps=1000, seed=s)`` (fit's defaults: batch
   512, Adam lr 1e-3 cosine) on the same training rows and scored on the same fresh test set:

       KL(p || q) = E_p[log p(x) - log q(x)]  (= test NLL - entropy of p),

   estimated without bias by the test mean; the table gives the mean over seeds with the
   standard error across seeds (the test set's own SE, about 0.005, is smaller). The
   residual flows are built with ``inverse=True`` (data scored by one pass of x + g(x); the
   default direction samples in one pass and scores data by fixed-point solves) and scored in
   eval mode, where the log-determinant is exact. ``--variants ablation`` gives the rows of
   the ablation (VARIANTS: the layout before issue 19 at MAF's size, one change at a time).

2. Time and memory per training step at D = 64 of the Russian-roulette estimator with the
   Neumann gradient against naive back-propagation through the same series (same probes, same
   roulette draws, hence the same loss value), for n0 = 2 and 10 terms always computed
   (n = n0 + Geometric(0.5) terms in all, E[n] = n0 + 1), and, for reference, the exact
   log-determinant.
   Memory is the total size of the tensors autograd saves for the backward pass (the part that
   the Neumann gradient saves), counted with ``torch.autograd.graph.saved_tensors_hooks``.

    python benchmarks/iresnet.py --skip-memory     # the defaults table, 3 seeds (~1.5 h busy CPU)
    python benchmarks/iresnet.py --skip-memory --seeds 0 --num-steps 1500 --variants ablation
    python benchmarks/iresnet.py --skip-kl         # the memory table, ~2 min
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Sequence

import torch
from torch import nn

from pyro_flows.datasets import toy_distribution
from pyro_flows.flows import normalizing_flow
from pyro_flows.training import fit

TOYS = ("8gaussians", "checkerboard")
DEFAULT_VARIANTS = ("maf", "iresnet inverse=True", "residual_flow inverse=True")
# One block per layer, 64-64 (the old layout at MAF's size), one change at a time.
_ONE = {"blocks": 1, "hidden_dims": [64, 64], "inverse": True}
#: name -> (family, keyword arguments of normalizing_flow(family, 2, **kwargs)).
VARIANTS: dict[str, tuple[str, dict]] = {
    "maf": ("maf", {}),
    # the defaults: 5 layers of 2 blocks (width 45), affine maps between all blocks, exact
    # log-det; inverse=True scores data in one pass (the default direction samples in one)
    "iresnet": ("iresnet", {}),
    "residual_flow": ("residual_flow", {}),
    "iresnet inverse=True": ("iresnet", {"inverse": True}),
    "residual_flow inverse=True": ("residual_flow", {"inverse": True}),
    # before issue 19 (at MAF's size): 5 blocks 64-64, series or roulette, no affine maps
    "iresnet 5x64 series, no affine": (
        "iresnet",
        {**_ONE, "estimator": "series", "elementwise_affine": False},
    ),
    "residual_flow 5x64 roulette, no affine": (
        "residual_flow",
        {**_ONE, "estimator": "russian_roulette", "elementwise_affine": False},
    ),
    "iresnet 5x64 series + affine": ("iresnet", {**_ONE, "estimator": "series"}),
    "iresnet 5x64 exact + affine": ("iresnet", _ONE),
    "iresnet 5x64 exact + affine, lr 5e-3": ("iresnet", _ONE),
    "iresnet 5x64 exact + affine, inverse=False": ("iresnet", {**_ONE, "inverse": False}),
}
ABLATION = (
    "iresnet 5x64 series, no affine",
    "iresnet 5x64 series + affine",
    "iresnet 5x64 exact + affine",
    "iresnet 5x64 exact + affine, lr 5e-3",
    "iresnet 5x64 exact + affine, inverse=False",
    "iresnet inverse=True",
    "residual_flow 5x64 roulette, no affine",
    "residual_flow inverse=True",
)
#: Variants fitted with another learning rate than fit's default.
LR = {"iresnet 5x64 exact + affine, lr 5e-3": 5e-3}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--toys", default=",".join(TOYS))
    p.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated keys of VARIANTS, or 'ablation' ({len(ABLATION)} rows)",
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--num-steps", type=int, default=1000)
    p.add_argument("--num-train", type=int, default=30_000)
    p.add_argument("--num-test", type=int, default=20_000)
    p.add_argument("--lipschitz", type=float, default=0.9, help="of the memory table")
    p.add_argument("--mem-dim", type=int, default=64)
    p.add_argument("--mem-hidden", type=int, default=256)
    p.add_argument("--mem-layers", type=int, default=4)
    p.add_argument("--mem-batch", type=int, default=256)
    p.add_argument("--mem-steps", type=int, default=20)
    p.add_argument(
        "--mem-exact-terms", default="2,10", help="roulette n_exact_terms values to compare"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    p.add_argument("--skip-kl", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    return p.parse_args(argv)


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def variant_names(spec: str) -> list[str]:
    names = list(ABLATION) if spec == "ablation" else spec.split(",")
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
    return names


def fit_one(name: str, toy: str, seed: int, args: argparse.Namespace) -> tuple[int, float, float]:
    """Fits one variant to one toy with one seed; returns (parameters, KL, seconds/step)."""
    target = toy_distribution(toy)
    gen = torch.Generator().manual_seed(seed)
    train = target.sample((args.num_train,), generator=gen)
    test = target.sample((args.num_test,), generator=gen)
    family, kwargs = VARIANTS[name]
    torch.manual_seed(seed)
    flow = normalizing_flow(family, 2, **kwargs)
    t0 = time.perf_counter()
    fit(
        flow,
        train,
        num_steps=args.num_steps,
        lr=LR.get(name, 1e-3),
        eval_every=max(args.num_steps // 5, 1),
        progress=False,
        seed=seed,
    )
    seconds = time.perf_counter() - t0
    flow.eval()
    with torch.no_grad():
        lq = torch.cat([flow.log_prob(c) for c in test.split(4096)]).double()
    kl = (target.log_prob(test.double()) - lq).mean().item()
    return num_params(flow), kl, seconds / args.num_steps


def kl_table(args: argparse.Namespace) -> list[str]:
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [
        f"| toy | flow | params | KL(p‖q) nats, mean ± SE over {len(seeds)} seed(s) | "
        "per seed | s/step |",
        "|---|---|---:|---:|---|---:|",
    ]
    for toy in args.toys.split(","):
        for name in variant_names(args.variants):
            kls, times = [], []
            for seed in seeds:
                n, kl, per_step = fit_one(name, toy, seed, args)
                kls.append(kl)
                times.append(per_step)
                print(f"  {toy} {name} seed {seed}: KL {kl:.3f}", flush=True)
            mean = sum(kls) / len(kls)
            se = (
                math.sqrt(sum((k - mean) ** 2 for k in kls) / (len(kls) - 1) / len(kls))
                if len(kls) > 1
                else float("nan")
            )
            per_seed = ", ".join(f"{k:.3f}" for k in kls)
            rows.append(
                f"| {toy} | {name} | {n} | {mean:.3f} ± {se:.3f} | {per_seed} | "
                f"{sum(times) / len(times):.3f} |"
            )
            print(rows[-1], flush=True)
    return rows


class SavedBytes:
    """Counts the bytes of the tensors autograd saves for backward (storage counted once)."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, int]] = set()
        self.bytes = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += key[1]
        return t

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def memory_table(args: argparse.Namespace) -> list[str]:
    d = args.mem_dim
    gen = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.5, 2.0, d)
    data = torch.randn(args.mem_batch * args.mem_steps, d, generator=gen) * scale
    variants = []
    for n0 in (int(n) for n in args.mem_exact_terms.split(",")):
        for neumann in (True, False):
            label = f"russian_roulette (n0={n0}), " + (
                "Neumann gradient" if neumann else "naive backprop"
            )
            variants.append((label, {"n_exact_terms": n0, "neumann_gradient": neumann}))
    variants.append(("exact (reference)", {"estimator": "exact"}))
    rows = [
        f"| D = {d}, {args.mem_layers} blocks, hidden {args.mem_hidden}x2, batch "
        f"{args.mem_batch} | ms/step | saved for backward, MiB (mean / max) | loss (mean) |",
        "|---|---:|---:|---:|",
    ]
    for label, kw in variants:
        torch.manual_seed(0)
        flow = normalizing_flow(
            "residual_flow",
            d,
            args.mem_layers,
            hidden_dims=[args.mem_hidden, args.mem_hidden],
            lipschitz=args.lipschitz,
            inverse=True,
            blocks=1,
            **kw,
        )
        opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
        times, mems, losses = [], [], []
        torch.manual_seed(1)  # the same roulette draws and probes for every variant
        for step, x in enumerate(data.split(args.mem_batch)):
            counter = SavedBytes()
            t0 = time.perf_counter()
            opt.zero_grad()
            with counter.hooks():
                loss = -flow.log_prob(x).mean()
            loss.backward()
            opt.step()
            if step > 0:  # the first step also runs the power iterations from scratch
                times.append(time.perf_counter() - t0)
            mems.append(counter.bytes / 2**20)
            losses.append(loss.item())
        rows.append(
            f"| {label} | {1e3 * sum(times) / len(times):.1f} | "
            f"{sum(mems) / len(mems):.1f} / {max(mems):.1f} | {sum(losses) / len(losses):.3f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} thread(s)",
        flush=True,
    )
    tables = []
    if not args.skip_kl:
        tables.append(kl_table(args))
    if not args.skip_memory:
        tables.append(memory_table(args))
    print()
    for t in tables:
        print("\n".join(t))
        print()


if __name__ == "__main__":
    main(parse_args())
