"""KL(p || q) of pyro_flows' MAF, RealNVP and spline flows against zuko's at equal step budgets.

Targets with exact log-densities: the 2-D toys of :mod:`pyro_flows.datasets` (``8gaussians``,
``checkerboard``) and a 10-D mixture of 5 Gaussians with random means and covariances
(``gmm10``). Every model (5 transforms, hidden 64-64, 8 spline bins on [-5, 5]) is trained by the same
loop: the same training rows, the same minibatches in the same order, Adam with the learning
rate cosine-annealed from 1e-3 to 0 over ``--steps`` steps, on the rows standardised by the
training mean and standard deviation (spline flows act on a bounded interval; KL is invariant
under this affine map). Each is then scored on the same fresh test rows from p, and

    KL(p || q) = E_p[log p(x) - log q(x)]  ~  the mean over the test rows

is reported with its standard error std / sqrt(n_test). Lower is better; 0 is a perfect fit.

    python benchmarks/toys_vs_zuko.py                  # 3 targets x 6 models, ~10 min, 1 core
    python benchmarks/toys_vs_zuko.py --targets gmm10 --models maf,zuko_maf --steps 500

Needs ``zuko`` (``pip install zuko`` or the ``[bench]`` extra); pyro_flows never imports it.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pyro_flows.datasets import toy_distribution
from pyro_flows.flows import normalizing_flow

TARGETS = ("8gaussians", "checkerboard", "gmm10")
MODELS = ("maf", "realnvp", "nsf", "zuko_maf", "zuko_realnvp", "zuko_nsf")
LAYERS, HIDDEN, BINS, BOUND = 5, (64, 64), 8, 5.0


def gmm10(seed: int = 0) -> torch.distributions.Distribution:
    """A fixed mixture of 5 Gaussians in 10-D: means ~ N(0, 3^2 I), random covariances."""
    g = torch.Generator().manual_seed(seed)
    k, d = 5, 10
    means = 3.0 * torch.randn(k, d, generator=g)
    a = torch.randn(k, d, d, generator=g) / math.sqrt(d)
    cov = a @ a.transpose(-1, -2) + 0.1 * torch.eye(d)
    comps = torch.distributions.MultivariateNormal(means, covariance_matrix=cov)
    mix = torch.distributions.Categorical(torch.ones(k))
    return torch.distributions.MixtureSameFamily(mix, comps)


def target(name: str) -> torch.distributions.Distribution:
    return gmm10() if name == "gmm10" else toy_distribution(name)


class Ours(nn.Module):
    """A pyro_flows NormalizingFlow with a log_prob(x)."""

    def __init__(self, family: str, dim: int) -> None:
        super().__init__()
        # Rational-quadratic splines on [-5, 5], as zuko's (Pyro: linear-rational on [-3, 3]).
        kwargs = (
            {"count_bins": BINS, "bound": BOUND, "order": "quadratic"} if family == "nsf" else {}
        )
        self.flow = normalizing_flow(family, dim, LAYERS, hidden_dims=list(HIDDEN), **kwargs)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.flow.log_prob(x)


class Zuko(nn.Module):
    """A zuko flow with a log_prob(x)."""

    def __init__(self, name: str, dim: int) -> None:
        super().__init__()
        import zuko

        cls = {"maf": zuko.flows.MAF, "realnvp": zuko.flows.RealNVP, "nsf": zuko.flows.NSF}
        kwargs = {"bins": BINS} if name == "nsf" else {}
        self.flow = cls[name](dim, transforms=LAYERS, hidden_features=HIDDEN, **kwargs)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.flow().log_prob(x)


BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "maf": lambda d: Ours("maf", d),
    "realnvp": lambda d: Ours("affine_coupling", d),
    "nsf": lambda d: Ours("nsf", d),  # Pyro's spline autoregressive layers, used backwards
    "zuko_maf": lambda d: Zuko("maf", d),
    "zuko_realnvp": lambda d: Zuko("realnvp", d),
    "zuko_nsf": lambda d: Zuko("nsf", d),
}


def train(model: nn.Module, data: Tensor, args: argparse.Namespace) -> float:
    """The shared loop: returns the wall time in seconds."""
    g = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        idx = torch.randint(len(data), (args.batch_size,), generator=g)
        loss = -model.log_prob(data[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, tuple[float, float]]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num-train", type=int, default=20_000)
    p.add_argument("--num-test", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    models = args.models.split(",")
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for name in args.targets.split(","):
        p_x = target(name)
        torch.manual_seed(args.seed)
        data = p_x.sample((args.num_train,))
        test = p_x.sample((args.num_test,))
        # Every model sees the data standardised by the training mean and std: KL is
        # invariant under this affine map once log p gets its log-det, sum(log std).
        loc, scale = data.mean(0), data.std(0)
        log_p = p_x.log_prob(test) + scale.log().sum()
        data, test = (data - loc) / scale, (test - loc) / scale
        row = {}
        for m in models:
            torch.manual_seed(args.seed)  # same initial-weight seed for every model
            model = BUILDERS[m](data.shape[1])
            seconds = train(model, data, args)
            with torch.no_grad():
                log_q = torch.cat([model.log_prob(t) for t in test.split(4096)])
            diff = (log_p - log_q).double()
            kl, se = diff.mean().item(), (diff.std() / math.sqrt(len(diff))).item()
            row[m] = (kl, se)
            print(f"[{name}] {m}: KL {kl:.4f} ± {se:.4f} ({seconds:.0f}s)", flush=True)
        table[name] = row

    print(f"\nKL(p || q) in nats ± standard error; {args.steps} steps, batch {args.batch_size}")
    print("| target | " + " | ".join(models) + " |")
    print("|" + "---|" * (len(models) + 1))
    for name, row in table.items():
        best = min(v[0] for v in row.values())
        cells = [
            (f"**{k:.3f} ± {s:.3f}**" if k == best else f"{k:.3f} ± {s:.3f}")
            for k, s in (row[m] for m in models)
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return table


if __name__ == "__main__":
    main()
