"""Pyro's own flow families (splines, NAF, BNAF) behind the pyro_flows contract, not re-written."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions.transforms as pyro_transforms
import torch
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from torch import Tensor, nn
from torch.distributions.utils import _sum_rightmost

from .._validation import check_choice, check_positive_int
from ..nn.made import widen_hidden_dims
from .base import ConditionalFlowTransform, FlowTransform, broadcast_context, one_input_made

__all__ = [
    "ConditionalPyroTransform",
    "PyroTransform",
    "conditional_masked_spline_autoregressive",
    "elementwise_spline",
    "masked_spline_autoregressive",
]


class PyroTransform(FlowTransform):
    """Wraps a Pyro ``TransformModule`` so it meets the pyro_flows contract.

    The wrapped transform does the work; the wrapper adds what it lacks: a cache that is
    dropped after an optimizer step, a module-valued ``inv``, a log-determinant summed over the
    event (for element-wise transforms such as :func:`pyro.distributions.transforms.spline`),
    and a clear error for families without an analytic inverse (NAF, BNAF).

    Arguments:
        transform: A Pyro transform on vectors of size ``input_dim``.
        input_dim: The event size :math:`D`.
        owner: The module holding the parameters when ``transform`` itself does not (a
            transform returned by a Pyro conditional module's ``.condition``).
        context: The context ``transform`` was conditioned on, if any; inputs are broadcast
            against its batch shape before they reach Pyro.
        invertible: False for families without an analytic inverse (NAF, BNAF): their inverse
            raises NotImplementedError, while their own samples are still scored from the cache.
        inverse: True to wrap the inverse of ``transform``: e.g. Pyro's spline autoregressive
            transform (one pass to sample, :math:`D` to score data) used backwards scores data
            in one pass, as a masked autoregressive flow does.

    Example:
        >>> import pyro.distributions.transforms as T
        >>> t = PyroTransform(T.spline_coupling(3), 3)
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(t.inv(t(x).clone()), x, atol=1e-4)
        True
    """

    def __init__(
        self,
        transform: nn.Module,
        input_dim: int,
        owner: nn.Module | None = None,
        context: Tensor | None = None,
        invertible: bool = True,
        cache_size: int = 1,
        inverse: bool = False,
    ) -> None:
        super().__init__(input_dim, cache_size=cache_size)
        if inverse and not invertible:
            raise ValueError("inverse=True needs an invertible transform (invertible=True)")
        self.transform = transform
        self.invertible = invertible
        self.inverse = inverse
        self.owner = owner
        self.context = context
        # Pyro's transforms hand the log-determinant of their last pass to
        # log_abs_det_jacobian through their own one-slot cache; make sure it exists.
        transform._cache_size = 1
        transform._cached_x_y = None, None

    def _event_sum(self, ladj: Tensor) -> Tensor:
        return _sum_rightmost(ladj, 1 - self.transform.domain.event_dim)

    def _broadcast(self, v: Tensor) -> Tensor:
        return v if self.context is None else broadcast_context(v, self.context)[0]

    def _pyro_call(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # The wrapped transform's forward pass and its log|det J| summed over the event.
        x = self._broadcast(x)
        self.transform._cached_x_y = None, None  # never let Pyro's cache answer
        y = self.transform(x)
        return y, self._event_sum(self.transform.log_abs_det_jacobian(x, y))

    def _pyro_inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        # The wrapped transform's inverse and the *forward* log|det J| at the result.
        if not self.invertible:
            raise NotImplementedError(
                f"{type(self.transform).__name__} has no analytic inverse: use it in the "
                "sampling direction only (e.g. in a variational guide), not to score data"
            )
        y = self._broadcast(y)
        self.transform._cached_x_y = None, None
        x = self.transform.inv(y)
        return x, self._event_sum(self.transform.log_abs_det_jacobian(x, y))

    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.inverse:
            y, ladj = self._pyro_inverse(x)
            return y, -ladj
        return self._pyro_call(x)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.inverse:
            x, ladj = self._pyro_call(y)
            return x, -ladj
        return self._pyro_inverse(y)

    def __repr__(self) -> str:
        inverse = ", inverse=True" if self.inverse else ""
        return f"PyroTransform({self.transform!r}{inverse})"


class ConditionalPyroTransform(ConditionalFlowTransform):
    """Wraps a Pyro ``ConditionalTransformModule``; ``.condition(c)`` gives a :class:`PyroTransform`.

    Arguments:
        transform: A Pyro conditional transform module.
        input_dim: The event size :math:`D`.
        context_dim: The context size :math:`C`.
        invertible: False for families without an analytic inverse.
        inverse: True to wrap the inverse of each conditioned transform (see
            :class:`PyroTransform`).
    """

    def __init__(
        self,
        transform: nn.Module,
        input_dim: int,
        context_dim: int,
        invertible: bool = True,
        inverse: bool = False,
    ) -> None:
        super().__init__(input_dim, context_dim)
        if inverse and not invertible:
            raise ValueError("inverse=True needs an invertible transform (invertible=True)")
        self.transform = transform
        self.invertible = invertible
        self.inverse = inverse

    def _condition(self, context: Tensor) -> PyroTransform:
        inner = self.transform.condition(context)
        return PyroTransform(
            inner,
            self.input_dim,
            owner=self.transform,
            context=context,
            invertible=self.invertible,
            inverse=self.inverse,
        )


_SPLINE_ORDERS = ("linear", "quadratic")


def _spline_network(
    input_dim: int,
    context_dim: int | None,
    hidden_dims: Sequence[int] | None,
    count_bins: int,
    order: str,
    identity_init: bool,
) -> nn.Module:
    """The MADE of a Pyro spline autoregressive layer, with outputs matching ``order``.

    Pyro's helpers always emit the four parameter sets of the linear-rational spline, so their
    ``order="quadratic"`` fails to unpack (pyro-ppl/pyro#3130); the rational-quadratic spline
    takes widths, heights and K - 1 derivatives only.
    """
    check_choice(order, _SPLINE_ORDERS, "order")
    check_positive_int(count_bins, "count_bins", minimum=2)
    hidden = [input_dim * 10, input_dim * 10] if hidden_dims is None else list(hidden_dims)
    hidden = widen_hidden_dims(input_dim, hidden)  # Pyro's MADE refuses widths < input_dim
    param_dims = [count_bins, count_bins, count_bins - 1]
    if order == "linear":
        param_dims.append(count_bins)
    # Pyro's MADE orders its inputs at random unless told: the natural order here, so that the
    # builder's reverse permutations alternate the order from layer to layer as in MAF.
    natural = torch.arange(input_dim)
    if context_dim is None:
        net = AutoRegressiveNN(input_dim, hidden, param_dims=param_dims, permutation=natural)
    else:
        with one_input_made():
            net = ConditionalAutoRegressiveNN(
                input_dim, context_dim, hidden, param_dims=param_dims, permutation=natural
            )
    if identity_init:
        _spline_identity_start(net, input_dim, count_bins)
    return net


def _spline_identity_start(net: nn.Module, input_dim: int, count_bins: int) -> None:
    r"""Starts every spline at the identity, up to Pyro's boundary slope of 0.999.

    The last layer's weights are zeroed, so the bins are uniform, and the derivative biases
    are set to :math:`\operatorname{softplus}^{-1}(1 - 10^{-3})`, so every inner knot's slope
    is 1 (Pyro adds a minimum slope of :math:`10^{-3}`, and pins the two end knots at 0.999);
    the linear-rational spline's :math:`\lambda = 1/2` then also gives a near-straight line
    (within 2e-4 of the identity on the interval). Random splines compound over layers, so
    this start trains to a lower KL (docs/benchmarks.md, one column and NSF starts).
    """
    last = net.layers[-1]
    k = count_bins
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        # Pyro lays the outputs out as (parameter set, dim): widths, heights, derivatives, ...
        last.bias[2 * k * input_dim : (3 * k - 1) * input_dim] = math.log(math.expm1(1 - 1e-3))


def elementwise_spline(
    input_dim: int,
    count_bins: int = 8,
    bound: float = 5.0,
    order: str = "linear",
    identity_init: bool = True,
) -> PyroTransform:
    r"""Pyro's element-wise spline, :math:`y_i = g_{\theta_i}(x_i)`, starting at the identity.

    :math:`g_{\theta_i}` is a monotonic rational spline on :math:`[-B, B]` (the identity
    outside) with its own parameters per coordinate: the flexible flow of one variable, or of
    independent ones. Pyro's :func:`~pyro.distributions.transforms.spline` starts at a random
    spline, which left one-column fits with many samples beyond the data's range and a worse
    test likelihood than this start (docs/benchmarks.md, one column).

    Arguments:
        input_dim: The event size :math:`D`.
        count_bins: The number of spline bins :math:`K \ge 2`.
        bound: The half-width :math:`B` of the interval (Pyro's default is 3; 5 covers
            standardised data out to five robust standard deviations).
        order: ``"linear"`` (linear-rational) or ``"quadratic"`` (rational-quadratic).
        identity_init: Start at the identity (uniform bins, unit slopes); False keeps Pyro's
            random start.

    Example:
        >>> t = elementwise_spline(2)
        >>> x = torch.randn(4, 2)
        >>> torch.allclose(t(x), x, atol=1e-3)  # it starts at the identity
        True

    References:
        | Invertible Generative Modeling using Linear Rational Splines (Dolatabadi et al., 2020)
        | https://arxiv.org/abs/2001.05168
    """
    check_positive_int(input_dim, "input_dim")
    check_positive_int(count_bins, "count_bins", minimum=2)
    check_choice(order, _SPLINE_ORDERS, "order")
    layer = pyro_transforms.Spline(input_dim, count_bins=count_bins, bound=bound, order=order)
    if identity_init:
        with torch.no_grad():  # uniform bins, unit slopes (Pyro's minimum slope is 1e-3)
            layer.unnormalized_widths.zero_()
            layer.unnormalized_heights.zero_()
            layer.unnormalized_derivatives.fill_(math.log(math.expm1(1 - 1e-3)))
            if order == "linear":
                layer.unnormalized_lambdas.zero_()  # lambda = 1/2
    return PyroTransform(layer, input_dim)


def masked_spline_autoregressive(
    input_dim: int,
    hidden_dims: Sequence[int] | None = None,
    count_bins: int = 8,
    bound: float = 5.0,
    order: str = "linear",
    identity_init: bool = True,
) -> PyroTransform:
    r"""A neural spline flow layer that scores data in one pass (the layout of zuko's ``NSF``).

    Pyro's :func:`~pyro.distributions.transforms.spline_autoregressive`, used backwards: the
    map from data :math:`x` to noise :math:`z` is
    :math:`z_i = g_{\theta_i(x_{<i})}(x_i)`, :math:`g` a monotonic rational spline on
    :math:`[-B, B]` (the identity outside), so ``log_prob`` of data takes one MADE pass and
    sampling takes :math:`D`, as for :class:`~pyro_flows.transforms.MaskedAutoregressive`.

    Arguments:
        input_dim: The event size :math:`D \ge 2`.
        hidden_dims: Hidden layer sizes of the MADE network (Pyro's default ``[10D, 10D]``).
        count_bins: The number of spline bins :math:`K \ge 2`.
        bound: The half-width :math:`B` of the spline's interval (the identity outside).
            The default 5 covers standardised data (what :func:`~pyro_flows.training.fit`
            feeds a :class:`~pyro_flows.distributions.NormalizingFlow`) out to five robust
            standard deviations, which helps heavy tails (docs/benchmarks.md).
        order: ``"linear"`` (linear-rational, Dolatabadi et al., 2020; Pyro's default) or
            ``"quadratic"`` (rational-quadratic, Durkan et al., 2019, as zuko's ``NSF``).
        identity_init: Start every spline at the identity (uniform bins, unit slopes), as
            nflows does; False keeps the random start of Pyro's helper.

    Example:
        >>> t = masked_spline_autoregressive(3, hidden_dims=[16])
        >>> x = torch.randn(5, 3)
        >>> torch.allclose(t(t.inv(x).clone()), x, atol=1e-4)
        True

    References:
        | Neural Spline Flows (Durkan et al., 2019)
        | https://arxiv.org/abs/1906.04032
    """
    check_positive_int(input_dim, "input_dim", minimum=2)
    net = _spline_network(input_dim, None, hidden_dims, count_bins, order, identity_init)
    layer = pyro_transforms.SplineAutoregressive(
        input_dim, net, count_bins=count_bins, bound=bound, order=order
    )
    return PyroTransform(layer, input_dim, inverse=True)


def conditional_masked_spline_autoregressive(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] | None = None,
    count_bins: int = 8,
    bound: float = 5.0,
    order: str = "linear",
    identity_init: bool = True,
) -> ConditionalPyroTransform:
    """The conditional :func:`masked_spline_autoregressive`: the spline also sees a context.

    Wraps Pyro's :func:`~pyro.distributions.transforms.conditional_spline_autoregressive`
    backwards; ``.condition(c)`` gives a layer that scores data in one pass. ``input_dim`` may
    be 1: the spline of the one variable then takes its knots from the context alone.

    Example:
        >>> t = conditional_masked_spline_autoregressive(3, 2, hidden_dims=[16])
        >>> t.condition(torch.randn(2)).inv(torch.randn(5, 3)).shape
        torch.Size([5, 3])
    """
    check_positive_int(input_dim, "input_dim")
    check_positive_int(context_dim, "context_dim")
    net = _spline_network(input_dim, context_dim, hidden_dims, count_bins, order, identity_init)
    layer = pyro_transforms.ConditionalSplineAutoregressive(
        input_dim, net, count_bins=count_bins, bound=bound, order=order
    )
    return ConditionalPyroTransform(layer, input_dim, context_dim, inverse=True)
