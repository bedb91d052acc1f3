"""KL(p || q) of MAF and RealNVP flows trained on 2-D toy densities, across flow libraries.

Every library trains the same flow recipe (5 layers, hidden 64-64 conditioners, batch 512,
Adam with lr 1e-3 cosine-annealed to 0) on exactly the same stream of minibatches, and is
scored on exactly the same test set, drawn from a toy density whose log-density is exact.
The KL divergence is then estimated without bias as

    KL(p || q) = E_p[log p(x) - log q(x)]  ~  mean over the test set,

with its standard error std / sqrt(n). (It equals the test NLL minus the true entropy.)

Two pyro_flows columns: ``pyro_flows`` with 64-64 MLP conditioners like zuko's and Pyro's,
and ``pyro_flows_res`` with residual conditioners of width 64 and the parameter count of
nflows' residual nets (nflows' default architecture for the same 64 hidden features). The
verdict compares the better of the two with the best other library.

Run ``python benchmarks/toy_kl.py --help`` for the options; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency of pyro_flows
    tqdm = None

ALL_LIBS = ("pyro_flows", "pyro_flows_res", "zuko", "nflows", "nflows_mlp", "pyro")
DEFAULT_LIBS = ("pyro_flows", "pyro_flows_res", "zuko", "nflows", "pyro")
#: Our residual conditioners of nflows' size: input layer, 4 residual layers, output layer.
HIDDEN_RES = [64] * 5
ALL_FAMILIES = ("maf", "realnvp")
ALL_DATASETS = ("8gaussians", "checkerboard")
NUM_LAYERS = 5
HIDDEN = [64, 64]
BATCH = 512
LR = 1e-3
DIM = 2

# Which importable module each library column needs.
_LIB_MODULE = {
    "pyro_flows": "pyro_flows",
    "pyro_flows_res": "pyro_flows",
    "zuko": "zuko",
    "nflows": "nflows",
    "nflows_mlp": "nflows",
    "pyro": "pyro",
}
_LIB_DIST = {
    "pyro_flows": "pyro-flows",
    "pyro_flows_res": "pyro-flows",
    "zuko": "zuko",
    "nflows": "nflows",
    "nflows_mlp": "nflows",
    "pyro": "pyro-ppl",
}

ARCH_NOTES = {
    "pyro_flows": (
        "`normalizing_flow(name, 2, num_layers=5, hidden_dims=[64, 64])`: MADE / DenseNN "
        "64-64 (ReLU), MADE order alternating natural/reverse (MAF) or a reverse permutation "
        "between layers (coupling), log-scale b*tanh(s/b), b=5; density direction "
        "z = exp(s) * x + mu (MAF), z = (x - t) * exp(-s) (coupling); coupling nets start "
        "at the identity (zeroed last layer); MADE hidden units initialised on their unmasked "
        "fan-in; a learnable elementwise affine map (identity start, 2D parameters) before "
        "each layer and after the last (the builder's defaults since issue 19)."
    ),
    "pyro_flows_res": (
        "as pyro_flows with `hidden_dims=[64] * 5, residual=True`: input layer, four "
        "pre-activation residual layers h <- h + W relu(h) + b (each starting at zero), output "
        "layer: 6 linear layers of width 64, the parameter count of nflows' residual nets."
    ),
    "zuko": (
        "`zuko.flows.MAF` / `zuko.flows.RealNVP(features=2, transforms=5, "
        "hidden_features=(64, 64))`: MaskedMLP / MLP 64-64 (ReLU), alternating order / mask, "
        "MonotonicAffineTransform (soft-bounded log-scale), density direction z = exp(a) * x + b."
    ),
    "nflows": (
        "`nflows.flows.MaskedAutoregressiveFlow` / `SimpleRealNVP(features=2, "
        "hidden_features=64, num_layers=5, num_blocks_per_layer=2)`: **residual** nets "
        "(input layer, 2 residual blocks of two 64x64 layers, output layer: 6 linear layers "
        "vs 3 for the others, ~3.7x the parameters); scale softplus(s)+1e-3 (MAF) or "
        "sigmoid(s+2)+1e-3 (RealNVP: in (0.001, 1.001) in the data-to-noise direction); "
        "no permutations in SimpleRealNVP (alternating masks)."
    ),
    "nflows_mlp": (
        "nflows with the same 64-64 nets as the others: ReversePermutation + "
        "`MaskedAffineAutoregressiveTransform(hidden_features=64, num_blocks=1, "
        "use_residual_blocks=False)` for MAF; `AffineCouplingTransform` with "
        "`nflows.nn.nets.MLP([1], [2], [64, 64])` and alternating masks for RealNVP."
    ),
    "pyro": (
        "Pyro 1.9: MAF = `TransformedDistribution(Normal, [AffineAutoregressive(AutoRegressiveNN"
        "(2, [64, 64], permutation=arange(2))).inv, Permute([1, 0]), ...])` (Pyro's IAF used "
        "backwards is a MAF; natural order fixed instead of Pyro's random default); RealNVP = "
        "`T.affine_coupling(2, hidden_dims=[64, 64])` with Permute([1, 0]) between layers; "
        "log-scale clamped to [-5, 3]; caches cleared after every step."
    ),
}


# ---------------------------------------------------------------------------------------------
# Models: each builder returns (module holding the parameters, log_prob(x), clear_cache()).
# ---------------------------------------------------------------------------------------------
@dataclass
class Model:
    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    clear_cache: Callable[[], None] = field(default=lambda: None)


def _build_pyro_flows(family: str) -> Model:
    from pyro_flows.flows import normalizing_flow

    name = {"maf": "maf", "realnvp": "affine_coupling"}[family]
    flow = normalizing_flow(name, DIM, num_layers=NUM_LAYERS, hidden_dims=list(HIDDEN))
    return Model(flow, flow.log_prob, flow.transform.clear_cache)


def _build_pyro_flows_res(family: str) -> Model:
    from pyro_flows.flows import normalizing_flow

    name = {"maf": "maf", "realnvp": "affine_coupling"}[family]
    flow = normalizing_flow(
        name, DIM, num_layers=NUM_LAYERS, hidden_dims=list(HIDDEN_RES), residual=True
    )
    return Model(flow, flow.log_prob, flow.transform.clear_cache)


def _build_zuko(family: str) -> Model:
    import zuko

    # zuko's RealNVP is its NICE class (affine coupling); older releases only have the latter.
    realnvp = getattr(zuko.flows, "RealNVP", None) or zuko.flows.NICE
    cls = {"maf": zuko.flows.MAF, "realnvp": realnvp}[family]
    flow = cls(features=DIM, transforms=NUM_LAYERS, hidden_features=tuple(HIDDEN))
    return Model(flow, lambda x: flow().log_prob(x))


def _build_nflows(family: str) -> Model:
    from nflows import flows

    kw = dict(features=DIM, hidden_features=HIDDEN[0], num_layers=NUM_LAYERS)
    if family == "maf":
        flow = flows.MaskedAutoregressiveFlow(num_blocks_per_layer=2, **kw)
    else:
        flow = flows.SimpleRealNVP(num_blocks_per_layer=2, **kw)
    return Model(flow, flow.log_prob)


class _IgnoreContext(nn.Module):
    # nflows' coupling layers call ``net(x, context)``; its plain MLP takes ``x`` only.
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


def _build_nflows_mlp(family: str) -> Model:
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.nn.nets import MLP
    from nflows.transforms import (
        AffineCouplingTransform,
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        ReversePermutation,
    )

    layers: list[nn.Module] = []
    if family == "maf":
        for _ in range(NUM_LAYERS):
            layers.append(ReversePermutation(DIM))
            layers.append(
                MaskedAffineAutoregressiveTransform(
                    features=DIM,
                    hidden_features=HIDDEN[0],
                    num_blocks=len(HIDDEN) - 1,
                    use_residual_blocks=False,
                )
            )
    else:
        mask = torch.ones(DIM)
        mask[::2] = -1
        for _ in range(NUM_LAYERS):
            layers.append(
                AffineCouplingTransform(
                    mask.clone(), lambda i, o: _IgnoreContext(MLP([i], [o], list(HIDDEN)))
                )
            )
            mask *= -1
    flow = Flow(CompositeTransform(layers), StandardNormal([DIM]))
    return Model(flow, flow.log_prob)


def _build_pyro(family: str) -> Model:
    import pyro.distributions as dist
    import pyro.distributions.transforms as T
    from pyro.nn import AutoRegressiveNN

    modules: list[nn.Module] = []
    parts: list = []
    for k in range(NUM_LAYERS):
        if k > 0:
            parts.append(T.Permute(torch.tensor([1, 0])))
        if family == "maf":
            net = AutoRegressiveNN(DIM, list(HIDDEN), permutation=torch.arange(DIM))
            layer = T.AffineAutoregressive(net)
            modules.append(layer)
            parts.append(layer.inv)  # base -> data direction of an IAF layer is MAF's
        else:
            layer = T.affine_coupling(DIM, hidden_dims=list(HIDDEN))
            modules.append(layer)
            parts.append(layer)
    holder = nn.ModuleList(modules)
    holder.register_buffer("loc", torch.zeros(DIM))
    holder.register_buffer("scale", torch.ones(DIM))

    def log_prob(x: Tensor) -> Tensor:
        base = dist.Normal(holder.loc, holder.scale).to_event(1)
        return dist.TransformedDistribution(base, parts).log_prob(x)

    def clear_cache() -> None:
        # Pyro keys its cache on tensor identity only (Pyro issue #2564): forget every pass.
        for t in parts + modules:
            if hasattr(t, "_cached_x_y"):
                t._cached_x_y = (None, None)

    return Model(holder, log_prob, clear_cache)


BUILDERS: dict[str, Callable[[str], Model]] = {
    "pyro_flows": _build_pyro_flows,
    "pyro_flows_res": _build_pyro_flows_res,
    "zuko": _build_zuko,
    "nflows": _build_nflows,
    "nflows_mlp": _build_nflows_mlp,
    "pyro": _build_pyro,
}


# ---------------------------------------------------------------------------------------------
# Data, training, scoring.
# ---------------------------------------------------------------------------------------------
def toy_density(name: str):
    """The exact toy density ``name`` (from pyro_flows.datasets)."""
    from pyro_flows.datasets import toy_distribution

    return toy_distribution(name)


def make_data(name: str, num_steps: int, num_test: int, seed: int) -> tuple[Tensor, Tensor]:
    """The minibatch stream ``(num_steps, BATCH, 2)`` and the test set ``(num_test, 2)``.

    Both come from their own fixed generators (seeded from ``seed``), so every library sees
    the same data and the test set does not depend on ``num_steps``.
    """
    p = toy_density(name)
    train = p.sample((num_steps, BATCH), generator=torch.Generator().manual_seed(seed))
    test = p.sample((num_test,), generator=torch.Generator().manual_seed(seed + 1_000_003))
    return train.float(), test.float()


@dataclass
class RunResult:
    lib: str
    dataset: str
    family: str
    kl: float = math.nan
    se: float = math.nan
    seconds: float = math.nan
    num_params: int = 0
    final_loss: float = math.nan
    diverged_at: int | None = None
    log_q: Tensor | None = None  # per test point, float64, for paired comparisons
    error: str | None = None


def train_and_score(
    lib: str,
    family: str,
    dataset: str,
    train: Tensor,
    test: Tensor,
    log_p: Tensor,
    seed: int,
    progress: bool,
) -> RunResult:
    res = RunResult(lib, dataset, family)
    torch.manual_seed(seed)
    model = BUILDERS[lib](family)
    params = [p for p in model.module.parameters() if p.requires_grad]
    res.num_params = sum(p.numel() for p in params)
    opt = torch.optim.Adam(params, lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=len(train), eta_min=0.0)
    model.module.train()
    bar = None
    if progress and tqdm is not None:
        bar = tqdm(
            total=len(train), desc=f"{dataset}/{family}/{lib}", leave=False, file=sys.stderr
        )
    start = time.perf_counter()
    for step in range(len(train)):
        x = train[step]  # a fresh tensor object every step
        loss = -model.log_prob(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        model.clear_cache()
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % 50 == 0 or step == len(train) - 1:
            value = loss.item()
            if not math.isfinite(value):
                res.diverged_at = step
                break
            res.final_loss = value
    res.seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    model.module.eval()
    with torch.no_grad():
        model.clear_cache()
        log_q = torch.cat([model.log_prob(chunk) for chunk in test.split(5000)])
        model.clear_cache()
    res.log_q = log_q.double()
    d = log_p - res.log_q
    res.kl = d.mean().item()
    res.se = (d.std() / math.sqrt(len(d))).item()
    return res


# ---------------------------------------------------------------------------------------------
# Reporting.
# ---------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One (dataset, family, library) entry: its run per repeat (seed)."""

    runs: list[RunResult]

    @property
    def ok(self) -> bool:
        return all(
            r.error is None and r.diverged_at is None and math.isfinite(r.kl) for r in self.runs
        )

    @property
    def kl(self) -> float:
        return sum(r.kl for r in self.runs) / len(self.runs)

    @property
    def se(self) -> float:
        """Test-set SE for one run; the SE of the mean over seeds for several."""
        if len(self.runs) == 1:
            return self.runs[0].se
        kls = torch.tensor([r.kl for r in self.runs], dtype=torch.float64)
        return (kls.std() / math.sqrt(len(kls))).item()

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.runs) / len(self.runs)


