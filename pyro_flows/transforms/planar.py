"""Planar flows (Rezende & Mohamed, 2015) with an inverse that works on any input."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from .base import FlowTransform, HypernetConditional, dense_hypernet, precise_softplus

__all__ = [
    "ConditionalPlanar",
    "ConditionedPlanar",
    "Planar",
    "conditional_planar",
    "planar",
]


# -- shared math ----------------------------------------------------------------------------------
# Every function below takes parameters u, w of shape (*pbatch, D) and b of shape (*pbatch,) that
# broadcast against the batch shape of the input, so the plain layer (pbatch = ()) and the
# conditioned layer (pbatch = context batch) run the very same code.


def _sech2(a: Tensor) -> Tensor:
    """``1 / cosh(a)^2`` without cancellation (``1 - tanh^2``) nor overflow (``cosh``)."""
    e = torch.exp(-2.0 * a.abs())
    return 4.0 * e / (1.0 + e) ** 2


def _planar_coefficients(u: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Returns :math:`\hat u`, :math:`c = w^\top \hat u` and :math:`s = 1 + c > 0`.

    With :math:`a = w^\top u`, :math:`\hat u = u + (\mathrm{softplus}(-a) - 1)\, w/\|w\|^2` (since
    :math:`m(a) - a = \mathrm{softplus}(a) - 1 - a = \mathrm{softplus}(-a) - 1`, free of
    cancellation for large :math:`a`), and :math:`w^\top \hat u = \mathrm{softplus}(a) - 1`
    exactly. At :math:`w = 0` the layer is the translation :math:`z + u \tanh b`, invertible for
    any :math:`u`, so :math:`\hat u = u` is used there; no epsilon is added anywhere.
    """
    wu = (w * u).sum(-1)
    ww = (w * w).sum(-1)
    nonzero = ww > 0
    # Safe denominator: the `where` keeps the w = 0 branch free of 0/0 (values *and* gradients).
    ww_safe = torch.where(nonzero, ww, torch.ones_like(ww))
    shift = torch.where(nonzero, (precise_softplus(-wu) - 1.0) / ww_safe, torch.zeros_like(ww))
    u_hat = u + shift.unsqueeze(-1) * w
    s = torch.where(nonzero, precise_softplus(wu), torch.ones_like(wu))
    return u_hat, s - 1.0, s


def _planar_ladj(a: Tensor, s: Tensor) -> Tensor:
    r""":math:`\log(1 + c\,\mathrm{sech}^2 a)` with :math:`c = s - 1`, accurate everywhere.

    Where :math:`k = c\,\mathrm{sech}^2 a > -1/2`, ``log1p(k)`` is accurate; below, the argument is
    evaluated as :math:`\tanh^2 a + s\,\mathrm{sech}^2 a`, a sum of non-negative terms, which keeps
    full relative precision even as :math:`c \to -1` and :math:`a \to 0`.
    """
    q = _sech2(a)
    t = torch.tanh(a)
    k = (s - 1.0) * q
    near = k > -0.5
    # The clamp keeps the branch that `where` discards finite, so its gradient is a clean zero.
    return torch.where(near, torch.log1p(k.clamp(min=-0.5)), torch.log(t * t + s * q))


