r"""Did variational inference work? Importance weights, PSIS :math:`\hat k`, ArviZ export, LOO.

Every function here draws :math:`\theta_s \sim q` from a guide, replays the model on it and
computes the log importance weights

.. math:: \log w_s = \log p(x, \theta_s) - \log q(\theta_s), \qquad s = 1, \dots, S,

from which follow the ELBO (:math:`\frac1S \sum_s \log w_s`), the importance-weighted ELBO
(:math:`\log \frac1S \sum_s w_s`, a tighter lower bound on :math:`\log p(x)`), the effective
sample size of the weights, Pareto-smoothed importance sampling (PSIS, through ArviZ) with its
diagnostic :math:`\hat k`, and importance resampling of the guide's draws.

Sites of the model that the guide does not sample are drawn from the model (their prior) and
left out of :math:`\log w`, which stays correct. Discrete enumerated sites are not supported.
Draws are vectorised with a ``pyro.plate`` over draws, as Pyro's ``vectorize_particles``;
models that cannot be vectorised take ``vectorize=False`` (a Python loop).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn

from .._validation import check_positive_int

__all__ = [
    "ImportanceSamples",
    "LooResult",
    "effective_sample_size",
    "importance_resample",
    "importance_sample",
    "importance_weighted_elbo",
    "loo",
    "pareto_k",
    "pareto_k_reading",
    "psis_diagnostic",
    "to_inference_data",
]

_DRAWS = "_pyro_flows_draws"
#: Log weights whose spread is below this (in nats) are treated as constant (k-hat = -inf).
CONSTANT_SPREAD = 1e-6


def _arviz() -> Any:
    """Imports ArviZ lazily (it is slow to import and warns about its own refactor)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


# -- statistics of log weights -----------------------------------------------------------------
def _as_numpy(log_weights: Tensor | np.ndarray) -> np.ndarray:
    lw = (
        log_weights.detach().cpu().double().numpy()
        if torch.is_tensor(log_weights)
        else log_weights
    )
    lw = np.asarray(lw, dtype=np.float64).reshape(-1)
    if lw.size == 0:
        raise ValueError("log_weights is empty")
    if np.isnan(lw).any() or np.isposinf(lw).any():
        raise ValueError("log_weights contains NaN or +inf; check the model and the guide")
    return lw


def _psis(lw: np.ndarray) -> tuple[np.ndarray, float]:
    """ArviZ's PSIS: (normalised smoothed log weights, k-hat)."""
    if np.ptp(lw[np.isfinite(lw)]) < CONSTANT_SPREAD and np.isfinite(lw).all():
        return np.full_like(lw, -math.log(lw.size)), -math.inf
    az = _arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ's own messages; the caller reads k-hat
        smoothed, k = az.psislw(lw.copy())
    return np.asarray(smoothed), float(k)


def pareto_k(log_weights: Tensor | np.ndarray) -> float:
    r"""The Pareto shape :math:`\hat k` of the upper tail of the importance weights (ArviZ's PSIS).

    :math:`\hat k` is the shape of a generalized Pareto distribution fitted to the largest
    :math:`M = \min(S/5, 3\sqrt S)` weights (:func:`arviz.psislw`, Vehtari et al. 2024). Weights
    whose logs are constant to within ``1e-6`` nats (a guide equal to the posterior) have no
    tail to fit: :math:`\hat k = -\infty` is returned. See :func:`pareto_k_reading`.

    Arguments:
        log_weights: Log importance weights :math:`\log w_s`, any shape (flattened).

    Example:
        >>> lw = torch.distributions.Normal(0.0, 0.1).sample((4000,))  # light tail
        >>> pareto_k(lw) < 0.5
        True
    """
    return _psis(_as_numpy(log_weights))[1]