def _fmt_kl(cell: Cell | None) -> str:
    if cell is None:
        return "n/a"
    for r in cell.runs:
        if r.error:
            return "error"
        if r.diverged_at is not None:
            return f"diverged (step {r.diverged_at}, seed {cell.runs.index(r)})"
    if not cell.ok:
        return "non-finite"
    return f"{cell.kl:.4f} ± {cell.se:.4f}"


def compare_row(cells: dict[str, Cell]) -> tuple[str, str]:
    """(best library, verdict on pyro_flows vs the best other library) for one table row."""
    ok = {k: c for k, c in cells.items() if c.ok}
    if not ok:
        return "-", "no finite result"
    best = min(ok, key=lambda k: ok[k].kl)
    ours = [k for k in ok if k.startswith("pyro_flows")]
    others = {k: c for k, c in ok.items() if not k.startswith("pyro_flows")}
    if not ours:
        return best, "pyro_flows did not run / diverged"
    pf_name = min(ours, key=lambda k: ok[k].kl)  # our best configuration of the row
    pf = ok[pf_name]
    if not others:
        return best, "no other library to compare with"
    rival_name = min(others, key=lambda k: others[k].kl)
    rival = others[rival_name]
    if len(pf.runs) == 1:
        # Paired on the same test points: the log p term cancels, so this SE is the right one.
        pts = rival.runs[0].log_q - pf.runs[0].log_q  # KL_pf - KL_rival, per point
        diff = pts.mean().item()
        se = (pts.std() / math.sqrt(len(pts))).item()
        kind = "paired test-set SE"
    else:
        # Paired on the same seeds (same data and test set): spread over seeds.
        per_seed = torch.tensor([a.kl - b.kl for a, b in zip(pf.runs, rival.runs, strict=True)])
        diff = per_seed.mean().item()
        se = (per_seed.std() / math.sqrt(len(per_seed))).item()
        kind = f"SE over {len(per_seed)} seeds"
    if diff <= 0:
        if -diff > 2 * se:
            return best, (
                f"yes: {pf_name} best, {-diff:.4f} below {rival_name} ({kind} {se:.4f}, "
                f"{-diff / se:.1f} SE)"
            )
        return best, (
            f"yes: {pf_name} lowest, {-diff:.4f} below {rival_name}, within noise ({kind} "
            f"{se:.4f})"
        )
    if diff <= 2 * se:
        return best, (
            f"yes within 2 SE: {pf_name} {diff:.4f} above {rival_name} ({kind} {se:.4f}, "
            f"{diff / se:.1f} SE)"
        )
    return best, (
        f"NO: {pf_name} {diff:.4f} above {rival_name} ({kind} {se:.4f}, {diff / se:.1f} SE)"
    )


