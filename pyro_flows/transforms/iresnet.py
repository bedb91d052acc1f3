"""Invertible residual networks and residual flows: fixed-point inverse, power-series ladj."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions import constraints

from .._validation import check_choice, check_hidden_dims, check_last_dim, check_positive_int
from ..nn.dense import default_hidden_dims
from ..nn.lipschitz import Linearization, LipschitzConvNet, LipschitzMLP, LipschitzNetwork
from .actnorm import ActNorm
from .base import Compose, ConditionalCompose, ConditionalFlowTransform, FlowTransform
from .cache import Deferred

__all__ = [
    "BLOCKS_PER_LAYER",
    "EXACT_MAX_DIM",
    "LIPSWISH_BETA",
    "LOGDET_ESTIMATORS",
    "ConditionalInvertibleResNet",
    "ConvInvertibleResNet",
    "FixedPointInfo",
    "InvertibleResNet",
    "conditional_iresnet",
    "conditional_iresnet_layer",
    "conditional_residual_flow",
    "conditional_residual_flow_layer",
    "conv_iresnet",
    "default_estimator",
    "iresnet",
    "iresnet_layer",
    "residual_flow",
    "residual_flow_layer",
]

#: The choices of ``estimator`` for :math:`\log|\det(I + J_g)|`.
LOGDET_ESTIMATORS: tuple[str, ...] = ("exact", "series", "russian_roulette")
#: The helpers' initial slope :math:`\beta` of LipSwish, :math:`h\,\mathrm{sigmoid}(\beta h)/1.1`
#: (Residual Flows start at 1): with 5 the 2-D Residual Flow fitted 8 gaussians to 0.11 nats
#: instead of 0.57 (docs/benchmarks.md, "Residual flows").
LIPSWISH_BETA: float = 5.0
#: Up to this event size the helpers train with the exact log-determinant by default
#: (:func:`default_estimator`).
EXACT_MAX_DIM: int = 4
_PROBES = ("normal", "rademacher")
_ON_NONCONVERGENCE = ("warn", "raise", "ignore")


@dataclass(frozen=True)
class FixedPointInfo:
    r"""How the last fixed-point solve of an :class:`InvertibleResNet` went.

    Arguments:
        iterations: The number of iterations taken.
        error: The largest last step :math:`\|x_{k} - x_{k-1}\| / (1 + \|y\|)` over the batch.
        converged: Whether every row met the tolerance.
    """

    iterations: int
    error: float
    converged: bool


@dataclass(frozen=True)
class _Options:
    """The validated options of a residual block (shared by plain and conditional layers)."""

    estimator: str = "series"
    eval_estimator: str | None = "exact"
    n_terms: int = 5
    n_samples: int = 1
    n_exact_terms: int = 2
    geometric_p: float = 0.5
    neumann_gradient: bool = True
    probe: str = "normal"
    inverse: bool = False
    tol: float | None = None
    max_iterations: int = 1000
    on_nonconvergence: str = "warn"

    def __post_init__(self) -> None:
        check_choice(self.estimator, LOGDET_ESTIMATORS, "estimator")
        if self.eval_estimator is not None:
            check_choice(self.eval_estimator, LOGDET_ESTIMATORS, "eval_estimator")
        check_positive_int(self.n_terms, "n_terms")
        check_positive_int(self.n_samples, "n_samples")
        check_positive_int(self.n_exact_terms, "n_exact_terms", minimum=0)
        p = self.geometric_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
            raise ValueError(f"geometric_p must be in (0, 1), got {p!r}")
        if not isinstance(self.neumann_gradient, bool):
            raise ValueError(
                f"neumann_gradient must be True or False, got {self.neumann_gradient!r}"
            )
        check_choice(self.probe, _PROBES, "probe")
        if not isinstance(self.inverse, bool):
            raise ValueError(f"inverse must be True or False, got {self.inverse!r}")
        tol = self.tol
        if tol is not None and (
            isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1
        ):
            raise ValueError(f"tol must be a number in (0, 1) or None, got {tol!r}")
        check_positive_int(self.max_iterations, "max_iterations")
        check_choice(self.on_nonconvergence, _ON_NONCONVERGENCE, "on_nonconvergence")


def _check_network(network: LipschitzNetwork, event_shape: tuple[int, ...]) -> None:
    if not isinstance(network, LipschitzNetwork):
        raise TypeError(f"network must be a LipschitzNetwork, got {type(network).__name__}")
    if tuple(network.event_shape) != tuple(event_shape):
        raise ValueError(
            f"network maps events of shape {network.event_shape}, expected {tuple(event_shape)}"
        )
    c = network.lipschitz
    if not 0 < c < 1:
        raise ValueError(f"lipschitz must be in (0, 1) for an invertible block, got {c!r}")


# -- log|det(I + J_g)| ------------------------------------------------------------------------


def _dot(a: Tensor, b: Tensor, event_dim: int) -> Tensor:
    return (a * b).flatten(-event_dim).sum(-1)


def _probes(lin: Linearization, n: int, kind: str, like: Tensor) -> Tensor:
    shape = (n, *lin.batch_shape, *lin.event_shape)
    opts = {"dtype": like.dtype, "device": like.device}
    if kind == "normal":
        return torch.randn(shape, **opts)
    return torch.randint(0, 2, shape, device=like.device).to(like.dtype) * 2 - 1


def _logdet_exact(lin: Linearization) -> Tensor:
    jac = lin.matrix()
    eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
    return torch.linalg.slogdet(eye + jac).logabsdet


def _logdet_series(lin: Linearization, opts: _Options, like: Tensor) -> Tensor:
    v = _probes(lin, opts.n_samples, opts.probe, like)
    event_dim = len(lin.event_shape)
    w, total = v, 0.0
    for k in range(1, opts.n_terms + 1):
        w = lin.vjp(w)  # v^T J^k
        total = total + ((-1) ** (k + 1) / k) * _dot(w, v, event_dim)
    return total.mean(0)


def _logdet_roulette(lin: Linearization, opts: _Options, like: Tensor) -> Tensor:
    v = _probes(lin, opts.n_samples, opts.probe, like)
    event_dim = len(lin.event_shape)
    # n = n0 + N, N ~ Geometric(p) on {0, 1, ...}, one draw per call shared by the batch (as in
    # Residual Flows): P(n >= k) = 1 for k <= n0, (1 - p)^(k - n0) after.
    q = 1.0 - opts.geometric_p
    uniform = float(torch.rand((), dtype=torch.float64, device=like.device))
    n = opts.n_exact_terms + int(math.floor(math.log(max(uniform, 1e-300)) / math.log(q)))
    neumann = opts.neumann_gradient and torch.is_grad_enabled()
    with torch.no_grad() if neumann else contextlib.nullcontext():
        w, nu = v, v  # nu: the k = 0 term of the Neumann series of (I + J)^{-1}
        value = torch.zeros_like(_dot(v, v, event_dim))
        for k in range(1, n + 1):
            w = lin.vjp(w)  # v^T J^k
            weight = 1.0 if k <= opts.n_exact_terms else q ** (opts.n_exact_terms - k)
            value = value + ((-1) ** (k + 1) * weight / k) * _dot(w, v, event_dim)
            if neumann:
                nu = nu + ((-1) ** k * weight) * w
        value = value.mean(0)
    if not neumann:
        return value
    # d/dθ log det(I + J) = tr((I + J)^{-1} dJ/dθ) ≈ nu^T (dJ/dθ) v: one vjp with a graph.
    surrogate = _dot(lin.vjp(nu), v, event_dim).mean(0)
    return value + (surrogate - surrogate.detach())


# -- the block --------------------------------------------------------------------------------


class _ResidualBlock(FlowTransform):
    """Shared machinery of :class:`InvertibleResNet` and :class:`ConvInvertibleResNet`."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        network: LipschitzNetwork,
        *,
        estimator: str = "series",
        eval_estimator: str | None = "exact",
        n_terms: int = 5,
        n_samples: int = 1,
        n_exact_terms: int = 2,
        geometric_p: float = 0.5,
        neumann_gradient: bool = True,
        probe: str = "normal",
        inverse: bool = False,
        tol: float | None = None,
        max_iterations: int = 1000,
        on_nonconvergence: str = "warn",
        context: Tensor | None = None,
        cache_size: int = 1,
        _options: _Options | None = None,
    ) -> None:
        super().__init__(math.prod(event_shape), cache_size=cache_size)
        _check_network(network, event_shape)
        if _options is None:
            _options = _Options(
                estimator=estimator,
                eval_estimator=eval_estimator,
                n_terms=n_terms,
                n_samples=n_samples,
                n_exact_terms=n_exact_terms,
                geometric_p=geometric_p,
                neumann_gradient=neumann_gradient,
                probe=probe,
                inverse=inverse,
                tol=tol,
                max_iterations=max_iterations,
                on_nonconvergence=on_nonconvergence,
            )
        self.event_shape = tuple(event_shape)
        self.network = network
        self.options = _options
        self.context = context
        self.last_solve: FixedPointInfo | None = None

    # -- pieces ----------------------------------------------------------------------------------
    @property
    def current_estimator(self) -> str:
        """The estimator in use now: ``estimator`` in train mode, ``eval_estimator`` in eval."""
        opts = self.options
        if not self.training and opts.eval_estimator is not None:
            return opts.eval_estimator
        return opts.estimator

    def _check(self, x: Tensor, name: str) -> None:
        check_last_dim(x, self.event_shape[-1], name)

    def _logdet(self, lin: Linearization, estimator: str, like: Tensor) -> Tensor:
        if estimator == "exact":
            return _logdet_exact(lin)
        if estimator == "series":
            return _logdet_series(lin, self.options, like)
        return _logdet_roulette(lin, self.options, like)

    def _norm(self, t: Tensor) -> Tensor:
        return torch.linalg.vector_norm(t.flatten(-len(self.event_shape)), dim=-1)

    def _residual(self, u: Tensor, sign: float) -> tuple[Tensor, Callable[[], Tensor]]:
        """``u + g(u)`` and a function giving ``sign * log|det(I + J_g(u))|``."""
        estimator = self.current_estimator
        gu, lin = self.network.linearize(u, self.context)
        return u + gu, lambda: sign * self._logdet(lin, estimator, gu)

    def _solved(self, w: Tensor, sign: float) -> tuple[Tensor, Callable[[], Tensor]]:
        """``u`` with ``u + g(u) = w`` and a function giving ``sign * log|det(I + J_g(u))|``."""
        estimator = self.current_estimator
        u = self._fixed_point(w)

        def logdet() -> Tensor:
            _, lin = self.network.linearize(u, self.context)
            return sign * self._logdet(lin, estimator, u)

        return u, logdet

    def _report(self, what: str, iterations: int, error: float, tol: float) -> None:
        mode = self.options.on_nonconvergence
        if mode == "ignore":
            return
        msg = (
            f"{type(self).__name__}: the {what} did not converge in {iterations} iterations "
            f"(last relative step {error:.3g} > tol {tol:.3g}); raise max_iterations or tol, "
            "or lower the network's lipschitz"
        )
        if mode == "raise":
            raise RuntimeError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)

    def _tol(self, dtype: torch.dtype) -> float:
        return self.options.tol if self.options.tol is not None else 256 * torch.finfo(dtype).eps

    def _fixed_point(self, w: Tensor) -> Tensor:
        r"""Solves :math:`u + g(u) = w` by Banach iteration :math:`u \leftarrow w - g(u)`."""
        g = self.network.function(self.context)
        tol = self._tol(w.dtype)
        max_it = self.options.max_iterations
        with torch.no_grad():
            target = w.detach()
            scale = 1.0 + self._norm(target)
            u = target
            converged, k = False, 0
            while not converged and k < max_it:
                k += 1
                u_new = target - g(u)
                rel = self._norm(u_new - u) / scale
                u = u_new
                # NaN rows (non-finite w) compare False: they never hold the loop.
                converged = not bool((rel > tol).any())
            finite = torch.isfinite(rel)
            error = (
                float(torch.where(finite, rel, torch.zeros_like(rel)).max())
                if rel.numel()
                else 0.0
            )
        self.last_solve = FixedPointInfo(k, error, converged)
        if not converged:
            self._report("fixed-point inverse", k, error, tol)
        # One more step, with a graph: its value is the fixed point (to the tolerance); the hook
        # turns its gradient into the implicit one, (I + J_g)^{-T} grad.
        out = w - g(u)
        if out.requires_grad:
            fixed = u.detach()
            out.register_hook(lambda grad: self._adjoint(fixed, grad))
        return out

    def _adjoint(self, u: Tensor, grad: Tensor) -> Tensor:
        r"""Solves :math:`a + J_g(u)^\top a = \text{grad}` by the same Banach iteration."""
        tol = self._tol(grad.dtype)
        with torch.no_grad():
            _, lin = self.network.linearize(u, self.context)
            scale = self._norm(grad)
            a = grad
            converged, k = False, 0
            while not converged and k < self.options.max_iterations:
                k += 1
                a_new = grad - lin.vjp(a)
                rel = self._norm(a_new - a)
                a = a_new
                converged = not bool((rel > tol * scale).any())
        if not converged:
            error = float((rel / scale.clamp_min(torch.finfo(rel.dtype).tiny)).max())
            self._report("implicit gradient of the inverse", k, error, tol)
        return a

    # -- the contract ----------------------------------------------------------------------------
    def _forward(self, x: Tensor) -> tuple[Tensor, Callable[[], Tensor]]:
        if self.options.inverse:
            return self._solved(x, -1.0)
        return self._residual(x, 1.0)

    def _backward(self, y: Tensor) -> tuple[Tensor, Callable[[], Tensor]]:
        if self.options.inverse:
            return self._residual(y, -1.0)
        return self._solved(y, 1.0)

    # The log-determinant (a series estimate) is deferred: a sampling pass never pays for it.
    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Deferred]:
        y, ladj = self._forward(x)
        return y, Deferred(ladj)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Deferred]:
        x, ladj = self._backward(y)
        return x, Deferred(ladj)

    def _ladj(self, x: Tensor, y: Tensor) -> Tensor:
        # From the side where the residual map is evaluated: never a fixed-point solve.
        estimator = self.current_estimator
        if self.options.inverse:
            gy, lin = self.network.linearize(y, self.context)
            return -self._logdet(lin, estimator, gy)
        gx, lin = self.network.linearize(x, self.context)
        return self._logdet(lin, estimator, gx)

    def _call(self, x: Tensor) -> Tensor:
        self._check(x, "x")
        y, ladj = self._call_and_ladj(x)
        self._remember(x, y, ladj)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        self._check(y, "y")
        x, ladj = self._inverse_and_ladj(y)
        self._remember(x, y, ladj)
        return x

    def extra_repr(self) -> str:  # noqa: D102
        o = self.options
        return (
            f"event_shape={self.event_shape}, estimator={o.estimator!r}, "
            f"eval_estimator={o.eval_estimator!r}, inverse={o.inverse}"
        )


