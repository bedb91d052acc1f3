"""FFJORD of pyro_flows against zuko's CNF: KL(p || q), training-step time and NFE on 2-D toys.

Both libraries train the *same model*: zuko's CNF field (an MLP on (cos k pi t, sin k pi t,
x), k = 1..3, hidden 64-64, ELU) integrated by zuko from data (t = 0) to noise (t = 1), and in
pyro_flows the very same MLP weights as the field g(t, x) = -f(1 - t, x) of an FFJORD layer
integrated from noise (t = 0) to data (t = 1); these are one density, so any difference comes
from the solvers and the gradient methods. Both use the exact trace, the same tolerances
(``--rtol``, ``--atol``), the same init, the same minibatches in the same order, Adam with the
same learning rate. Their steps are interleaved (one step of each in turn), so a busy machine
slows both alike. The table gives per model

* KL(p || q) = E_p[log p(x) - log q(x)], estimated on fresh test rows, ± its standard error;
* the mean wall time of a training step (loss, backward, optimizer), and the ratio to zuko;
* the mean NFE per training step, forward (solve for the loss) and backward.

    python benchmarks/ffjord_vs_zuko.py                           # 2 toys, 200 steps
    python benchmarks/ffjord_vs_zuko.py --num-steps 1000 --modes backprop,adjoint

Needs ``zuko`` (``pip install zuko`` or the ``[bench]`` extra); pyro_flows never imports it.
zuko's solver is its own adaptive Dormand-Prince 5(4) with a max-norm error and adaptive
checkpoint adjoint gradients; pyro_flows uses torchdiffeq's dopri5 with an RMS error norm and
either back-propagation through the solver (``backprop``) or the adjoint ODE (``adjoint``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pyro_flows.datasets import toy_distribution
from pyro_flows.distributions import NormalizingFlow
from pyro_flows.nn import VectorField
from pyro_flows.transforms import FFJORD

TOYS = ("8gaussians", "checkerboard")
MODES = ("backprop", "adjoint")
HIDDEN, FREQS = [64, 64], 3


class Reversed(nn.Module):
    """g(t, x) = -f(T - t, x): the ODE of ``f`` run backwards in time, as a forward field."""

    def __init__(self, field: nn.Module, end_time: float = 1.0) -> None:
        super().__init__()
        self.field = field
        self.end_time = end_time

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return -self.field(self.end_time - t, x)


def ours_from_zuko(cnf: nn.Module, mode: str, rtol: float, atol: float) -> NormalizingFlow:
    """An FFJORD flow with the same density as the zuko CNF ``cnf``, from a copy of its weights."""
    field = VectorField(2, HIDDEN, activation="elu", time_freqs=FREQS, concat_squash=False)
    mlp = [m for m in cnf.transform.ode if hasattr(m, "weight")]
    with torch.no_grad():
        for ours, theirs in zip(field.layers, mlp, strict=True):
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
        # zuko's input is (time features, x); ours is (x, time features)
        w = mlp[0].weight
        field.layers[0].weight.copy_(torch.cat([w[:, 2 * FREQS :], w[:, : 2 * FREQS]], dim=1))
    layer = FFJORD(
        2, Reversed(field), trace="exact", rtol=rtol, atol=atol, adjoint=mode == "adjoint"
    )
    return NormalizingFlow(layer, 2)


class ZukoCounter:
    """Counts the calls of zuko's field, split by whether a backward pass is running."""

    def __init__(self, transform: nn.Module) -> None:
        self.forward = self.backward = 0
        self.in_backward = False
        f = transform.f

        def counted(*args: object, **kwargs: object) -> Tensor:
            if self.in_backward:
                self.backward += 1
            else:
                self.forward += 1
            return f(*args, **kwargs)

        transform.f = counted


def make_zuko(rtol: float, atol: float) -> nn.Module:
    import zuko

    return zuko.flows.CNF(2, freqs=FREQS, hidden_features=HIDDEN, rtol=rtol, atol=atol)


def kl(log_q: Tensor, log_p: Tensor) -> tuple[float, float]:
    gap = (log_p - log_q).double()
    return gap.mean().item(), gap.std().item() / math.sqrt(gap.numel())


