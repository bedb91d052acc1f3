r"""One call that fits a flow guide to a Pyro model by a tested recipe and says how it did."""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro.infer.autoguide import AutoDiagonalNormal
from tqdm import tqdm

from .._validation import check_positive_int
from ..flows import lookup_family
from .compare import GuideReport, SkippedStepsWarning, fit_svi
from .diagnostics import importance_sample
from .elbo import ELBO_ESTIMATORS, make_elbo
from .guides import AutoFlowGuide

__all__ = ["GuideFit", "fit_guide", "recipe_flow_size"]

#: Learning rates tried by the step-size search, largest first.
LEARNING_RATES = (1e-2, 3e-3, 1e-3)


@dataclass
class GuideFit(GuideReport):
    r"""What :func:`fit_guide` did: a :class:`~pyro_flows.infer.GuideReport` and its choices.

    Arguments:
        choices: What the recipe chose (family, sizes, affine map, start, estimator, learning
            rate) and why (the search's score of every learning rate tried).
    """

    choices: dict[str, Any] = field(default_factory=dict)

    def resample(self, num_draws: int | None = None) -> dict[str, torch.Tensor]:
        """Importance-resampled posterior draws (Pareto-smoothed weights), site to tensor."""
        return self.draws.resample(num_draws)

    def __str__(self) -> str:
        lines = [
            f"fit_guide: {self.choices.get('flow')} guide, {self.seconds:.1f} s",
            f"  ELBO      {self.elbo:.3f} ± {self.elbo_se:.3f}",
            f"  IW-ELBO   {self.iw_elbo:.3f}  ({self.draws.num_samples} draws)",
            f"  k-hat     {self.pareto_k:.2f}  ({self.reading})",
            f"  ESS       {self.ess:.0f}",
            "  choices   " + ", ".join(f"{k}={v}" for k, v in self.choices.items()),
        ]
        return "\n".join(lines)


def recipe_flow_size(latent_dim: int) -> tuple[int, list[int]]:
    """The number of coupling layers and their hidden widths that :func:`fit_guide` uses.

    Widths follow the dimension (twice it, between 32 and 256) so that a layer's network is
    never a bottleneck of the latents it conditions on.

    Example:
        >>> recipe_flow_size(2), recipe_flow_size(90)
        ((4, [32, 32]), (4, [180, 180]))
    """
    check_positive_int(latent_dim, "latent_dim")
    width = min(256, max(32, 2 * latent_dim))
    return 4, [width, width]


def _latent_dim(model: Callable[..., Any], args: tuple, kwargs: dict) -> int:
    # The size of the unconstrained latent vector, as every AutoContinuous guide counts it.
    probe = AutoDiagonalNormal(model)
    probe._setup_prototype(*args, **kwargs)
    return probe.latent_dim


def _drop_params(guide: AutoFlowGuide) -> None:
    store = pyro.get_param_store()
    prefix = guide._pyro_name + "."
    for name in [n for n in store.keys() if n.startswith(prefix)]:
        del store[name]