class InvertibleResNet(_ResidualBlock):
    r"""An invertible residual block, :math:`y = x + g(x)` with :math:`\mathrm{Lip}(g) < 1`.

    :math:`g` is a :class:`~pyro_flows.nn.LipschitzMLP` whose layers are spectrally normalised
    (rescaled only when the power-iteration estimate of :math:`\|W\|_2` exceeds the coefficient
    :math:`c < 1`), with 1-Lipschitz smooth activations, so :math:`\mathrm{Lip}(g) \le c` and
    the block is a bi-Lipschitz bijection of :math:`\mathbb{R}^D` with

    .. math:: \log|\det J| = \log\det(I + J_g(x))
              = \sum_{k \ge 1} \frac{(-1)^{k+1}}{k} \operatorname{tr}(J_g(x)^k),

    estimated by ``estimator``:

    - ``"exact"``: :math:`J_g` from :math:`D` batched Jacobian-vector products and a
      log-determinant, :math:`O(D)` passes of :math:`g` plus :math:`O(D^3)`; exact and
      deterministic (tests, evaluation, small :math:`D`).
    - ``"series"``: the first ``n_terms`` terms, each trace by Hutchinson's estimator
      :math:`\operatorname{tr}(A) \approx v^\top A v` with ``n_samples`` probes (i-ResNet):
      ``n_terms`` vector-Jacobian products; biased by the truncation, the bias falling like
      :math:`c^{n}/n`; gradients by back-propagating through the series.
    - ``"russian_roulette"``: the unbiased estimator of Residual Flows: each call draws
      :math:`n = n_0 + N`, :math:`N \sim \mathrm{Geometric}(p)`, shared by the batch (the
      probes are per row), and term :math:`k` is divided by :math:`P(n \ge k)`; the expected
      cost is :math:`n_0 + (1 - p)/p` vector-Jacobian products. With ``neumann_gradient`` the series is evaluated
      without a graph and the gradient comes from the unbiased Neumann series
      :math:`\nabla \log\det(I + J_g) = \operatorname{tr}((I + J_g)^{-1} \nabla J_g) \approx
      \big(\sum_{k=0}^{n} \frac{(-1)^k}{P(n \ge k)} v^\top J_g^k\big) \nabla J_g\, v`: one
      vector-Jacobian product with a graph, so memory does not grow with :math:`n`.

    In ``eval()`` mode ``eval_estimator`` (default ``"exact"``) is used instead, so that
    ``TransformedDistribution.log_prob`` is deterministic and exact for evaluation. The
    log-determinant is computed only when asked for (sampling alone does not pay for it).

    The inverse of any :math:`y` (batched, not only cached outputs) is the fixed point of the
    contraction :math:`x \leftarrow y - g(x)`, from :math:`x_0 = y`, whose error falls like
    :math:`\mathrm{Lip}(g)^k`. It stops once every row's step
    :math:`\|x_k - x_{k-1}\| \le \text{tol}\,(1 + \|y\|)`, which bounds the error by
    :math:`\frac{c}{1 - c}\,\text{tol}\,(1 + \|y\|)`, (default ``tol`` = 256 machine epsilons:
    about :math:`10^{-13}` relative in float64), or after ``max_iterations`` passes of
    :math:`g`; typically :math:`\log(\text{tol}) / \log \mathrm{Lip}(g)` passes, a few dozen to
    a few hundred. Non-convergence warns (``on_nonconvergence="warn"``), raises a
    ``RuntimeError`` (``"raise"``) or is only recorded (``"ignore"``); ``last_solve`` holds a
    :class:`FixedPointInfo` of the last solve. Gradients through the inverse are the implicit
    ones, :math:`\partial x/\partial\theta = -(I + J_g)^{-1} \partial g/\partial\theta`, from the
    same iteration on the transposed Jacobian in the backward pass (no graph of the
    iterations is kept; second derivatives through the inverse are not supported).

    With ``inverse=True`` the layer is the inverse map: its forward pass solves the fixed point
    and its inverse is the one-pass :math:`x + g(x)`, so that
    ``TransformedDistribution.log_prob`` of data is cheap: the choice for density estimation
    (as MAF is to IAF); ``inverse=False`` samples and scores its own samples in one pass.

    Arguments:
        input_dim: The event size :math:`D`.
        network: The residual branch :math:`g`, a :class:`~pyro_flows.nn.LipschitzMLP` with
            coefficient in :math:`(0, 1)` (with ``context_dim`` when ``context`` is given).
        estimator: ``"exact"``, ``"series"`` or ``"russian_roulette"`` (train mode).
        eval_estimator: The estimator in eval mode; None uses ``estimator``.
        n_terms: The number of terms of ``"series"``.
        n_samples: The number of Hutchinson probes per row (``"series"``,
            ``"russian_roulette"``).
        n_exact_terms: The terms :math:`n_0` always computed by ``"russian_roulette"``.
        geometric_p: The parameter :math:`p` of the roulette's geometric law.
        neumann_gradient: Whether ``"russian_roulette"`` uses the memory-saving Neumann
            gradient (else it back-propagates through the series).
        probe: ``"normal"`` or ``"rademacher"`` Hutchinson probes.
        inverse: Whether the layer is the inverse map (see above).
        tol: The relative tolerance of the fixed-point iterations (None: 256 epsilons of the
            dtype).
        max_iterations: The cap on fixed-point iterations.
        on_nonconvergence: ``"warn"``, ``"raise"`` or ``"ignore"``.
        context: A context passed to ``network`` (set by
            :meth:`ConditionalInvertibleResNet.condition`).
        cache_size: 1 (default) to reuse the last ``(x, y)`` pair, 0 to never cache.

    Example:
        >>> t = iresnet(3, hidden_dims=[16], estimator="exact").double()
        >>> x = torch.randn(10, 3, dtype=torch.float64)
        >>> y = t(x)
        >>> t.log_abs_det_jacobian(x, y).shape
        torch.Size([10])
        >>> torch.allclose(t.inv(y.clone()), x, rtol=0.0, atol=1e-12)
        True

    References:
        | Invertible Residual Networks (Behrmann et al., 2019)
        | https://arxiv.org/abs/1811.00995
        | Residual Flows for Invertible Generative Modeling (Chen et al., 2019)
        | https://arxiv.org/abs/1906.02735
    """

    def __init__(self, input_dim: int, network: LipschitzMLP, **kwargs: Any) -> None:
        check_positive_int(input_dim, "input_dim")
        super().__init__((input_dim,), network, **kwargs)


