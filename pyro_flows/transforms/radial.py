"""Radial flows (Rezende & Mohamed, 2015) with a closed-form inverse."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from .base import FlowTransform, HypernetConditional, dense_hypernet, precise_softplus

__all__ = [
    "ConditionalRadial",
    "ConditionedRadial",
    "Radial",
    "conditional_radial",
    "radial",
]


# -- shared math ----------------------------------------------------------------------------------
# Every function below takes z0 of shape (*pbatch, D) and alpha', beta' of shape (*pbatch,) that
# broadcast against the batch shape of the input, so the plain layer (pbatch = ()) and the
# conditioned layer (pbatch = context batch) run the very same code.


def _radial_coefficients(alpha_raw: Tensor, beta_raw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Returns :math:`\alpha > 0`, :math:`\beta > -\alpha` and :math:`\alpha + \beta > 0`.

    :math:`\alpha + \beta = \mathrm{softplus}(\beta')` is kept as such: the formulas below use it
    instead of the sum, which would cancel as :math:`\beta \to -\alpha`.
    """
    alpha = precise_softplus(alpha_raw)
    alpha_plus_beta = precise_softplus(beta_raw)
    return alpha, alpha_plus_beta - alpha, alpha_plus_beta


def _norm(d: Tensor) -> Tensor:
    r""":math:`\|d\|` over the last dimension, with gradient 0 (not NaN) at :math:`d = 0`.

    The norm is not differentiable at 0, but the layer is (its Jacobian at :math:`z_0` is
    :math:`(1 + \beta/\alpha) I`), and any finite subgradient there gives it. The `where`s only
    route around the ``0/0`` of :math:`\nabla \sqrt{\cdot}`; no epsilon is added to any value.
    """
    sq = (d * d).sum(-1)
    positive = sq > 0
    root = torch.sqrt(torch.where(positive, sq, torch.ones_like(sq)))
    return torch.where(positive, root, torch.zeros_like(sq))


def _radial_ladj(
    r: Tensor, alpha: Tensor, beta: Tensor, alpha_plus_beta: Tensor, dim: int
) -> Tensor:
    r""":math:`(D-1)\log(1 + \beta h) + \log(1 + \beta h + \beta h' r)`, accurate everywhere.

    With :math:`h = 1/(\alpha + r)`, the two arguments are :math:`1 + k_1`,
    :math:`k_1 = \beta/(\alpha + r)`, and :math:`1 + k_2`, :math:`k_2 = \alpha\beta/(\alpha+r)^2`.
    For :math:`k > -1/2`, ``log1p(k)`` is accurate; below, they are evaluated as
    :math:`(\alpha + \beta + r)/(\alpha + r)` and
    :math:`(\alpha(\alpha + \beta) + 2\alpha r + r^2)/(\alpha + r)^2`, ratios of sums of
    non-negative terms that keep full relative precision as :math:`\beta \to -\alpha`.
    """
    ar = alpha + r
    log_ar = torch.log(ar)
    k1 = beta / ar
    k2 = alpha * beta / (ar * ar)
    # The clamps keep the branches that `where` discards finite, so their gradients are zero.
    term1 = torch.where(
        k1 > -0.5, torch.log1p(k1.clamp(min=-0.5)), torch.log(alpha_plus_beta + r) - log_ar
    )
    term2 = torch.where(
        k2 > -0.5,
        torch.log1p(k2.clamp(min=-0.5)),
        torch.log(alpha * alpha_plus_beta + (2.0 * alpha + r) * r) - 2.0 * log_ar,
    )
    return (dim - 1) * term1 + term2


def _radial_forward(
    x: Tensor, z0: Tensor, alpha_raw: Tensor, beta_raw: Tensor
) -> tuple[Tensor, Tensor]:
    """``y = x + beta h(alpha, r) (x - z0)`` and its ``log|det J|``."""
    alpha, beta, alpha_plus_beta = _radial_coefficients(alpha_raw, beta_raw)
    d = x - z0
    r = _norm(d)
    # y - z0 = (1 + beta h) d = d (alpha + beta + r) / (alpha + r): no cancellation at beta ~ -alpha.
    y = z0 + d * ((alpha_plus_beta + r) / (alpha + r)).unsqueeze(-1)
    return y, _radial_ladj(r, alpha, beta, alpha_plus_beta, x.shape[-1])