def _search_score(losses: Sequence[float]) -> float:
    # The mean loss of the trial's last half: the same number of noisy draws for every rate.
    tail = [x for x in losses[len(losses) // 2 :] if math.isfinite(x)]
    return sum(tail) / len(tail) if tail else math.inf


def fit_guide(
    model: Callable[..., Any],
    *args: Any,
    num_steps: int = 3000,
    flow: str = "iaf",
    num_layers: int | None = None,
    hidden_dims: Sequence[int] | None = None,
    affine: str | None = None,
    flow_kwargs: dict[str, Any] | None = None,
    estimator: str = "auto",
    learning_rates: Sequence[float] = LEARNING_RATES,
    search_fraction: float = 0.05,
    warm_start: bool = True,
    num_particles: int = 4,
    num_samples: int = 4000,
    progress: bool = True,
    **kwargs: Any,
) -> GuideFit:
    r"""Fits a flow guide to ``model`` by a recipe that works without tuning, and reports on it.

    The recipe follows Agrawal, Sheldon and Domke (2020) and Agrawal and Domke (2024):

    1. **Family**: an inverse autoregressive flow that starts near the identity, after a
       learnable affine map :math:`u = m + S\,T(z)` (:class:`AutoFlowGuide`); widths follow
       the dimension (:func:`recipe_flow_size`). The papers use RealNVP; on hierarchical
       posteriors (Neal's funnel) coupling layers trailed IAF clearly at equal steps
       (``docs/benchmarks.md``), because a coupling layer never lets a coordinate depend on
       one in its own half, so ``flow="affine_coupling"`` is an option, not the default.
    2. **Start**: as Pathfinder (Zhang et al., 2022) chooses among Gaussian approximations by
       their ELBO, the recipe fits a Laplace approximation (a MAP fit, then the Gaussian of the
       Hessian there, with a fallback for a Hessian that is not positive definite) and keeps
       it only if its ELBO beats the default start's; hierarchical models, whose MAP sits in a
       funnel's neck, keep the default.
    3. **Gradient**: sticking the landing (``"stl"``, :class:`~pyro_flows.infer.TraceSTL_ELBO`),
       whose variance vanishes as the guide approaches the posterior, for families whose
       inverse is one pass (coupling, splines): ``estimator="auto"`` picks it there. STL
       rescores each draw with the inverse, which costs an autoregressive flow :math:`D`
       passes per layer, so ``"auto"`` gives IAF and MAF guides the plain reparameterised
       ELBO (``"elbo"``) and keeps a step as cheap as Pyro's ``AutoIAFNormal``.
    4. **Step size**: each rate of ``learning_rates`` is tried for ``search_fraction`` of the
       steps from the same start; the rate with the lowest loss over the second half of its
       trial wins, and its trial goes on for the remaining steps, decaying the rate by
       :math:`\times 0.1`. A non-finite step is skipped (see
       :func:`~pyro_flows.infer.fit_svi`); a rate whose trial diverges is dropped.
    5. **Report**: ``num_samples`` fresh draws give the ELBO :math:`\pm` its standard error,
       the importance-weighted ELBO, PSIS :math:`\hat k` and the ESS; :meth:`GuideFit.resample`
       gives importance-resampled draws, which correct the guide where :math:`\hat k < 0.7`.

    Every step of the search and of the warm start counts in ``num_steps``, so the recipe's
    budget is the one any other guide gets from :func:`~pyro_flows.infer.fit_svi`.

    Arguments:
        model: A Pyro model with continuous latent sites.
        args: The model's arguments.
        num_steps: The total number of SVI steps.
        flow: The family of :class:`AutoFlowGuide` (any name of
            :func:`~pyro_flows.flows.build`).
        num_layers: Layers of the flow (default: :func:`recipe_flow_size`).
        hidden_dims: Hidden widths of each layer's network (default: :func:`recipe_flow_size`).
        affine: ``"full"``, ``"diagonal"`` or ``"none"``; default ``"full"`` up to 100 latent
            dimensions, ``"diagonal"`` beyond.
        flow_kwargs: More keyword arguments of :class:`AutoFlowGuide` (e.g. ``permutation``,
            ``log_scale_bound``).
        estimator: ``"auto"`` (above) or a name of :func:`~pyro_flows.infer.make_elbo`.
        learning_rates: The rates the step-size search tries.
        search_fraction: The fraction of ``num_steps`` each trial of the search takes.
        warm_start: Whether to try the Laplace start.
        num_particles: Draws per gradient estimate.
        num_samples: Draws behind the report.
        progress: Whether to show progress bars.
        kwargs: The model's keyword arguments.

    Returns:
        A :class:`GuideFit`; its ``guide`` is the fitted :class:`AutoFlowGuide`.

    Example:
        >>> import pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     sigma = pyro.sample("sigma", dist.HalfNormal(5.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, sigma), obs=y)
        >>> pyro.clear_param_store()
        >>> y = torch.randn(20) + 3.0
        >>> fit = fit_guide(model, y, num_steps=300, progress=False, num_samples=1000)
        >>> fit.choices["flow"], fit.choices["estimator"]
        ('iaf', 'elbo')
        >>> bool(abs(fit.resample()["mu"].mean() - y.mean()) < 0.5)
        True

    References:
        | Advances in Black-Box VI: Normalizing Flows, Importance Weighting, and Optimization
          (Agrawal, Sheldon and Domke, 2020) https://arxiv.org/abs/2006.10343
        | Disentangling Impact of Capacity, Objective, Batchsize, Estimators, and Step-size on
          Flow VI (Agrawal and Domke, 2024) https://arxiv.org/abs/2412.08824
        | Pathfinder: Parallel quasi-Newton variational inference (Zhang et al., 2022)
          https://arxiv.org/abs/2108.03782
        | Sticking the Landing (Roeder, Wu and Duvenaud, 2017) https://arxiv.org/abs/1703.09194
    """
    check_positive_int(num_steps, "num_steps")
    check_positive_int(num_particles, "num_particles")
    check_positive_int(num_samples, "num_samples")
    if estimator != "auto" and estimator not in ELBO_ESTIMATORS:
        raise ValueError(
            f"estimator must be 'auto' or one of {ELBO_ESTIMATORS}, got {estimator!r}"
        )
    rates = [float(r) for r in learning_rates]
    if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
        raise ValueError(f"learning_rates must be positive numbers, got {learning_rates!r}")
    if not 0 < search_fraction * len(rates) < 1:
        raise ValueError(
            f"search_fraction ({search_fraction!r}) times the number of learning rates "
            f"({len(rates)}) must be in (0, 1): the search must leave steps for the fit"
        )
    t0 = time.perf_counter()
    dim = _latent_dim(model, args, kwargs)
    if dim < lookup_family(flow)[1].min_dim:
        flow = "planar"  # one latent (Pyro's splines start far from the identity and train slowly)
    family = lookup_family(flow)[1]
    if estimator == "auto":  # STL needs the inverse: only where it is one pass
        estimator = "stl" if family.fast_direction == "both" else "elbo"
    default_layers, default_hidden = recipe_flow_size(dim)
    num_layers = default_layers if num_layers is None else num_layers
    if hidden_dims is None and "hidden_dims" in inspect.signature(family.make).parameters:
        hidden_dims = default_hidden
    hidden_dims = None if hidden_dims is None else list(hidden_dims)
    affine = ("full" if dim <= 100 else "diagonal") if affine is None else affine
    choices: dict[str, Any] = {
        "flow": flow,
        "num_layers": num_layers,
        "hidden_dims": hidden_dims,
        "affine": affine,
        "estimator": estimator,
    }

    def new_guide(name: str, **extra: Any) -> AutoFlowGuide:
        guide = AutoFlowGuide(
            model, flow, num_layers, hidden_dims, affine=affine, **(flow_kwargs or {}), **extra
        )
        guide._pyro_name = name  # two candidates side by side in the param store
        return guide

    elbo = make_elbo(estimator, num_particles)
    score_elbo = make_elbo("elbo", 64)
    steps_left = num_steps
    guide = new_guide("AutoFlowGuide")
    guide(*args, **kwargs)
    choices["start"] = "default"
    if warm_start and affine != "none":
        map_steps = max(1, num_steps // 10)
        laplace = new_guide("AutoFlowGuide_laplace", warm_start=map_steps)
        steps_left -= map_steps
        # A candidate only: its fallbacks are reported in the choices if it is kept.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                laplace(*args, **kwargs)
                with torch.no_grad():
                    scores = [
                        score_elbo.loss(model, g, *args, **kwargs) for g in (guide, laplace)
                    ]
            except (ValueError, RuntimeError, FloatingPointError):
                scores = [0.0, math.inf]
        if scores[1] < scores[0]:
            _drop_params(guide)
            guide, choices["start"] = laplace, "laplace"
            fallbacks = [type(w.message).__name__ for w in caught]
            if fallbacks:
                choices["start"] += f" ({', '.join(sorted(set(fallbacks)))})"
        else:
            _drop_params(laplace)

    trial_steps = max(1, int(search_fraction * num_steps))
    start = {k: v.detach().clone() for k, v in guide.state_dict().items()}
    trials: dict[float, tuple[float, dict, list[float]]] = {}
    bar = tqdm(rates, desc="fit_guide: step size", disable=not progress, leave=False)
    for lr in bar:
        guide.load_state_dict(start)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SkippedStepsWarning)
                losses = fit_svi(
                    model, guide, *args, num_steps=trial_steps, lr=lr, lr_decay=1.0,
                    elbo=elbo, **kwargs,
                )
        except FloatingPointError:
            continue
        finally:
            steps_left -= trial_steps
        state = {k: v.detach().clone() for k, v in guide.state_dict().items()}
        trials[lr] = (_search_score(losses), state, losses)
    if not trials:
        raise FloatingPointError(
            f"fit_guide: every learning rate of {rates} diverged; try smaller learning_rates, "
            "affine='diagonal', or check the model for NaN log-densities"
        )
    best = min(trials, key=lambda lr: trials[lr][0])
    choices["lr"] = best
    choices["search"] = {lr: round(s, 3) for lr, (s, _, _) in trials.items()}
    guide.load_state_dict(trials[best][1])
    losses = list(trials[best][2])
    times: list[float] = []
    if steps_left > 0:
        losses += fit_svi(
            model, guide, *args, num_steps=steps_left, lr=best, lr_decay=0.1, elbo=elbo,
            progress=progress, step_times=times, **kwargs,
        )
    seconds = time.perf_counter() - t0
    draws = importance_sample(model, guide, *args, num_samples=num_samples, **kwargs)
    return GuideFit.from_draws(
        "fit_guide", draws, seconds=seconds, step_times=times, losses=losses, guide=guide,
        choices=choices,
    )