class ConvInvertibleResNet(_ResidualBlock):
    r"""An invertible residual block for images, :math:`y = x + g(x)` on events ``(C, H, W)``.

    :math:`g` is a :class:`~pyro_flows.nn.LipschitzConvNet` (convolutions with stride 1 and
    "same" padding whose operator norm, not the norm of the reshaped kernel, is kept below
    :math:`c < 1`). Inverse, log-determinant estimators, modes and options are those of
    :class:`InvertibleResNet`; ``"exact"`` costs :math:`C H W` passes of :math:`g`, so for
    large images use ``eval_estimator="series"`` with many terms, or evaluate in batches.
    Inputs have shape ``(*batch, C, H, W)``; the log-determinant has shape ``batch``.

    Arguments:
        input_shape: The event shape ``(C, H, W)``.
        network: The residual branch, a :class:`~pyro_flows.nn.LipschitzConvNet`.
        kwargs: The options of :class:`InvertibleResNet`.

    Example:
        >>> t = conv_iresnet((2, 4, 4), hidden_channels=[8], estimator="exact")
        >>> x = torch.randn(5, 2, 4, 4)
        >>> t.log_abs_det_jacobian(x, t(x)).shape
        torch.Size([5])

    References:
        | Invertible Residual Networks (Behrmann et al., 2019)
        | https://arxiv.org/abs/1811.00995
    """

    domain = constraints.independent(constraints.real, 3)
    codomain = constraints.independent(constraints.real, 3)

    def __init__(
        self, input_shape: Sequence[int], network: LipschitzConvNet, **kwargs: Any
    ) -> None:
        super().__init__(tuple(input_shape), network, **kwargs)

    def _check(self, x: Tensor, name: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 3 or tuple(x.shape[-3:]) != self.event_shape:
            raise ValueError(
                f"{name} must have shape (..., {', '.join(map(str, self.event_shape))}) "
                f"(event shape {self.event_shape}), got shape {tuple(x.shape)}"
            )


class ConditionalInvertibleResNet(ConditionalFlowTransform):
    r"""An invertible residual block whose branch also sees a context: :math:`y = x + g(x, c)`.

    :math:`\mathrm{Lip}_x(g) < 1` for every context (only the weights acting on :math:`x` are
    normalised), so each conditioned map is invertible. ``.condition(c)`` returns an
    :class:`InvertibleResNet` sharing this module's parameters; options are those of
    :class:`InvertibleResNet`.

    Arguments:
        input_dim: The event size :math:`D`.
        context_dim: The context size :math:`C`.
        network: A :class:`~pyro_flows.nn.LipschitzMLP` with ``context_dim``.
        kwargs: The options of :class:`InvertibleResNet`.

    Example:
        >>> t = conditional_iresnet(3, 2, hidden_dims=[16])
        >>> t.condition(torch.randn(7, 2)).inv(torch.randn(7, 3)).shape
        torch.Size([7, 3])

    References:
        | Invertible Residual Networks (Behrmann et al., 2019)
        | https://arxiv.org/abs/1811.00995
    """

    def __init__(
        self, input_dim: int, context_dim: int, network: LipschitzMLP, **kwargs: Any
    ) -> None:
        super().__init__(input_dim, context_dim)
        _check_network(network, (input_dim,))
        if getattr(network, "context_dim", None) != context_dim:
            raise ValueError(f"network must take a context of size context_dim={context_dim}")
        self.network = network
        self.options = _Options(**kwargs)

    def _condition(self, context: Tensor) -> InvertibleResNet:
        t = InvertibleResNet(self.input_dim, self.network, context=context, _options=self.options)
        t.training = self.training  # the estimator follows this module's train/eval mode
        return t


# -- helpers ----------------------------------------------------------------------------------


def _default_hidden(
    input_dim: int, context_dim: int | None, hidden_dims: Sequence[int] | None
) -> list[int]:
    if hidden_dims is None:
        return default_hidden_dims(input_dim, context_dim or 0)
    return check_hidden_dims(hidden_dims)


def default_estimator(input_dim: int, stochastic: str = "series") -> str:
    r"""The helpers' train-mode log-determinant estimator when none is given.

    ``"exact"`` up to :data:`EXACT_MAX_DIM` dimensions, ``stochastic`` above. For small
    :math:`D` the exact log-determinant (:math:`D` Jacobian-vector products in one batched pass
    and a :math:`D \times D` LU) costs no more than the five vector-Jacobian products of the
    truncated series, and it has neither the series' bias nor the probes' variance: on 8
    Gaussians (5 blocks, 1 500 steps) the series left a KL of 0.47 nats where the exact
    log-determinant reached 0.34 (docs/benchmarks.md, "Residual flows").

    Arguments:
        input_dim: The event size :math:`D`.
        stochastic: The estimator above :data:`EXACT_MAX_DIM` (``"series"`` or
            ``"russian_roulette"``).

    Example:
        >>> default_estimator(2), default_estimator(64, "russian_roulette")
        ('exact', 'russian_roulette')
    """
    check_positive_int(input_dim, "input_dim")
    check_choice(stochastic, LOGDET_ESTIMATORS, "stochastic")
    return "exact" if input_dim <= EXACT_MAX_DIM else stochastic


def _estimator(input_dim: int, estimator: str | None, stochastic: str) -> str:
    return default_estimator(input_dim, stochastic) if estimator is None else estimator


def iresnet(
    input_dim: int,
    hidden_dims: Sequence[int] | None = None,
    lipschitz: float = 0.9,
    activation: str = "elu",
    estimator: str | None = None,
    lipswish_beta: float = LIPSWISH_BETA,
    **kwargs: Any,
) -> InvertibleResNet:
    r"""Builds an :class:`InvertibleResNet` (i-ResNet) block on a :class:`~pyro_flows.nn.LipschitzMLP`.

    Arguments:
        input_dim: The event size :math:`D`.
        hidden_dims: Hidden sizes of :math:`g` (default
            :func:`~pyro_flows.nn.dense.default_hidden_dims`, MAF's: 64-64 below 10
            dimensions, so a block has about a MAF layer's parameters).
        lipschitz: The coefficient :math:`c \in (0, 1)` bounding each layer's spectral norm.
        activation: ``"elu"`` (i-ResNet) or ``"lipswish"`` (Residual Flows).
        estimator: The log-determinant estimator in train mode; None (default) picks
            :func:`default_estimator`: ``"exact"`` up to :data:`EXACT_MAX_DIM` dimensions,
            else the truncated ``"series"`` of i-ResNet.
        lipswish_beta: The initial :math:`\beta` of LipSwish activations (default
            :data:`LIPSWISH_BETA`; used with ``activation="lipswish"``).
        kwargs: Further options of :class:`InvertibleResNet` (``n_terms``, ``eval_estimator``,
            ``inverse``, ``tol``, ...).

    Example:
        >>> t = iresnet(2, hidden_dims=[32], n_terms=8)
        >>> t(torch.randn(4, 2)).shape
        torch.Size([4, 2])
    """
    check_positive_int(input_dim, "input_dim")
    net = _network(input_dim, None, hidden_dims, lipschitz, activation, lipswish_beta)
    estimator = _estimator(input_dim, estimator, "series")
    return InvertibleResNet(input_dim, net, estimator=estimator, **kwargs)


def residual_flow(
    input_dim: int,
    hidden_dims: Sequence[int] | None = None,
    lipschitz: float = 0.9,
    activation: str = "lipswish",
    estimator: str | None = None,
    lipswish_beta: float = LIPSWISH_BETA,
    **kwargs: Any,
) -> InvertibleResNet:
    r"""Builds a Residual Flow block: LipSwish, and the unbiased Russian-roulette estimator.

    An :class:`InvertibleResNet` whose log-determinant is estimated without bias, with the
    memory-saving Neumann gradient. Arguments are those of :func:`iresnet`, with Residual
    Flows' defaults; ``estimator=None`` is ``"exact"`` up to :data:`EXACT_MAX_DIM` dimensions
    (where it is cheaper than the roulette's expected cost and has no variance), else
    ``"russian_roulette"``. LipSwish starts at :math:`\beta` = :data:`LIPSWISH_BETA` (5), not
    Residual Flows' 1: at :math:`\beta = 1` it is close to :math:`h/2.2` near 0, so blocks
    start weak and learn slowly.

    Example:
        >>> t = residual_flow(2, hidden_dims=[32], inverse=True)
        >>> t.inv(torch.randn(4, 2)).shape
        torch.Size([4, 2])

    References:
        | Residual Flows for Invertible Generative Modeling (Chen et al., 2019)
        | https://arxiv.org/abs/1906.02735
    """
    estimator = _estimator(input_dim, estimator, "russian_roulette")
    return iresnet(
        input_dim, hidden_dims, lipschitz, activation, estimator, lipswish_beta, **kwargs
    )


def _network(
    input_dim: int,
    context_dim: int | None,
    hidden_dims: Sequence[int] | None,
    lipschitz: float,
    activation: str,
    lipswish_beta: float,
) -> LipschitzMLP:
    if (
        isinstance(lipschitz, bool)
        or not isinstance(lipschitz, (int, float))
        or not 0 < lipschitz < 1
    ):
        raise ValueError(f"lipschitz must be in (0, 1), got {lipschitz!r}")
    hidden = _default_hidden(input_dim, context_dim, hidden_dims)
    return LipschitzMLP(
        input_dim,
        hidden,
        context_dim,
        lipschitz=lipschitz,
        activation=activation,
        lipswish_beta=lipswish_beta,
    )


def conditional_iresnet(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] | None = None,
    lipschitz: float = 0.9,
    activation: str = "elu",
    estimator: str | None = None,
    lipswish_beta: float = LIPSWISH_BETA,
    **kwargs: Any,
) -> ConditionalInvertibleResNet:
    r"""Builds a :class:`ConditionalInvertibleResNet` (arguments as :func:`iresnet`).

    Arguments:
        input_dim: The event size :math:`D`.
        context_dim: The context size :math:`C`.
        hidden_dims: Hidden sizes of :math:`g` (default
            :func:`~pyro_flows.nn.dense.default_hidden_dims` of :math:`D + C`).
        lipschitz: The coefficient :math:`c \in (0, 1)`.
        activation: ``"elu"`` or ``"lipswish"``.
        estimator: The log-determinant estimator in train mode (None: as :func:`iresnet`).
        lipswish_beta: The initial :math:`\beta` of LipSwish activations.
        kwargs: Further options of :class:`InvertibleResNet`.
    """
    check_positive_int(input_dim, "input_dim")
    check_positive_int(context_dim, "context_dim")
    net = _network(input_dim, context_dim, hidden_dims, lipschitz, activation, lipswish_beta)
    estimator = _estimator(input_dim, estimator, "series")
    return ConditionalInvertibleResNet(input_dim, context_dim, net, estimator=estimator, **kwargs)