def _radial_inverse(
    y: Tensor, z0: Tensor, alpha_raw: Tensor, beta_raw: Tensor
) -> tuple[Tensor, Tensor]:
    """``x = f^{-1}(y)`` in closed form, and the forward ``log|det J|`` at that ``x``."""
    alpha, beta, alpha_plus_beta = _radial_coefficients(alpha_raw, beta_raw)
    d = y - z0
    r_out = _norm(d)
    # r = |x - z0| is the positive root of r^2 + B r - alpha r' = 0, B = alpha + beta - r'. Both
    # forms below add positive terms only: 2 alpha r' / (B + sqrt) for B >= 0, (sqrt - B) / 2 for
    # B < 0. Writing |B| in both keeps the discarded branch finite (its denominator |B| + sqrt is
    # positive since alpha + beta > 0), so `where` passes clean gradients.
    big_b = alpha_plus_beta - r_out
    sum_ = big_b.abs() + torch.sqrt(big_b * big_b + 4.0 * alpha * r_out)
    r = torch.where(big_b >= 0, 2.0 * alpha * r_out / sum_, 0.5 * sum_)
    x = z0 + d * ((alpha + r) / (alpha_plus_beta + r)).unsqueeze(-1)
    return x, _radial_ladj(r, alpha, beta, alpha_plus_beta, y.shape[-1])


# -- plain layer ----------------------------------------------------------------------------------


