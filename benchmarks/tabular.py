"""Test NLL of flows and classical baselines on the tabular data sets shipped with scikit-learn.

Two tables. ``--table defaults`` (the default) compares ``DensityEstimator()`` with no
arguments to a scikit-learn ``GaussianMixture`` on the raw data in its own units, over three
splits (``--seeds 0,1,2``): each split holds out 25% of the rows for test
(``train_test_split(test_size=0.25, random_state=seed)``); the GMM's number of components
(1-5) and covariance type (full, tied, diag, spherical) are chosen on a further 25% of the
training rows and the chosen GMM is refitted on all of them (three lines of code for a
scikit-learn user); ``DensityEstimator(seed=seed).fit(train)`` chooses its own model. Both
are scored per test row in nats; the table gives the mean over the three splits of the test
NLL ± the standard error of that mean (over splits), the worst (highest) test-row NLL of any
split, and what the estimator chose. Nothing is standardised or dequantised by the script: the
estimator does both itself (iris is recorded to 0.1 cm and dequantised by it).

    python benchmarks/tabular.py                      # about 6 minutes on one core
    python benchmarks/tabular.py --datasets iris --seeds 0

``--table tuned`` is the earlier comparison of tuned flows, described next.

For each data set (wine, breast cancer, iris, diabetes features) the rows are split once, with
a fixed seed, into 70% train, 15% validation and 15% test. Every column is first dequantised
by adding uniform noise as wide as its smallest gap between distinct values (its recording
resolution: iris is recorded to 0.1 cm, wine's magnesium to 1 mg/l, diabetes' sex is binary),
since a continuous density on grid-valued data can put unbounded mass on the grid. The columns
are then standardised with the training mean and standard deviation. All NLLs are in nats
per row, in these standardised units (the same for every model), with the standard error
std / sqrt(n_test) over the test rows.

Models, every setting chosen on the validation rows only:

- ``gaussian``: one full-covariance Gaussian (maximum likelihood), ridge ``reg_covar`` chosen
  from a grid;
- ``gmm``: scikit-learn's GaussianMixture, full covariances, number of components (1-10) and
  ``reg_covar`` chosen from a grid;
- ``maf``, ``realnvp``, ``nsf``: pyro_flows' MAF, affine coupling (RealNVP) and neural spline
  (NSF: Pyro's spline autoregressive layers used backwards, one pass to score data) flows through :class:`pyro_flows.density.DensityEstimator` (standardisation
  inside the model), Adam with a cosine schedule, early stopping on the validation NLL (the
  best validation parameters are kept). On data this small a flow overfits within a hundred
  steps, so each is also offered noise regularisation (Rothfuss et al., 2019): the training
  rows are replicated 20 times with Gaussian noise of standard deviation ``sigma`` (in
  standardised units; validation and test rows are untouched). The setting (``sigma``, layers
  x hidden, weight decay) is chosen on validation from ``FLOW_GRID``. (The
  baselines' ``reg_covar``, which adds to every covariance, plays the part of the noise.)
- ``maf-gmm`` (also ``realnvp-gmm``, ``nsf-gmm``): the same flows with a learnable
  Gaussian-mixture base (``DensityEstimator(base="gmm", base_components=K)``, full
  covariances), initialised by EM on the training rows pulled back through the initial flow,
  so that training starts at a fitted GMM and early stopping keeps the best of it and its
  refinements (Papamakarios et al., 2021, section 2.3.3). ``K`` (``--components``, default
  2, 3, 5) and ``sigma`` (0, 0.1, 0.2, 0.3; 3 layers x 32, weight decay 0.01: ``GMM_GRID``) are
  chosen on validation.

    python benchmarks/tabular.py --table tuned       # the full table (about 15 minutes, 1 core)
    python benchmarks/tabular.py --table tuned --datasets iris --flows maf --grid small
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

# One thread each for torch and BLAS: on a shared machine extra threads slow each step ~30x.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pyro_flows.density import DensityEstimator  # noqa: E402

DATASETS = ("wine", "breast_cancer", "iris", "diabetes")
# name -> (family, base); "-gmm" flows have a learnable Gaussian-mixture base
FLOWS = {
    "maf": ("maf", "normal"),
    "realnvp": ("affine_coupling", "normal"),
    "nsf": ("masked_spline_autoregressive", "normal"),
    "maf-gmm": ("maf", "gmm"),
    "realnvp-gmm": ("affine_coupling", "gmm"),
    "nsf-gmm": ("masked_spline_autoregressive", "gmm"),
}
DEFAULT_FLOWS = ("maf", "realnvp", "nsf", "maf-gmm")
REG_GRID = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1)
# (sigma, num_layers, hidden, weight_decay) tried on validation; "--grid small" tries
# SMALL_GRID only.
FLOW_GRID = ((0.0, 5, 64, 1e-3), (0.1, 3, 32, 1e-2), (0.2, 5, 64, 1e-3))
SMALL_GRID = ((0.1, 3, 32, 1e-2),)
# The -gmm flows start at a fitted mixture, which they refine: small flows, with the noise
# (which also widens the initial mixture's components, like the GMM's reg_covar) on a grid.
GMM_GRID = tuple((sigma, 3, 32, 1e-2) for sigma in (0.0, 0.1, 0.2, 0.3))
NOISE_COPIES = 20


def load(name: str) -> np.ndarray:
    """The feature matrix of a scikit-learn toy data set."""
    from sklearn import datasets

    loader = {
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "iris": datasets.load_iris,
        "diabetes": datasets.load_diabetes,
    }[name]
    return np.asarray(loader().data, dtype=np.float64)


def dequantise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Adds U(-h/2, h/2) noise to each column, h its smallest gap between distinct values."""
    out = x.copy()
    for j in range(x.shape[1]):
        values = np.unique(x[:, j])
        if len(values) > 1:
            h = np.diff(values).min()
            out[:, j] += rng.uniform(-h / 2, h / 2, size=x.shape[0])
    return out