def _version(dist_name: str) -> str:
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def render(
    results: dict[tuple[str, str], dict[str, Cell]],
    libs: Sequence[str],
    args: argparse.Namespace,
    entropies: dict[str, float],
    total_seconds: float,
) -> str:
    seeds = list(range(args.seed, args.seed + args.repeats))
    lines = ["# Toy-density KL benchmark (pyro_flows vs other flow libraries)", ""]
    if args.repeats == 1:
        err = "± SE = std/sqrt(n) over the test points"
    else:
        err = f"mean over seeds {seeds} ± SE of that mean (std over seeds / sqrt({args.repeats}))"
    lines.append(
        f"KL(p||q) = mean over {args.num_test} test points of log p(x) - log q(x), in nats, "
        f"{err}. {NUM_LAYERS} layers, hidden {HIDDEN}, batch {BATCH}, {args.num_steps} Adam "
        f"steps, lr {LR} cosine-annealed to 0, float32, torch threads {torch.get_num_threads()}. "
        "The same minibatches, test set and init seed for every library. "
        "time = training wall-clock seconds per run."
    )
    lines.append("")
    vers = ", ".join(f"{lib} {_version(_LIB_DIST[lib])}" for lib in libs)
    lines.append(
        f"Versions: torch {torch.__version__}, {vers}; Python {platform.python_version()}, "
        f"{platform.machine()}."
    )
    lines.append(
        "True entropies: "
        + ", ".join(f"{k} {v:.4f}" for k, v in entropies.items())
        + " (test NLL = KL + entropy)."
    )
    lines.append("")
    head = ["dataset", "family"]
    for lib in libs:
        head += [f"{lib} KL ± SE (nats)", f"{lib} time (s)"]
    head += ["best", "pyro_flows (best of its columns) ≤ best other?"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * len(head)) + "|")
    params: dict[tuple[str, str], int] = {}
    for (dataset, family), cells in results.items():
        row = [dataset, family]
        for lib in libs:
            c = cells.get(lib)
            row.append(_fmt_kl(c))
            ok_time = c is not None and all(r.error is None for r in c.runs)
            row.append(f"{c.seconds:.1f}" if ok_time else "n/a")
            if c is not None and c.runs[0].num_params:
                params[(lib, family)] = c.runs[0].num_params
        row += list(compare_row(cells))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "Parameters per flow: "
        + "; ".join(
            f"{lib} "
            + ", ".join(
                f"{fam} {params[(lib, fam)]}" for fam in args.families if (lib, fam) in params
            )
            for lib in libs
        )
        + "."
    )
    lines.append("")
    lines.append("Architectures:")
    for lib in libs:
        lines.append(f"- {lib}: {ARCH_NOTES[lib]}")
    lines.append("")
    if args.repeats == 1:
        lines.append(
            "The ± SE is the Monte-Carlo error of the test set only; it does not include the "
            "run-to-run spread over initialisation / data seeds, which is usually larger (use "
            "--repeats). The verdict uses the paired SE of the difference on the same test "
            "points."
        )
    else:
        lines.append(
            "The ± SE and the verdict's SE are over seeds (each seed: its own data stream, test "
            "set and init, shared by all libraries), so they include the training variability."
        )
    lines.append(f"Total runtime: {total_seconds:.0f} s.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-steps", type=int, default=1500, help="Adam steps (= minibatches)")
    parser.add_argument("--num-test", type=int, default=20000, help="test-set size")
    parser.add_argument(
        "--datasets",
        type=_csv,
        default=list(ALL_DATASETS),
        help=f"comma-separated, from {','.join(ALL_DATASETS)}",
    )
    parser.add_argument(
        "--libs",
        type=_csv,
        default=list(DEFAULT_LIBS),
        help=f"comma-separated, from {','.join(ALL_LIBS)} (nflows_mlp: nflows with 64-64 MLPs); "
        f"default {','.join(DEFAULT_LIBS)}",
    )
    parser.add_argument(
        "--families",
        type=_csv,
        default=list(ALL_FAMILIES),
        help=f"comma-separated, from {','.join(ALL_FAMILIES)}",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data, test set and init")
    parser.add_argument(
        "--repeats", type=int, default=1, help="run seeds seed..seed+repeats-1 and average"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    args = parser.parse_args(argv)
    for name, allowed in (
        ("datasets", ALL_DATASETS),
        ("libs", ALL_LIBS),
        ("families", ALL_FAMILIES),
    ):
        bad = [v for v in getattr(args, name) if v not in allowed]
        if bad:
            parser.error(f"unknown --{name} {bad}; choose from {','.join(allowed)}")
    if args.repeats < 1 or args.num_steps < 1 or args.num_test < 2:
        parser.error("--repeats and --num-steps must be >= 1, --num-test >= 2")
    return args


def available_libs(libs: Sequence[str]) -> list[str]:
    out = []
    for lib in libs:
        try:
            __import__(_LIB_MODULE[lib])
        except ImportError as e:
            print(
                f"[toy_kl] {lib} is not installed ({e}); skipping its column "
                "(pip install 'pyro-flows[bench]')",
                file=sys.stderr,
            )
            continue
        out.append(lib)
    return out


def main(args: argparse.Namespace | Sequence[str] | None = None) -> dict:
    if not isinstance(args, argparse.Namespace):
        args = parse_args(args)
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    libs = available_libs(args.libs)
    start = time.perf_counter()
    results: dict[tuple[str, str], dict[str, Cell]] = {}
    entropies: dict[str, float] = {}
    for dataset in args.datasets:
        p = toy_density(dataset)
        entropies[dataset] = float(p.entropy())
        for rep in range(args.repeats):
            seed = args.seed + rep
            train, test = make_data(dataset, args.num_steps, args.num_test, seed)
            log_p = p.log_prob(test.double())
            if not torch.isfinite(log_p).all():
                raise RuntimeError(f"test points outside the support of {dataset}")
            for family in args.families:
                cells = results.setdefault((dataset, family), {})
                for lib in libs:
                    try:
                        r = train_and_score(
                            lib, family, dataset, train, test, log_p, seed, not args.no_progress
                        )
                    except Exception as e:  # report, keep the other columns
                        r = RunResult(lib, dataset, family, error=f"{type(e).__name__}: {e}")
                        print(
                            f"[toy_kl] {dataset}/{family}/{lib} failed: {r.error}", file=sys.stderr
                        )
                    cells.setdefault(lib, Cell([])).runs.append(r)
                    print(
                        f"[toy_kl] {dataset:>12} {family:>7} {lib:>10} seed {seed}: "
                        f"KL {_fmt_kl(Cell([r]))} nats, {r.seconds:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    total = time.perf_counter() - start
    table = render(results, libs, args, entropies, total)
    print(table, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
    return {"results": results, "table": table, "seconds": total}


if __name__ == "__main__":
    main(parse_args())
