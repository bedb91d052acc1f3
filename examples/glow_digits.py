"""Glow on scikit-learn's 8x8 digits (17 grey levels): test bits/dim and samples.

Trains, on the same seeded split (1 437 train / 360 test images), and prints one table of
test bits/dim:

- an independent per-pixel categorical (add-one smoothed counts): the bar to clear;
- RealNVP on the flattened pixels (``normalizing_flow("realnvp", 64, ...)``), uniform
  dequantization and a logit;
- multi-scale Glow with uniform dequantization;
- the same Glow with variational dequantization (Flow++), q(u|x) trained jointly;
- a class-conditional Glow, p(x | label) (a different quantity: it is given the label).

For each flow: the variational bound and the importance-weighted estimate (``--iw-samples``
draws of the noise). It then writes a PNG with real test digits next to samples of the
variational Glow at temperatures 0.7 and 1.0, and class-conditional samples, one row per digit.

    python examples/glow_digits.py            # 8.5 min wall, 5.9 CPU-min, one shared core
    python examples/glow_digits.py --num-steps 200 --out /tmp/glow.png
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pyro_flows.datasets import load_digits  # noqa: E402
from pyro_flows.dequantization import (  # noqa: E402
    DequantizedFlow,
    UniformDequantization,
    VariationalDequantization,
)
from pyro_flows.distributed import resolve_device  # noqa: E402
from pyro_flows.flows import normalizing_flow  # noqa: E402
from pyro_flows.glow import Glow  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-steps", type=int, default=3000, help="Adam steps per Glow model")
    p.add_argument("--realnvp-steps", type=int, default=None, help="default: --num-steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--levels", type=int, default=2, help="Glow levels L")
    p.add_argument("--steps-per-level", type=int, default=4, help="Glow steps K per level")
    p.add_argument("--hidden", type=int, default=64, help="channels of the coupling nets")
    p.add_argument("--deq-steps", type=int, default=2, help="coupling steps of q(u|x)")
    p.add_argument("--deq-hidden", type=int, default=32, help="channels of q(u|x)'s nets")
    p.add_argument("--realnvp-layers", type=int, default=8)
    p.add_argument("--realnvp-hidden", type=int, default=64)
    p.add_argument("--iw-samples", type=int, default=64, help="K of the IW estimate")
    p.add_argument("--num-test", type=int, default=360, help="held-out digits")
    p.add_argument("--num-samples", type=int, default=10, help="samples per row in the PNG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/glow_digits.png")
    p.add_argument("--threads", type=int, default=1, help="torch threads (small convs)")
    p.add_argument(
        "--device",
        default="auto",
        help="where the models train: auto (CUDA when present, else the CPU), cpu, cuda or "
        "cuda:N (evaluation and sampling run on the CPU)",
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        resolve_device(args.device)
    except ValueError as e:  # e.g. cuda asked for without CUDA: one line
        p.error(str(e))
    return args


def categorical_baseline(train, test, levels):
    """Bits/dim of independent per-pixel categoricals with add-one smoothed counts."""
    train, test = train.flatten(1).long(), test.flatten(1).long()
    counts = torch.ones(train.shape[1], levels)
    counts.scatter_add_(1, train.T, torch.ones_like(train.T, dtype=counts.dtype))
    log_p = (counts / counts.sum(1, keepdim=True)).log()
    nats = log_p.gather(1, test.T).sum(0)  # per test image
    return (-nats / (train.shape[1] * math.log(2))).mean().item()


def train(model, x, y, args, label):
    """Maximises the variational bound (minimises bits/dim) with Adam, cosine learning rate.

    The model trains on ``args.device``, the rows moved there a minibatch at a time, and
    comes back to the CPU.
    """
    device = resolve_device(args.device)
    model.to(device)
    steps = args.num_steps if label != "RealNVP" else (args.realnvp_steps or args.num_steps)
    g = torch.Generator().manual_seed(args.seed)
    first = torch.randperm(len(x), generator=g)[: max(args.batch_size, 256)]
    with torch.no_grad():  # ActNorm's data-dependent initialisation on a large first batch
        model.elbo(x[first].to(device), None if y is None else y[first].to(device))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    bar = tqdm(range(steps), desc=label, disable=args.no_progress, leave=False)
    for _ in bar:
        idx = torch.randint(0, len(x), (args.batch_size,), generator=g)
        xb, yb = x[idx].to(device), None if y is None else y[idx].to(device)
        loss = model.bits_per_dim(xb, yb).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 50.0)
        opt.step()
        sched.step()
        bar.set_postfix(bpd=f"{loss.item():.3f}")
    return model.cpu()


@torch.no_grad()
def evaluate(model, x, y, num_samples, batch=120):
    """Test bits/dim: the variational bound (K draws averaged) and the IW estimate (K draws)."""
    model.eval()
    bound, iw = [], []
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], None if y is None else y[i : i + batch]
        log_w = model.log_weights(xb, yb, num_samples)
        bound.append(log_w.mean(0))
        iw.append(torch.logsumexp(log_w, 0) - math.log(num_samples))
    to_bpd = -1.0 / (model.num_dims * math.log(2))
    return (to_bpd * torch.cat(bound)).mean().item(), (to_bpd * torch.cat(iw)).mean().item()


def glow(args, num_classes=None):
    hidden = [args.hidden, args.hidden]
    return Glow((1, 8, 8), args.levels, args.steps_per_level, hidden, num_classes=num_classes)


def plot(real, samples, class_samples, out):
    panels = [("test digits", real), *samples, ("class-conditional, T = 0.7", class_samples)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (title, grid) in zip(axes, panels, strict=True):
        rows, cols = grid.shape[:2]
        tiles = torch.zeros(rows * 9 + 1, cols * 9 + 1)  # one blank pixel between digits
        for i in range(rows):
            for j in range(cols):
                tiles[1 + 9 * i : 9 * (i + 1), 1 + 9 * j : 9 * (j + 1)] = grid[i, j]
        ax.imshow(tiles.numpy(), cmap="gray_r", vmin=0, vmax=16)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(args):
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)


def _main(args):
    torch.manual_seed(args.seed)
    data = load_digits(num_test=args.num_test, seed=args.seed)
    x, y, xt, yt, levels = data
    shape = (1, 8, 8)
    results = {}

    def run(label, model, flat=False, labels=False):
        start = time.perf_counter()
        xs, xts = (x.flatten(1), xt.flatten(1)) if flat else (x, xt)
        ys, yts = (y, yt) if labels else (None, None)
        train(model, xs, ys, args, label)
        bound, iw = evaluate(model, xts, yts, args.iw_samples)
        seconds = time.perf_counter() - start
        results[label] = {"bound": bound, "iw": iw, "seconds": seconds}
        return model

    base = categorical_baseline(x, xt, levels)
    results["per-pixel categorical"] = {"bound": base, "iw": base, "seconds": 0.0}
    torch.manual_seed(args.seed)
    realnvp = normalizing_flow(
        "realnvp",
        64,
        num_layers=args.realnvp_layers,
        hidden_dims=[args.realnvp_hidden] * 2,
    )
    run("RealNVP", DequantizedFlow(realnvp, UniformDequantization(64, levels)), flat=True)
    torch.manual_seed(args.seed)
    run("Glow + uniform", DequantizedFlow(glow(args), UniformDequantization(shape, levels)))
    torch.manual_seed(args.seed)
    deq = VariationalDequantization(
        shape, levels, num_steps=args.deq_steps, hidden_channels=[args.deq_hidden] * 2
    )
    variational = run("Glow + variational", DequantizedFlow(glow(args), deq))
    torch.manual_seed(args.seed)
    conditional = run(
        "Glow + variational, p(x | label)",
        DequantizedFlow(
            glow(args, num_classes=10),
            VariationalDequantization(
                shape, levels, num_steps=args.deq_steps, hidden_channels=[args.deq_hidden] * 2
            ),
        ),
        labels=True,
    )

    print(f"\ntest bits/dim on {len(xt)} held-out digits (8x8, {levels} levels):")
    print(f"| model | bound | IW, K={args.iw_samples} | train+eval s |")
    print("|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['bound']:.3f} | {r['iw']:.3f} | {r['seconds']:.0f} |")

    n = args.num_samples
    torch.manual_seed(args.seed + 1)
    with torch.no_grad():
        samples = [
            (
                f"variational Glow, T = {t}",
                variational.sample(variational.flow.sample(n * n, temperature=t)),
            )
            for t in (0.7, 1.0)
        ]
        w = conditional.flow.sample(n, y=torch.arange(10), temperature=0.7)  # (n, 10, 1, 8, 8)
        class_samples = conditional.sample(w).transpose(0, 1)
    out = Path(args.out)
    real = xt[: n * n].reshape(n, n, 8, 8)
    plot(
        real,
        [(t, s.reshape(n, n, 8, 8)) for t, s in samples],
        class_samples.reshape(10, n, 8, 8),
        out,
    )
    print(f"samples written to {out}")
    return results


if __name__ == "__main__":
    main(parse_args())