@dataclass
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split(x: np.ndarray, seed: int, dequant: bool) -> Split:
    rng = np.random.default_rng(seed)
    if dequant:
        x = dequantise(x, rng)
    perm = rng.permutation(len(x))
    n_val = n_test = int(round(0.15 * len(x)))
    test, val, train = np.split(x[perm], [n_test, n_test + n_val])
    mean, std = train.mean(0), train.std(0)
    return Split(*((a - mean) / std for a in (train, val, test)))


@dataclass
class Result:
    nll: float
    se: float
    per_row: np.ndarray
    note: str
    seconds: float


def result(logp: np.ndarray, note: str, t0: float) -> Result:
    nll = -logp
    return Result(
        nll.mean(), nll.std(ddof=1) / math.sqrt(len(nll)), nll, note, time.perf_counter() - t0
    )


def fit_gmm(s: Split, components: Sequence[int], seed: int) -> Result:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    t0 = time.perf_counter()
    best = None
    for k in components:
        for reg in REG_GRID:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                try:
                    gmm = GaussianMixture(
                        k, covariance_type="full", reg_covar=reg, n_init=3, random_state=seed
                    ).fit(s.train)
                except ValueError:  # a degenerate component on tiny data
                    continue
            val = gmm.score(s.val)
            if best is None or val > best[0]:
                best = (val, gmm, k, reg)
    _, gmm, k, reg = best
    note = f"k={k}, reg={reg:g}" if len(components) > 1 else f"reg={reg:g}"
    return result(gmm.score_samples(s.test), note, t0)


def fit_flow(s: Split, name: str, args: argparse.Namespace) -> Result:
    t0 = time.perf_counter()
    family, base = FLOWS[name]
    grid = SMALL_GRID if args.grid == "small" else GMM_GRID if base == "gmm" else FLOW_GRID
    ks = [int(k) for k in args.components.split(",")] if base == "gmm" else [1]
    best = None
    for (sigma, layers, hidden, wd), k in itertools.product(grid, ks):
        train = s.train
        if sigma > 0:
            rng = np.random.default_rng(args.seed)
            noise = rng.normal(size=(NOISE_COPIES, *train.shape))
            train = (train + sigma * noise).reshape(-1, train.shape[1])
        est = DensityEstimator(
            family,
            base=base,
            base_components=k,
            num_layers=layers,
            hidden_dims=(hidden, hidden),
            num_steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=wd,
            patience=args.patience,
            eval_every=args.eval_every,
            seed=args.seed,
            progress=False,
        )
        est.fit(train, val_X=s.val)
        val = -est.history_.best_val_nll
        note = f"sigma={sigma:g}, {layers}x{hidden}, wd={wd:g}, step {est.history_.best_step}"
        if base == "gmm":
            note = f"K={k}, " + note
        if best is None or val > best[0]:
            best = (val, est, note)
    _, est, note = best
    return result(est.score_samples(s.test), note, t0)


