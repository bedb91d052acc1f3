"""KL(p || q) of pyro_flows' MAF, affine coupling and NSF against zuko's, Pyro's and nflows'.

Targets with exact log-densities: the 2-D toys of :mod:`pyro_flows.datasets` (``8gaussians``,
``checkerboard``) and mixtures of 5 Gaussians in 10 and 32 dimensions with random means and
covariances (``gmm10``, ``gmm32``; see :func:`gaussian_mixture`). Every model has 5
transforms and hidden layers 64-64 in 2-D, 128-128 from 10-D up (8 spline bins on [-5, 5] for
the spline flows), and is trained by the same loop: for each seed the same stream of fresh
minibatches of 512 rows from p, in the same order, the same initial-weight seed, Adam with the
learning rate cosine-annealed from 1e-3 to 0 over ``--steps`` steps, on rows standardised by
the mean and standard deviation of the whole stream (KL is invariant under this affine map).
Each model is then scored on the same fresh test rows from p:

    KL(p || q) = E_p[log p(x) - log q(x)]  ~  the mean over the test rows.

Each cell is the mean over the seeds ± the standard error of that mean (std over seeds /
sqrt(#seeds)), so it includes training variability; the parameter count of each model is
printed with it. Lower is better; 0 is a perfect fit.

    python benchmarks/toys_vs_zuko.py            # MAF and coupling, 4 targets, 3 seeds
    python benchmarks/toys_vs_zuko.py --targets gmm10 --models maf,zuko_maf --seeds 0 --steps 500
    python benchmarks/toys_vs_zuko.py --results runs.jsonl ...   # save runs; skip saved ones
    python benchmarks/toys_vs_zuko.py --report runs.jsonl        # the table of saved runs

Drawing the gmm32 stream peaks at about 12 GB (torch's multivariate normal broadcasts its
Cholesky factor over the 768 000 draws), so run gmm32 in one process at a time.

Needs ``zuko`` (``pip install zuko`` or the ``[bench]`` extra) for the zuko columns;
pyro_flows never imports it. Models whose library is missing are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pyro_flows.datasets import toy_distribution
from pyro_flows.flows import normalizing_flow

TARGETS = ("8gaussians", "checkerboard", "gmm10", "gmm32")
#: The family each model belongs to; a table row compares the models of one family.
FAMILY = {
    "maf": "MAF",
    "zuko_maf": "MAF",
    "nflows_maf": "MAF",
    "realnvp": "coupling",
    "zuko_realnvp": "coupling",
    "pyro_realnvp": "coupling",
    "nflows_realnvp": "coupling",
    "nsf": "NSF",
    "zuko_nsf": "NSF",
}
DEFAULT_MODELS = ("maf", "zuko_maf", "realnvp", "zuko_realnvp", "pyro_realnvp")
LAYERS, BINS, BOUND, BATCH = 5, 8, 5.0, 512


def hidden(dim: int) -> tuple[int, int]:
    """The benchmark's hidden sizes: 64-64 in 2-D, 128-128 from 10-D up."""
    return (64, 64) if dim < 10 else (128, 128)


def gaussian_mixture(dim: int, seed: int = 0, k: int = 5) -> torch.distributions.Distribution:
    r"""A fixed mixture of ``k`` equally weighted Gaussians in ``dim`` dimensions.

    Means :math:`\mu_j \sim \mathcal N(0, 3^2 I)`, covariances :math:`A_j A_j^\top + 0.1 I`
    with :math:`A_j` of i.i.d. :math:`\mathcal N(0, 1/D)` entries, all drawn from a generator
    seeded with ``seed`` (the target does not change with the training seed).
    """
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(k, dim, generator=g)
    a = torch.randn(k, dim, dim, generator=g) / math.sqrt(dim)
    cov = a @ a.transpose(-1, -2) + 0.1 * torch.eye(dim)
    comps = torch.distributions.MultivariateNormal(means, covariance_matrix=cov)
    return torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(k)), comps
    )


def target(name: str) -> torch.distributions.Distribution:
    """``8gaussians``, ``checkerboard``, or ``gmm<D>`` (a :func:`gaussian_mixture` in D dims)."""
    if name.startswith("gmm"):
        return gaussian_mixture(int(name[3:]))
    return toy_distribution(name)


class Ours(nn.Module):
    """A pyro_flows NormalizingFlow, built as a user would, with a log_prob(x)."""

    def __init__(self, family: str, dim: int) -> None:
        super().__init__()
        # Rational-quadratic splines on [-5, 5], as zuko's (Pyro: linear-rational on [-3, 3]).
        kwargs = (
            {"count_bins": BINS, "bound": BOUND, "order": "quadratic"} if family == "nsf" else {}
        )
        self.flow = normalizing_flow(family, dim, LAYERS, hidden_dims=list(hidden(dim)), **kwargs)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.flow.log_prob(x)


