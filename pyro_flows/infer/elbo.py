r"""Lower-variance gradient estimators for SVI, as Pyro ELBOs: STL and DReG.

Both estimators keep the value of their objective and change only its gradient with respect
to the guide's parameters :math:`\phi`, by dropping the score-function term
:math:`\partial_\phi \log q_\phi(z)` taken at a fixed :math:`z`. That term has mean zero but
does not vanish draw by draw, even when :math:`q_\phi` is the exact posterior; without it,
the gradient's variance goes to zero as :math:`q_\phi` approaches the posterior.

How it is done, for any guide whose sample sites are reparameterised (Pyro's autoguides,
:class:`~pyro_flows.infer.AutoFlowGuide`, hand-written guides): the guide and the model are
traced as :class:`~pyro.infer.Trace_ELBO` traces them, then the guide is run again under
:func:`~pyro.poutine.replay` at the same values, *detached* from the graph. Its log-density
:math:`\log q_\phi(\bar z)` depends on :math:`\phi` only directly, so
:math:`\log q_\phi(z) - \log q_\phi(\bar z)` (of value zero) has exactly the path derivative
:math:`\partial_z \log q_\phi(z)\, \partial_\phi z` as its gradient. The second run sees the
detached value as a new tensor, so a flow cannot answer it from the cache of the pass that
drew it: it pays one inverse pass, which is one network pass per layer for coupling flows
and splines but :math:`D` passes per layer for autoregressive guides (IAF, or MAF used as
an IAF); see the tutorial.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from pyro.distributions.util import is_identically_zero
from pyro.infer import ELBO, Trace_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_if_enumerated, warn_if_nan
from torch import Tensor

from .._validation import check_choice, check_positive_int

__all__ = ["ELBO_ESTIMATORS", "TraceIW_ELBO", "TraceSTL_ELBO", "make_elbo"]

#: The names understood by :func:`make_elbo`.
ELBO_ESTIMATORS = ("dreg", "elbo", "iwae", "stl")
_IW_ESTIMATORS = ("dreg", "standard")


# -- shared machinery ----------------------------------------------------------------------
def _importance_traces(
    elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> tuple[Trace, Trace, Trace, Trace]:
    """Pyro's importance traces (pruned, scored), and the full traces of both runs.

    The full traces keep the subsample sites, so a replay of them uses the same mini-batch.
    """
    owner = type(elbo).__name__
    if isinstance(poutine.unwrap(guide), Messenger):
        raise TypeError(
            f"{owner} needs a callable guide that it can replay; a GuideMessenger guide "
            "(e.g. AutoNormalMessenger) is not supported: use AutoNormal or AutoFlowGuide"
        )
    model_tracer = poutine.trace(model)
    guide_tracer = poutine.trace(guide)
    model_trace, guide_trace = get_importance_trace(
        "flat", elbo.max_plate_nesting, model_tracer, guide_tracer, args, kwargs
    )
    if is_validation_enabled():
        check_if_enumerated(guide_trace)
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"]:
            if not is_identically_zero(site["score_parts"].score_function):
                raise ValueError(
                    f"{owner} needs reparameterised guide sites, but guide site {name!r} is "
                    f"drawn from {type(site['fn']).__name__}, which has no rsample: use "
                    "Trace_ELBO (score-function gradients) or a reparameterised guide"
                )
    return model_trace, guide_trace, model_tracer.trace, guide_tracer.trace


def _rescore(fn: Callable, full_trace: Trace, args: tuple, kwargs: dict) -> Trace:
    r"""Runs ``fn`` again at the values of ``full_trace``, detached, and scores its sites.

    The log-probabilities of the returned trace depend on the parameters only directly:
    :math:`\log q_\phi(\bar z)` with :math:`\bar z` = stop-gradient of :math:`z`.
    """
    frozen = full_trace.copy()
    for name, site in full_trace.nodes.items():
        if site["type"] == "sample":
            frozen.nodes[name] = {**site, "value": site["value"].detach()}
    trace = poutine.trace(poutine.replay(fn, trace=frozen)).get_trace(*args, **kwargs)
    trace = prune_subsample_sites(trace)
    trace.compute_log_prob()
    return trace


def _common_plate_dims(sites: list[tuple[str, dict]]) -> set[int]:
    """The dims of the vectorised plates that hold every one of ``sites``."""
    stacks = [frozenset(site["cond_indep_stack"]) for _, site in sites]
    common = frozenset.intersection(*stacks) if stacks else frozenset()
    return {frame.dim for frame in common if frame.vectorized and frame.dim is not None}


def _plate_sum(log_probs: list[Tensor], keep: set[int]) -> Tensor:
    """Sums each tensor over every dim but ``keep`` (keeping them as 1s), then adds them up."""
    out = torch.zeros(())
    for lp in log_probs:
        dims = [d for d in range(-lp.dim(), 0) if d not in keep]
        out = out + (lp.sum(dims, keepdim=True) if dims else lp)
    return out


def _latent_sites(trace: Trace) -> list[tuple[str, dict]]:
    return [
        (name, site)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    ]


# -- sticking the landing ------------------------------------------------------------------
class TraceSTL_ELBO(Trace_ELBO):  # noqa: N801 (Pyro's naming of ELBO classes)
    r"""The ELBO with the sticking-the-landing (STL) gradient: path derivative only.

    The value is that of :class:`~pyro.infer.Trace_ELBO`,
    :math:`\mathcal L(\phi) = \mathbb E_{z \sim q_\phi}[\log p(x, z) - \log q_\phi(z)]`
    estimated from ``num_particles`` draws :math:`z = z_\phi(\epsilon)`. Its gradient drops
    the score-function term of the guide's density:

    .. math:: \hat\nabla_\phi \mathcal L = \big(\partial_z \log p(x, z)
              - \partial_z \log q_{\phi}(z)\big)\, \partial_\phi z_\phi(\epsilon),

    that is, :math:`\log q` is evaluated at the reparameterised :math:`z_\phi(\epsilon)` with
    its parameters held fixed. The dropped term,
    :math:`-\partial_\phi \log q_\phi(z)` at fixed :math:`z`, has mean zero, so the estimator
    stays unbiased; when :math:`q_\phi` equals the posterior,
    :math:`\log p(x, z) - \log q_\phi(z) = \log p(x)` for every :math:`z` and the STL gradient
    is zero for every draw, while the :class:`~pyro.infer.Trace_ELBO` gradient is not. The
    model's own parameters get the usual :math:`\partial_\theta \log p_\theta(x, z)`.

    Every guide site must be reparameterised (its distribution has ``rsample``); a site that
    is not raises a ValueError naming it. Each draw runs the guide a second time, at the
    detached draw (see the module's docstring for the cost with flow guides). The arguments
    are those of :class:`~pyro.infer.Trace_ELBO` (``num_particles``,
    ``vectorize_particles``, ...).

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model(x):
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> x = torch.tensor([1.0, 2.0, 3.0])  # the posterior is N(1.5, 0.5^2)
        >>> guide = AutoNormal(model)
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), TraceSTL_ELBO())
        >>> losses = [svi.step(x) for _ in range(500)]
        >>> round(guide.locs.z.item(), 2), round(guide.scales.z.item(), 2)
        (1.5, 0.5)

        With :class:`~pyro.infer.Trace_ELBO` instead, the same run ends at a location and a
        scale that still wander by a few hundredths from step to step (seen: 1.64 and 0.48).

    References:
        | Sticking the Landing: Simple, Lower-Variance Gradient Estimators for Variational
          Inference (Roeder, Wu and Duvenaud, 2017)
        | https://arxiv.org/abs/1703.09194
    """

    def _get_trace(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[Trace, Trace]:
        model_trace, guide_trace, _, full_guide_trace = _importance_traces(
            self, model, guide, args, kwargs
        )
        if torch.is_grad_enabled():  # the value alone needs no second run
            rescored = _rescore(guide, full_guide_trace, args, kwargs)
            for name, site in _latent_sites(guide_trace):
                # Trace_ELBO differentiates entropy_term (the reparameterised log q) and
                # reports log_prob: only the path derivative of log q is left to differentiate
                path_only = site["log_prob"] - rescored.nodes[name]["log_prob"]
                site["score_parts"] = site["score_parts"]._replace(entropy_term=path_only)
        return model_trace, guide_trace

    @torch.no_grad()
    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The negative ELBO estimate (as :class:`~pyro.infer.Trace_ELBO`, one run per draw)."""
        return super().loss(model, guide, *args, **kwargs)