class Radial(FlowTransform):
    r"""Radial flow layer, :math:`f(z) = z + \beta h(\alpha, r)(z - z_0)`.

    .. math:: r = \|z - z_0\|, \quad h(\alpha, r) = \frac{1}{\alpha + r}, \quad
              \alpha = \mathrm{softplus}(\alpha') > 0, \quad
              \beta = -\alpha + \mathrm{softplus}(\beta') > -\alpha,

    which makes the layer invertible, with

    .. math:: \log|\det J| = (D - 1) \log(1 + \beta h) + \log(1 + \beta h + \beta h' r),
              \qquad h' = -\frac{1}{(\alpha + r)^2}.

    The inverse of any :math:`y` is exact and in closed form, at the :math:`O(D)` cost of the
    forward pass: taking norms in :math:`y - z_0 = (1 + \beta h)(z - z_0)` gives
    :math:`r' = \|y - z_0\| = r (\alpha + \beta + r) / (\alpha + r)`, so :math:`r` is the positive
    root of :math:`r^2 + (\alpha + \beta - r') r - \alpha r' = 0` (computed with the
    cancellation-free form of the quadratic formula), and
    :math:`z - z_0 = (y - z_0)(\alpha + r)/(\alpha + r + \beta)`. Gradients flow through it.

    Arguments:
        input_dim: The size :math:`D` of the event.
        cache_size: 1 (default) to reuse the last ``(z, y)`` pair, 0 to never cache.

    Note:
        At :math:`z = z_0` the norm has no gradient; the layer is differentiable there, and
        the gradient of :math:`r` is taken as 0 (its only finite choice by symmetry), which gives
        the correct Jacobian :math:`(1 + \beta/\alpha) I`. No epsilon is added to any value.

    Example:
        >>> import torch
        >>> from pyro_flows.transforms.radial import radial
        >>> t = radial(3).double()
        >>> z = torch.randn(10, 3, dtype=torch.float64)
        >>> y = t(z)
        >>> t.log_abs_det_jacobian(z, y).shape
        torch.Size([10])
        >>> torch.allclose(t.inv(y.clone()), z, rtol=0.0, atol=1e-12)
        True

    References:
        | Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015)
        | https://arxiv.org/abs/1505.05770
    """

    def __init__(self, input_dim: int, cache_size: int = 1) -> None:
        super().__init__(input_dim, cache_size=cache_size)
        self.z0 = nn.Parameter(torch.empty(input_dim))
        self.alpha_raw = nn.Parameter(torch.empty(()))
        self.beta_raw = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Draws :math:`z_0, \alpha', \beta'` uniformly in :math:`[-1/\sqrt{D}, 1/\sqrt{D}]`."""
        bound = 1.0 / math.sqrt(self.input_dim)
        for p in (self.z0, self.alpha_raw, self.beta_raw):
            nn.init.uniform_(p, -bound, bound)

    @property
    def alpha(self) -> Tensor:
        r"""The scale :math:`\alpha > 0`."""
        return _radial_coefficients(self.alpha_raw, self.beta_raw)[0]

    @property
    def beta(self) -> Tensor:
        r"""The strength :math:`\beta > -\alpha`."""
        return _radial_coefficients(self.alpha_raw, self.beta_raw)[1]

    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _radial_forward(x, self.z0, self.alpha_raw, self.beta_raw)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return _radial_inverse(y, self.z0, self.alpha_raw, self.beta_raw)


# -- conditional layer ----------------------------------------------------------------------------


class ConditionedRadial(FlowTransform):
    r"""A radial layer whose parameters :math:`(z_0, \alpha', \beta')` are computed from a context.

    Built by :meth:`ConditionalRadial.condition`; it holds the hypernetwork (so its parameters
    are visible and a cached pass is invalidated when they change) and the context.

    Arguments:
        input_dim: The size :math:`D` of the event.
        hypernet: A module mapping a context of shape ``(*batch, C)`` to :math:`z_0` of shape
            ``(*batch, D)`` and :math:`\alpha', \beta'` of shape ``(*batch, 1)``.
        context: The context, of shape ``(C,)`` or ``(*batch, C)``; it broadcasts against the
            batch shape of the input.
        cache_size: 1 (default) to reuse the last ``(z, y)`` pair, 0 to never cache.
    """

    def __init__(
        self, input_dim: int, hypernet: nn.Module, context: Tensor, cache_size: int = 1
    ) -> None:
        super().__init__(input_dim, cache_size=cache_size)
        self.hypernet = hypernet
        self.context = context

    def _params(self) -> tuple[Tensor, Tensor, Tensor]:
        # The hypernetwork runs once per context row, not once per input row: the parameters,
        # of shape (*context_batch, ...), then broadcast against the input in the shared math.
        z0, alpha_raw, beta_raw = self.hypernet(self.context)
        return z0, alpha_raw.squeeze(-1), beta_raw.squeeze(-1)

    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _radial_forward(x, *self._params())

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return _radial_inverse(y, *self._params())


class ConditionalRadial(HypernetConditional):
    r"""Conditional radial layer: :math:`(z_0, \alpha', \beta')` are the output of a hypernetwork.

    ``.condition(context)`` returns a :class:`ConditionedRadial`, the layer of :class:`Radial`
    (same constraints, same closed-form inverse) with per-context parameters.

    Arguments:
        input_dim: The size :math:`D` of the event.
        context_dim: The size :math:`C` of the context.
        hypernet: A module mapping a context of shape ``(*batch, C)`` to :math:`z_0` of shape
            ``(*batch, D)`` and :math:`\alpha', \beta'` of shape ``(*batch, 1)``, e.g.
            ``DenseNN(C, hidden_dims, param_dims=[D, 1, 1])``.

    Example:
        >>> import torch
        >>> from pyro_flows.transforms.radial import conditional_radial
        >>> t = conditional_radial(2, 3).double()
        >>> context = torch.randn(5, 3, dtype=torch.float64)
        >>> z = torch.randn(5, 2, dtype=torch.float64)
        >>> tc = t.condition(context)
        >>> torch.allclose(tc.inv(tc(z).clone()), z, rtol=0.0, atol=1e-12)
        True

    References:
        | Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015)
        | https://arxiv.org/abs/1505.05770
    """

    conditioned = ConditionedRadial


# -- helpers --------------------------------------------------------------------------------------


def radial(input_dim: int, **kwargs: Any) -> Radial:
    """Builds a :class:`Radial` layer; keyword arguments go to its constructor."""
    return Radial(check_positive_int(input_dim, "input_dim"), **kwargs)


def conditional_radial(
    input_dim: int, context_dim: int, hidden_dims: Sequence[int] | None = None, **kwargs: Any
) -> ConditionalRadial:
    """Builds a :class:`ConditionalRadial` with a :class:`~pyro.nn.DenseNN` hypernetwork.

    Arguments:
        input_dim: The size :math:`D` of the event.
        context_dim: The size :math:`C` of the context.
        hidden_dims: The hidden layer sizes of the hypernetwork; defaults to
            ``[10 * D, 10 * D]``, as in Pyro.
        **kwargs: Further arguments of :class:`~pyro.nn.DenseNN`, e.g. ``nonlinearity``.
    """
    check_positive_int(input_dim, "input_dim")
    hypernet = dense_hypernet(
        context_dim, hidden_dims, [input_dim, 1, 1], 10 * input_dim, **kwargs
    )
    return ConditionalRadial(input_dim, context_dim, hypernet)