def pareto_k_reading(k: float, num_samples: int | None = None) -> str:
    r"""The accepted reading of a PSIS :math:`\hat k` (Yao et al. 2018; Vehtari et al. 2024).

    * :math:`\hat k < 0.5`: ``"good"``: the guide is close to the posterior; importance
      sampling (and the guide alone) give reliable estimates.
    * :math:`0.5 \le \hat k < 0.7`: ``"ok"``: usable; PSIS estimates converge, with a rate
      that worsens as :math:`\hat k` grows.
    * :math:`\hat k \ge 0.7`: ``"bad"``: the guide misses mass of the posterior (typically it is
      too narrow or misses a mode); neither it nor importance sampling from it can be trusted.

    With :math:`S` draws the threshold is :math:`\min(1 - 1/\log_{10} S, 0.7)` (0.67 for
    :math:`S = 1000`, 0.7 from :math:`S \approx 2200`); pass ``num_samples`` to apply it.

    Example:
        >>> pareto_k_reading(0.3), pareto_k_reading(0.6), pareto_k_reading(0.9)
        ('good', 'ok', 'bad')
    """
    threshold = 0.7
    if num_samples is not None and num_samples > 10:
        threshold = min(1 - 1 / math.log10(num_samples), 0.7)
    if k < 0.5:
        return "good"
    return "ok" if k < threshold else "bad"


def effective_sample_size(log_weights: Tensor | np.ndarray, smoothed: bool = False) -> float:
    r"""Kish's effective sample size :math:`(\sum_s w_s)^2 / \sum_s w_s^2` of importance weights.

    It lies in :math:`[1, S]`; :math:`S` means equal weights (the guide is the posterior).
    It is a noisy diagnostic when the weights have a heavy tail (large :math:`\hat k`).

    Arguments:
        log_weights: Log importance weights, any shape (flattened).
        smoothed: Whether to use the Pareto-smoothed weights of PSIS.

    Example:
        >>> effective_sample_size(torch.zeros(100))
        100.0
    """
    lw = _as_numpy(log_weights)
    if smoothed:
        lw = _psis(lw)[0]
    lw = lw - lw.max()
    w = np.exp(lw)
    return float(w.sum() ** 2 / (w**2).sum())