def conditional_residual_flow(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] | None = None,
    lipschitz: float = 0.9,
    activation: str = "lipswish",
    estimator: str | None = None,
    lipswish_beta: float = LIPSWISH_BETA,
    **kwargs: Any,
) -> ConditionalInvertibleResNet:
    """Builds a conditional Residual Flow block (arguments as :func:`conditional_iresnet`)."""
    estimator = _estimator(input_dim, estimator, "russian_roulette")
    return conditional_iresnet(
        input_dim,
        context_dim,
        hidden_dims,
        lipschitz,
        activation,
        estimator,
        lipswish_beta,
        **kwargs,
    )


def conv_iresnet(
    input_shape: Sequence[int],
    hidden_channels: Sequence[int] | None = None,
    kernel_size: int | Sequence[int] = 3,
    lipschitz: float = 0.9,
    activation: str = "elu",
    estimator: str = "series",
    **kwargs: Any,
) -> ConvInvertibleResNet:
    r"""Builds a :class:`ConvInvertibleResNet` on a :class:`~pyro_flows.nn.LipschitzConvNet`.

    Arguments:
        input_shape: The event shape ``(C, H, W)``.
        hidden_channels: Channels of the hidden layers (default ``[32]``).
        kernel_size: An odd kernel size, or one per layer (i-ResNet uses ``[3, 1, 3]`` with
            two hidden layers).
        lipschitz: The coefficient :math:`c \in (0, 1)` bounding each convolution's norm.
        activation: ``"elu"`` or ``"lipswish"``.
        estimator: The log-determinant estimator in train mode.
        kwargs: Further options of :class:`InvertibleResNet`.

    Example:
        >>> t = conv_iresnet((1, 3, 3), hidden_channels=[4])
        >>> t.inv(torch.randn(2, 1, 3, 3)).shape
        torch.Size([2, 1, 3, 3])
    """
    if (
        isinstance(lipschitz, bool)
        or not isinstance(lipschitz, (int, float))
        or not 0 < lipschitz < 1
    ):
        raise ValueError(f"lipschitz must be in (0, 1), got {lipschitz!r}")
    net = LipschitzConvNet(
        input_shape,
        hidden_channels if hidden_channels is not None else [32],
        kernel_size,
        lipschitz=lipschitz,
        activation=activation,
    )
    return ConvInvertibleResNet(input_shape, net, estimator=estimator, **kwargs)