class Zuko(nn.Module):
    """A zuko flow with a log_prob(x)."""

    def __init__(self, name: str, dim: int) -> None:
        super().__init__()
        import zuko

        cls = {"maf": zuko.flows.MAF, "realnvp": zuko.flows.RealNVP, "nsf": zuko.flows.NSF}
        kwargs = {"bins": BINS} if name == "nsf" else {}
        self.flow = cls[name](dim, transforms=LAYERS, hidden_features=hidden(dim), **kwargs)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.flow().log_prob(x)


class PyroCoupling(nn.Module):
    """Pyro's ``affine_coupling`` layers with a reversal between them (clamp [-5, 3])."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        import pyro.distributions.transforms as T

        self.layers = nn.ModuleList(
            T.affine_coupling(dim, hidden_dims=list(hidden(dim))) for _ in range(LAYERS)
        )
        perm = T.Permute(torch.arange(dim - 1, -1, -1))
        self.parts = [perm if k % 2 else self.layers[k // 2] for k in range(2 * LAYERS - 1)]
        self.register_buffer("zeros", torch.zeros(dim))

    def log_prob(self, x: Tensor) -> Tensor:
        import pyro.distributions as dist

        base = dist.Normal(self.zeros, 1.0).to_event(1)
        out = dist.TransformedDistribution(base, self.parts).log_prob(x)
        for layer in self.layers:  # Pyro caches on tensor identity only (pyro-ppl/pyro#2564)
            layer._cached_x_y = (None, None)
        return out


class NflowsMAF(nn.Module):
    """nflows' MAF with 2-hidden-layer MADEs of the benchmark's width (no residual blocks)."""

    def __init__(self, family: str, dim: int) -> None:
        super().__init__()
        from nflows.distributions.normal import StandardNormal
        from nflows.flows.base import Flow
        from nflows.nn.nets import MLP
        from nflows.transforms import (
            AffineCouplingTransform,
            CompositeTransform,
            MaskedAffineAutoregressiveTransform,
            ReversePermutation,
        )

        width = hidden(dim)
        layers: list[nn.Module] = []
        mask = torch.ones(dim)
        mask[::2] = -1
        for k in range(LAYERS):
            if family == "maf":
                if k > 0:
                    layers.append(ReversePermutation(dim))
                layers.append(
                    MaskedAffineAutoregressiveTransform(
                        features=dim,
                        hidden_features=width[0],
                        num_blocks=len(width) - 1,
                        use_residual_blocks=False,
                    )
                )
            else:
                layers.append(AffineCouplingTransform(mask.clone(), _mlp_factory(MLP, width)))
                mask *= -1
        self.flow = Flow(CompositeTransform(layers), StandardNormal([dim]))

    def log_prob(self, x: Tensor) -> Tensor:
        return self.flow.log_prob(x)


def _mlp_factory(mlp: type, width: Sequence[int]) -> Callable[[int, int], nn.Module]:
    class _Net(nn.Module):  # nflows' coupling calls net(x, context); its MLP takes x only
        def __init__(self, i: int, o: int) -> None:
            super().__init__()
            self.net = mlp([i], [o], list(width))

        def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
            return self.net(x)

    return _Net


BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "maf": lambda d: Ours("maf", d),
    "realnvp": lambda d: Ours("affine_coupling", d),
    "nsf": lambda d: Ours("nsf", d),  # Pyro's spline autoregressive layers, used backwards
    "zuko_maf": lambda d: Zuko("maf", d),
    "zuko_realnvp": lambda d: Zuko("realnvp", d),
    "zuko_nsf": lambda d: Zuko("nsf", d),
    "pyro_realnvp": PyroCoupling,
    "nflows_maf": lambda d: NflowsMAF("maf", d),
    "nflows_realnvp": lambda d: NflowsMAF("realnvp", d),
}


def num_params(model: nn.Module) -> int:
    """Trainable parameters, counting every entry of a masked weight (as each library does)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_data(
    p: torch.distributions.Distribution, steps: int, num_test: int, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The standardised minibatch stream ``(steps, 512, D)``, test rows, and log p of them."""
    torch.manual_seed(1_000_003 + seed)  # torch's samplers draw from the global generator
    stream = p.sample((steps, BATCH)).float()
    test = p.sample((num_test,)).float()
    flat = stream.reshape(-1, stream.shape[-1])
    loc, scale = flat.mean(0), flat.std(0)
    # KL is invariant under the affine map once log p gets its log-det, sum(log std).
    log_p = p.log_prob(test.double()).double() + scale.double().log().sum()
    return (stream - loc) / scale, (test - loc) / scale, log_p


def train(model: nn.Module, stream: Tensor, lr: float) -> float:
    """The shared loop over the stream's minibatches; returns the wall time in seconds."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, len(stream))
    t0 = time.perf_counter()
    for batch in stream:
        loss = -model.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - t0


def render(runs: Sequence[dict], models: Sequence[str] | None = None) -> str:
    """The markdown table of ``runs``: one row per (target, family), mean ± SE over seeds."""
    # one run per (target, model, seed, steps): the last one saved wins
    runs = list({(r["target"], r["model"], r["seed"], r["steps"]): r for r in runs}.values())
    targets = list(dict.fromkeys(r["target"] for r in runs))
    models = list(models or [m for m in BUILDERS if any(r["model"] == m for r in runs)])
    lines = []
    for fam in dict.fromkeys(FAMILY[m] for m in models):
        cols = [m for m in models if FAMILY[m] == fam]
        lines += ["", f"{fam}: KL(p || q) in nats, mean ± SE over seeds [parameters]"]
        lines.append("| target | " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * (len(cols) + 1))
        for t in targets:
            cells = {}
            for m in cols:
                kls = [r["kl"] for r in runs if r["target"] == t and r["model"] == m]
                if not kls:
                    continue
                mean = sum(kls) / len(kls)
                se = (
                    float(torch.tensor(kls, dtype=torch.float64).std()) / math.sqrt(len(kls))
                    if len(kls) > 1
                    else float("nan")
                )
                n = next(r["params"] for r in runs if r["target"] == t and r["model"] == m)
                cells[m] = (mean, se, n, len(kls))
            if not cells:
                continue
            best = min(c[0] for c in cells.values())
            row = []
            for m in cols:
                if m not in cells:
                    row.append("n/a")
                    continue
                mean, se, n, k = cells[m]
                text = f"{mean:.3f} ± {se:.3f} [{n:,}]" + ("" if k == 3 else f" ({k} seeds)")
                row.append(f"**{text}**" if mean == best else text)
            lines.append(f"| {t} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"from {','.join(BUILDERS)}")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num-test", type=int, default=20_000)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--results",
        default=None,
        help="append every run to this JSON-lines file; runs already there are not redone",
    )
    p.add_argument("--report", default=None, help="print the table of a --results file; no runs")
    args = p.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            runs = [json.loads(line) for line in f if line.strip()]
        print(render(runs))
        return runs
    torch.set_num_threads(args.threads)
    models = args.models.split(",")
    unknown = [m for m in models if m not in BUILDERS]
    if unknown:
        p.error(f"unknown --models {unknown}; choose from {','.join(BUILDERS)}")
    runs: list[dict] = []
    done: dict[tuple, dict] = {}
    if args.results and os.path.exists(args.results):
        with open(args.results) as f:  # resume: runs already saved there are not redone
            for line in filter(str.strip, f):
                r = json.loads(line)
                done[(r["target"], r["model"], r["seed"], r["steps"])] = r
    for name in args.targets.split(","):
        p_x = target(name)
        for seed in (int(s) for s in args.seeds.split(",")):
            stream, test, log_p = make_data(p_x, args.steps, args.num_test, seed)
            for m in models:
                if (name, m, seed, args.steps) in done:
                    runs.append(done[(name, m, seed, args.steps)])
                    continue
                torch.manual_seed(seed)  # the same initial-weight seed for every model
                try:
                    model = BUILDERS[m](stream.shape[-1])
                except ImportError as e:
                    print(f"[{name}] {m}: skipped ({e})", flush=True)
                    continue
                seconds = train(model, stream, args.lr)
                with torch.no_grad():
                    log_q = torch.cat([model.log_prob(t) for t in test.split(4096)]).double()
                kl = (log_p - log_q).mean().item()
                run = dict(
                    target=name,
                    model=m,
                    seed=seed,
                    steps=args.steps,
                    kl=kl,
                    params=num_params(model),
                    seconds=round(seconds, 1),
                )
                runs.append(run)
                print(
                    f"[{name} seed {seed}] {m}: KL {kl:.4f} [{run['params']:,}] ({seconds:.0f}s)",
                    flush=True,
                )
                if args.results:
                    with open(args.results, "a") as f:
                        f.write(json.dumps(run) + "\n")
    print(f"\n{args.steps} steps, batch {BATCH}, lr {args.lr} cosine, seeds {args.seeds}")
    print(render(runs, models))
    return runs


if __name__ == "__main__":
    main()