def _planar_forward(x: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``y = x + u_hat tanh(w^T x + b)`` and its ``log|det J|``."""
    u_hat, _, s = _planar_coefficients(u, w)
    a = (w * x).sum(-1) + b
    y = x + u_hat * torch.tanh(a).unsqueeze(-1)
    return y, _planar_ladj(a, s)


def _max_iterations(dtype: torch.dtype) -> int:
    # Bisection alone needs at most ~mantissa bits + a few steps to close the bracket to an ulp;
    # safeguarded Newton at most doubles that. Typical inputs converge in 4 to 8 steps.
    return 4 * round(-math.log2(torch.finfo(dtype).eps)) + 16


@torch.no_grad()
def _solve_planar(wy: Tensor, c: Tensor, b: Tensor, s: Tensor) -> Tensor:
    r"""Solves :math:`\alpha + c \tanh(\alpha + b) = w^\top y` for :math:`\alpha`, elementwise.

    The left side is increasing (its derivative :math:`\tanh^2 + s\,\mathrm{sech}^2 \ge \min(1, s)`
    is positive), and the root lies in :math:`[w^\top y - |c|, w^\top y + |c|]`. Safeguarded Newton
    (Numerical Recipes' ``rtsafe``): a Newton step is taken when it stays strictly inside the
    current bracket and at least halves the step before last, otherwise the bracket is bisected.
    An element stops once its residual is at the rounding level of its evaluation, or once its
    bracket is a few ulps wide. Non-finite inputs are passed through (they give non-finite output).
    """
    wy, c, b, s = torch.broadcast_tensors(wy, c, b, s)
    eps = torch.finfo(wy.dtype).eps
    width = c.abs() * (1.0 + 4.0 * eps) + 4.0 * eps * wy.abs()
    lo, hi = wy - width, wy + width
    # Starting point: one fixed-point step from wy, which is exact as |c| -> 0.
    alpha = torch.minimum(torch.maximum(wy - c * torch.tanh(wy + b), lo), hi)
    step_before = hi - lo
    step = step_before
    done = ~(torch.isfinite(wy) & torch.isfinite(c) & torch.isfinite(b))
    for _ in range(_max_iterations(wy.dtype)):
        a = alpha + b
        t = torch.tanh(a)
        q = _sech2(a)
        g = alpha + c * t - wy
        dg = t * t + s * q
        # Rounding error of evaluating g: the terms, and the argument a = alpha + b of tanh.
        noise = eps * (alpha.abs() + wy.abs() + c.abs() * (1.0 + q * (alpha.abs() + b.abs())))
        converged = (g.abs() <= 4.0 * noise) | (hi - lo <= 4.0 * eps * (lo.abs() + hi.abs()))
        done = done | converged
        if bool(done.all()):
            return alpha
        hi = torch.where(g > 0, alpha, hi)
        lo = torch.where(g < 0, alpha, lo)
        newton = alpha - g / dg
        bisect = ~((newton > lo) & (newton < hi)) | (2.0 * g.abs() > (step_before * dg).abs())
        new = torch.where(bisect, 0.5 * (lo + hi), newton)
        step_before, step = step, new - alpha
        alpha = torch.where(done, alpha, new)
    raise RuntimeError(
        "planar inverse: the safeguarded Newton solver did not converge for "
        f"{int((~done).sum())} element(s); this is a bug, please report it"
    )


def _planar_inverse(y: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``x = f^{-1}(y)`` for any ``y``, and the forward ``log|det J|`` at that ``x``."""
    u_hat, c, s = _planar_coefficients(u, w)
    wy = (w * y).sum(-1)
    root = _solve_planar(wy.detach(), c.detach(), b.detach(), s.detach())
    # One Newton step from the detached root, with gradients: its value is the root (to rounding)
    # and its derivative is the implicit-function one, -dg/dg_alpha, for y and the parameters.
    a = root + b
    t = torch.tanh(a)
    dg = t * t + s * _sech2(a)
    alpha = root - (root + c * t - wy) / dg
    a = alpha + b
    x = y - u_hat * torch.tanh(a).unsqueeze(-1)
    return x, _planar_ladj(a, s)


# -- plain layer ----------------------------------------------------------------------------------


class Planar(FlowTransform):
    r"""Planar flow layer, :math:`f(z) = z + \hat u \tanh(w^\top z + b)`.

    .. math:: \hat u = u + \big(m(w^\top u) - w^\top u\big) \frac{w}{\|w\|^2}, \qquad
              m(a) = -1 + \log(1 + e^a),

    so that :math:`w^\top \hat u = m(w^\top u) > -1` and the layer is invertible, with

    .. math:: \log|\det J| = \log\big|1 + (1 - \tanh^2(w^\top z + b))\, w^\top \hat u\big|.

    The inverse of any :math:`y` (not only of cached outputs) is computed numerically. With
    :math:`\alpha = w^\top z`, applying :math:`w^\top` to :math:`y = f(z)` gives the scalar
    equation :math:`\alpha + c \tanh(\alpha + b) = w^\top y` with :math:`c = w^\top \hat u > -1`,
    whose left side increases strictly and whose root lies in
    :math:`[w^\top y - |c|, w^\top y + |c|]`. It is solved under ``torch.no_grad()`` by Newton's
    method kept inside a shrinking bracket (bisection when a step would leave it), until the
    residual is at the rounding level: a few iterations of :math:`O(1)` elementwise work each
    (typically 4 to 8, never more than about 4 times the mantissa bits, after which a
    ``RuntimeError`` is raised rather than an inaccurate answer returned), on top of the
    :math:`O(D)` products :math:`w^\top y` and :math:`\hat u \tanh(\cdot)`. One last Newton step
    taken with gradients makes the result differentiable with the exact implicit-function
    gradients, and :math:`z = y - \hat u \tanh(\alpha + b)`. In float64 the round trip is exact to
    about :math:`10^{-15}` relative (the conditioning worsens as :math:`c \to -1`, where the layer
    itself approaches a non-invertible map).

    Arguments:
        input_dim: The size :math:`D` of the event.
        cache_size: 1 (default) to reuse the last ``(z, y)`` pair, 0 to never cache.

    Note:
        :math:`w = 0` makes the layer the translation :math:`z + u \tanh b`; there
        :math:`\hat u = u` is used, without any epsilon that would bias other values.
        ``reset_parameters`` draws :math:`w` from a continuous law, so :math:`\|w\| > 0`.

    Example:
        >>> import torch
        >>> from pyro_flows.transforms.planar import planar
        >>> t = planar(3).double()
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
        self.u = nn.Parameter(torch.empty(input_dim))
        self.w = nn.Parameter(torch.empty(input_dim))
        self.b = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Draws :math:`u, w, b` uniformly in :math:`[-1/\sqrt{D}, 1/\sqrt{D}]`."""
        bound = 1.0 / math.sqrt(self.input_dim)
        for p in (self.u, self.w, self.b):
            nn.init.uniform_(p, -bound, bound)

    @property
    def u_hat(self) -> Tensor:
        r"""The constrained vector :math:`\hat u` actually used by the layer."""
        return _planar_coefficients(self.u, self.w)[0]

    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _planar_forward(x, self.u, self.w, self.b)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return _planar_inverse(y, self.u, self.w, self.b)


# -- conditional layer ----------------------------------------------------------------------------


class ConditionedPlanar(FlowTransform):
    r"""A planar layer whose parameters :math:`(u, w, b)` are computed from a context.

    Built by :meth:`ConditionalPlanar.condition`; it holds the hypernetwork (so its parameters
    are visible and a cached pass is invalidated when they change) and the context.

    Arguments:
        input_dim: The size :math:`D` of the event.
        hypernet: A module mapping a context of shape ``(*batch, C)`` to
            :math:`u, w` of shape ``(*batch, D)`` and :math:`b` of shape ``(*batch, 1)``.
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
        # of shape (*context_batch, D), then broadcast against the input in the shared math.
        u, w, b = self.hypernet(self.context)
        return u, w, b.squeeze(-1)

    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _planar_forward(x, *self._params())

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return _planar_inverse(y, *self._params())


class ConditionalPlanar(HypernetConditional):
    r"""Conditional planar layer: :math:`(u, w, b)` are the output of a hypernetwork.

    ``.condition(context)`` returns a :class:`ConditionedPlanar`, the layer of :class:`Planar`
    (same constraint on :math:`\hat u`, same exact inverse) with per-context parameters.

    Arguments:
        input_dim: The size :math:`D` of the event.
        context_dim: The size :math:`C` of the context.
        hypernet: A module mapping a context of shape ``(*batch, C)`` to :math:`u, w` of shape
            ``(*batch, D)`` and :math:`b` of shape ``(*batch, 1)``, e.g.
            ``DenseNN(C, hidden_dims, param_dims=[D, D, 1])``.

    Example:
        >>> import torch
        >>> from pyro_flows.transforms.planar import conditional_planar
        >>> t = conditional_planar(2, 3).double()
        >>> context = torch.randn(5, 3, dtype=torch.float64)
        >>> z = torch.randn(5, 2, dtype=torch.float64)
        >>> tc = t.condition(context)
        >>> torch.allclose(tc.inv(tc(z).clone()), z, rtol=0.0, atol=1e-12)
        True

    References:
        | Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015)
        | https://arxiv.org/abs/1505.05770
    """

    conditioned = ConditionedPlanar


# -- helpers --------------------------------------------------------------------------------------


def planar(input_dim: int, **kwargs: Any) -> Planar:
    """Builds a :class:`Planar` layer; keyword arguments go to its constructor."""
    return Planar(check_positive_int(input_dim, "input_dim"), **kwargs)


def conditional_planar(
    input_dim: int, context_dim: int, hidden_dims: Sequence[int] | None = None, **kwargs: Any
) -> ConditionalPlanar:
    """Builds a :class:`ConditionalPlanar` with a :class:`~pyro.nn.DenseNN` hypernetwork.

    Arguments:
        input_dim: The size :math:`D` of the event.
        context_dim: The size :math:`C` of the context.
        hidden_dims: The hidden layer sizes of the hypernetwork; defaults to
            ``[10 * D, 10 * D]``, as in Pyro.
        **kwargs: Further arguments of :class:`~pyro.nn.DenseNN`, e.g. ``nonlinearity``.
    """
    check_positive_int(input_dim, "input_dim")
    hypernet = dense_hypernet(
        context_dim, hidden_dims, [input_dim, input_dim, 1], 10 * input_dim, **kwargs
    )
    return ConditionalPlanar(input_dim, context_dim, hypernet)