# -- the builder's layers: several blocks ---------------------------------------------------------

#: Residual blocks per layer of the builder's ``"iresnet"`` and ``"residual_flow"`` families.
BLOCKS_PER_LAYER: int = 2


def _layer_hidden(
    input_dim: int, context_dim: int | None, hidden_dims: Sequence[int] | None, blocks: int
) -> list[int]:
    if hidden_dims is not None:
        return check_hidden_dims(hidden_dims)
    # b blocks of width w / sqrt(b) have about the parameters of one block of width w
    width = default_hidden_dims(input_dim, context_dim or 0)[0]
    return [max(input_dim, round(width / math.sqrt(blocks)))] * 2


def _identity_affine(input_dim: int) -> ActNorm:
    layer = ActNorm(input_dim)
    with torch.no_grad():
        layer.initialized.fill_(True)  # trained from the identity; no data resets it
    return layer


def _stack(blocks: list[torch.nn.Module], input_dim: int) -> list[torch.nn.Module]:
    parts: list[torch.nn.Module] = []
    for k, block in enumerate(blocks):
        if k > 0:
            parts.append(_identity_affine(input_dim))
        parts.append(block)
    return parts


def iresnet_layer(
    input_dim: int,
    hidden_dims: Sequence[int] | None = None,
    *,
    blocks: int = BLOCKS_PER_LAYER,
    residual_flow: bool = False,
    **kwargs: Any,
) -> Compose:
    r"""A layer of the builder's ``"iresnet"`` (or ``"residual_flow"``) family: several blocks.

    ``blocks`` :class:`InvertibleResNet` blocks of :func:`iresnet` (or :func:`residual_flow`),
    with a learnable elementwise affine map :math:`x \odot e^{s} + b` (an
    :class:`~pyro_flows.transforms.ActNorm` started at the identity) between two blocks.
    Each block is bi-Lipschitz, :math:`\mathrm{Lip}(g) < 1`, so it bends the density only a
    little: at a fixed parameter count, more and narrower blocks fit better. On 8 Gaussians
    (1 500 steps of :func:`~pyro_flows.training.fit`, seed 0), 5 blocks of width 64 reached a
    KL of 0.34 nats and 10 blocks of width 44 (the same size) 0.14, where a MAF of the same
    size reached 0.20 (docs/benchmarks.md, "Residual flows"). So by default a layer is two
    blocks of width :math:`w / \sqrt{2}`, :math:`w` the width of
    :func:`~pyro_flows.nn.dense.default_hidden_dims` (45 at :math:`D = 2`), and
    ``normalizing_flow("iresnet", D)``, five layers, has ten blocks and about the parameters
    of a MAF.

    Arguments:
        input_dim: The event size :math:`D`.
        hidden_dims: Hidden sizes of every block's :math:`g` (default: two layers of width
            :math:`w / \sqrt{\text{blocks}}`).
        blocks: The number of residual blocks.
        residual_flow: Build :func:`residual_flow` blocks (LipSwish) instead of
            :func:`iresnet` blocks (ELU).
        kwargs: Options of :func:`iresnet` for every block (``lipschitz``, ``estimator``,
            ``inverse``, ...).

    Returns:
        A :class:`~pyro_flows.transforms.Compose` of the blocks and affine maps.

    Example:
        >>> layer = iresnet_layer(2, inverse=True)
        >>> [type(p).__name__ for p in layer.parts]
        ['InvertibleResNet', 'ActNorm', 'InvertibleResNet']
        >>> layer.inv(torch.randn(4, 2)).shape
        torch.Size([4, 2])

    References:
        | Invertible Residual Networks (Behrmann et al., 2019)
        | https://arxiv.org/abs/1811.00995
    """
    check_positive_int(input_dim, "input_dim")
    check_positive_int(blocks, "blocks")
    hidden = _layer_hidden(input_dim, None, hidden_dims, blocks)
    make = _residual_flow if residual_flow else iresnet
    return Compose(_stack([make(input_dim, hidden, **kwargs) for _ in range(blocks)], input_dim))


