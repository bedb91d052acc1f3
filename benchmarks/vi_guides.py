"""Flow guides against Pyro's autoguides on real posteriors, the funnel, and SVI step time.

Sections (``--section``), each one run, not a timed test:

* ``posteriordb``: the 14 problems of issue 16 but the funnel: the 11 posteriors of
  ``../shared/data/posteriordb`` (eight_schools non-centred, sblrc-blr, low_dim_gauss_mix,
  gp_pois_regr, hudson_lynx_hare Lotka-Volterra, arK, garch11, kidiq, nes2000, diamonds,
  one_comp_mm_elim_abs), written as Pyro models from ``MODELS.md``, Bayesian logistic
  regression on German credit and a radon hierarchical regression (Minnesota, 85 counties,
  90 latents). Every guide is fitted with the same budget (by default 3000 SVI steps,
  ClippedAdam lr 5e-3 decaying by x0.1 over the run, 4 vectorised particles:
  :func:`pyro_flows.infer.fit_svi`), then scored from ``--num-samples`` fresh draws: the largest
  absolute error of the posterior means, and the largest ``|log(sd_guide / sd_ref)|``, both
  over the reference's columns and the means in reference standard deviations; PSIS k-hat;
  the wall time of the fit. References: posteriordb's Stan draws; for German credit and
  radon, a Pyro NUTS run made on first use and cached outside the repository (``--reference-dir``,
  default ``$PYRO_FLOWS_REFERENCE_DIR`` or ``~/.cache/pyro_flows``). Skips cleanly when the data
  folder is absent.
* ``funnel``: Neal's funnel in 10-D (log Z = 0), same budget: the ELBO gap -ELBO, k-hat and the
  standard deviation of v (true value 3).
* ``check-models``: checks of the Pyro models against the reference draws (no fitting): the
  Stein identity ``E_p[grad_u log p(u)] = 0`` over 1000 reference draws mapped to the
  unconstrained latent space (z-scores of the mean score), and the log density at the
  reference mean against points moved by one reference sd along each coordinate.
* ``step-time``: wall time per SVI step of ``AutoFlowGuide(model, "iaf")`` against Pyro's
  ``AutoIAFNormal`` with the same layers and hidden sizes, interleaved in blocks; target <= 1.1.

Guides (``--guides``): ``AutoNormal``, ``AutoMultivariateNormal``, ``AutoIAFNormal`` (Pyro's
defaults, as a new user would write them), ``AutoFlowGuide`` (``AutoFlowGuide(model)`` at its
defaults), ``recipe`` (``pyro_flows.infer.fit_guide(model, *args, num_steps=...)``, skipped with
a note while the library has no such function), and ``flow:NAME`` / ``flow:NAME+laplace``
(explicit families with ``--num-layers`` and ``--hidden``). A guide that crashes or gives
non-finite draws gets a cell saying so and the run goes on. Results are saved to ``--json``
model by model (a run can be resumed with ``--models``), and the markdown table and a summary
of the issue's targets are printed from that file (``--section table`` prints them only).

    python benchmarks/vi_guides.py --section posteriordb --models eight_schools,kidiq
    python benchmarks/vi_guides.py --section funnel
    python benchmarks/vi_guides.py --section check-models
    python benchmarks/vi_guides.py --section table
    python benchmarks/vi_guides.py --section step-time
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.infer
import torch
from pyro import poutine
from pyro.distributions import constraints as pyro_constraints
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormal, init_to_median
from pyro.optim import ClippedAdam
from torch.distributions import constraints

import pyro_flows.infer as pf_infer
from pyro_flows.infer import AutoFlowGuide, fit_svi, guides_from_labels, importance_sample

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("PYRO_FLOWS_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_REFERENCES = Path(
    os.environ.get("PYRO_FLOWS_REFERENCE_DIR", Path.home() / ".cache" / "pyro_flows")
)
DEFAULT_GUIDES = "AutoNormal,AutoMultivariateNormal,AutoIAFNormal,AutoFlowGuide,recipe"
POSTERIORS = (
    "eight_schools",
    "sblrc-blr",
    "low_dim_gauss_mix",
    "gp_pois_regr",
    "hudson_lynx_hare",
    "arK",
    "garch11",
    "kidiq",
    "nes2000",
    "diamonds",
    "one_comp_mm_elim_abs",
    "german_credit",
    "radon",
)
#: The guide that stands for the library's default in the summary, and the recipe.
DEFAULT_LABELS = ("AutoFlowGuide", "recipe", "recipe+IS")
#: The recipe's own last step: its draws importance-resampled (GuideFit.resample).
RESAMPLED = "recipe+IS"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--section",
        choices=["posteriordb", "funnel", "check-models", "table", "step-time", "all"],
        default="all",
    )
    parser.add_argument("--models", default="all", help="posteriors, comma-separated")
    parser.add_argument("--guides", default=DEFAULT_GUIDES, help="comma-separated labels")
    parser.add_argument("--num-layers", type=int, default=3, help="of flow:NAME guides")
    parser.add_argument("--hidden", default="40,40", help="of flow:NAME guides")
    parser.add_argument(
        "--flow-kwargs", default="{}", help="JSON of AutoFlowGuide keywords for flow:NAME guides"
    )
    parser.add_argument("--num-steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--lr-decay", type=float, default=0.1, help="lr factor at the last step")
    parser.add_argument("--num-particles", type=int, default=4)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--reference-dir", default=str(DEFAULT_REFERENCES))
    parser.add_argument("--nuts-chains", type=int, default=4, help="NUTS references: chains")
    parser.add_argument("--nuts-warmup", type=int, default=500)
    parser.add_argument("--nuts-draws", type=int, default=500, help="per chain")
    parser.add_argument(
        "--defer-reference",
        action="store_true",
        help="fit without a missing NUTS reference; its errors are added by --section table",
    )
    parser.add_argument(
        "--json",
        default="outputs/vi_guides.json",
        help="results file (--section table: several, comma-separated, are merged)",
    )
    parser.add_argument("--step-blocks", type=int, default=30, help="step-time: blocks")
    parser.add_argument("--progress", action="store_true", help="progress bars")
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


class PositiveNormal(dist.TorchDistribution):
    r"""A normal :math:`N(m, s)` truncated to :math:`(0, \infty)` (Stan's ``<lower=0>`` normal).

    .. math:: p(x) = \frac{N(x; m, s)}{1 - \Phi(-m / s)}, \quad x > 0
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.positive
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args=None) -> None:
        self.loc, self.scale = torch.broadcast_tensors(
            torch.as_tensor(loc), torch.as_tensor(scale)
        )
        super().__init__(self.loc.shape, validate_args=validate_args)

    def _mass(self) -> torch.Tensor:  # P(x > 0) under the untruncated normal
        return torch.special.ndtr(self.loc / self.scale)

    def sample(self, sample_shape: tuple = ()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            lo = 1 - self._mass()  # Phi(-m/s)
            u = lo + (1 - lo) * torch.rand(shape, dtype=self.loc.dtype)
            return self.loc + self.scale * torch.special.ndtri(u)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return dist.Normal(self.loc, self.scale).log_prob(value) - self._mass().log()


class OrderedNormal(dist.TorchDistribution):
    r"""``K`` iid :math:`N(m, s)` draws sorted increasingly (Stan's ``ordered[K] mu ~ normal``).

    .. math:: p(x) = K!\, \prod_k N(x_k; m, s), \quad x_1 < \dots < x_K
    """

    arg_constraints = {}
    support = pyro_constraints.ordered_vector
    has_rsample = False

    def __init__(self, loc: float, scale: float, size: int) -> None:
        self.loc, self.scale, self.size = loc, scale, size
        super().__init__(torch.Size(), torch.Size([size]))

    def sample(self, sample_shape: tuple = ()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        return (self.loc + self.scale * torch.randn(shape)).sort(-1).values

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        log_k_factorial = math.lgamma(self.size + 1)
        return dist.Normal(self.loc, self.scale).log_prob(value).sum(-1) + log_k_factorial


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


def low_dim_gauss_mix(y: torch.Tensor) -> None:
    mu = pyro.sample("mu", OrderedNormal(0.0, 2.0, 2))
    sigma = pyro.sample("sigma", dist.HalfNormal(2.0).expand([2]).to_event(1))
    theta = pyro.sample("theta", dist.Beta(5.0, 5.0))
    logits = torch.stack([theta.log(), torch.log1p(-theta)], -1).unsqueeze(-2)  # (..., 1, 2)
    parts = dist.Normal(mu.unsqueeze(-2), sigma.unsqueeze(-2))
    mixture = dist.MixtureSameFamily(dist.Categorical(logits=logits), parts)  # batch (..., 1)
    mixture = mixture.expand(mixture.batch_shape[:-1] + y.shape)
    pyro.sample("y", mixture.to_event(1), obs=y)


def gp_pois_regr(x: torch.Tensor, k: torch.Tensor) -> None:
    rho = pyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = pyro.sample("alpha", dist.HalfNormal(2.0))
    f_tilde = pyro.sample("f_tilde", dist.Normal(torch.zeros(len(x)), 1.0).to_event(1))
    # Stan's K = alpha^2 exp(-d^2 / (2 rho^2)) + 1e-10 I needs double precision to factor
    d2 = (x[:, None] - x[None, :]).double() ** 2
    rho2, alpha2 = rho.double()[..., None, None] ** 2, alpha.double()[..., None, None] ** 2
    cov = alpha2 * torch.exp(-d2 / (2 * rho2)) + 1e-10 * torch.eye(len(x), dtype=torch.float64)
    f = (torch.linalg.cholesky(cov) @ f_tilde.double().unsqueeze(-1)).squeeze(-1)
    f = pyro.deterministic("f", f.to(f_tilde.dtype), event_dim=1)
    pyro.sample("k", dist.Poisson(f.exp()).to_event(1), obs=k)


def _lotka_volterra(theta: torch.Tensor, z_init: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """Log-populations at ``ts`` (..., N, 2); solved in log space, where they stay finite."""
    from torchdiffeq import odeint

    alpha, beta, gamma, delta = theta.unbind(-1)

    def field(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # d log u / dt = alpha - beta v,  d log v / dt = delta u - gamma
        log_u, log_v = s.unbind(-1)
        return torch.stack([alpha - beta * log_v.exp(), delta * log_u.exp() - gamma], -1)

    times = torch.cat([ts.new_zeros(1), ts])
    path = odeint(field, z_init.log(), times, method="dopri5", rtol=1e-6, atol=1e-6)
    return path[1:].movedim(0, -2)


def hudson_lynx_hare(ts: torch.Tensor, y_init: torch.Tensor, y: torch.Tensor) -> None:
    loc = torch.tensor([1.0, 0.05, 1.0, 0.05])
    scale = torch.tensor([0.5, 0.05, 0.5, 0.05])
    theta = pyro.sample("theta", PositiveNormal(loc, scale).to_event(1))
    z_init = pyro.sample("z_init", dist.LogNormal(math.log(10.0), 1.0).expand([2]).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(-1.0, 1.0).expand([2]).to_event(1))
    log_z = _lotka_volterra(theta, z_init, ts)  # (..., N, 2)
    pyro.sample("y_init", dist.LogNormal(z_init.log(), sigma).to_event(1), obs=y_init)
    pyro.sample("y", dist.LogNormal(log_z, sigma.unsqueeze(-2)).to_event(2), obs=y)


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


def kidiq(mom_hs: torch.Tensor, mom_iq: torch.Tensor, score: torch.Tensor) -> None:
    beta = pyro.sample("beta", Flat(constraints.real, (), (3,)))  # flat
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    mean = beta[..., 0] + beta[..., 1] * mom_hs + beta[..., 2] * mom_iq
    with pyro.plate("data", len(score)):
        pyro.sample("kid_score", dist.Normal(mean, sigma), obs=score)


def nes(x: torch.Tensor, y: torch.Tensor) -> None:
    beta = pyro.sample("beta", Flat(constraints.real, (), (x.shape[1],)))  # flat
    sigma = pyro.sample("sigma", Flat(constraints.positive, (), ()))  # flat on (0, inf)
    mean = beta @ x.mT  # no plate: global sites have shape (particles,) + event shape
    pyro.sample("partyid7", dist.Normal(mean, sigma.unsqueeze(-1)).to_event(1), obs=y)


def diamonds(xc: torch.Tensor, y: torch.Tensor) -> None:
    b = pyro.sample("b", dist.Normal(torch.zeros(xc.shape[1]), 1.0).to_event(1))
    intercept = pyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
    sigma = pyro.sample("sigma", dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 10.0)))
    mean = intercept.unsqueeze(-1) + b @ xc.mT
    pyro.sample("Y", dist.Normal(mean, sigma.unsqueeze(-1)).to_event(1), obs=y)


def _one_compartment(
    k_a: torch.Tensor,
    k_m: torch.Tensor,
    v_m: torch.Tensor,
    dose: float,
    volume: float,
    times: torch.Tensor,
) -> torch.Tensor:
    """Concentrations at ``times`` (..., N) of the Michaelis-Menten one-compartment model."""
    from torchdiffeq import odeint

    def field(t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        absorbed = torch.exp(-k_a * t) * dose * k_a / volume
        return absorbed - v_m / volume * c / (k_m + c)

    grid = torch.cat([times.new_zeros(1), times])
    path = odeint(field, torch.zeros_like(k_a), grid, method="dopri5", rtol=1e-6, atol=1e-6)
    return path[1:].movedim(0, -1)


def one_comp_mm_elim_abs(times: torch.Tensor, c_hat: torch.Tensor, dose: float, volume: float):
    k_a = pyro.sample("k_a", dist.HalfCauchy(1.0))
    k_m = pyro.sample("K_m", dist.HalfCauchy(1.0))
    v_m = pyro.sample("V_m", dist.HalfCauchy(1.0))
    sigma = pyro.sample("sigma", dist.HalfCauchy(1.0))
    conc = _one_compartment(k_a, k_m, v_m, dose, volume, times)
    pyro.sample("C_hat", dist.LogNormal(conc.log(), sigma.unsqueeze(-1)).to_event(1), obs=c_hat)


def german_credit(x: torch.Tensor, y: torch.Tensor) -> None:
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    logits = w @ x.mT + b.unsqueeze(-1)
    pyro.sample("y", dist.Bernoulli(logits=logits).to_event(1), obs=y)


def radon(
    county: torch.Tensor, floor: torch.Tensor, log_uranium: torch.Tensor, log_radon: torch.Tensor
) -> None:
    """Varying intercepts by county with a county-level uranium predictor (non-centred).

    a_j = mu_a + gamma u_j + sigma_a eta_j,  eta_j ~ N(0, 1);
    log_radon_i ~ N(a_{county_i} + beta floor_i, sigma_y).
    """
    num_counties = len(log_uranium)
    mu_a = pyro.sample("mu_a", dist.Normal(0.0, 10.0))
    gamma = pyro.sample("gamma", dist.Normal(0.0, 10.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 10.0))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(5.0))
    sigma_y = pyro.sample("sigma_y", dist.HalfNormal(5.0))
    eta = pyro.sample("eta", dist.Normal(torch.zeros(num_counties), 1.0).to_event(1))
    a = mu_a.unsqueeze(-1) + gamma.unsqueeze(-1) * log_uranium + sigma_a.unsqueeze(-1) * eta
    a = pyro.deterministic("a", a, event_dim=1)
    mean = a[..., county] + beta.unsqueeze(-1) * floor
    pyro.sample("log_radon", dist.Normal(mean, sigma_y.unsqueeze(-1)).to_event(1), obs=log_radon)


# -- problems ------------------------------------------------------------------------------------
@dataclass
class Posterior:
    """One problem: a model, its arguments and reference draws of the sites ``sites``.

    ``reference`` holds the draws of the reference columns (chains x draws x P, constrained
    values, in the order of ``sites`` flattened), ``names`` their names (Stan's ``b[1]``);
    ``to_latent`` maps a dict of those site values to the model's latent sample sites (identity
    when the columns are the latent sites themselves).
    """

    name: str
    model: Callable[..., None]
    args: tuple
    sites: tuple[str, ...]
    reference: np.ndarray | None = None
    names: list[str] = field(default_factory=list)
    to_latent: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    source: str = ""

    def flatten(self, samples: dict[str, torch.Tensor]) -> np.ndarray:
        """Draws (a dict of site values, a leading draw dimension) as an (S, P) array."""
        parts = [samples[k].detach().reshape(samples[k].shape[0], -1) for k in self.sites]
        return torch.cat(parts, -1).double().numpy()

    def split(self, columns: np.ndarray) -> dict[str, torch.Tensor]:
        """An (S, P) array of reference columns as a dict of float32 site values."""
        out, start = {}, 0
        for k, shape in zip(self.sites, self.site_shapes(), strict=True):
            size = math.prod(shape)
            block = torch.as_tensor(columns[:, start : start + size], dtype=torch.float32)
            out[k] = block.reshape((len(columns), *shape))
            start += size
        return out

    def site_shapes(self) -> list[torch.Size]:
        # At the prior medians: a random prior draw can make an ODE model's solve blow up.
        at_median = pyro.infer.autoguide.initialization.InitMessenger(init_to_median)
        with poutine.block(), torch.no_grad(), at_median:
            trace = poutine.trace(self.model).get_trace(*self.args)
        return [trace.nodes[k]["value"].shape for k in self.sites]

    def column_names(self) -> list[str]:
        """Stan's names of the flattened sites: ``mu``, ``beta[1]``, ``beta[2]``, ..."""
        names = []
        for k, shape in zip(self.sites, self.site_shapes(), strict=True):
            if len(shape) > 1:
                raise ValueError(f"site {k!r}: only scalar and vector sites are named")
            names += [k] if not shape else [f"{k}[{i + 1}]" for i in range(shape[0])]
        return names


def _tensor(v: object) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def _eight_schools_latent(s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    eta = (s["theta"] - s["mu"][:, None]) / s["tau"][:, None]
    return {"mu": s["mu"], "tau": s["tau"], "theta_trans": eta}


def _garch_latent(s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    fraction = s["beta1"] / (1 - s["alpha1"])
    return {
        "mu": s["mu"],
        "alpha0": s["alpha0"],
        "alpha1": s["alpha1"],
        "beta1_fraction": fraction,
    }


def _gp_latent(x: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    def to_latent(s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        d2 = (x[:, None] - x[None, :]).double() ** 2
        rho2, alpha2 = (
            s["rho"].double()[:, None, None] ** 2,
            s["alpha"].double()[:, None, None] ** 2,
        )
        cov = alpha2 * torch.exp(-d2 / (2 * rho2)) + 1e-10 * torch.eye(len(x), dtype=torch.float64)
        chol = torch.linalg.cholesky(cov)
        f_tilde = torch.linalg.solve_triangular(chol, s["f"].double()[..., None], upper=False)
        return {"rho": s["rho"], "alpha": s["alpha"], "f_tilde": f_tilde[..., 0].float()}

    return to_latent


def _posteriordb(data: Path, name: str) -> Posterior:
    """The posteriordb posterior ``name`` as a Pyro model with its reference draws."""

    def load(data_name: str) -> dict:
        return json.loads((data / "posteriordb" / f"{data_name}.data.json").read_text())

    to_latent = None
    if name == "eight_schools":
        d, draws = load("eight_schools"), "eight_schools-eight_schools_noncentered"
        model, args = eight_schools, (_tensor(d["y"]), _tensor(d["sigma"]))
        sites, to_latent = ("theta", "mu", "tau"), _eight_schools_latent
    elif name == "sblrc-blr":
        d, draws = load("sblrc"), "sblrc-blr"
        model, args, sites = blr, (_tensor(d["X"]), _tensor(d["y"])), ("beta", "sigma")
    elif name == "low_dim_gauss_mix":
        d, draws = load("low_dim_gauss_mix"), "low_dim_gauss_mix-low_dim_gauss_mix"
        model, args, sites = low_dim_gauss_mix, (_tensor(d["y"]),), ("mu", "sigma", "theta")
    elif name == "gp_pois_regr":
        d, draws = load("gp_pois_regr"), "gp_pois_regr-gp_pois_regr"
        x = _tensor(d["x"])
        model, args, sites = gp_pois_regr, (x, _tensor(d["k"])), ("rho", "alpha", "f")
        to_latent = _gp_latent(x)
    elif name == "hudson_lynx_hare":
        d, draws = load("hudson_lynx_hare"), "hudson_lynx_hare-lotka_volterra"
        args = (_tensor(d["ts"]), _tensor(d["y_init"]), _tensor(d["y"]))
        model, sites = hudson_lynx_hare, ("theta", "z_init", "sigma")
    elif name == "arK":
        d, draws = load("arK"), "arK-arK"
        model, args = ark, (_tensor(d["y"]), int(d["K"]))
        sites = ("alpha", "beta", "sigma")
    elif name == "garch11":
        d, draws = load("garch"), "garch-garch11"
        model, args = garch11, (_tensor(d["y"]), float(d["sigma1"]))
        sites, to_latent = ("mu", "alpha0", "alpha1", "beta1"), _garch_latent
    elif name == "kidiq":
        d, draws = load("kidiq"), "kidiq-kidscore_momhsiq"
        args = (_tensor(d["mom_hs"]), _tensor(d["mom_iq"]), _tensor(d["kid_score"]))
        model, sites = kidiq, ("beta", "sigma")
    elif name == "nes2000":
        d, draws = load("nes2000"), "nes2000-nes"
        age = np.asarray(d["age_discrete"])
        columns = [
            np.ones(len(age)),
            d["real_ideo"],
            d["race_adj"],
            age == 2,  # age30_44
            age == 3,  # age45_64
            age == 4,  # age65up
            d["educ1"],
            d["gender"],
            d["income"],
        ]
        x = torch.as_tensor(np.stack(columns, -1).astype(np.float64), dtype=torch.float32)
        model, args, sites = nes, (x, _tensor(d["partyid7"])), ("beta", "sigma")
    elif name == "diamonds":
        d, draws = load("diamonds"), "diamonds-diamonds"
        x = np.asarray(d["X"], dtype=np.float64)[:, 1:]  # the first column is the intercept
        xc = torch.as_tensor(x - x.mean(0), dtype=torch.float32)
        model, args, sites = diamonds, (xc, _tensor(d["Y"])), ("b", "Intercept", "sigma")
    elif name == "one_comp_mm_elim_abs":
        d, draws = load("one_comp_mm_elim_abs"), "one_comp_mm_elim_abs-one_comp_mm_elim_abs"
        if d["t0"] != 0:
            raise ValueError(f"one_comp_mm_elim_abs: the model assumes t0 = 0, got {d['t0']}")
        args = (_tensor(d["times"]), _tensor(d["C_hat"]), float(d["D"]), float(d["V"]))
        model, sites = one_comp_mm_elim_abs, ("k_a", "K_m", "V_m", "sigma")
    else:
        raise ValueError(f"unknown posteriordb posterior {name!r}")
    file = np.load(data / "posteriordb" / f"{draws}.draws.npz")
    post = Posterior(
        name,
        model,
        args,
        sites,
        file["draws"],
        [str(n) for n in file["names"]],
        to_latent,
        source=f"posteriordb {draws} (Stan NUTS)",
    )
    expected = post.column_names()
    if expected != post.names:  # the guide's columns must be the reference's, one by one
        raise AssertionError(f"{name}: model columns {expected} != reference {post.names}")
    return post


def load_posteriors(args: argparse.Namespace, wanted: Sequence[str]) -> list[Posterior]:
    """The wanted problems whose data is present (with their references, made if needed)."""
    data = Path(args.data_dir)
    out = []
    for name in wanted:
        if name == "german_credit":
            path = data / "tabular" / "german_credit_numeric.npz"
            if not path.exists():
                continue
            d = np.load(path)
            x = torch.as_tensor(d["features"], dtype=torch.float32)
            x = (x - x.mean(0)) / x.std(0)
            y = torch.as_tensor(d["labels"], dtype=torch.float32)
            post = Posterior(name, german_credit, (x, y), ("w", "b"))
        elif name == "radon":
            path = data / "tabular" / "radon_minnesota.npz"
            if not path.exists():
                continue
            d = np.load(path)
            county = torch.as_tensor(d["county"], dtype=torch.long)
            uranium = torch.zeros(int(county.max()) + 1)  # one log-uranium value per county
            uranium[county] = torch.as_tensor(d["log_uranium"], dtype=torch.float32)
            floor = torch.as_tensor(d["floor"], dtype=torch.float32)
            log_radon = torch.as_tensor(d["log_radon"], dtype=torch.float32)
            sites = ("mu_a", "gamma", "beta", "sigma_a", "sigma_y", "a")
            post = Posterior(name, radon, (county, floor, uranium, log_radon), sites)
        else:
            if not (data / "posteriordb").is_dir():
                continue
            out.append(_posteriordb(data, name))
            continue
        post.names = post.column_names()
        post.reference = nuts_reference(post, args, compute=not args.defer_reference)
        if post.reference is not None:
            chains, draws = post.reference.shape[:2]
            post.source = f"Pyro NUTS, {chains} chains x {draws} draws"
        out.append(post)
    return out


def site_values(post: Posterior, latents: dict[str, torch.Tensor]) -> poutine.Trace:
    """A trace of the model with its latent sites set to ``latents`` (a leading draw dim)."""
    num = len(next(iter(latents.values())))
    nesting = max_plate_nesting(post)
    with poutine.block(), torch.no_grad():
        proto = poutine.trace(post.model).get_trace(*post.args)
    data = {}
    for name, value in latents.items():
        site = proto.nodes.get(name)
        if site is None or site["type"] != "sample" or site["is_observed"]:
            continue  # deterministic sites are recomputed
        batch, event = site["fn"].batch_shape, site["fn"].event_shape
        data[name] = value.reshape((num,) + (1,) * (nesting - len(batch)) + batch + event)
    with pyro.plate("_draws", num, dim=-(nesting + 1)):
        return poutine.trace(poutine.condition(post.model, data=data)).get_trace(*post.args)


def max_plate_nesting(post: Posterior) -> int:
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(post.model).get_trace(*post.args)
    frames = [len(s["cond_indep_stack"]) for s in trace.nodes.values() if s["type"] == "sample"]
    return max(frames, default=0)


def nuts_reference(
    post: Posterior, args: argparse.Namespace, compute: bool = True
) -> np.ndarray | None:
    """Draws (chains x draws x P) of ``post``'s columns by Pyro's NUTS, cached on disk.

    The cache file ``<reference-dir>/<name>_nuts_reference.npz`` is reused while its key
    (the model's source, the data and the NUTS settings) matches; else it is made, unless
    ``compute`` is false (then None).
    """
    import arviz as az

    settings = (args.nuts_chains, args.nuts_warmup, args.nuts_draws)
    digest = hashlib.sha256(inspect.getsource(post.model).encode())
    for a in post.args:
        digest.update(np.ascontiguousarray(torch.as_tensor(a).numpy()).tobytes())
    digest.update(repr(settings).encode())
    key = digest.hexdigest()[:16]
    path = Path(args.reference_dir) / f"{post.name}_nuts_reference.npz"
    if path.exists():
        cached = np.load(path)
        if str(cached["key"]) == key:
            return cached["draws"]
        print(f"{path}: made for another model, data or setting: remade", file=sys.stderr)
    if not compute:
        return None
    chains, warmup, draws = settings
    print(
        f"{post.name}: no cached reference: running Pyro NUTS, {chains} chains x ({warmup} "
        f"warm-up + {draws} draws), into {path}; this takes a while (minutes to an hour)",
        file=sys.stderr,
    )
    runs = []
    t0 = time.perf_counter()
    for chain in range(chains):
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed + 1000 * chain)
        kernel = pyro.infer.NUTS(
            post.model, jit_compile=True, ignore_jit_warnings=True, target_accept_prob=0.9
        )
        mcmc = pyro.infer.MCMC(
            kernel, num_samples=draws, warmup_steps=warmup, disable_progbar=not args.progress
        )
        mcmc.run(*post.args)
        with torch.no_grad():
            trace = site_values(post, mcmc.get_samples())
        runs.append(post.flatten({k: trace.nodes[k]["value"] for k in post.sites}))
        print(
            f"{post.name}: NUTS chain {chain + 1}/{chains} done ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )
    out = np.stack(runs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ's refactoring notice
        dataset = az.convert_to_dataset({"x": out})
        rhat = az.rhat(dataset)["x"].values
        ess = az.ess(dataset, method="bulk")["x"].values
    print(
        f"{post.name}: NUTS reference: max R-hat {rhat.max():.4f}, min bulk ESS {ess.min():.0f}"
        + ("" if rhat.max() < 1.01 else "  (R-hat >= 1.01: use more draws)"),
        file=sys.stderr,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, draws=out, names=np.array(post.names), rhat=rhat, ess=ess, key=key)
    return out


# -- guides and fits -----------------------------------------------------------------------------
def default_flow() -> str:
    """The family ``AutoFlowGuide(model)`` uses when none is given."""
    return str(inspect.signature(AutoFlowGuide).parameters["flow"].default)


def make_guides(args: argparse.Namespace) -> dict[str, Callable | None]:
    """Label to ``factory(model)``; ``recipe`` maps to None (it fits itself)."""
    labels = [s.strip() for s in args.guides.split(",") if s.strip()]
    flows = [s for s in labels if s.startswith("flow:")]
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    explicit = guides_from_labels(flows, args.num_layers, hidden, **json.loads(args.flow_kwargs))
    plain = {
        "AutoNormal": AutoNormal,
        "AutoMultivariateNormal": AutoMultivariateNormal,
        "AutoIAFNormal": AutoIAFNormal,  # Pyro's defaults: one layer, hidden 3 D + 10
        "AutoFlowGuide": AutoFlowGuide,  # the library's defaults
    }
    guides: dict[str, Callable | None] = {}
    for label in labels:
        if label == "recipe":
            if hasattr(pf_infer, "fit_guide"):
                guides[label] = None
            else:
                print(
                    "recipe: pyro_flows.infer has no fit_guide yet: column skipped",
                    file=sys.stderr,
                )
        elif label in plain:
            guides[label] = plain[label]
        elif label in explicit:
            guides[label] = explicit[label]
        else:
            raise ValueError(
                f"unknown guide {label!r}; expected {sorted(plain)}, recipe, flow:NAME"
            )
    return guides


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160] if text else ''}"


def fit_and_draw(
    post: Posterior, label: str, factory: Callable | None, args: argparse.Namespace
) -> tuple[dict, object | None]:
    """Fits one guide on the budget and draws from it: a result row and the draws (or None)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    times: list[float] = []
    row: dict = {}
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if factory is None:  # the recipe: one call
                options = {"num_steps": args.num_steps}
                if "progress" in inspect.signature(pf_infer.fit_guide).parameters:
                    options["progress"] = args.progress
                result = pf_infer.fit_guide(post.model, *post.args, **options)
                if getattr(result, "choices", None):
                    row["choices"] = {k: str(v)[:80] for k, v in result.choices.items()}
                guide = (
                    result[0] if isinstance(result, tuple) else getattr(result, "guide", result)
                )
            else:
                guide = factory(post.model)
                fit_svi(
                    post.model,
                    guide,
                    *post.args,
                    num_steps=args.num_steps,
                    lr=args.lr,
                    lr_decay=args.lr_decay,
                    num_particles=args.num_particles,
                    progress=args.progress,
                    step_times=times,
                )
            row["seconds"] = time.perf_counter() - t0
            with torch.no_grad():
                draws = importance_sample(
                    post.model, guide, *post.args, num_samples=args.num_samples
                )
        except Exception as err:  # noqa: BLE001 - a crash is a result: the cell says so
            row.update(failed=_first_line(err), seconds=time.perf_counter() - t0)
            draws = None
    notes = sorted({f"{w.category.__name__}: {str(w.message)[:120]}" for w in caught})
    if notes:
        row["warnings"] = notes
    if times:
        row["ms_per_step"] = 1000 * statistics.median(times)
    if draws is not None:
        row.update(elbo=draws.elbo(), k_hat=draws.pareto_k())
    return row, draws


def resampled_row(row: dict, draws: object) -> tuple[dict, object]:
    """The recipe's draws after PSIS importance resampling: the same fit, ELBO and k-hat."""
    out = {k: row[k] for k in ("seconds", "elbo", "k_hat", "choices") if k in row}
    return out, argparse.Namespace(samples=draws.resample())


def score_posterior(post: Posterior, draws: object, row: dict) -> None:
    """Adds the errors against the reference to ``row`` (or a note when they are not finite)."""
    cols = post.flatten(draws.samples)
    if not np.isfinite(cols).all():
        row["failed"] = f"non-finite draws ({int((~np.isfinite(cols)).any(1).sum())} rows)"
        return
    if not math.isfinite(row.get("k_hat", math.nan)) or not math.isfinite(row["elbo"]):
        row["note"] = f"ELBO {row['elbo']}, k-hat {row.get('k_hat')}"
    row.update(means=cols.mean(0).tolist(), sds=cols.std(0).tolist())
    if post.reference is not None:
        add_errors(post, row)


def add_errors(post: Posterior, row: dict) -> None:
    """The errors of the guide's column means and sds (``row``) against the reference."""
    ref = post.reference.reshape(-1, post.reference.shape[-1])
    ref_sd = ref.std(0)
    mean_err = np.abs(np.asarray(row["means"]) - ref.mean(0)) / ref_sd
    log_sd = np.abs(np.log(np.asarray(row["sds"]) / ref_sd))
    row.update(
        mean_err=float(mean_err.max()),
        mean_err_at=post.names[int(mean_err.argmax())],
        log_sd=float(log_sd.max()),
        log_sd_at=post.names[int(log_sd.argmax())],
    )


def save(path: str, key: str, value: object) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(p.read_text()) if p.exists() else {}
    results[key] = value
    p.write_text(json.dumps(results, indent=1))


def budget(args: argparse.Namespace) -> dict:
    return {
        "num_steps": args.num_steps,
        "lr": args.lr,
        "lr_decay": args.lr_decay,
        "num_particles": args.num_particles,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "default_flow": default_flow(),
        "date": time.strftime("%Y-%m-%d"),
    }


def run_posteriordb(args: argparse.Namespace) -> None:
    wanted = list(POSTERIORS) if args.models == "all" else args.models.split(",")
    unknown = [m for m in wanted if m not in POSTERIORS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; expected some of {list(POSTERIORS)}")
    guides = make_guides(args)
    found = 0
    for name in wanted:
        posts = load_posteriors(args, [name])
        if not posts:
            print(f"{name}: no data under {args.data_dir}: skipped", file=sys.stderr)
            continue
        found += 1
        post = posts[0]
        rows = {"_meta": {**budget(args), "reference": post.source, "columns": len(post.names)}}
        for label, factory in guides.items():
            row, draws = fit_and_draw(post, label, factory, args)
            if draws is not None:
                score_posterior(post, draws, row)
            rows[label] = row
            print(f"{name} / {label}: {cell(row)}", file=sys.stderr)
            if label == "recipe" and draws is not None and "failed" not in row:
                rows[RESAMPLED], resampled = resampled_row(row, draws)
                score_posterior(post, resampled, rows[RESAMPLED])
                print(f"{name} / {RESAMPLED}: {cell(rows[RESAMPLED])}", file=sys.stderr)
            save(args.json, name, rows)
    if not found:
        print(f"posteriordb: no data under {args.data_dir}: section skipped")
        return
    print_table(args.json, args)


def run_funnel(args: argparse.Namespace) -> None:
    post = Posterior("funnel", funnel, (), ("v",))
    rows = {"_meta": {**budget(args), "reference": "exact (log Z = 0, sd(v) = 3)"}}
    for label, factory in make_guides(args).items():
        row, draws = fit_and_draw(post, label, factory, args)
        if draws is not None:
            v = draws.samples["v"]
            if not torch.isfinite(v).all():
                row["failed"] = "non-finite draws"
            else:
                row.update(gap=-row["elbo"], sd_v=float(v.std()))
        rows[label] = row
        print(f"funnel / {label}: {cell(row, funnel=True)}", file=sys.stderr)
        if label == "recipe" and "gap" in row:
            rows[RESAMPLED], resampled = resampled_row(row, draws)
            rows[RESAMPLED].update(gap=row["gap"], sd_v=float(resampled.samples["v"].std()))
            print(f"funnel / {RESAMPLED}: {cell(rows[RESAMPLED], funnel=True)}", file=sys.stderr)
        save(args.json, "funnel", rows)
    print_table(args.json, args)


# -- tables --------------------------------------------------------------------------------------
def cell(row: dict, funnel: bool = False) -> str:
    if "failed" in row:
        return (
            f"crashed ({row['failed'][:60]})"
            if "non-finite" not in row["failed"]
            else (row["failed"])
        )
    k = row.get("k_hat", math.nan)
    if funnel:
        text = f"gap {row['gap']:.3f}, k {k:.2f}, sd(v) {row['sd_v']:.2f}"
    elif "mean_err" in row:
        text = f"{row['mean_err']:.2f} / {row['log_sd']:.2f}, k {k:.2f}"
    else:
        text = f"ELBO {row['elbo']:.1f}, k {k:.2f}"
    return text + f", {row['seconds']:.0f} s"


def score(row: dict, funnel: bool) -> float:
    """What 'best' means: the funnel's gap; else max(mean error, log sd ratio)."""
    if "failed" in row:
        return math.inf
    if funnel:
        return row["gap"]
    if "mean_err" in row:
        return max(row["mean_err"], row["log_sd"])
    return math.inf


def print_table(path: str, args: argparse.Namespace) -> None:
    results = {}  # several files (comma-separated) are merged: runs made in parallel
    for part in path.split(","):
        if Path(part).exists():
            for model, rows in json.loads(Path(part).read_text()).items():
                results.setdefault(model, {}).update(rows)  # guides of one model: merged
    models = [m for m in (*POSTERIORS, "funnel") if m in results]
    if not models:
        return
    deferred = [
        m for m in models if any("means" in r and "mean_err" not in r for r in results[m].values())
    ]
    cached_only = argparse.Namespace(**{**vars(args), "defer_reference": True})
    for post in load_posteriors(cached_only, deferred) if deferred else []:
        if post.reference is None:
            continue
        for row in results[post.name].values():
            if "means" in row and "mean_err" not in row:
                add_errors(post, row)  # fitted before its reference existed
    guides = list(dict.fromkeys(g for m in models for g in results[m] if not g.startswith("_")))
    meta = next(results[m]["_meta"] for m in models if "_meta" in results[m])
    print(
        f"\n### Guides on real posteriors: {meta['num_steps']} SVI steps, ClippedAdam lr "
        f"{meta['lr']} x {meta['lr_decay']} over the run, {meta['num_particles']} particles; "
        f"AutoFlowGuide default family {meta['default_flow']!r}\n"
    )
    print(
        "Cell: max |mean error| / max |log(sd / sd_ref)| (mean error in reference sds), "
        "PSIS k-hat, fit wall time. Funnel: ELBO gap (nats), k-hat, sd of v (true 3). "
        "Bold: best of the row (max of the two errors; funnel: gap).\n"
    )
    print("| posterior | " + " | ".join(guides) + " |")
    print("|---" * (len(guides) + 1) + "|")
    for m in models:
        is_funnel = m == "funnel"
        rows = results[m]
        best = min((score(rows[g], is_funnel) for g in guides if g in rows), default=math.inf)
        cells = []
        for g in guides:
            if g not in rows:
                cells.append("not run")
                continue
            text = cell(rows[g], funnel=is_funnel)
            cells.append(f"**{text}**" if score(rows[g], is_funnel) == best < math.inf else text)
        print(f"| {m} | " + " | ".join(cells) + " |")
    print()
    for g in DEFAULT_LABELS:
        if not any(g in results[m] for m in models):
            print(f"- {g}: not run")
            continue
        within = khat_ok = bad = 0
        for m in models:
            rows, is_funnel = results[m], m == "funnel"
            row = rows.get(g)
            if row is None:
                continue
            best = min(score(rows[h], is_funnel) for h in guides if h in rows)
            mine = score(row, is_funnel)
            within += math.isfinite(mine) and mine <= best + 0.05
            khat_ok += row.get("k_hat", math.inf) < 0.7
            bad += "failed" in row
        ran = sum(g in results[m] for m in models)
        print(
            f"- {g}: best or within 0.05 of the best on {within} of {ran} (target >= 11 of 14); "
            f"k-hat < 0.7 on {khat_ok} of {ran} (target >= 10); crashed or NaN: "
            f"{bad or 'none'}"
        )
    if "funnel" in results:
        rows = results["funnel"]
        iaf = rows.get("AutoIAFNormal", {})
        for g in DEFAULT_LABELS:
            row = rows.get(g, {})
            if "gap" in row and "gap" in iaf:
                print(
                    f"- funnel, {g}: gap {row['gap']:.3f} = {row['gap'] / iaf['gap']:.2f} x "
                    f"AutoIAFNormal's {iaf['gap']:.3f} (target <= 0.5), k-hat "
                    f"{row['k_hat']:.2f} (target < 0.7), sd(v) {row['sd_v']:.2f} "
                    f"(target 2.7-3.3)"
                )


# -- model checks --------------------------------------------------------------------------------
def log_density(
    post: Posterior, latents: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """log p(u) in the unconstrained space of the latent sites (as the autoguides see it)."""
    with poutine.block(), torch.no_grad():
        proto = poutine.trace(post.model).get_trace(*post.args)
    num = len(next(iter(latents.values())))
    unconstrained, values = {}, {}
    log_det = torch.zeros(num)
    for name, value in latents.items():
        support = proto.nodes[name]["fn"].support
        bijection = torch.distributions.biject_to(support)
        u = bijection.inv(value).detach().requires_grad_()
        unconstrained[name] = u
        values[name] = bijection(u)
        ladj = bijection.log_abs_det_jacobian(u, values[name])
        log_det = log_det + ladj.reshape(num, -1).sum(-1)
    trace = site_values(post, values)
    trace.compute_log_prob()
    nesting = max_plate_nesting(post)
    total = log_det
    for site in trace.nodes.values():
        if site["type"] == "sample" and "log_prob" in site:
            lp = site["log_prob"]
            if nesting:
                lp = lp.sum(tuple(range(max(lp.dim() - nesting, 0), lp.dim())))
            total = total + lp.expand(num)
    return total, unconstrained


def run_checks(args: argparse.Namespace) -> None:
    wanted = [m for m in POSTERIORS if m not in ("german_credit", "radon")]
    if args.models != "all":
        wanted = [m for m in args.models.split(",") if m in wanted]
    print("\n### Model checks against the reference draws\n")
    print(
        "| posterior | columns match | Stein: max abs z of E[grad log p] (n draws, D) | "
        "log p at ref. mean - best of mean +- 1 sd per column |"
    )
    print("|---|---|---|---|")
    for post in load_posteriors(args, wanted):
        ref = post.reference.reshape(-1, post.reference.shape[-1])[::10]  # ~independent draws
        latents = post.split(ref)
        latents = post.to_latent(latents) if post.to_latent else latents
        logp, u = log_density(post, latents)
        grads = torch.autograd.grad(logp.sum(), list(u.values()))
        g = torch.cat([x.reshape(len(ref), -1) for x in grads], -1).double()
        z = (g.mean(0) / (g.std(0) / math.sqrt(len(g)))).abs()
        # the reference mean against moves of one reference sd along each column
        mean, sd = ref.mean(0), ref.std(0)
        points = [mean]
        for j in range(len(mean)):
            for sign in (-1, 1):
                p = mean.copy()
                p[j] += sign * sd[j]
                points.append(p)
        points = np.stack(points)
        lat = post.split(points)
        lat = post.to_latent(lat) if post.to_latent else lat
        with poutine.block(), torch.no_grad():
            proto = poutine.trace(post.model).get_trace(*post.args)
        inside = torch.ones(len(points), dtype=torch.bool)  # a move may leave the support
        for name, value in lat.items():
            check = proto.nodes[name]["fn"].support.check(value)
            inside &= check.reshape(len(points), -1).all(-1)
        lat = {name: value[inside] for name, value in lat.items()}
        with torch.no_grad():
            lp = log_density(post, lat)[0]
        lp = lp[0] - torch.nan_to_num(lp[1:], nan=-math.inf).max()
        print(
            f"| {post.name} | yes ({len(post.names)}) | {z.max():.2f} ({len(g)}, {g.shape[1]}) "
            f"| {lp:+.2f} ({int(inside.sum()) - 1} moves in the support) |"
        )


# -- step time -----------------------------------------------------------------------------------
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
    save(args.json.replace(".json", "_step_time.json"), "step_time", rows)


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    if args.section in ("check-models", "all"):
        run_checks(args)
    if args.section in ("posteriordb", "all"):
        run_posteriordb(args)
    if args.section in ("funnel", "all"):
        run_funnel(args)
    if args.section == "table":
        print_table(args.json, args)
    if args.section in ("step-time", "all"):
        run_step_time(args)


if __name__ == "__main__":
    main(parse_args())
