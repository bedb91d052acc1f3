"""Residual flows: KL on 2-D toys against MAF, and the cost of the Neumann-series gradient.

Two tables, one run:

1. KL(p || q) on the 2-D toys ("checkerboard", "8gaussians") of an i-ResNet (ELU, truncated
   power series), a Residual Flow (LipSwish, unbiased Russian roulette with the Neumann
   gradient) and MAF, at similar parameter counts, each trained with
   ``pyro_flows.training.fit`` on the same data and scored on the same fresh test set:

       KL(p || q) = E_p[log p(x) - log q(x)]  (= test NLL - entropy of p),

   estimated without bias by the test mean, with its standard error. The residual blocks are
   built with ``inverse=True`` (one pass of x + g(x) scores data) and are scored in eval mode,
   where the log-determinant is exact.

2. Time and memory per training step at D = 64 of the Russian-roulette estimator with the
   Neumann gradient against naive back-propagation through the same series (same probes, same
   roulette draws, hence the same loss value), for n0 = 2 and 10 terms always computed
   (n = n0 + Geometric(0.5) terms in all, E[n] = n0 + 1), and, for reference, the exact
   log-determinant.
   Memory is the total size of the tensors autograd saves for the backward pass (the part that
   the Neumann gradient saves), counted with ``torch.autograd.graph.saved_tensors_hooks``.

    python benchmarks/iresnet.py                       # defaults, ~9 min on 1 busy thread
    python benchmarks/iresnet.py --num-steps 300 --mem-steps 5   # a quick look
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

TOYS = ("checkerboard", "8gaussians")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--toys", default=",".join(TOYS))
    p.add_argument("--flows", default="iresnet,residual_flow,maf")
    p.add_argument("--num-steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--num-layers", type=int, default=8, help="layers of every 2-D flow")
    p.add_argument("--hidden", type=int, default=64, help="width of the 2 hidden layers")
    p.add_argument("--lipschitz", type=float, default=0.9)
    p.add_argument("--n-terms", type=int, default=5, help="terms of the i-ResNet series")
    p.add_argument("--num-train", type=int, default=30_000)
    p.add_argument("--num-test", type=int, default=20_000)
    p.add_argument("--mem-dim", type=int, default=64)
    p.add_argument("--mem-hidden", type=int, default=256)
    p.add_argument("--mem-layers", type=int, default=4)
    p.add_argument("--mem-batch", type=int, default=256)
    p.add_argument("--mem-steps", type=int, default=20)
    p.add_argument(
        "--mem-exact-terms", default="2,10", help="roulette n_exact_terms values to compare"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-kl", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    return p.parse_args(argv)


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_flow(kind: str, args: argparse.Namespace) -> nn.Module:
    hidden = [args.hidden, args.hidden]
    if kind == "maf":
        return normalizing_flow("maf", 2, args.num_layers, hidden_dims=hidden)
    common = {"lipschitz": args.lipschitz, "inverse": True}
    if kind == "iresnet":
        return normalizing_flow(
            "iresnet", 2, args.num_layers, hidden_dims=hidden, n_terms=args.n_terms, **common
        )
    return normalizing_flow("residual_flow", 2, args.num_layers, hidden_dims=hidden, **common)


def kl_table(args: argparse.Namespace) -> list[str]:
    rows = [
        "| toy | flow | params | KL(p‖q) nats ± SE | test NLL | train s | s/step |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for toy in args.toys.split(","):
        target = toy_distribution(toy)
        gen = torch.Generator().manual_seed(args.seed)
        train = target.sample((args.num_train,), generator=gen)
        test = target.sample((args.num_test,), generator=gen)
        lp = target.log_prob(test.double())
        for kind in args.flows.split(","):
            torch.manual_seed(args.seed)
            flow = make_flow(kind, args)
            t0 = time.perf_counter()
            fit(
                flow,
                train,
                num_steps=args.num_steps,
                batch_size=args.batch_size,
                lr=args.lr,
                eval_every=max(args.num_steps // 5, 1),
                progress=False,
                seed=args.seed,
            )
            seconds = time.perf_counter() - t0
            flow.eval()
            with torch.no_grad():
                lq = torch.cat([flow.log_prob(c) for c in test.split(4096)]).double()
            gap = lp - lq
            n = len(gap)
            kl, se = gap.mean().item(), gap.std().item() / math.sqrt(n)
            rows.append(
                f"| {toy} | {kind} | {num_params(flow)} | {kl:.3f} ± {se:.3f} | "
                f"{-lq.mean().item():.3f} | {seconds:.0f} | {seconds / args.num_steps:.4f} |"
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
    gen = torch.Generator().manual_seed(args.seed)
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
        torch.manual_seed(args.seed)
        flow = normalizing_flow(
            "residual_flow",
            d,
            args.mem_layers,
            hidden_dims=[args.mem_hidden, args.mem_hidden],
            lipschitz=args.lipschitz,
            inverse=True,
            **kw,
        )
        opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
        times, mems, losses = [], [], []
        torch.manual_seed(args.seed + 1)  # the same roulette draws and probes for every variant
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
