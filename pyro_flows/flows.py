"""Build a flow by name: K layers of one family with permutations in between."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyro.distributions.transforms as pyro_transforms
import torch
from torch import nn

from . import transforms as T
from ._validation import check_choice, check_positive_int
from .distributions import NormalizingFlow
from .transforms.base import one_input_made

__all__ = [
    "FAMILIES",
    "Family",
    "build",
    "elementwise_affine",
    "lookup_family",
    "normalizing_flow",
    "register_family",
]


@dataclass(frozen=True)
class Family:
    r"""How to build one layer of a flow family.

    Arguments:
        make: ``make(input_dim, **kwargs)`` returns a layer: a
            :class:`~pyro_flows.transforms.FlowTransform`, or a Pyro transform module, which is
            then wrapped.
        make_conditional: ``make_conditional(input_dim, context_dim, **kwargs)``, or None.
        min_dim: The smallest event size the family accepts without a context.
        conditional_min_dim: The smallest event size of ``make_conditional``: 1 for every
            family here, since a conditional layer of one variable is a map whose parameters
            come from the context (a conditional MAF of one variable is the affine map
            :math:`z = x\, e^{s(c)} + \mu(c)`). Read both through :meth:`smallest_dim`.
        invertible: False for families without an analytic inverse (NAF, BNAF): they can
            sample and score their own samples, but not score data.
        fast_direction: ``"density"`` when scoring data takes one pass (MAF, coupling),
            ``"sample"`` when sampling and scoring own samples take one pass (IAF, NAF), or
            ``"both"``.
        ordered: True when a layer takes an ``order`` argument (MADE-based layers): the
            builder then alternates the layers' orders instead of inserting permutation
            layers, which does the same without a gather per layer.
        affine: True when :func:`build` puts, by default, a learnable elementwise affine map
            (starting at the identity) before each layer and after the last one
            (``elementwise_affine`` of :func:`build`).
    """

    make: Callable[..., nn.Module]
    make_conditional: Callable[..., nn.Module] | None = None
    min_dim: int = 1
    conditional_min_dim: int = 1
    invertible: bool = True
    fast_direction: str = "both"
    ordered: bool = False
    affine: bool = False

    def smallest_dim(self, context_dim: int | None = None) -> int:
        """The smallest event size :func:`build` accepts, without or with a context.

        Example:
            >>> FAMILIES["maf"].smallest_dim(), FAMILIES["maf"].smallest_dim(context_dim=3)
            (2, 1)
        """
        return self.min_dim if context_dim is None else self.conditional_min_dim


def _pyro(name: str) -> Callable[..., nn.Module]:
    make = getattr(pyro_transforms, name)
    if not name.startswith("conditional_"):
        return make

    # Pyro warns on a conditional MADE of one input, which is this family's D = 1 layer.
    @functools.wraps(make)
    def make_conditional(*args: Any, **kwargs: Any) -> nn.Module:
        with one_input_made():
            return make(*args, **kwargs)

    return make_conditional


FAMILIES: dict[str, Family] = {
    "planar": Family(T.planar, T.conditional_planar, fast_direction="sample"),
    "radial": Family(T.radial, T.conditional_radial),
    # MAF and coupling: elementwise affine maps between the layers by default (they won the
    # A/B runs of docs/benchmarks.md on all four targets at the same size)
    "affine_coupling": Family(
        T.affine_coupling, T.conditional_affine_coupling, min_dim=2, affine=True
    ),
    "maf": Family(
        T.maf, T.conditional_maf, min_dim=2, fast_direction="density", ordered=True, affine=True
    ),
    "iaf": Family(T.iaf, T.conditional_iaf, min_dim=2, fast_direction="sample", ordered=True),
    "ffjord": Family(T.ffjord, T.conditional_ffjord),
    # one Glow step on vectors: ActNorm (initialised by the first batch of data it scores),
    # LU 1x1 "convolution" (a learned rotation of the features), affine coupling
    "glow": Family(T.glow_step, min_dim=2),
    # y = x + g(x) samples in one pass; pass inverse=True for one-pass density of data. A layer
    # is two narrower residual blocks (T.iresnet_layer: 5 layers = 10 blocks, MAF's size), with
    # elementwise affine maps between all blocks: a block's Jacobian I + J_g has singular
    # values in [1 - Lip(g), 1 + Lip(g)], so it bends the density only a little; more blocks
    # and per-feature scales fit better (docs/benchmarks.md, "Residual flows")
    "iresnet": Family(
        T.iresnet_layer, T.conditional_iresnet_layer, fast_direction="sample", affine=True
    ),
    "residual_flow": Family(
        T.residual_flow_layer,
        T.conditional_residual_flow_layer,
        fast_direction="sample",
        affine=True,
    ),
    # Pyro's families, wrapped (see pyro_flows.transforms.PyroTransform):
    "spline": Family(T.elementwise_spline, _pyro("conditional_spline")),
    "spline_coupling": Family(_pyro("spline_coupling"), min_dim=2),
    # Pyro's spline autoregressive transform used backwards: one-pass density, like zuko's NSF
    "masked_spline_autoregressive": Family(
        T.masked_spline_autoregressive,
        T.conditional_masked_spline_autoregressive,
        min_dim=2,
        fast_direction="density",
    ),
    "spline_autoregressive": Family(
        _pyro("spline_autoregressive"),
        _pyro("conditional_spline_autoregressive"),
        min_dim=2,
        fast_direction="sample",
    ),
    "neural_autoregressive": Family(
        _pyro("neural_autoregressive"),
        _pyro("conditional_neural_autoregressive"),
        min_dim=2,
        invertible=False,
        fast_direction="sample",
    ),
    "block_autoregressive": Family(
        _pyro("block_autoregressive"), min_dim=2, invertible=False, fast_direction="sample"
    ),
}
_ALIASES = {
    "realnvp": "affine_coupling",
    "nsf": "masked_spline_autoregressive",
    "naf": "neural_autoregressive",
    "bnaf": "block_autoregressive",
}


def register_family(name: str, family: Family) -> None:
    """Makes a family available to :func:`build` under ``name``."""
    FAMILIES[name] = family


def lookup_family(name: str) -> tuple[str, Family]:
    """Returns the canonical name and the :class:`Family` of ``name`` (an alias is resolved).

    Raises a ValueError listing the known names when ``name`` is unknown.
    """
    name = _ALIASES.get(name, name)
    check_choice(name, tuple(FAMILIES) + tuple(_ALIASES), "flow")
    return name, FAMILIES[name]


def _wrap(layer: nn.Module, family: Family, input_dim: int, context_dim: int | None) -> nn.Module:
    if isinstance(
        layer, (T.FlowTransform, T.ConditionalFlowTransform, T.Compose, T.ConditionalCompose)
    ):
        return layer
    if context_dim:
        return T.ConditionalPyroTransform(layer, input_dim, context_dim, family.invertible)
    return T.PyroTransform(layer, input_dim, invertible=family.invertible)


def _accepts(fn: Callable[..., Any], arg: str) -> bool:
    return arg in inspect.signature(fn).parameters


def elementwise_affine(input_dim: int) -> T.ActNorm:
    r"""A learnable elementwise affine map :math:`y = x \odot e^{s} + b`, starting at the identity.

    An :class:`~pyro_flows.transforms.ActNorm` marked as initialised, so no data resets it: its
    :math:`2D` parameters are trained from :math:`s = b = 0` like any other.

    Example:
        >>> t = elementwise_affine(3)
        >>> x = torch.randn(4, 3)
        >>> torch.equal(t(x), x), bool(t.initialized)
        (True, True)
    """
    layer = T.ActNorm(input_dim)
    with torch.no_grad():
        layer.initialized.fill_(True)
    return layer


_identity_affine = elementwise_affine  # build's argument of the same name shadows it


def build(
    name: str,
    input_dim: int,
    num_layers: int = 5,
    *,
    context_dim: int | None = None,
    hidden_dims: Sequence[int] | None = None,
    permutation: str | None = "reverse",
    elementwise_affine: bool | None = None,
    **kwargs: Any,
) -> T.Compose | T.ConditionalCompose:
    r"""Stacks ``num_layers`` layers of the family ``name``, with permutations between them.

    Arguments:
        name: A key of :data:`FAMILIES` (``"planar"``, ``"radial"``, ``"affine_coupling"``,
            ``"maf"``, ``"iaf"``, ``"ffjord"``, ``"glow"``, ``"iresnet"``,
            ``"residual_flow"``; Pyro's ``"spline"``, ``"spline_coupling"``,
            ``"spline_autoregressive"``; Pyro's spline autoregressive used backwards, one-pass
            density: ``"masked_spline_autoregressive"``; Pyro's ``"neural_autoregressive"`` and
            ``"block_autoregressive"``, which have no inverse and score only their own samples)
            or an alias (``"realnvp"``, ``"nsf"`` for ``"masked_spline_autoregressive"``,
            ``"naf"``, ``"bnaf"``).
        input_dim: The event size :math:`D`.
        num_layers: How many layers :math:`K`.
        context_dim: The context size for a conditional flow, or None.
        hidden_dims: Hidden layer sizes of each layer's network (for families that have one).
        permutation: ``"reverse"``, ``"random"`` or None: how the order of the features changes
            from one layer to the next (a permutation layer, or for MAF/IAF the MADE order).
        elementwise_affine: Put a learnable elementwise affine map
            :math:`x \odot e^{s} + b` (:func:`elementwise_affine`, starting at the identity,
            :math:`2D` parameters each) before every layer and after the last one. None (the
            default) means the family's default (:attr:`Family.affine`): True for ``"maf"``,
            ``"affine_coupling"``, ``"iresnet"`` and ``"residual_flow"``, where it lowered the
            KL at the same size (docs/benchmarks.md), False for the others.
        kwargs: Passed to the family's helper (e.g. ``log_scale_bound``, ``count_bins``).

    Returns:
        A :class:`~pyro_flows.transforms.Compose` (or, with ``context_dim``, a
        :class:`~pyro_flows.transforms.ConditionalCompose`) mapping base noise to data.

    Example:
        >>> flow = build("maf", 3, num_layers=2, hidden_dims=[16])
        >>> flow(torch.randn(5, 3)).shape
        torch.Size([5, 3])
    """
    name, family = lookup_family(name)
    check_positive_int(input_dim, "input_dim", minimum=family.smallest_dim(context_dim))
    check_positive_int(num_layers, "num_layers")
    if context_dim is not None:
        check_positive_int(context_dim, "context_dim")
        if family.make_conditional is None:
            raise ValueError(f"flow {name!r} has no conditional variant; drop context_dim")
    if permutation is not None:
        check_choice(permutation, ("reverse", "random"), "permutation")
    if elementwise_affine is None:
        elementwise_affine = family.affine
    elif not isinstance(elementwise_affine, bool):
        raise TypeError(
            f"elementwise_affine must be a bool or None, got {type(elementwise_affine).__name__}"
        )
    make = family.make if context_dim is None else family.make_conditional
    if hidden_dims is not None:
        if not _accepts(make, "hidden_dims"):
            raise ValueError(f"flow {name!r} takes no hidden_dims")
        kwargs["hidden_dims"] = hidden_dims
    args = (input_dim,) if context_dim is None else (input_dim, context_dim)

    # MADE-based layers change order through their own `order` argument, not a permutation.
    by_order = family.ordered and permutation is not None and "order" not in kwargs
    parts: list[nn.Module] = []
    for k in range(num_layers):
        if by_order:
            kwargs["order"] = (
                ("natural", "reverse")[k % 2] if permutation == "reverse" else "random"
            )
        elif k > 0 and permutation is not None and input_dim > 1:
            perm = T.reverse(input_dim) if permutation == "reverse" else T.permutation(input_dim)
            parts.append(perm)
        if elementwise_affine:
            parts.append(_identity_affine(input_dim))
        parts.append(_wrap(make(*args, **kwargs), family, input_dim, context_dim))
    if elementwise_affine:
        parts.append(_identity_affine(input_dim))
    return T.Compose(parts) if context_dim is None else T.ConditionalCompose(parts)


def normalizing_flow(
    name: str,
    input_dim: int,
    num_layers: int = 5,
    *,
    context_dim: int | None = None,
    hidden_dims: Sequence[int] | None = None,
    permutation: str | None = "reverse",
    standardize: bool = True,
    **kwargs: Any,
) -> NormalizingFlow:
    """Builds a :class:`~pyro_flows.distributions.NormalizingFlow` with :func:`build`'s stack.

    The base is a standard normal; ``standardize`` is :class:`NormalizingFlow`'s (the data-end
    standardisation that :func:`~pyro_flows.training.fit` sets from the data, so the fit does
    not depend on the data's units); the other arguments are those of :func:`build`.

    Example:
        >>> flow = normalizing_flow("maf", 2, num_layers=3, hidden_dims=[16, 16])
        >>> flow.log_prob(torch.randn(4, 2)).shape
        torch.Size([4])
    """
    transform = build(
        name,
        input_dim,
        num_layers,
        context_dim=context_dim,
        hidden_dims=hidden_dims,
        permutation=permutation,
        **kwargs,
    )
    return NormalizingFlow(transform, input_dim, context_dim=context_dim, standardize=standardize)