def run_toy(name: str, args: argparse.Namespace) -> list[dict[str, object]]:
    p = toy_distribution(name)
    gen = torch.Generator().manual_seed(args.seed)
    batches = p.sample((args.num_steps, args.batch_size), generator=gen)
    test = p.sample((args.num_test,), generator=gen)

    torch.manual_seed(args.seed)
    zuko_flow = make_zuko(args.rtol, args.atol)
    counter = ZukoCounter(zuko_flow.transform)
    models: dict[str, nn.Module] = {}
    for mode in args.modes:
        models[f"pyro_flows ({mode})"] = ours_from_zuko(zuko_flow, mode, args.rtol, args.atol)
    models["zuko CNF"] = zuko_flow

    def log_prob(label: str, x: Tensor) -> Tensor:
        m = models[label]
        return m().log_prob(x) if label == "zuko CNF" else m.log_prob(x)

    with torch.no_grad():  # the same density at init, up to the solvers' tolerances
        x0 = test[:256]
        ref = log_prob("zuko CNF", x0)
        init_gap = {k: (log_prob(k, x0) - ref).abs().max().item() for k in models}

    optims = {k: torch.optim.Adam(m.parameters(), lr=args.lr) for k, m in models.items()}
    seconds = dict.fromkeys(models, 0.0)
    nfe_fwd = dict.fromkeys(models, 0)
    nfe_bwd = dict.fromkeys(models, 0)
    layers = {k: m.transform for k, m in models.items() if k != "zuko CNF"}
    warmup = min(5, args.num_steps // 10)
    for step in range(args.num_steps):
        x = batches[step]
        for label, model in models.items():
            model.train()
            ours = label != "zuko CNF"
            if ours:
                layers[label].nfe.reset()
            else:
                counter.forward = counter.backward = 0
            t0 = time.perf_counter()
            optims[label].zero_grad()
            loss = -log_prob(label, x).mean()
            counter.in_backward = True
            loss.backward()
            counter.in_backward = False
            optims[label].step()
            if step >= warmup:
                seconds[label] += time.perf_counter() - t0
            nfe = layers[label].nfe if ours else counter
            nfe_fwd[label] += nfe.forward
            nfe_bwd[label] += nfe.backward
        if args.progress and (step + 1) % max(1, args.num_steps // 10) == 0:
            print(f"  {name}: step {step + 1}/{args.num_steps}", file=sys.stderr, flush=True)

    rows = []
    log_p = p.log_prob(test)
    timed = args.num_steps - warmup
    for label, model in models.items():
        model.eval()
        with torch.no_grad():
            log_q = torch.cat([log_prob(label, chunk) for chunk in test.split(2048)])
        value, se = kl(log_q, log_p)
        rows.append(
            {
                "toy": name,
                "model": label,
                "kl": value,
                "se": se,
                "step_s": seconds[label] / timed,
                "nfe_fwd": nfe_fwd[label] / args.num_steps,
                "nfe_bwd": nfe_bwd[label] / args.num_steps,
                "init_gap": init_gap[label],
            }
        )
    zuko_step = next(r["step_s"] for r in rows if r["model"] == "zuko CNF")
    for r in rows:
        r["ratio"] = r["step_s"] / zuko_step
    return rows


def table(rows: Sequence[dict[str, object]]) -> str:
    head = (
        "| toy | model | KL(p‖q) ± SE (nats) | s / step | ratio to zuko | NFE fwd / step "
        "| NFE bwd / step | max |Δlog q| at init |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['toy']} | {r['model']} | {r['kl']:.4f} ± {r['se']:.4f} | {r['step_s']:.3f} "
            f"| {r['ratio']:.2f} | {r['nfe_fwd']:.1f} | {r['nfe_bwd']:.1f} "
            f"| {r['init_gap']:.1e} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--toys", default=",".join(TOYS), help="comma-separated toy names")
    parser.add_argument("--modes", default="backprop", help="backprop and/or adjoint")
    parser.add_argument("--num-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--num-test", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--progress", action="store_true", help="print progress on stderr")
    args = parser.parse_args(argv)
    args.toys = [t for t in args.toys.split(",") if t]
    args.modes = [m for m in args.modes.split(",") if m]
    for m in args.modes:
        if m not in MODES:
            parser.error(f"unknown mode {m!r}; expected one of {list(MODES)}")
    return args


def main(args: argparse.Namespace) -> list[dict[str, object]]:
    try:
        import zuko  # noqa: F401
    except ImportError:
        print("zuko is not installed: pip install zuko", file=sys.stderr)
        return []
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = [r for name in args.toys for r in run_toy(name, args)]
    print(table(rows))
    print(
        f"\n{args.num_steps} steps, batch {args.batch_size}, lr {args.lr}, rtol {args.rtol}, "
        f"atol {args.atol}, {args.threads} thread(s), torch {torch.__version__}; "
        f"{time.perf_counter() - start:.0f} s in all"
    )
    return rows


if __name__ == "__main__":
    main(parse_args())