def _iw_elbo(lw: np.ndarray, k: int | None) -> float:
    if k is None or k >= lw.size:
        return float(np.logaddexp.reduce(lw) - math.log(lw.size))
    check_positive_int(k, "k")
    groups = lw[: (lw.size // k) * k].reshape(-1, k)
    return float(np.mean(np.logaddexp.reduce(groups, axis=1) - math.log(k)))


# -- drawing and weighting ---------------------------------------------------------------------
@dataclass
class ImportanceSamples:
    r"""Draws of a guide with their importance weights under the model.

    Arguments:
        samples: Site name to draws of shape ``(S, *site_shape)`` in the constrained space: the
            latent sites, and the ``pyro.deterministic`` sites, of the model.
        log_weights: :math:`\log w_s = \log p(x, \theta_s) - \log q(\theta_s)`, shape ``(S,)``.
        log_joint: :math:`\log p(x, \theta_s)` (sites the guide samples, and the observations).
        log_guide: :math:`\log q(\theta_s)`.
        log_likelihood: Observed site name to the pointwise log-likelihood
            :math:`\log p(x_i \mid \theta_s)` of shape ``(S, *batch_shape)`` (unscaled).
        observed: Observed site name to its observed value.
        dims: Site name to the names of its dimensions (plate names where known).
    """

    samples: dict[str, Tensor]
    log_weights: Tensor
    log_joint: Tensor
    log_guide: Tensor
    log_likelihood: dict[str, Tensor] = field(default_factory=dict)
    observed: dict[str, Tensor] = field(default_factory=dict)
    dims: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        """The number :math:`S` of draws."""
        return self.log_weights.shape[0]

    def elbo(self) -> float:
        r"""The Monte Carlo ELBO :math:`\frac1S \sum_s \log w_s`."""
        return self.log_weights.double().mean().item()

    def elbo_se(self) -> float:
        """The Monte Carlo standard error of :meth:`elbo`."""
        return (self.log_weights.double().std() / math.sqrt(self.num_samples)).item()

    def iw_elbo(self, k: int | None = None) -> float:
        r"""The importance-weighted ELBO :math:`\mathbb E \log \frac1K \sum_{k=1}^K w_k`.

        With ``k=None`` (:math:`K = S`): :math:`\log \frac1S \sum_s w_s`, the tightest bound
        these draws give. With ``k`` given, the draws are split into groups of ``k`` and the
        bound of each group is averaged (the IWAE bound of Burda et al. 2016).
        """
        return _iw_elbo(_as_numpy(self.log_weights), k)

    def pareto_k(self) -> float:
        r"""PSIS :math:`\hat k` of the weights (see :func:`pareto_k`)."""
        return pareto_k(self.log_weights)

    def ess(self, smoothed: bool = False) -> float:
        """The effective sample size of the weights (see :func:`effective_sample_size`)."""
        return effective_sample_size(self.log_weights, smoothed)

    def normalized_weights(self, smoothed: bool = True) -> Tensor:
        """Self-normalised weights, Pareto-smoothed by default; shape ``(S,)``, sum 1."""
        lw = _as_numpy(self.log_weights)
        lw = _psis(lw)[0] if smoothed else lw - np.logaddexp.reduce(lw)
        return torch.as_tensor(np.exp(lw), dtype=self.log_weights.dtype)

    def resample_indices(
        self,
        num_draws: int | None = None,
        smoothed: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Indices of an importance resample (systematic resampling), shape ``(num_draws,)``."""
        n = self.num_samples if num_draws is None else check_positive_int(num_draws, "num_draws")
        w = self.normalized_weights(smoothed).double()
        u = (torch.rand((), generator=generator, dtype=torch.float64) + torch.arange(n)) / n
        cdf = w.cumsum(0)
        cdf[-1] = 1.0
        idx = torch.searchsorted(cdf, u)
        return idx[torch.randperm(n, generator=generator)]

    def resample(
        self,
        num_draws: int | None = None,
        smoothed: bool = True,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Importance-resampled draws, approximately posterior (see :func:`importance_resample`)."""
        idx = self.resample_indices(num_draws, smoothed, generator)
        return {k: v[idx] for k, v in self.samples.items()}

    def to_inference_data(
        self, resample: bool = False, generator: torch.Generator | None = None
    ) -> Any:
        """These draws as an :class:`arviz.InferenceData` (see :func:`to_inference_data`)."""
        index = self.resample_indices(generator=generator) if resample else slice(None)

        def draws(values: dict[str, Tensor]) -> dict[str, np.ndarray]:
            return {k: _to_numpy(v[index])[None] for k, v in values.items()}

        names = [*self.samples, *self.log_likelihood]
        stats = {
            "log_weight": self.log_weights,
            "log_joint": self.log_joint,
            "log_guide": self.log_guide,
        }
        attrs = {
            "inference_library": "pyro_flows",
            "num_samples": self.num_samples,
            "elbo": self.elbo(),
            "iw_elbo": self.iw_elbo(),
            "pareto_k": self.pareto_k(),
            "ess": self.ess(),
            "resampled": int(resample),
        }
        az = _arviz()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return az.from_dict(
                posterior=draws(self.samples),
                sample_stats=draws(stats),
                log_likelihood=draws(self.log_likelihood),
                observed_data={k: _to_numpy(v) for k, v in self.observed.items()},
                dims={k: self.dims[k] for k in names if k in self.dims},
                attrs=attrs,
            )


def _guess_max_plate_nesting(traces: list[poutine.Trace]) -> int:
    dims = [
        -frame.dim
        for trace in traces
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.dim is not None
    ]
    return max(dims, default=0)


def _run(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple:
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        *args, **kwargs
    )
    return model_trace, guide_trace


def _per_draw(log_prob: Tensor | float, n: int, particle_dim: int | None) -> Tensor:
    """Sums a site's log-density over everything but the draws; shape ``(n,)``."""
    if not torch.is_tensor(log_prob):
        return torch.full((n,), float(log_prob))
    if particle_dim is None:  # one unvectorised draw
        return log_prob.sum().reshape(1)
    lp = log_prob.reshape((1,) * max(particle_dim - log_prob.dim(), 0) + log_prob.shape)
    lp = lp.movedim(-particle_dim, 0)
    return lp.reshape(lp.shape[0], -1).sum(-1).expand(n)


def _sample_sites(trace: poutine.Trace) -> list[tuple[str, dict]]:
    return [
        (name, site)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    ]


def _is_latent(site: dict) -> bool:
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and not site["infer"].get("is_auxiliary", False)
    )


def _is_deterministic(site: dict) -> bool:
    return site["type"] == "sample" and site["infer"].get("_deterministic", False)


def _pointwise_log_lik(site: dict) -> Tensor:
    lp = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        lp = torch.where(torch.as_tensor(site["mask"]), lp, lp.new_zeros(()))
    return lp


def _per_draw_values(name: str, value: Tensor, n: int, shape: torch.Size) -> Tensor:
    if value.numel() != n * math.prod(shape):
        raise ValueError(
            f"site {name!r} has shape {tuple(value.shape)} under a plate of {n} draws; expected "
            f"{n} x {tuple(shape)}. The model is not vectorisable over draws (as for Pyro's "
            "vectorize_particles): fix its broadcasting or pass vectorize=False"
        )
    return value.reshape(n, *shape)


def _chunk(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    n: int,
    particle_dim: int | None,
    shapes: dict[str, torch.Size],
) -> dict[str, Any]:
    """Draws ``n`` samples (vectorised when ``particle_dim``), returns per-draw quantities."""
    if particle_dim is not None:
        try:
            with pyro.plate(_DRAWS, n, dim=-particle_dim):
                model_trace, guide_trace = _run(model, guide, args, kwargs)
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"the model and guide failed under a plate of {n} draws at dim {-particle_dim} "
                f"({err}). The model is not vectorisable over draws (as for Pyro's "
                "vectorize_particles): fix its broadcasting or pass vectorize=False"
            ) from err
    else:
        model_trace, guide_trace = _run(model, guide, args, kwargs)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    guided = {name for name, _ in _sample_sites(guide_trace)}
    out = {"samples": {}, "log_lik": {}}
    log_joint = torch.zeros(n, dtype=torch.float64)
    for name, site in _sample_sites(model_trace):
        if _is_latent(site) or _is_deterministic(site):
            value = site["value"].detach()
            out["samples"][name] = _per_draw_values(name, value, n, shapes[name])
        if _is_deterministic(site):
            continue
        if site["is_observed"] or name in guided:
            log_joint = log_joint + _per_draw(site["log_prob"], n, particle_dim).to(log_joint)
        if site["is_observed"] and not site["infer"].get("is_auxiliary", False):
            lp = _pointwise_log_lik(site).detach()
            out["log_lik"][name] = _per_draw_values(name, lp, n, shapes[name])
    log_guide = torch.zeros(n, dtype=torch.float64)
    for _, site in _sample_sites(guide_trace):
        if not site["is_observed"]:
            log_guide = log_guide + _per_draw(site["log_prob"], n, particle_dim).to(log_guide)
    out["log_joint"], out["log_guide"] = log_joint, log_guide
    return out


def _site_dims(name: str, site: dict, shape: torch.Size, event_dim: int) -> list[str]:
    names = [f"{name}_dim_{i}" for i in range(len(shape))]
    batch_len = len(shape) - event_dim
    for frame in site["cond_indep_stack"]:
        if frame.vectorized and frame.dim is not None:
            pos = batch_len + frame.dim
            if 0 <= pos < batch_len and shape[pos] > 1:
                names[pos] = frame.name
    return names


@torch.no_grad()
def importance_sample(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_samples: int = 1000,
    max_plate_nesting: int | None = None,
    vectorize: bool = True,
    chunk_size: int = 2000,
    **kwargs: Any,
) -> ImportanceSamples:
    r"""Draws ``num_samples`` times from ``guide`` and weighs each draw under ``model``.

    Arguments:
        model: A Pyro model.
        guide: A Pyro guide for it (any: an autoguide, an :class:`AutoFlowGuide`, a hand-written
            function).
        args: The arguments of ``model`` and ``guide``.
        num_samples: The number :math:`S` of draws.
        max_plate_nesting: The number of nested plates of the model; guessed from one trace
            when omitted.
        vectorize: Whether to draw under a ``pyro.plate`` of draws (fast; needs a model whose
            shapes broadcast, as Pyro's ``vectorize_particles``); else a Python loop.
        chunk_size: The most draws traced at once (memory).
        kwargs: The keyword arguments of ``model`` and ``guide``.

    A model or guide that is a :class:`torch.nn.Module` is put in ``eval()`` mode meanwhile
    (and back after), so that densities are exact where a layer has a stochastic training
    estimate (the log-determinant of an i-ResNet, say).

    Returns:
        An :class:`ImportanceSamples`.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> def guide():  # the exact posterior: all weights equal p(data) = 1
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> res = importance_sample(model, guide, num_samples=500)
        >>> res.samples["x"].shape, abs(res.iw_elbo()) < 1e-6, res.pareto_k()
        (torch.Size([500]), True, -inf)
    """
    check_positive_int(num_samples, "num_samples")
    check_positive_int(chunk_size, "chunk_size")
    modules = [m for m in (model, guide) if isinstance(m, nn.Module)]
    modes = [m.training for m in modules]
    try:
        for m in modules:  # exact densities (e.g. an i-ResNet's exact log-determinant)
            m.eval()
        return _importance_sample(
            model, guide, args, kwargs, num_samples, max_plate_nesting, vectorize, chunk_size
        )
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


def _importance_sample(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    num_samples: int,
    max_plate_nesting: int | None,
    vectorize: bool,
    chunk_size: int,
) -> ImportanceSamples:
    # One plain run: site shapes, plates and the plate nesting.
    model_trace, guide_trace = _run(model, guide, args, kwargs)
    if max_plate_nesting is None:
        max_plate_nesting = _guess_max_plate_nesting([model_trace, guide_trace])
    shapes: dict[str, torch.Size] = {}
    dims: dict[str, list[str]] = {}
    observed: dict[str, Tensor] = {}
    for name, site in _sample_sites(model_trace):
        if not site["is_observed"] or _is_deterministic(site):
            shapes[name] = site["value"].shape
            dims[name] = _site_dims(name, site, shapes[name], site["fn"].event_dim)
        elif not site["infer"].get("is_auxiliary", False):  # an observation, not a factor
            shapes[name] = _pointwise_log_lik(site).shape
            observed[name] = site["value"].detach()
            dims[name] = _site_dims(name, site, observed[name].shape, site["fn"].event_dim)
            dims[f"{name}__loglik"] = dims[name][: len(shapes[name])]

    parts = []
    if vectorize:
        particle_dim = max_plate_nesting + 1
        for start in range(0, num_samples, chunk_size):
            n = min(chunk_size, num_samples - start)
            parts.append(_chunk(model, guide, args, kwargs, n, particle_dim, shapes))
    else:
        parts = [_chunk(model, guide, args, kwargs, 1, None, shapes) for _ in range(num_samples)]

    def cat(key: str) -> dict[str, Tensor]:
        return {k: torch.cat([p[key][k] for p in parts]) for k in parts[0][key]}

    log_joint = torch.cat([p["log_joint"] for p in parts])
    log_guide = torch.cat([p["log_guide"] for p in parts])
    log_lik = cat("log_lik")
    dims.update({k: dims.pop(f"{k}__loglik") for k in log_lik})
    return ImportanceSamples(
        samples=cat("samples"),
        log_weights=log_joint - log_guide,
        log_joint=log_joint,
        log_guide=log_guide,
        log_likelihood=log_lik,
        observed=observed,
        dims=dims,
    )


# -- one-call diagnostics ----------------------------------------------------------------------
def psis_diagnostic(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_samples: int | None = None,
    num_particles: int | None = None,
    max_simultaneous_particles: int | None = None,
    **kwargs: Any,
) -> float:
    r"""PSIS :math:`\hat k` of a guide for a model: does the guide cover the posterior?

    Draws ``num_samples`` times from the guide, computes :math:`\log w_s` and fits a generalized
    Pareto distribution to the upper tail of the weights with ArviZ's PSIS
    (:func:`arviz.psislw`). Reading (Yao et al. 2018): :math:`\hat k < 0.5` good,
    :math:`0.5 \le \hat k < 0.7` usable, :math:`\hat k \ge 0.7` the guide cannot be trusted
    (see :func:`pareto_k_reading`). The estimate of :math:`\hat k` is itself noisy: use
    :math:`S \ge 1000` draws, more for high-dimensional models.

    Arguments:
        model: A Pyro model.
        guide: A guide for it.
        args: The arguments of the model and the guide.
        num_samples: The number of draws (default 1000).
        num_particles: Pyro's name for ``num_samples`` (as in
            :func:`pyro.infer.importance.psis_diagnostic`); give one of the two.
        max_simultaneous_particles: Pyro's name for ``chunk_size`` (the most draws traced at
            once); give one of the two.
        kwargs: Keyword arguments of the model and guide, and of :func:`importance_sample`
            (``max_plate_nesting``, ``vectorize``, ``chunk_size``).

    Raises:
        TypeError: If both a name and its Pyro alias are given.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> def guide():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> psis_diagnostic(model, guide, num_particles=200) < 0.5  # exact guide: equal weights
        True

    References:
        | Yes, but Did It Work?: Evaluating Variational Inference (Yao et al., 2018)
        | https://arxiv.org/abs/1802.02538
        | Pareto Smoothed Importance Sampling (Vehtari et al., 2024)
        | https://arxiv.org/abs/1507.02646
    """
    num_samples = _one_of(num_samples, "num_samples", num_particles, "num_particles", 1000)
    if max_simultaneous_particles is not None:
        chunk = kwargs.pop("chunk_size", None)
        kwargs["chunk_size"] = _one_of(
            chunk, "chunk_size", max_simultaneous_particles, "max_simultaneous_particles", None
        )
    return importance_sample(model, guide, *args, num_samples=num_samples, **kwargs).pareto_k()


def _one_of(value: Any, name: str, alias: Any, alias_name: str, default: Any) -> Any:
    """``value``, or its Pyro-named ``alias``, or ``default``; both given is a TypeError."""
    if alias is None:
        return default if value is None else value
    if value is not None:
        raise TypeError(f"give {name} or its alias {alias_name} (Pyro's name), not both")
    return alias


def importance_weighted_elbo(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_samples: int = 1000,
    k: int | None = None,
    **kwargs: Any,
) -> float:
    r"""The importance-weighted ELBO :math:`\log \frac1S \sum_s w_s` (or its ``k``-group mean).

    A lower bound of :math:`\log p(x)` in expectation, tighter than the ELBO and increasing with
    :math:`K`; see :meth:`ImportanceSamples.iw_elbo`.

    References:
        | Importance Weighted Autoencoders (Burda et al., 2016)
        | https://arxiv.org/abs/1509.00519
    """
    res = importance_sample(model, guide, *args, num_samples=num_samples, **kwargs)
    return res.iw_elbo(k)


def importance_resample(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_samples: int = 1000,
    num_draws: int | None = None,
    smoothed: bool = True,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> dict[str, Tensor]:
    r"""Guide draws resampled in proportion to their importance weights: posterior draws.

    Sampling-importance-resampling: ``num_samples`` guide draws are resampled (systematic
    resampling, with Pareto-smoothed weights by default) into ``num_draws`` draws, which
    approach draws from the posterior as ``num_samples`` grows, provided :math:`\hat k < 0.7`.
    The result has repeated draws; its effective size is at most the ESS of the weights.

    Returns:
        A dict from site name to draws of shape ``(num_draws, *site_shape)``.
    """
    res = importance_sample(model, guide, *args, num_samples=num_samples, **kwargs)
    return res.resample(num_draws, smoothed, generator)


def _to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def to_inference_data(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_samples: int = 1000,
    resample: bool = False,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> Any:
    r"""An :class:`arviz.InferenceData` of a guide's draws, for ArviZ's plots and diagnostics.

    ArviZ's own ``from_pyro`` accepts only MCMC runs. The groups written are

    * ``posterior``: every latent and ``pyro.deterministic`` site of the model, in the
      constrained space, with dimensions ``(chain, draw, ...)``, one chain, named after the
      plates where a site sits in one;
    * ``sample_stats``: ``log_weight`` (:math:`\log w_s`), ``log_joint``
      (:math:`\log p(x, \theta_s)`) and ``log_guide`` (:math:`\log q(\theta_s)`);
    * ``log_likelihood``: the pointwise log-likelihood of every observed site;
    * ``observed_data``: the observed values;

    and ``attrs`` holds ``elbo``, ``iw_elbo``, ``pareto_k``, ``ess`` and ``num_samples``.

    With ``resample=False`` the draws come from the guide, not the posterior; ArviZ's
    summaries then describe the guide. For leave-one-out cross-validation use :func:`loo`,
    which corrects with the stored weights, or ``resample=True``: the draws are then
    importance-resampled (see :func:`importance_resample`) and approximately posterior, so
    ``arviz.loo`` and ``arviz.summary`` apply as to MCMC output (their effective sample size
    ignores the repeats that resampling makes).

    Arguments:
        model: A Pyro model.
        guide: A guide for it.
        args: The arguments of the model and the guide.
        num_samples: The number of draws.
        resample: Whether to importance-resample the draws.
        generator: Random numbers of the resampling.
        kwargs: Keyword arguments of the model and guide, and of :func:`importance_sample`.

    Example:
        >>> import pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> idata = to_inference_data(model, guide, torch.zeros(5), num_samples=200)
        >>> idata.posterior["mu"].shape, idata.log_likelihood["y"].dims
        ((1, 200), ('chain', 'draw', 'data'))
    """
    keys = ("max_plate_nesting", "vectorize", "chunk_size")
    options = {k: kwargs.pop(k) for k in keys if k in kwargs}
    res = importance_sample(model, guide, *args, num_samples=num_samples, **options, **kwargs)
    return res.to_inference_data(resample=resample, generator=generator)


@dataclass
class LooResult:
    r"""PSIS-LOO from the draws of a guide.

    Arguments:
        elpd_loo: The expected log pointwise predictive density :math:`\sum_i \log p(x_i \mid
            x_{-i})`.
        se: Its standard error.
        p_loo: The effective number of parameters :math:`\text{lppd} - \text{elpd}_{loo}`.
        pointwise: :math:`\log p(x_i \mid x_{-i})` per observation.
        pareto_k: :math:`\hat k` per observation.
    """

    elpd_loo: float
    se: float
    p_loo: float
    pointwise: np.ndarray
    pareto_k: np.ndarray


def loo(idata: Any, var_name: str | None = None) -> LooResult:
    r"""PSIS leave-one-out cross-validation from an :func:`to_inference_data` of a guide.

    The draws come from :math:`q`, not from the posterior, so the leave-one-out importance
    ratios are :math:`p(\theta \mid x_{-i}) / q(\theta) \propto w(\theta) / p(x_i \mid
    \theta)`; each is Pareto-smoothed with ArviZ and

    .. math:: \log p(x_i \mid x_{-i}) \approx \log \sum_s \tilde r_{is}\, p(x_i \mid \theta_s),

    with :math:`\tilde r_{is}` the smoothed, normalised ratios (Magnusson et al. 2019). A
    :math:`\hat k_i \ge 0.7` flags an observation whose estimate cannot be trusted. For an
    ``idata`` made with ``resample=True`` use :func:`arviz.loo` instead.

    Arguments:
        idata: The result of :func:`to_inference_data` with ``resample=False``.
        var_name: The observed site; may be omitted when there is one.

    References:
        | Bayesian leave-one-out cross-validation for large data (Magnusson et al., 2019)
        | https://arxiv.org/abs/1904.10679
    """
    if idata.attrs.get("resampled", 0):
        raise ValueError("idata holds resampled draws: use arviz.loo(idata) instead")
    names = list(idata.log_likelihood.data_vars)
    if var_name is None:
        if len(names) != 1:
            raise ValueError(f"several observed sites {names}: pass var_name")
        var_name = names[0]
    ll = idata.log_likelihood[var_name].values
    ll = ll.reshape(ll.shape[0] * ll.shape[1], -1)  # (S, n)
    lw = idata.sample_stats["log_weight"].values.reshape(-1)
    ratios = (lw[:, None] - ll).T  # (n, S)
    az = _arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        smoothed, ks = az.psislw(ratios.copy())
    pointwise = np.logaddexp.reduce(smoothed + ll.T, axis=1)
    lw_norm = lw - np.logaddexp.reduce(lw)
    lppd = np.logaddexp.reduce(lw_norm[:, None] + ll, axis=0)
    n = pointwise.size
    return LooResult(
        elpd_loo=float(pointwise.sum()),
        se=float(math.sqrt(n * pointwise.var())),
        p_loo=float((lppd - pointwise).sum()),
        pointwise=pointwise,
        pareto_k=np.asarray(ks),
    )
