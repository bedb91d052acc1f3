"""Masked autoregressive (MAF) and inverse autoregressive (IAF) flows on MADE networks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_hidden_dims, check_positive_int
from ..nn.dense import default_hidden_dims
from ..nn.made import MADE, ConditionalMADE
from .base import (
    ConditionalFlowTransform,
    FlowTransform,
    bounded_log_scale,
    broadcast_context,
    check_log_scale_bound,
    one_input_made,
    sum_last,
)
from .cache import Deferred

__all__ = [
    "ConditionalInverseAutoregressive",
    "ConditionalMaskedAutoregressive",
    "InverseAutoregressive",
    "MaskedAutoregressive",
    "autoregressive_order",
    "conditional_iaf",
    "conditional_maf",
    "iaf",
    "maf",
]


def autoregressive_order(
    input_dim: int, order: str | Sequence[int] | Tensor = "natural"
) -> Tensor:
    """Returns the order of the autoregressive factorisation as a permutation tensor.

    Arguments:
        input_dim: The event size :math:`D`.
        order: ``"natural"`` (0, 1, ..., D-1), ``"reverse"``, ``"random"`` (a fresh random
            permutation, drawn from torch's global generator) or an explicit permutation.
    """
    if isinstance(order, str):
        check_choice(order, ("natural", "reverse", "random"), "order")
        if order == "random":
            return torch.randperm(input_dim)
        idx = torch.arange(input_dim)
        return idx if order == "natural" else idx.flip(0)
    perm = torch.as_tensor(order, dtype=torch.long)
    if perm.shape != (input_dim,) or not torch.equal(perm.sort().values, torch.arange(input_dim)):
        raise ValueError(f"order must be a permutation of range({input_dim}), got {order!r}")
    return perm


class _Autoregressive(FlowTransform):
    """Shared machinery: the MADE pass and the D-pass solve of the sequential direction."""

    autoregressive = True

    def __init__(
        self,
        input_dim: int,
        network: nn.Module,
        log_scale_bound: float | None = 5.0,
        context: Tensor | None = None,
        cache_size: int = 1,
    ) -> None:
        super().__init__(input_dim, cache_size=cache_size)
        self.network = network
        self.log_scale_bound = check_log_scale_bound(log_scale_bound)
        self.context = context

    def _shift_and_log_scale(self, v: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale, squashed = self._conditioner(v)
        return shift, log_scale if squashed is None else self.log_scale_bound * squashed

    def _conditioner(self, v: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        r"""One MADE pass: ``(shift, log_scale, squashed)``; output i sees only inputs before i.

        With our MADE, ``log_scale`` is None and ``squashed`` is :math:`\tanh(\tilde s / b)`
        (so :math:`s = b \cdot` ``squashed``): ``shift`` and ``squashed`` are then fresh tensors
        of their own that the caller may overwrite in place. Otherwise ``squashed`` is None.
        """
        bound = self.log_scale_bound
        # Our MADE divides by the bound in its last layer's weights, saving a pass over the data.
        fold = bound is not None and isinstance(self.network, (MADE, ConditionalMADE))
        kwargs = {"scales": (1.0, 1.0 / bound)} if fold else {}
        if self.context is None:
            shift, raw = self.network(v, **kwargs)
        else:
            v, context = broadcast_context(v, self.context)
            shift, raw = self.network(v, context, **kwargs)
        if not fold:
            return shift, bounded_log_scale(raw, bound), None
        # raw is MADE's own output and nothing's saved input: tanh may overwrite it.
        return shift, None, raw.tanh_()

    def _affine(
        self, v: Tensor, sum_now: bool, sign: float = 1.0
    ) -> tuple[Tensor, Tensor | Deferred]:
        r""":math:`(v\,e^{s(v)} + \mu(v), \pm\sum_i s_i)`, overwriting the network's outputs.

        ``sign`` (+1 or -1) rides along in the sum, sparing MAF's inverse a negation pass.
        """
        shift, log_scale, squashed = self._conditioner(v)
        if squashed is None:
            out = torch.addcmul(shift, v, log_scale.exp())
            if sum_now:
                return out, sum_last(log_scale, sign)
            return out, Deferred(lambda: sum_last(log_scale, sign))
        # The log-determinant is sign * b * sum(squashed): one product, weight included.
        weight = sign * self.log_scale_bound
        if squashed.requires_grad or not sum_now:
            # tanh's backward keeps squashed, so the scale needs a tensor of its own; exp_ and
            # addcmul_ destroy nothing autograd saved (mul by a number and addcmul's self need
            # none). The sum is read from the intact squashed, now or later: a sampling pass
            # (not sum_now) never pays for it (measured: docs/benchmarks.md, overhead).
            ladj = (
                sum_last(squashed, weight)
                if sum_now
                else Deferred(lambda: sum_last(squashed, weight))
            )
            scale = (self.log_scale_bound * squashed).exp_()
        else:
            # No graph and the sum wanted now: squashed becomes the scale once it is summed.
            ladj = sum_last(squashed, weight)
            scale = squashed.mul_(self.log_scale_bound).exp_()
        return shift.addcmul_(v, scale), ladj

    def _solve(
        self, target: Tensor, step: Callable[[Tensor, Tensor, Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        # Pass k fixes the k-th variable in the order, so D passes give the exact solution;
        # the log-scales of the last pass were computed from exact prefixes, hence exact too.
        v = torch.zeros_like(target)
        for _ in range(self.input_dim):
            shift, log_scale = self._shift_and_log_scale(v)
            v = step(target, shift, log_scale)
        return v, log_scale


class MaskedAutoregressive(_Autoregressive):
    r"""Masked autoregressive flow (MAF) layer: fast density, sequential sampling.

    The map from the data :math:`x` to the base variable :math:`z` is

    .. math:: z_i = x_i\, e^{s_i(x_{<i})} + \mu_i(x_{<i}), \qquad
              \log\left|\det \frac{\partial z}{\partial x}\right| = \textstyle\sum_i s_i(x_{<i}),

    where :math:`(\mu, s)` come from one pass of a MADE network over :math:`x`. This transform
    maps :math:`z` to :math:`x` (the generative direction), so its inverse and the
    log-determinant of data take **one** network pass: ``TransformedDistribution.log_prob`` of
    data is fast. (This form of the data-to-noise map, also zuko's, trained to a lower KL
    than :math:`(x - \mu) e^{-s}`: docs/benchmarks.md.) The forward direction
    (sampling) solves the recursion in :math:`D` passes. For a guide, whose samples are drawn
    and then scored, :class:`InverseAutoregressive` is the efficient choice.

    Arguments:
        input_dim: The event size :math:`D`: :math:`D \ge 2`, or :math:`D \ge 1` with a
            context.
        network: A :class:`pyro.nn.AutoRegressiveNN` (or conditional one when ``context`` is
            given) with ``param_dims=[1, 1]``, returning :math:`(\mu, \tilde s)`.
        log_scale_bound: The bound :math:`b` of :math:`s = b \tanh(\tilde s / b)`, or None.
        context: A context passed to ``network`` (set by ``.condition``).

    Example:
        >>> t = maf(3, hidden_dims=[16])
        >>> x = torch.randn(5, 3)
        >>> torch.allclose(t(t.inv(x).clone()), x, atol=1e-5)
        True

    References:
        | Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
        | https://arxiv.org/abs/1705.07057
        | MADE: Masked Autoencoder for Distribution Estimation (Germain et al., 2015)
        | https://arxiv.org/abs/1502.03509
    """

    def _call_and_ladj(self, z: Tensor) -> tuple[Tensor, Deferred]:
        x, log_scale = self._solve(z, lambda z, shift, s: (z - shift) * torch.exp(-s))
        return x, Deferred(lambda: -log_scale.sum(-1))

    def _inverse_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._affine(x, sum_now=True, sign=-1.0)

    def _ladj(self, z: Tensor, x: Tensor) -> Tensor:
        return sum_last(self._shift_and_log_scale(x)[1], -1.0)


class InverseAutoregressive(_Autoregressive):
    r"""Inverse autoregressive flow (IAF) layer: fast sampling, sequential density of data.

    As a transform from the base variable :math:`z` to :math:`y`,

    .. math:: y_i = z_i\, e^{s_i(z_{<i})} + \mu_i(z_{<i}), \qquad
              \log|\det J| = \textstyle\sum_i s_i(z_{<i}),

    with :math:`(\mu, s)` from one MADE pass over :math:`z`. Sampling **and** scoring its own
    samples (the cached :math:`z` gives the log-determinant) take one pass, which is what a
    variational guide needs. The density of arbitrary data inverts the recursion in :math:`D`
    passes; for density estimation prefer :class:`MaskedAutoregressive`.

    Arguments:
        input_dim: The event size :math:`D`: :math:`D \ge 2`, or :math:`D \ge 1` with a
            context.
        network: A :class:`pyro.nn.AutoRegressiveNN` (or conditional one when ``context`` is
            given) with ``param_dims=[1, 1]``.
        log_scale_bound: The bound of the log-scale, or None.
        context: A context passed to ``network`` (set by ``.condition``).

    Example:
        >>> t = iaf(3, hidden_dims=[16])
        >>> z = torch.randn(5, 3)
        >>> torch.allclose(t.inv(t(z).clone()), z, atol=1e-5)
        True

    References:
        | Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016)
        | https://arxiv.org/abs/1606.04934
    """

    def _call_and_ladj(self, z: Tensor) -> tuple[Tensor, Deferred]:
        # Deferred: drawing samples alone never needs the sum.
        return self._affine(z, sum_now=False)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        z, log_scale = self._solve(y, lambda y, shift, s: (y - shift) * torch.exp(-s))
        return z, log_scale.sum(-1)


class _ConditionalAutoregressive(ConditionalFlowTransform):
    transform_class: type[_Autoregressive]

    def __init__(
        self,
        input_dim: int,
        context_dim: int,
        network: nn.Module,
        log_scale_bound: float | None = 5.0,
    ) -> None:
        super().__init__(input_dim, context_dim)
        self.network = network
        self.log_scale_bound = check_log_scale_bound(log_scale_bound)

    def _condition(self, context: Tensor) -> _Autoregressive:
        return self.transform_class(
            self.input_dim, self.network, self.log_scale_bound, context=context
        )


class ConditionalMaskedAutoregressive(_ConditionalAutoregressive):
    r"""MAF layer whose shifts and log-scales also see a context: :math:`\mu(x_{<i}, c)`.

    ``.condition(c)`` returns a :class:`MaskedAutoregressive` sharing the parameters. With one
    variable (:math:`D = 1`) the layer is the affine map :math:`z = x\, e^{s(c)} + \mu(c)`, a
    conditional density of one variable given the context.

    Example:
        >>> t = conditional_maf(3, 2, hidden_dims=[16])
        >>> t.condition(torch.randn(7, 2)).inv(torch.randn(7, 3)).shape
        torch.Size([7, 3])
    """

    transform_class = MaskedAutoregressive


class ConditionalInverseAutoregressive(_ConditionalAutoregressive):
    r"""IAF layer whose shifts and log-scales also see a context: :math:`\mu(z_{<i}, c)`.

    ``.condition(c)`` returns an :class:`InverseAutoregressive` sharing the parameters. With
    :math:`D = 1` the layer is the affine map :math:`y = z\, e^{s(c)} + \mu(c)`.

    Example:
        >>> t = conditional_iaf(3, 2, hidden_dims=[16])
        >>> t.condition(torch.randn(2))(torch.randn(7, 3)).shape
        torch.Size([7, 3])
    """

    transform_class = InverseAutoregressive


def _made(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] | None,
    order: str | Sequence[int] | Tensor,
    residual: bool = False,
) -> nn.Module:
    # Without a context, one variable has nothing to be autoregressive on; with one, the
    # layer of one variable is an affine map whose shift and log-scale see the context only.
    check_positive_int(input_dim, "input_dim", minimum=1 if context_dim else 2)
    # widths below input_dim are widened by the MADE, with a HiddenWidthWarning
    hidden = check_hidden_dims(hidden_dims or [3 * input_dim + 1])
    perm = autoregressive_order(input_dim, order)
    if context_dim:
        with one_input_made():
            return ConditionalMADE(
                input_dim,
                context_dim,
                hidden,
                param_dims=[1, 1],
                permutation=perm,
                residual=residual,
            )
    return MADE(input_dim, hidden, param_dims=[1, 1], permutation=perm, residual=residual)


def maf(
    input_dim: int,
    hidden_dims: Sequence[int] | None = None,
    order: str | Sequence[int] | Tensor = "natural",
    log_scale_bound: float | None = 5.0,
    residual: bool = False,
) -> MaskedAutoregressive:
    r"""Builds a :class:`MaskedAutoregressive` layer on a MADE network.

    The network is a :class:`~pyro_flows.nn.MADE`: Pyro's :class:`pyro.nn.AutoRegressiveNN`
    with contiguous outputs.

    Arguments:
        input_dim: The event size :math:`D \ge 2`.
        hidden_dims: Hidden sizes of the MADE network (default
            :func:`~pyro_flows.nn.dense.default_hidden_dims`: 64-64 below 10 dimensions,
            128-128 up to 32, :math:`4D`-:math:`4D` beyond); a MADE needs each
            :math:`\ge D`, so narrower ones are widened to :math:`D` with a
            :class:`~pyro_flows.nn.made.HiddenWidthWarning`.
        order: ``"natural"``, ``"reverse"``, ``"random"`` or a permutation (see
            :func:`autoregressive_order`).
        log_scale_bound: The bound of the log-scale, or None.
        residual: Residual hidden layers (all of one width), each starting at zero; see
            :class:`~pyro_flows.nn.MADE`.
    """
    if hidden_dims is None:
        hidden_dims = default_hidden_dims(input_dim)
    net = _made(input_dim, 0, hidden_dims, order, residual)
    return MaskedAutoregressive(input_dim, net, log_scale_bound)


def iaf(
    input_dim: int,
    hidden_dims: Sequence[int] | None = None,
    order: str | Sequence[int] | Tensor = "natural",
    log_scale_bound: float | None = 5.0,
    residual: bool = False,
) -> InverseAutoregressive:
    """Builds an :class:`InverseAutoregressive` layer (arguments as :func:`maf`).

    ``hidden_dims`` defaults to ``[3 * D + 1]``, as Pyro's (a guide's size is set by its own
    benchmarks, not by the density table that set :func:`maf`'s).
    """
    net = _made(input_dim, 0, hidden_dims, order, residual)
    return InverseAutoregressive(input_dim, net, log_scale_bound)


def conditional_maf(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] | None = None,
    order: str | Sequence[int] | Tensor = "natural",
    log_scale_bound: float | None = 5.0,
    residual: bool = False,
) -> ConditionalMaskedAutoregressive:
    """Builds a :class:`ConditionalMaskedAutoregressive` (arguments as :func:`maf`).

    ``input_dim`` may be 1 (the shift and log-scale then come from the context alone);
    ``hidden_dims`` defaults to ``default_hidden_dims(input_dim, context_dim)``.

    Example:
        >>> t = conditional_maf(1, 2, hidden_dims=[16]).condition(torch.randn(5, 2))
        >>> t.inv(torch.randn(5, 1)).shape
        torch.Size([5, 1])
    """
    check_positive_int(context_dim, "context_dim")
    if hidden_dims is None:
        hidden_dims = default_hidden_dims(input_dim, context_dim)
    net = _made(input_dim, context_dim, hidden_dims, order, residual)
    return ConditionalMaskedAutoregressive(input_dim, context_dim, net, log_scale_bound)


def conditional_iaf(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] | None = None,
    order: str | Sequence[int] | Tensor = "natural",
    log_scale_bound: float | None = 5.0,
    residual: bool = False,
) -> ConditionalInverseAutoregressive:
    """Builds a :class:`ConditionalInverseAutoregressive` (arguments as :func:`iaf`).

    ``input_dim`` may be 1 (the shift and log-scale then come from the context alone).
    """
    check_positive_int(context_dim, "context_dim")
    net = _made(input_dim, context_dim, hidden_dims, order, residual)
    return ConditionalInverseAutoregressive(input_dim, context_dim, net, log_scale_bound)
