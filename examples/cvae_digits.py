"""Conditional VAE on scikit-learn's digits: Gaussian vs flow posterior vs flow posterior + prior.

The 8x8 digits (1797 images, 17 grey levels) are split into training and held-out test images;
the class is the context y. Three CVAEs with the same encoder and decoder are trained with SVI:

1. Gaussian posterior q(z | x, y), standard normal prior;
2. IAF posterior (a conditional flow), standard normal prior;
3. IAF posterior and a conditional MAF prior p(z | y).

The likelihood is the dequantized logistic (exact probabilities of the 17 levels), so the test
ELBO and the importance-weighted bound (IWAE, K draws) are in nats per image of the discrete
data. A PNG grid shows generated digits per class.

    python examples/cvae_digits.py                  # outputs/cvae_digits.png
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import pyro
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from pyro_flows.distributed import resolve_device  # noqa: E402
from pyro_flows.infer import fit_svi  # noqa: E402
from pyro_flows.models import cvae, elbo, iwae_bound  # noqa: E402

VARIANTS = {
    "Gaussian posterior": {"posterior": "normal", "prior": "normal"},
    "flow posterior": {"posterior": "iaf", "prior": "normal"},
    "flow posterior + flow prior": {"posterior": "iaf", "prior": "maf"},
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-steps", type=int, default=2000, help="SVI steps per model")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--hidden", default="128,128", help="encoder/decoder hidden sizes")
    parser.add_argument("--net", choices=["mlp", "conv"], default="mlp")
    parser.add_argument("--num-layers", type=int, default=4, help="layers of each flow")
    parser.add_argument("--flow-hidden", default="128,128", help="hidden sizes of flow layers")
    parser.add_argument("--num-samples", type=int, default=1000, help="K of the IWAE bound")
    parser.add_argument("--elbo-samples", type=int, default=100, help="draws of the ELBO")
    parser.add_argument("--test-size", type=float, default=0.25, help="held-out fraction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--device",
        default="auto",
        help="where SVI trains: auto (CUDA when present, else the CPU), cpu, cuda or cuda:N "
        "(the evaluation runs on the CPU)",
    )
    parser.add_argument("--out", default="outputs/cvae_digits.png", help="PNG path")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    try:
        resolve_device(args.device)
    except ValueError as e:  # e.g. cuda asked for without CUDA: one line
        parser.error(str(e))
    return args


def load(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)  # levels 0..16
    y = torch.nn.functional.one_hot(torch.tensor(digits.target), 10).float()
    i_train, i_test = train_test_split(
        torch.arange(len(x)).numpy(),
        test_size=args.test_size,
        random_state=args.seed,
        stratify=digits.target,
    )
    return x[i_train], y[i_train], x[i_test], y[i_test]


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), values.std().item() / math.sqrt(len(values))


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    x_train, y_train, x_test, y_test = load(args)
    hidden = [int(h) for h in args.hidden.split(",")]
    flow_hidden = [int(h) for h in args.flow_hidden.split(",")]
    results, per_image, models = {}, {}, {}
    for label, choice in VARIANTS.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        vae = cvae(
            64,
            args.latent_dim,
            10,
            net=args.net,
            image_shape=(1, 8, 8),
            net_hidden_dims=hidden,
            likelihood="dequantized",
            likelihood_kwargs={"num_levels": 17},
            num_layers=args.num_layers,
            hidden_dims=flow_hidden,
            **choice,
        ).to(device)
        t0 = time.perf_counter()
        fit_svi(
            vae.model,
            vae.guide,
            x_train,
            y_train,
            num_steps=args.num_steps,
            lr=args.lr,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            device=device,
        )
        seconds = time.perf_counter() - t0
        vae.cpu()  # its parameters (those of the guide too) come back for the evaluation
        vae.eval()
        e = elbo(vae, x_test, y_test, args.elbo_samples)
        iw = iwae_bound(vae, x_test, y_test, args.num_samples)
        per_image[label] = iw
        results[label] = {"elbo": mean_se(e), "iwae": mean_se(iw), "seconds": seconds}
        models[label] = vae

    base = per_image["Gaussian posterior"]
    for label in VARIANTS:
        results[label]["margin"] = mean_se(per_image[label] - base)  # paired over test images
    print_table(results, args, len(x_test))
    plot(models, args.out)
    print(f"wrote {args.out}")
    return results


def print_table(results: dict, args: argparse.Namespace, num_test: int) -> None:
    print(
        f"\nheld-out digits ({num_test} images), nats per image (higher is better), "
        f"K = {args.num_samples}; +- one standard error\n"
    )
    print("| model | test ELBO | test IWAE bound | IWAE gain vs Gaussian (paired) | train (s) |")
    print("|---|---|---|---|---|")
    for label, r in results.items():
        (e, e_se), (iw, iw_se), (m, m_se) = r["elbo"], r["iwae"], r["margin"]
        print(
            f"| {label} | {e:.2f} +- {e_se:.2f} | {iw:.2f} +- {iw_se:.2f} "
            f"| {m:+.2f} +- {m_se:.2f} | {r['seconds']:.0f} |"
        )


def plot(models: dict, out: str, per_class: int = 8) -> None:
    fig = Figure(figsize=(3.2 * len(models), 4.2), layout="constrained")
    axes = fig.subplots(1, len(models))
    eye = torch.eye(10)
    for ax, (label, vae) in zip(axes, models.items(), strict=True):
        # rows: classes 0..9; columns: draws of E[x | z, y], z ~ p(z | y)
        with torch.no_grad():
            imgs = vae.sample(eye, per_class, mean=True)  # (per_class, 10, 64)
        grid = imgs.permute(1, 0, 2).reshape(10, per_class, 8, 8)
        grid = grid.permute(0, 2, 1, 3).reshape(80, 8 * per_class)
        ax.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=16)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([4 + 8 * k for k in range(10)], [str(k) for k in range(10)])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(parse_args())
