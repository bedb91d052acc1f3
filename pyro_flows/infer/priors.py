r"""Flow priors: a fitted normalizing flow as the prior of a site in a Bayesian model.

A flow fitted to draws of a parameter (a previous study's posterior, an expert's simulations,
a flow-matching model of a physical prior) gives a density :math:`p_\phi(\theta)` that can be
used as a prior,

.. code-block:: python

    prior = flow_prior(flow, support=constraints.positive)   # a Pyro distribution, frozen

    def model(data):
        theta = pyro.sample("theta", prior)
        ...

and inferred with any guide (:class:`~pyro_flows.infer.AutoFlowGuide` included). Three things
matter, and :func:`flow_prior` takes care of them:

1. **The flow is not trained by inference.** Its parameters are frozen
   (``requires_grad_(False)``) and it is *not* registered with ``pyro.module``, so SVI leaves
   it as it was fitted and no gradient is accumulated in it.
2. **The model scores arbitrary values.** Inference evaluates :math:`\log p_\phi(\theta)` at
   values proposed by a guide or a sampler, i.e. the *density* direction of the flow: a family
   with ``fast_direction="density"`` or ``"both"`` (MAF, coupling, splines) costs one pass;
   IAF costs :math:`D` passes; NAF/BNAF have no inverse and cannot be priors (an error says so).
3. **Constraints.** A flow lives on :math:`\mathbb R^D`. For a constrained parameter, fit the
   flow to the unconstrained draws :math:`u = \text{biject\_to}(\text{support})^{-1}(\theta)`
   (:func:`fit_flow_prior` does) and pass ``support``: the prior is the flow pushed through
   :math:`\text{biject\_to}(\text{support})`, with the right Jacobian.
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import biject_to, constraints

from ..distributions import NormalizingFlow
from ..flows import normalizing_flow
from ..training import FitHistory, fit

__all__ = ["fit_flow_prior", "flow_prior"]


def flow_prior(
    flow: NormalizingFlow,
    *,
    support: constraints.Constraint | None = None,
    context: Tensor | None = None,
    freeze: bool = True,
) -> dist.TransformedDistribution:
    r"""A fitted flow as a Pyro distribution, to be used as ``pyro.sample(name, prior)``.

    Arguments:
        flow: A fitted :class:`~pyro_flows.distributions.NormalizingFlow` (density estimation,
            :func:`fit_flow_prior`, or flow matching).
        support: The support of the parameter when the flow was fitted to unconstrained draws
            (e.g. ``constraints.positive``, ``constraints.simplex``); its
            :func:`~torch.distributions.biject_to` map is appended, so draws and densities are
            in the constrained space. None for a parameter on :math:`\mathbb R^D`.
        context: The context of a conditional flow, if any.
        freeze: Whether to switch off gradients of the flow's parameters (they are never
            registered with Pyro either way).

    Returns:
        A :class:`pyro.distributions.TransformedDistribution` with event shape ``(D,)`` (or the
        shape the support's bijection gives), batchable with ``.expand`` / ``pyro.plate``.

    Raises:
        ValueError: If the flow cannot score arbitrary values (no analytic inverse).

    Example:
        >>> from pyro_flows.flows import normalizing_flow
        >>> flow = normalizing_flow("maf", 2, num_layers=2, hidden_dims=[8])
        >>> prior = flow_prior(flow, support=constraints.positive)
        >>> theta = prior.sample((3,))
        >>> bool((theta > 0).all()), prior.log_prob(theta).shape
        (True, torch.Size([3]))
    """
    if not isinstance(flow, NormalizingFlow):
        raise TypeError(f"flow must be a NormalizingFlow, got {type(flow).__name__}")
    if freeze:
        flow.requires_grad_(False)
        flow.eval()
    prior = flow(context)
    probe = prior.sample()
    try:
        with torch.no_grad():
            prior.log_prob(probe.clone())
    except NotImplementedError as err:
        raise ValueError(
            "this flow cannot score arbitrary values (it has no analytic inverse), so it cannot "
            "be a prior; fit a density-direction family such as 'maf' or 'affine_coupling'"
        ) from err
    if support is None:
        return prior
    bijection = biject_to(support)
    return dist.TransformedDistribution(prior.base_dist, [*prior.transforms, bijection])


def fit_flow_prior(
    draws: Tensor,
    *,
    support: constraints.Constraint | None = None,
    flow: str = "maf",
    num_layers: int = 5,
    hidden_dims: list[int] | None = None,
    **fit_kwargs: Any,
) -> tuple[NormalizingFlow, FitHistory]:
    r"""Fits a flow to draws of a parameter, ready for :func:`flow_prior`.

    The draws are mapped to the unconstrained space with
    :math:`\text{biject\_to}(\text{support})^{-1}` and fitted by maximum likelihood with
    :func:`~pyro_flows.training.fit` (keyword arguments go there: ``num_steps``, ``lr``, ...).

    Arguments:
        draws: Draws of shape ``(N, *event_shape)`` inside ``support``.
        support: Their support, or None for :math:`\mathbb R^D`.
        flow: The family (a density-direction one: ``"maf"``, ``"affine_coupling"``,
            ``"spline_coupling"``, ...).
        num_layers: The number of layers.
        hidden_dims: The hidden sizes of each layer's network.
        fit_kwargs: Passed to :func:`~pyro_flows.training.fit`.

    Returns:
        The fitted flow (on the unconstrained space) and the fit's history. Pass the same
        ``support`` to :func:`flow_prior`.

    Example:
        >>> draws = torch.randn(500, 2).exp()
        >>> flow, _ = fit_flow_prior(draws, support=constraints.positive, num_steps=5,
        ...                          progress=False, hidden_dims=[8])
        >>> flow_prior(flow, support=constraints.positive).event_shape
        torch.Size([2])
    """
    if not torch.is_tensor(draws) or draws.dim() < 2:
        raise ValueError("draws must be a tensor of shape (N, *event_shape)")
    with torch.no_grad():
        u = draws if support is None else biject_to(support).inv(draws)
    u = u.reshape(u.shape[0], -1)
    model: nn.Module = normalizing_flow(flow, u.shape[-1], num_layers, hidden_dims=hidden_dims)
    model = model.to(dtype=u.dtype, device=u.device)
    history = fit(model, u, **fit_kwargs)
    return model, history