# -- importance weighting ------------------------------------------------------------------
@dataclass(frozen=True)
class _IWTraces:
    """The traces of one (possibly vectorised) draw of the importance-weighted bound."""

    model: Trace
    guide: Trace
    guide_detached: Trace | None  # the guide rescored at the detached draw (DReG)
    model_detached: Trace | None  # the model rescored there, if it has parameters (DReG)


class TraceIW_ELBO(ELBO):  # noqa: N801 (Pyro's naming of ELBO classes)
    r"""The importance-weighted bound (IWAE), with the DReG or the standard gradient.

    With :math:`K` = ``num_particles`` draws :math:`z_k = z_\phi(\epsilon_k) \sim q_\phi` and
    weights :math:`w_k = p(x, z_k) / q_\phi(z_k)`, the objective is

    .. math:: \mathcal L_K = \log \frac1K \sum_{k=1}^K w_k
              \;\le\; \log p(x),

    which is :class:`~pyro.infer.RenyiELBO` with ``alpha=0`` (the loss is
    :math:`-\mathcal L_K`), tighter as :math:`K` grows and equal to the ELBO for
    :math:`K = 1`. As there, the log-mean-exp is taken separately for each element of a plate
    that holds every site (a data plate of local latents), and summed. With
    :math:`\tilde w_k = w_k / \sum_j w_j`, the gradients are

    * ``estimator="standard"``: :math:`\sum_k \tilde w_k \nabla_\phi \log w_k`, the total
      derivative (as :class:`~pyro.infer.RenyiELBO`), whose signal-to-noise ratio for the
      guide decreases like :math:`K^{-1/2}`;
    * ``estimator="dreg"`` (doubly reparameterised):

      .. math:: \hat\nabla_\phi \mathcal L_K = \sum_{k=1}^K \tilde w_k^2\,
                \frac{\partial \log w_k}{\partial z_k} \frac{\partial z_k}{\partial \phi},

      with :math:`\log q` evaluated at :math:`z_k` with its parameters held fixed (as
      :class:`TraceSTL_ELBO`). It is unbiased, its variance goes to zero as :math:`q_\phi`
      approaches the posterior, and its signal-to-noise ratio does not decay with :math:`K`.
      The model's parameters :math:`\theta` get the usual
      :math:`\sum_k \tilde w_k \nabla_\theta \log p_\theta(x, z_k)` (the model is run a
      second time at the detached draws when it has parameters).

    Every guide site must be reparameterised; a site that is not raises a ValueError naming
    it.

    Note:
        A parameter used by both the model and the guide is not told apart: its DReG gradient
        mixes the two rules. Give the model and the guide their own parameters.

    Arguments:
        num_particles: The number :math:`K` of draws in the bound.
        estimator: ``"dreg"`` or ``"standard"``.
        max_plate_nesting: As in :class:`~pyro.infer.ELBO`.
        vectorize_particles: Whether to draw the :math:`K` particles in one vectorised pass
            (an outermost plate; needs static model and guide structure, as in Pyro).
        strict_enumeration_warning: As in :class:`~pyro.infer.ELBO`.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model(x):
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> x = torch.tensor([1.0, 2.0, 3.0])  # the posterior is N(1.5, 0.5^2)
        >>> guide = AutoNormal(model)
        >>> elbo = TraceIW_ELBO(num_particles=8, vectorize_particles=True)
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
        >>> losses = [svi.step(x) for _ in range(500)]
        >>> round(guide.locs.z.item(), 2), round(guide.scales.z.item(), 2)
        (1.5, 0.5)

    References:
        | Importance Weighted Autoencoders (Burda, Grosse and Salakhutdinov, 2016)
        | https://arxiv.org/abs/1509.00519
        | Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives (Tucker,
          Lawson, Gu and Maddison, 2019)
        | https://arxiv.org/abs/1810.04152
    """

    def __init__(
        self,
        num_particles: int = 8,
        estimator: str = "dreg",
        *,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        strict_enumeration_warning: bool = True,
    ) -> None:
        check_positive_int(num_particles, "num_particles")
        self.estimator = check_choice(estimator, _IW_ESTIMATORS, "estimator")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_particles={self.num_particles}, "
            f"estimator={self.estimator!r})"
        )

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> _IWTraces:
        model_trace, guide_trace, full_model_trace, full_guide_trace = _importance_traces(
            self, model, guide, args, kwargs
        )
        guide_detached = model_detached = None
        if self.estimator == "dreg" and torch.is_grad_enabled():
            guide_detached = _rescore(guide, full_guide_trace, args, kwargs)
            if any(site["type"] == "param" for site in model_trace.nodes.values()):
                model_detached = _rescore(model, full_model_trace, args, kwargs)
        return _IWTraces(model_trace, guide_trace, guide_detached, model_detached)

    def _to_particles(self, totals: list[Tensor]) -> Tensor:
        """Stacks per-draw totals into a tensor whose dim 0 indexes the K particles."""
        totals = [torch.as_tensor(t) for t in totals]
        if self.vectorize_particles and self.num_particles > 1:
            (total,) = totals
            nesting = int(self.max_plate_nesting)
            if total.dim() < nesting:
                total = total.reshape((1,) * (nesting - total.dim()) + total.shape)
            total = total.movedim(total.dim() - nesting, 0)
            return total.expand(self.num_particles, *total.shape[1:])
        return torch.stack(torch.broadcast_tensors(*totals))

    def _terms(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        r"""The log-weights :math:`\log w_k`, and the DReG path and direct-model terms."""
        log_w, path, direct = [], [], []
        for draw in self._get_traces(model, guide, args, kwargs):
            model_sites = [(n, s) for n, s in draw.model.nodes.items() if s["type"] == "sample"]
            guide_sites = _latent_sites(draw.guide)
            keep = _common_plate_dims(model_sites + guide_sites)
            model_lp = _plate_sum([s["log_prob"] for _, s in model_sites], keep)
            log_w.append(model_lp - _plate_sum([s["log_prob"] for _, s in guide_sites], keep))
            if draw.guide_detached is not None:
                rescored = draw.guide_detached.nodes
                path_lq = [s["log_prob"] - rescored[n]["log_prob"] for n, s in guide_sites]
                path.append(model_lp - _plate_sum(path_lq, keep))
            if draw.model_detached is not None:
                rescored = draw.model_detached.nodes
                direct.append(_plate_sum([rescored[n]["log_prob"] for n, _ in model_sites], keep))
        return (
            self._to_particles(log_w),
            self._to_particles(path) if path else None,
            self._to_particles(direct) if direct else None,
        )

    def _bound_and_surrogate(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[Tensor, Tensor]:
        log_w, path, direct = self._terms(model, guide, args, kwargs)
        log_k = math.log(self.num_particles)
        bound = (torch.logsumexp(log_w.detach(), 0) - log_k).sum()
        if path is None:  # the standard gradient: differentiate the bound itself
            return bound, (torch.logsumexp(log_w, 0) - log_k).sum()
        weights = torch.softmax(log_w.detach(), 0)
        surrogate = (weights.square() * path).sum()
        if direct is not None:  # theta: w_k in all, of which w_k^2 is already in `path`
            surrogate = surrogate + ((weights - weights.square()) * direct).sum()
        return bound, surrogate

    @torch.no_grad()
    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        r"""The negative bound :math:`-\mathcal L_K`, estimated from one set of :math:`K` draws.

        Arguments:
            model: A Pyro model.
            guide: A guide for it.
            args: Their arguments.
            kwargs: Their keyword arguments.

        Returns:
            The loss.
        """
        log_w, _, _ = self._terms(model, guide, args, kwargs)
        loss = -(torch.logsumexp(log_w, 0) - math.log(self.num_particles)).sum().item()
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> Tensor:
        """The negative bound, as a tensor whose gradient is the chosen estimator's.

        Arguments:
            model: A Pyro model.
            guide: A guide for it.
            args: Their arguments.
            kwargs: Their keyword arguments.

        Returns:
            The loss.
        """
        bound, surrogate = self._bound_and_surrogate(model, guide, args, kwargs)
        warn_if_nan(bound, "loss")
        return -bound - (surrogate - surrogate.detach())

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The loss, after accumulating the estimator's gradient into the parameters.

        Arguments:
            model: A Pyro model.
            guide: A guide for it.
            args: Their arguments.
            kwargs: Their keyword arguments.

        Returns:
            The loss.
        """
        bound, surrogate = self._bound_and_surrogate(model, guide, args, kwargs)
        if surrogate.requires_grad:
            (-surrogate).backward(retain_graph=self.retain_graph)
        loss = -bound.item()
        warn_if_nan(loss, "loss")
        return loss


def make_elbo(name: str, num_particles: int = 1, vectorize_particles: bool = True) -> ELBO:
    r"""Builds a Pyro ELBO by the name of its gradient estimator.

    * ``"elbo"``: the ELBO with the reparameterised gradient (:class:`~pyro.infer.Trace_ELBO`);
    * ``"stl"``: the ELBO with the sticking-the-landing gradient (:class:`TraceSTL_ELBO`);
    * ``"iwae"``: the importance-weighted bound with its total gradient
      (:class:`TraceIW_ELBO`, ``estimator="standard"``);
    * ``"dreg"``: the importance-weighted bound with the DReG gradient
      (:class:`TraceIW_ELBO`, ``estimator="dreg"``).

    For ``"elbo"`` and ``"stl"`` the ``num_particles`` draws are averaged; for ``"iwae"`` and
    ``"dreg"`` they form the bound :math:`\log \frac1K \sum_k w_k`.

    Arguments:
        name: One of :data:`ELBO_ESTIMATORS`.
        num_particles: The number of draws per estimate.
        vectorize_particles: Whether to draw them in one vectorised pass (when more than one).

    Returns:
        The ELBO, for :class:`~pyro.infer.SVI` or :func:`~pyro_flows.infer.fit_svi`'s
        ``elbo=``.

    Example:
        >>> make_elbo("dreg", num_particles=16)
        TraceIW_ELBO(num_particles=16, estimator='dreg')
        >>> type(make_elbo("stl")).__name__
        'TraceSTL_ELBO'
    """
    check_choice(name, ELBO_ESTIMATORS, "name")
    check_positive_int(num_particles, "num_particles")
    vectorize = bool(vectorize_particles) and num_particles > 1
    if name in ("iwae", "dreg"):
        return TraceIW_ELBO(
            num_particles,
            "standard" if name == "iwae" else "dreg",
            vectorize_particles=vectorize,
        )
    cls = TraceSTL_ELBO if name == "stl" else Trace_ELBO
    return cls(num_particles=num_particles, vectorize_particles=vectorize)