def gmm_validated(train: np.ndarray, seed: int) -> tuple[object, str]:
    """scikit-learn's GaussianMixture, K (1-5) and covariance type chosen on 25% of ``train``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    from sklearn.model_selection import train_test_split

    fit, val = train_test_split(train, test_size=0.25, random_state=seed)
    best = None
    for k in range(1, 6):
        for cov in ("full", "tied", "diag", "spherical"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                try:
                    score = GaussianMixture(k, covariance_type=cov, random_state=seed).fit(fit)
                except ValueError:  # a degenerate component on tiny data
                    continue
            if best is None or score.score(val) > best[0]:
                best = (score.score(val), k, cov)
    _, k, cov = best
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm = GaussianMixture(k, covariance_type=cov, random_state=seed).fit(train)
    return gmm, f"K={k} {cov}"


def mean_se(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=float)
    se = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return f"{v.mean():.2f} ± {se:.2f}"


def run_defaults(args: argparse.Namespace) -> dict[str, dict[str, list]]:
    """The ``--table defaults`` comparison; returns per data set the per-split results."""
    from sklearn.model_selection import train_test_split

    seeds = [int(s) for s in args.seeds.split(",")]
    out: dict[str, dict[str, list]] = {}
    for ds in args.datasets.split(","):
        x = load(ds)
        rows = {"gmm": [], "defaults": [], "gmm_worst": [], "defaults_worst": [], "notes": []}
        for seed in seeds:
            train, test = train_test_split(x, test_size=0.25, random_state=seed)
            t0 = time.perf_counter()
            gmm, gnote = gmm_validated(train, seed)
            g = -gmm.score_samples(test)
            t1 = time.perf_counter()
            est = DensityEstimator(seed=seed).fit(train)
            d = -est.score_samples(test)
            t2 = time.perf_counter()
            sel = est.selection_
            chosen = sel["chosen"]
            if chosen != "flow":
                chosen += f" ({sel['params']['base_components']} components)"
            deq = len(est.info_.get("dequantized", {}))
            note = f"GMM {gnote}; defaults: {chosen}, {deq} column(s) dequantised"
            rows["gmm"].append(g.mean())
            rows["defaults"].append(d.mean())
            rows["gmm_worst"].append(g.max())
            rows["defaults_worst"].append(d.max())
            rows["notes"].append(note)
            print(
                f"[{ds} seed {seed}] GMM {g.mean():.3f} (worst row {g.max():.1f}, {t1 - t0:.0f}s)"
                f" | defaults {d.mean():.3f} (worst row {d.max():.1f}, {t2 - t1:.0f}s) | {note}",
                flush=True,
            )
        out[ds] = rows
    print()
    print(
        "| data (N, D) | GMM, K and covariance on validation | DensityEstimator() | "
        "worst test row: GMM / defaults | chosen by the defaults |"
    )
    print("|---|---|---|---|---|")
    for ds, r in out.items():
        n, dim = load(ds).shape
        chosen = "; ".join(note.split("defaults: ")[1].split(",")[0] for note in r["notes"])
        print(
            f"| {ds} ({n}, {dim}) | {mean_se(r['gmm'])} | {mean_se(r['defaults'])} | "
            f"{max(r['gmm_worst']):.1f} / {max(r['defaults_worst']):.1f} | {chosen} |"
        )
    return out


def fmt(r: Result, bold: bool) -> str:
    text = f"{r.nll:.2f} ± {r.se:.2f}"
    return f"**{text}**" if bold else text


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--flows", default=",".join(DEFAULT_FLOWS), help=f"of {', '.join(FLOWS)}")
    p.add_argument(
        "--components", default="2,3,5", help="mixture sizes K tried for the -gmm flows"
    )
    p.add_argument("--steps", type=int, default=3000, help="max Adam steps per flow fit")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=20, help="evaluations without improvement")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--grid", choices=("small", "full"), default="full")
    p.add_argument("--max-components", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-dequantize", action="store_true")
    p.add_argument("--table", choices=("defaults", "tuned"), default="defaults")
    p.add_argument("--seeds", default="0,1,2", help="the splits of --table defaults")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.table == "defaults":
        return run_defaults(args)

    names = ["gaussian", "gmm", *args.flows.split(",")]
    table: dict[str, dict[str, Result]] = {}
    for ds in args.datasets.split(","):
        x = load(ds)
        s = split(x, args.seed, not args.no_dequantize)
        row = {
            "gaussian": fit_gmm(s, [1], args.seed),
            "gmm": fit_gmm(s, range(1, args.max_components + 1), args.seed),
        }
        for f in args.flows.split(","):
            row[f] = fit_flow(s, f, args)
        table[ds] = row
        line = ", ".join(
            f"{k} {v.nll:.3f}±{v.se:.3f} ({v.note}; {v.seconds:.0f}s)" for k, v in row.items()
        )
        print(
            f"[{ds} n={len(x)} D={x.shape[1]} train/val/test={len(s.train)}/{len(s.val)}/"
            f"{len(s.test)}] {line}",
            flush=True,
        )

    flows = names[2:]
    print()
    print("| data (N, D) | " + " | ".join(names) + " | best flow − best baseline |")
    print("|" + "---|" * (len(names) + 2))
    for ds, row in table.items():
        x_shape = load(ds).shape
        lowest = min(row.values(), key=lambda r: r.nll).nll
        cells = [fmt(row[n], row[n].nll == lowest) for n in names]
        bf = min(flows, key=lambda n: row[n].nll)
        bb = min(("gaussian", "gmm"), key=lambda n: row[n].nll)
        diff = row[bf].per_row - row[bb].per_row
        paired = f"{diff.mean():+.2f} ± {diff.std(ddof=1) / math.sqrt(len(diff)):.2f} ({bf})"
        print(f"| {ds} ({x_shape[0]}, {x_shape[1]}) | " + " | ".join(cells) + f" | {paired} |")
    print()
    print("Settings chosen on validation:")
    for ds, row in table.items():
        print(f"- {ds}: " + "; ".join(f"{k}: {v.note}" for k, v in row.items()))
    return table


if __name__ == "__main__":
    main()
