"""Flow guides against Pyro's autoguides: funnel gap, real posteriors, and SVI step time.

Three sections (``--section``), each one run, not a timed test:

* ``funnel``: Neal's funnel in 10-D (log Z = 0). Every guide gets the same SVI step budget;
  then, from ``--num-samples`` (>= 10 000) fresh draws: the ELBO gap -ELBO, PSIS k-hat, and the
  standard deviation of v (true value 3).
* ``posteriordb``: eight_schools (non-centred), sblrc-blr, kidiq (kidscore_momhsiq), arK and
  garch11 written as Pyro models (``../shared/data/posteriordb/MODELS.md``), plus Bayesian
  logistic regression on ``../shared/data/tabular/german_credit_numeric.npz``. For each guide:
  the largest error of the posterior means and of the standard deviations against the
  reference NUTS draws, in units of the reference standard deviation, and k-hat. German credit
  has no reference draws: its error columns are left empty. Skips cleanly when the data
  folder is absent.
* ``step-time``: wall time per SVI step of ``AutoFlowGuide(model, "iaf")`` against Pyro's
  ``AutoIAFNormal`` with the same number of layers and hidden sizes, timed interleaved in
  blocks (so that machine load hits both), median over blocks; the target ratio is <= 1.1.

Results are printed as markdown tables and saved to ``--json`` (updated model by model, so a
long run can be resumed with ``--models``).

    python benchmarks/vi_guides.py --section funnel --num-steps 10000 \\
        --flow-kwargs '{"log_scale_bound": 8}'
    python benchmarks/vi_guides.py --section posteriordb --num-steps 5000
    python benchmarks/vi_guides.py --section posteriordb --models eight_schools,kidiq
    python benchmarks/vi_guides.py --section step-time
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal
from pyro.optim import ClippedAdam
from torch.distributions import constraints

from pyro_flows.infer import AutoFlowGuide, compare_guides, guides_from_labels

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("PYRO_FLOWS_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_GUIDES = (
    "AutoNormal,AutoMultivariateNormal,AutoIAFNormal,flow:iaf,flow:maf,flow:iaf+laplace"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--section", choices=["funnel", "posteriordb", "step-time", "all"])
    parser.add_argument("--models", default="all", help="posteriordb models, comma-separated")
    parser.add_argument("--guides", default=DEFAULT_GUIDES, help="comma-separated labels")
    parser.add_argument("--num-layers", type=int, default=3)
    parser.add_argument("--hidden", default="40,40", help="hidden sizes, comma-separated")
    parser.add_argument("--init-scale", type=float, default=1.0, help="of the flow guides")
    parser.add_argument(
        "--flow-kwargs",
        default="{}",
        help="JSON of AutoFlowGuide keyword arguments, e.g. '{\"log_scale_bound\": 8}'",
    )
    parser.add_argument("--num-steps", type=int, default=5000)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--num-particles", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--json", default="outputs/vi_guides.json", help="results file")
    parser.add_argument("--step-blocks", type=int, default=30, help="step-time: blocks")
    return parser.parse_args(argv)


# -- models --------------------------------------------------------------------------------------
class Flat(dist.ImproperUniform):
    """A flat prior whose ``sample`` returns one feasible point (the image of 0).

    Pyro's autoguides initialise by sampling each site (init_to_median, init_to_feasible),
    which ImproperUniform refuses; the density, hence the posterior, is unchanged.
    """

    def sample(self, sample_shape: tuple = ()) -> torch.Tensor:
        bijection = torch.distributions.biject_to(self.support)
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        return bijection(torch.zeros(bijection.inverse_shape(shape)))


def funnel(dim: int = 10) -> None:
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    scale = torch.exp(v / 2).unsqueeze(-1)
    pyro.sample("x", dist.Normal(0.0, scale).expand(v.shape + (dim - 1,)).to_event(1))


def eight_schools(y: torch.Tensor, sigma: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", len(y)):
        eta = pyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * eta)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def blr(x: torch.Tensor, y: torch.Tensor) -> None:
    beta = pyro.sample("beta", dist.Normal(torch.zeros(x.shape[1]), 10.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(10.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal((x * beta).sum(-1), sigma), obs=y)


def kidiq(mom_hs: torch.Tensor, mom_iq: torch.Tensor, score: torch.Tensor) -> None:
    beta = pyro.sample("beta", Flat(constraints.real, (), (3,)))  # flat
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    mean = beta[..., 0] + beta[..., 1] * mom_hs + beta[..., 2] * mom_iq
    with pyro.plate("data", len(score)):
        pyro.sample("kid_score", dist.Normal(mean, sigma), obs=score)


def ark(y: torch.Tensor, k: int) -> None:
    alpha = pyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = pyro.sample("beta", dist.Normal(torch.zeros(k), 10.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    lags = torch.stack([y[k - j - 1 : len(y) - j - 1] for j in range(k)], -1)  # (T-K, K)
    mean = alpha + (lags * beta).sum(-1)
    with pyro.plate("data", len(y) - k):
        pyro.sample("y", dist.Normal(mean, sigma), obs=y[k:])


def garch11(y: torch.Tensor, sigma1: float) -> None:
    # flat priors; beta1 in (0, 1 - alpha1) is written beta1 = (1 - alpha1) u, u in (0, 1),
    # whose Jacobian (1 - alpha1) keeps the prior flat in (alpha1, beta1)
    mu = pyro.sample("mu", Flat(constraints.real, (), ()))
    alpha0 = pyro.sample("alpha0", Flat(constraints.positive, (), ()))
    alpha1 = pyro.sample("alpha1", dist.Uniform(0.0, 1.0))
    u = pyro.sample("beta1_fraction", dist.Uniform(0.0, 1.0))
    pyro.factor("beta1_jacobian", torch.log1p(-alpha1))
    beta1 = pyro.deterministic("beta1", (1 - alpha1) * u)
    var = torch.full_like(mu, sigma1**2)
    variances = [var]
    for t in range(1, len(y)):
        var = alpha0 + alpha1 * (y[t - 1] - mu) ** 2 + beta1 * var
        variances.append(var)
    scale = torch.stack(variances, -1).sqrt()  # the recursion couples all y_t: one event
    pyro.sample("y", dist.Normal(mu.unsqueeze(-1), scale).to_event(1), obs=y)


def german_credit(x: torch.Tensor, y: torch.Tensor) -> None:
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Bernoulli(logits=(x * w).sum(-1) + b), obs=y)


@dataclass
class Posterior:
    name: str
    model: Callable[..., None]
    args: tuple
    reference: np.ndarray | None  # (S, P) NUTS draws
    flatten: Callable[[dict[str, torch.Tensor]], np.ndarray]  # guide draws -> (S, P)


def _cols(*parts: torch.Tensor) -> np.ndarray:
    return torch.cat([p.reshape(p.shape[0], -1) for p in parts], -1).double().numpy()


def _draws(data: Path, name: str) -> np.ndarray:
    d = np.load(data / "posteriordb" / f"{name}.draws.npz")
    return d["draws"].reshape(-1, d["draws"].shape[-1])


def _tensor(v: object) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


# name -> (data file, model, model arguments from the data, reference draws, sites in order)
POSTERIORDB = {
    "eight_schools": (
        "eight_schools",
        eight_schools,
        lambda d: (_tensor(d["y"]), _tensor(d["sigma"])),
        "eight_schools-eight_schools_noncentered",
        ("theta", "mu", "tau"),
    ),
    "sblrc-blr": (
        "sblrc",
        blr,
        lambda d: (_tensor(d["X"]), _tensor(d["y"])),
        "sblrc-blr",
        ("beta", "sigma"),
    ),
    "kidiq": (
        "kidiq",
        kidiq,
        lambda d: (_tensor(d["mom_hs"]), _tensor(d["mom_iq"]), _tensor(d["kid_score"])),
        "kidiq-kidscore_momhsiq",
        ("beta", "sigma"),
    ),
    "arK": (
        "arK",
        ark,
        lambda d: (_tensor(d["y"]), int(d["K"])),
        "arK-arK",
        ("alpha", "beta", "sigma"),
    ),
    "garch11": (
        "garch",
        garch11,
        lambda d: (_tensor(d["y"]), float(d["sigma1"])),
        "garch-garch11",
        ("mu", "alpha0", "alpha1", "beta1"),
    ),
}


def load_posteriors(data_dir: str, wanted: list[str]) -> list[Posterior]:
    data = Path(data_dir)
    if not (data / "posteriordb").is_dir():
        return []
    out = []
    for name, (data_name, model, make_args, draws, sites) in POSTERIORDB.items():
        if name not in wanted:
            continue
        d = json.loads((data / "posteriordb" / f"{data_name}.data.json").read_text())
        out.append(
            Posterior(
                name,
                model,
                make_args(d),
                _draws(data, draws),
                lambda s, sites=sites: _cols(*(s[k] for k in sites)),
            )
        )
    credit = data / "tabular" / "german_credit_numeric.npz"
    if "german_credit" in wanted and credit.exists():
        d = np.load(credit)
        x = torch.as_tensor(d["features"], dtype=torch.float32)
        x = (x - x.mean(0)) / x.std(0)
        y = torch.as_tensor(d["labels"], dtype=torch.float32)
        out.append(
            Posterior("german_credit", german_credit, (x, y), None, lambda s: _cols(s["w"]))
        )
    return out


# -- sections ------------------------------------------------------------------------------------
def save(path: str, key: str, value: object) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(p.read_text()) if p.exists() else {}
    results[key] = value
    p.write_text(json.dumps(results, indent=1))


def run_funnel(args: argparse.Namespace, guides: dict) -> None:
    reports = compare_guides(
        funnel,
        guides,
        num_steps=args.num_steps,
        lr=args.lr,
        num_particles=args.num_particles,
        num_samples=max(args.num_samples, 10_000),
        seed=args.seed,
    )
    print(f"\n### Neal's funnel, 10-D: {args.num_steps} steps per guide, log Z = 0\n")
    print("| guide | ELBO gap | +- se | k-hat | sd(v) (true 3) | ms/step |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for name, r in reports.items():
        sd_v = r.draws.samples["v"].std().item()
        rows[name] = {"gap": -r.elbo, "se": r.elbo_se, "k_hat": r.pareto_k, "sd_v": sd_v}
        print(
            f"| {name} | {-r.elbo:.3f} | {r.elbo_se:.3f} | {r.pareto_k:.2f} | {sd_v:.2f} "
            f"| {r.ms_per_step:.1f} |"
        )
    save(args.json, "funnel", rows)


def run_posteriordb(args: argparse.Namespace, guides: dict) -> None:
    names = ["eight_schools", "sblrc-blr", "kidiq", "arK", "garch11", "german_credit"]
    wanted = names if args.models == "all" else args.models.split(",")
    posteriors = load_posteriors(args.data_dir, wanted)
    if not posteriors:
        print(f"no posteriordb folder under {args.data_dir}: section skipped")
        return
    for post in posteriors:
        t0 = time.perf_counter()
        failures: dict[str, str] = {}
        reports = compare_guides(
            post.model,
            guides,
            *post.args,
            num_steps=args.num_steps,
            lr=args.lr,
            num_particles=args.num_particles,
            num_samples=args.num_samples,
            seed=args.seed,
            failures=failures,
        )
        rows = {name: {"failed": message} for name, message in failures.items()}
        for name, r in reports.items():
            row = {"elbo": r.elbo, "k_hat": r.pareto_k, "ms_per_step": r.ms_per_step}
            if post.reference is not None:
                draws = post.flatten(r.draws.samples)
                ref_sd = post.reference.std(0)
                mean_err = np.abs(draws.mean(0) - post.reference.mean(0)) / ref_sd
                sd_err = np.abs(draws.std(0) - ref_sd) / ref_sd
                row.update(mean_err=float(mean_err.max()), sd_err=float(sd_err.max()))
            rows[name] = row
        save(args.json, post.name, rows)
        print(f"{post.name}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print_posteriordb_table(args.json)


def print_posteriordb_table(path: str) -> None:
    results = json.loads(Path(path).read_text())
    models = [k for k in results if k not in ("funnel", "step_time")]
    if not models:
        return
    guides = list(dict.fromkeys(g for m in models for g in results[m]))
    print("\n### Real posteriors: max |mean error| / max |sd error| (reference sd units), k-hat\n")
    print("| posterior | " + " | ".join(guides) + " |")
    print("|---" * (len(guides) + 1) + "|")
    for m in models:
        cells = []
        best = min(
            (g for g in guides if "mean_err" in results[m].get(g, {})),
            key=lambda g: results[m][g]["mean_err"] + results[m][g]["sd_err"],
            default=None,
        )
        for g in guides:
            r = results[m].get(g, {"failed": "not run"})
            if "failed" in r:
                cell = "diverged"
            elif "mean_err" in r:
                cell = f"{r['mean_err']:.2f} / {r['sd_err']:.2f}, k {r['k_hat']:.2f}"
            else:
                cell = f"ELBO {r['elbo']:.1f}, k {r['k_hat']:.2f}"
            cells.append(f"**{cell}**" if g == best else cell)
        print(f"| {m} | " + " | ".join(cells) + " |")


def run_step_time(args: argparse.Namespace) -> None:
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    rows = {}
    problems = {"funnel (D=10)": (funnel, ())}
    credit = Path(args.data_dir) / "tabular" / "german_credit_numeric.npz"
    if credit.exists():
        d = np.load(credit)
        x = torch.as_tensor(d["features"], dtype=torch.float32)
        y = torch.as_tensor(d["labels"], dtype=torch.float32)
        problems["german credit (D=25)"] = (german_credit, ((x - x.mean(0)) / x.std(0), y))
    print(f"\n### SVI step time: {args.num_layers} IAF layers, hidden {hidden}\n")
    print("| problem | AutoIAFNormal ms | AutoFlowGuide('iaf') ms | ratio |")
    print("|---|---|---|---|")
    for label, (model, margs) in problems.items():
        pyro.clear_param_store()
        guides = {  # different names: both live in the one parameter store
            "pyro": AutoIAFNormal(model, hidden_dim=hidden, num_transforms=args.num_layers),
            "ours": AutoFlowGuide(model, "iaf", args.num_layers, hidden),
        }
        svis = {}
        for key, guide in guides.items():
            elbo = Trace_ELBO(num_particles=args.num_particles, vectorize_particles=True)
            svis[key] = SVI(model, guide, ClippedAdam({"lr": 1e-3}), elbo)
            for _ in range(3):  # set-up and warm-up
                svis[key].step(*margs)
        times: dict[str, list[float]] = {k: [] for k in svis}
        for _ in range(args.step_blocks):
            for key, svi in svis.items():
                t0 = time.perf_counter()
                for _ in range(10):
                    svi.step(*margs)
                times[key].append((time.perf_counter() - t0) / 10 * 1000)
        pyro_ms, ours_ms = statistics.median(times["pyro"]), statistics.median(times["ours"])
        ratios = [o / p for o, p in zip(times["ours"], times["pyro"], strict=True)]
        q = np.quantile(ratios, [0.25, 0.75])
        rows[label] = {"pyro_ms": pyro_ms, "ours_ms": ours_ms, "ratio": ours_ms / pyro_ms}
        print(
            f"| {label} | {pyro_ms:.2f} | {ours_ms:.2f} | {ours_ms / pyro_ms:.2f} "
            f"(block ratios {q[0]:.2f}-{q[1]:.2f}) |"
        )
    save(args.json, "step_time", rows)


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    flow_kwargs = json.loads(args.flow_kwargs)
    guides = guides_from_labels(
        args.guides, args.num_layers, hidden, init_scale=args.init_scale, **flow_kwargs
    )
    sections = ["funnel", "posteriordb", "step-time"] if args.section == "all" else [args.section]
    if "funnel" in sections:
        run_funnel(args, guides)
    if "posteriordb" in sections:
        run_posteriordb(args, guides)
    if "step-time" in sections:
        run_step_time(args)


if __name__ == "__main__":
    main(parse_args())
