"""Flow matching vs maximum-likelihood FFJORD: time to a test NLL, and sampling NFE per path.

Table 1. On each 2-D toy ("8gaussians", "checkerboard"), one vector-field architecture
(pyro_flows.nn.VectorField, hidden 64-64-64, tanh, concat-squash: FFJORD's default) is trained

- by maximum likelihood through the ODE (FFJORD: dopri5, exact trace, rtol = atol = 1e-5);
- by flow matching (pyro_flows.matching.fit_flow_matching), independent and OT couplings;
- by torchcfm's ConditionalFlowMatcher (sigma = 0) in the same loop (same network, data,
  batches, Adam, cosine schedule), if torchcfm is installed (else the row is skipped);

FFJORD with batch 256 and Adam lr 3e-3 (the settings of examples/ffjord_2d.py), the
flow-matching runs with batch 1024 and lr 1e-2 (the regression target is noisy: large batches
and a high rate pay off), OT solved exactly in blocks of 128 rows, every run with a cosine
schedule. Every --ffjord-eval-every / --fm-eval-every steps the test NLL of the field is computed
the same way for all (FlowMatchingPrior, dopri5, exact trace) and the clock is paused. The
target is FFJORD's best test NLL + 0.05 nats; the table gives each method's training time to
first reach it, and its speed-up over FFJORD's time to reach the same target.

Table 2. For each path (linear with independent pairs, linear with OT pairs, variance
preserving (cosine) with independent pairs), the trained field's dopri5 NLL, and the smallest
number of field evaluations that Euler / midpoint / Heun need for the prior's NLL (log_prob
with that solver and step count) to stay within 0.05 nats of it.

    python benchmarks/flow_matching.py                            # full run, ~12 min on 1 core
    python benchmarks/flow_matching.py --datasets 8gaussians --ffjord-steps 200 --fm-steps 1000
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import types
from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

from pyro_flows.datasets import TOY_DATASETS, toy_distribution
from pyro_flows.distributions import NormalizingFlow
from pyro_flows.matching import (
    FlowMatchingPrior,
    LinearPath,
    OTCoupling,
    VariancePreservingPath,
    fit_flow_matching,
)
from pyro_flows.nn import VectorField
from pyro_flows.transforms import FFJORD

STEP_LADDER = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256)
STAGES = {"euler": 1, "midpoint": 2, "heun": 2}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default=",".join(TOY_DATASETS))
    p.add_argument("--hidden", default="64,64,64")
    p.add_argument("--ffjord-steps", type=int, default=1000)
    p.add_argument("--fm-steps", type=int, default=4000)
    p.add_argument("--ffjord-eval-every", type=int, default=50)
    p.add_argument("--fm-eval-every", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256, help="FFJORD's minibatch")
    p.add_argument("--lr", type=float, default=3e-3, help="FFJORD's peak learning rate")
    p.add_argument("--fm-batch-size", type=int, default=1024, help="flow matching's minibatch")
    p.add_argument("--fm-lr", type=float, default=1e-2, help="flow matching's peak lr")
    p.add_argument("--ot-block", type=int, default=128, help="OT solved in blocks of this size")
    p.add_argument("--rtol", type=float, default=1e-5, help="dopri5 rtol = atol everywhere")
    p.add_argument("--num-train", type=int, default=20_000)
    p.add_argument("--num-test", type=int, default=4_000)
    p.add_argument("--tol", type=float, default=0.05, help="nats above the reference NLL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-torchcfm", action="store_true", help="skip the torchcfm row")
    p.add_argument("--out", default=None, help="also write the tables (markdown) here")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def load_torchcfm() -> type | None:
    """torchcfm's ConditionalFlowMatcher, or None (message on stderr) when it is not installed.

    torchcfm imports POT at module level for its OT samplers; this benchmark uses only the
    independent matcher, so a missing POT is replaced by an empty module.
    """
    try:
        import ot  # noqa: F401
    except ImportError:
        sys.modules.setdefault("ot", types.ModuleType("ot"))
    try:
        from torchcfm.conditional_flow_matching import ConditionalFlowMatcher
    except ImportError as err:
        print(f"torchcfm not available ({err}); its row is skipped", file=sys.stderr)
        return None
    return ConditionalFlowMatcher


def make_field(hidden: Sequence[int], seed: int) -> VectorField:
    torch.manual_seed(seed)
    return VectorField(2, list(hidden), activation="tanh")


def test_nll(field: torch.nn.Module, test: torch.Tensor, rtol: float, **solver) -> float:
    was = field.training
    field.eval()
    options = solver or {"rtol": rtol, "atol": rtol}
    prior = FlowMatchingPrior(field, **options)
    with torch.no_grad():
        nll = -torch.cat([prior.log_prob(c) for c in test.split(2000)]).double().mean().item()
    field.train(was)
    return nll


class Tracker:
    """Evaluates the test NLL every ``every`` steps with the clock paused; records the curve."""

    def __init__(self, field, test, args, every, label):
        self.field, self.test, self.args, self.every = field, test, args, every
        self.curve: list[tuple[int, float, float]] = []  # (step, train seconds, NLL)
        self.label = label

    def __call__(self, step: int, seconds: float) -> None:
        if step % self.every == 0:
            nll = test_nll(self.field, self.test, self.args.rtol)
            self.curve.append((step, seconds, nll))
            print(f"  {self.label} step {step}: {seconds:.1f} s, NLL {nll:.4f}", file=sys.stderr)

    def first_below(self, target: float) -> tuple[int, float] | None:
        for step, seconds, nll in self.curve:
            if nll <= target:
                return step, seconds
        return None

    @property
    def best(self) -> float:
        return min(nll for _, _, nll in self.curve)


def cosine(lr: float, step: int, total: int) -> float:
    return 0.5 * lr * (1 + math.cos(math.pi * (step - 1) / total))


def manual_loop(field, loss_fn: Callable, train, args, steps, track, lr, batch_size):
    """Adam with the cosine schedule on minibatches of ``train``; the clock skips ``track``."""
    optimizer = torch.optim.Adam(field.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(args.seed)
    order, pos, seconds = torch.randperm(len(train), generator=gen), 0, 0.0
    track(0, 0.0)
    for step in tqdm(range(1, steps + 1), disable=args.no_progress, desc=track.label):
        start = time.perf_counter()
        if pos + batch_size > len(train):
            order, pos = torch.randperm(len(train), generator=gen), 0
        batch = train[order[pos : pos + batch_size]]
        pos += batch_size
        for group in optimizer.param_groups:
            group["lr"] = cosine(lr, step, steps)
        loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds += time.perf_counter() - start
        track(step, seconds)
    return seconds


def run_ffjord(hidden, train, test, args):
    field = make_field(hidden, args.seed)
    flow = NormalizingFlow(FFJORD(2, field, trace="exact", rtol=args.rtol, atol=args.rtol), 2)
    track = Tracker(field, test, args, args.ffjord_eval_every, "ffjord")
    loss = lambda x: -flow.log_prob(x).mean()  # noqa: E731
    manual_loop(field, loss, train, args, args.ffjord_steps, track, args.lr, args.batch_size)
    return field, track


def run_fm(hidden, train, test, args, coupling="independent", path=None, label="fm"):
    field = make_field(hidden, args.seed)
    track = Tracker(field, test, args, args.fm_eval_every, label)
    track(0, 0.0)
    fit_flow_matching(
        field,
        train,
        coupling=coupling,
        path=path or LinearPath(0.0),
        num_steps=args.fm_steps,
        batch_size=args.fm_batch_size,
        lr=args.fm_lr,
        progress=not args.no_progress,
        seed=args.seed,
        callback=lambda step, history: track(step, history.seconds),
    )
    return field, track


def run_torchcfm(matcher_cls, hidden, train, test, args):
    field = make_field(hidden, args.seed)
    matcher = matcher_cls(sigma=0.0)
    torch.manual_seed(args.seed)

    def loss_fn(x1):
        x0 = torch.randn_like(x1)
        t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
        return torch.mean((field(t, xt) - ut) ** 2)  # torchcfm's examples: mean over all entries

    track = Tracker(field, test, args, args.fm_eval_every, "torchcfm")
    manual_loop(field, loss_fn, train, args, args.fm_steps, track, args.fm_lr, args.fm_batch_size)
    return field, track


def nfe_to_match(field, test, reference, args):
    """The smallest NFE of Euler / midpoint / Heun whose NLL stays within tol of ``reference``.

    "Stays": the NLL with that step count and with the next two of :data:`STEP_LADDER` are
    all within tol (a coarse solve can land near the reference by chance).
    """
    out = {}
    for method, stages in STAGES.items():
        out[method] = None
        close: dict[int, bool] = {}
        for i, n in enumerate(STEP_LADDER):
            for j in range(i, min(i + 3, len(STEP_LADDER))):
                if j not in close:
                    steps = STEP_LADDER[j]
                    nll = test_nll(field, test, args.rtol, method=method, num_steps=steps)
                    close[j] = abs(nll - reference) <= args.tol
                if not close[j]:
                    break
            else:
                out[method] = n * stages
                break
    return out


def dopri5_nfe(field, test, rtol):
    prior = FlowMatchingPrior(field, rtol=rtol, atol=rtol)
    with torch.no_grad():
        prior.sample((len(test),))
    return prior.nfe.forward


def main(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    matcher = None if args.no_torchcfm else load_torchcfm()
    table1 = [
        "| dataset | method | best test NLL | final test NLL | time to FFJORD best + "
        f"{args.tol} (s) | steps | speed-up vs FFJORD | train time, all steps (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    table2 = [
        "| dataset | path (coupling) | dopri5 NLL | dopri5 NFE per sample | Euler NFE | "
        "midpoint NFE | Heun NFE |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in [d for d in args.datasets.split(",") if d]:
        target = toy_distribution(name)
        gen = torch.Generator().manual_seed(args.seed)
        train = target.sample((args.num_train,), generator=gen)
        test = target.sample((args.num_test,), generator=gen)
        runs = {}
        print(f"{name}: FFJORD", file=sys.stderr)
        runs["FFJORD (ML)"] = run_ffjord(hidden, train, test, args)
        runs["FM independent"] = run_fm(hidden, train, test, args, label="fm-indep")
        ot = OTCoupling(args.ot_block)
        runs["FM OT"] = run_fm(hidden, train, test, args, coupling=ot, label="fm-ot")
        if matcher is not None:
            runs["torchcfm CFM"] = run_torchcfm(matcher, hidden, train, test, args)
        runs["FM VP (cosine)"] = run_fm(
            hidden, train, test, args, path=VariancePreservingPath("cosine"), label="fm-vp"
        )
        goal = runs["FFJORD (ML)"][1].best + args.tol
        reach_ffjord = runs["FFJORD (ML)"][1].first_below(goal)
        for method, (_field, track) in runs.items():
            reach = track.first_below(goal)
            when = f"{reach[1]:.1f}" if reach else "not reached"
            steps = str(reach[0]) if reach else "-"
            speed = f"{reach_ffjord[1] / reach[1]:.1f}x" if reach and reach[1] > 0 else "-"
            total = track.curve[-1][1]
            table1.append(
                f"| {name} | {method} | {track.best:.4f} | {track.curve[-1][2]:.4f} | {when} | "
                f"{steps} | {speed} | {total:.1f} |"
            )
        for method in ("FM independent", "FM OT", "FM VP (cosine)"):
            field = runs[method][0]
            reference = test_nll(field, test, args.rtol)
            need = nfe_to_match(field, test, reference, args)
            cells = [
                str(need[m]) if need[m] else f"> {STEP_LADDER[-1] * STAGES[m]}" for m in STAGES
            ]
            table2.append(
                f"| {name} | {method[3:]} | {reference:.4f} | {dopri5_nfe(field, test, args.rtol)} "
                f"| {' | '.join(cells)} |"
            )
        print("\n".join(table1 + [""] + table2), file=sys.stderr)
    versions = f"torch {torch.__version__}, threads {args.threads}"
    if matcher is not None:
        import torchcfm

        versions += f", torchcfm {getattr(torchcfm, '__version__', '?')}"
    text = "\n".join(
        [
            "Time to reach FFJORD's best test NLL + tol (training time only, evaluation excluded):",
            "",
            *table1,
            "",
            f"Field evaluations the prior needs for its NLL to stay within {args.tol} nats of "
            "its dopri5 NLL, per path:",
            "",
            *table2,
            "",
            versions,
        ]
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return text


if __name__ == "__main__":
    main(parse_args())
