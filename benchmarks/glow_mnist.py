"""Glow on MNIST (28x28, 256 levels) under a fixed CPU time budget: test bits/dim.

Reads ``mnist/mnist_t10k.npz`` from ``../shared/data`` (or ``--data-dir``, or
``$PYRO_FLOWS_DATA``): the 10 000 official test digits, split 9 000 train / 1 000 test with a
fixed seed. Trains a multi-scale Glow with uniform (or ``--dequantization variational``)
dequantization and a logit pre-processing for ``--budget`` seconds of wall time on the CPU,
then prints the test bits/dim (variational bound and importance-weighted estimate) next to the
published Glow figure, 1.05 bits/dim (Kingma & Dhariwal, 2018: 60 000 training images, a
far larger model, days on GPUs). Exits cleanly with a message when the data is absent.

    python benchmarks/glow_mnist.py                     # 10 min budget
    python benchmarks/glow_mnist.py --budget 60 --num-test 200
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from tqdm import tqdm

from pyro_flows.datasets import load_mnist
from pyro_flows.dequantization import (
    DequantizedFlow,
    UniformDequantization,
    VariationalDequantization,
)
from pyro_flows.glow import Glow

PUBLISHED = 1.05  # Glow, MNIST, bits/dim (Kingma & Dhariwal, 2018, table 2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=600.0, help="training wall time, seconds")
    p.add_argument("--data-dir", default=None, help="folder holding mnist/mnist_t10k.npz")
    p.add_argument("--num-test", type=int, default=1000)
    p.add_argument("--levels", type=int, default=2, help="Glow levels L")
    p.add_argument("--steps-per-level", type=int, default=4, help="Glow steps K per level")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dequantization", choices=["uniform", "variational"], default="uniform")
    p.add_argument("--iw-samples", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


@torch.no_grad()
def evaluate(model, x, num_samples, batch=100):
    model.eval()
    bound, iw = [], []
    for i in range(0, len(x), batch):
        log_w = model.log_weights(x[i : i + batch], num_samples=num_samples)
        bound.append(log_w.mean(0))
        iw.append(torch.logsumexp(log_w, 0) - math.log(num_samples))
    to_bpd = -1.0 / (model.num_dims * math.log(2))
    return (to_bpd * torch.cat(bound)).mean().item(), (to_bpd * torch.cat(iw)).mean().item()


def main(args):
    data = load_mnist(args.data_dir, num_test=args.num_test, seed=args.seed)
    if data is None:
        print("MNIST not found (mnist/mnist_t10k.npz under --data-dir or ../shared/data): skipped")
        return None
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, xt, levels = data.train_x, data.test_x, data.levels
    shape = tuple(x.shape[1:])
    glow = Glow(shape, args.levels, args.steps_per_level, [args.hidden, args.hidden])
    if args.dequantization == "uniform":
        deq = UniformDequantization(shape, levels)
    else:
        deq = VariationalDequantization(shape, levels, num_steps=2, hidden_channels=[32, 32])
    model = DequantizedFlow(glow, deq)
    with torch.no_grad():
        model.elbo(x[:256])  # ActNorm's data-dependent initialisation
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    start, steps, loss = time.perf_counter(), 0, float("nan")
    bar = tqdm(total=int(args.budget), unit="s", disable=args.no_progress)
    while (elapsed := time.perf_counter() - start) < args.budget:
        idx = torch.randint(0, len(x), (args.batch_size,), generator=g)
        loss = model.bits_per_dim(x[idx]).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 50.0)
        opt.step()
        steps += 1
        bar.update(int(elapsed) - bar.n)
        bar.set_postfix(bpd=f"{loss.item():.3f}", steps=steps)
    bar.close()
    train_seconds = time.perf_counter() - start
    bound, iw = evaluate(model, xt, args.iw_samples)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"Glow L={args.levels} K={args.steps_per_level} hidden={args.hidden} "
        f"({params / 1e6:.2f} M parameters), {args.dequantization} dequantization, "
        f"{steps} steps of batch {args.batch_size} in {train_seconds:.0f} s "
        f"({args.threads} CPU thread(s)), {len(x)} train / {len(xt)} test digits"
    )
    print(f"| model | test bits/dim (bound) | IW, K={args.iw_samples} | published |")
    print("|---|---|---|---|")
    print(f"| pyro_flows Glow, {train_seconds / 60:.0f} CPU min | {bound:.3f} | {iw:.3f} | - |")
    print(f"| Glow (Kingma & Dhariwal, 2018) | - | - | {PUBLISHED} |")
    return {"bound": bound, "iw": iw, "steps": steps, "seconds": train_seconds}


if __name__ == "__main__":
    main(parse_args())