def conditional_iresnet_layer(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] | None = None,
    *,
    blocks: int = BLOCKS_PER_LAYER,
    residual_flow: bool = False,
    **kwargs: Any,
) -> ConditionalCompose:
    r"""The conditional counterpart of :func:`iresnet_layer` (blocks of :func:`conditional_iresnet`).

    Arguments:
        input_dim: The event size :math:`D`.
        context_dim: The context size :math:`C`.
        hidden_dims: Hidden sizes of every block (default as :func:`iresnet_layer`, from
            :math:`D + C`).
        blocks: The number of residual blocks.
        residual_flow: Build :func:`conditional_residual_flow` blocks instead.
        kwargs: Options of :func:`conditional_iresnet` for every block.

    Example:
        >>> layer = conditional_iresnet_layer(2, 3)
        >>> layer.condition(torch.randn(3)).inv(torch.randn(4, 2)).shape
        torch.Size([4, 2])
    """
    check_positive_int(input_dim, "input_dim")
    check_positive_int(context_dim, "context_dim")
    check_positive_int(blocks, "blocks")
    hidden = _layer_hidden(input_dim, context_dim, hidden_dims, blocks)
    make = conditional_residual_flow if residual_flow else conditional_iresnet
    parts = [make(input_dim, context_dim, hidden, **kwargs) for _ in range(blocks)]
    return ConditionalCompose(_stack(parts, input_dim))


def residual_flow_layer(
    input_dim: int, hidden_dims: Sequence[int] | None = None, **kwargs: Any
) -> Compose:
    """A layer of the builder's ``"residual_flow"`` family: :func:`iresnet_layer` of Residual Flow blocks.

    Example:
        >>> len(residual_flow_layer(2).parts)
        3
    """
    return iresnet_layer(input_dim, hidden_dims, residual_flow=True, **kwargs)


def conditional_residual_flow_layer(
    input_dim: int, context_dim: int, hidden_dims: Sequence[int] | None = None, **kwargs: Any
) -> ConditionalCompose:
    """The conditional counterpart of :func:`residual_flow_layer`."""
    return conditional_iresnet_layer(
        input_dim, context_dim, hidden_dims, residual_flow=True, **kwargs
    )


_residual_flow = residual_flow  # iresnet_layer's argument of the same name shadows it
