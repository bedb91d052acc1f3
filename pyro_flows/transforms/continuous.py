"""Continuous normalizing flows: FFJORD, a neural ODE with an exact or Hutchinson trace."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import (
    check_choice,
    check_hidden_dims,
    check_positive_float,
    check_positive_int,
)
from ..nn.divergence import NOISES, divergence_and_frobenius, hutchinson_noise
from ..nn.fields import VectorField
from ..nn.regularization import kinetic_energy
from ._ode import NFECounter, ODESolver
from .base import ConditionalFlowTransform, FlowTransform, broadcast_context

__all__ = [
    "FFJORD",
    "TRACE_ESTIMATORS",
    "ConditionalFFJORD",
    "conditional_ffjord",
    "ffjord",
]

#: The choices of ``trace``: ``"auto"`` picks ``"exact"`` or ``"hutchinson"`` by size and mode.
TRACE_ESTIMATORS: tuple[str, ...] = ("auto", "exact", "hutchinson")


class _Record:
    """What the solves of one FFJORD layer leave behind: the NFE counts and the last penalties.

    A :class:`ConditionalFFJORD` shares its record with every transform it conditions, so the
    counts and penalties can be read on the module a user holds.
    """

    def __init__(self) -> None:
        self.nfe = NFECounter()
        self.terms: dict[str, Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The penalties hold autograd history, which neither pickles nor deep-copies.
        return {"nfe": self.nfe, "terms": None}


class _Dynamics:
    r"""The augmented dynamics of one solve: :math:`(x, \ell[, K, J])`.

    :math:`dx/dt = f`, :math:`d\ell/dt = \operatorname{tr}(\partial f/\partial x)` (exact or
    Hutchinson with the probe held fixed for the solve), and, with regularisation,
    :math:`dK/dt = \|f\|^2`, :math:`dJ/dt = \|\partial f/\partial x\|_F^2`. One instance per
    solve, so an adjoint pass run later still sees the probe and context of its own solve.
    """

    def __init__(
        self, field: nn.Module, context: Tensor | None, noise: Tensor | None, regularize: bool
    ) -> None:
        self.field = field
        self.context = context
        self.noise = noise
        self.regularize = regularize

    def __call__(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        x = state[0]
        grad = torch.is_grad_enabled()
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_()
            # The context keeps its own batch shape (it broadcasts against x's), so a field can
            # compute what depends on (t, context) alone once for the whole batch.
            v = self.field(t, x) if self.context is None else self.field(t, x, self.context)
            if v.shape != x.shape:
                raise ValueError(
                    f"the vector field returned shape {tuple(v.shape)} for x of shape "
                    f"{tuple(x.shape)}; it must return the shape of x"
                )
            div, frob = divergence_and_frobenius(
                v, x, self.noise, create_graph=grad, frobenius=self.regularize
            )
        if not grad:
            v, div = v.detach(), div.detach()
            frob = None if frob is None else frob.detach()
        if self.regularize:
            return v, div, kinetic_energy(v), frob
        return v, div


class FFJORD(FlowTransform):
    r"""Free-form Jacobian of reversible dynamics: a neural ODE as an invertible transform.

    The output is the solution at time :math:`T` of the ODE started at the input, and the
    log-determinant is integrated alongside it (instantaneous change of variables):

    .. math:: \frac{d}{dt} \begin{pmatrix} z(t) \\ \ell(t) \end{pmatrix}
              = \begin{pmatrix} f(t, z(t)) \\
              \operatorname{tr} \frac{\partial f}{\partial z}(t, z(t)) \end{pmatrix},
              \qquad y = z(T), \quad \log|\det J| = \ell(T), \qquad
              z(0) = x,\ \ell(0) = 0 .

    The trace is exact (:math:`D` vector-Jacobian products per evaluation of :math:`f`) or
    Hutchinson's unbiased estimate :math:`\epsilon^\top (\partial f/\partial z)\, \epsilon`
    (one product), with one probe :math:`\epsilon` drawn per solve and held fixed through it.
    The inverse integrates the same system backwards from :math:`T` to 0; both directions
    cost one solve (about 6 evaluations of :math:`f` per step of ``dopri5``; the number of
    steps grows with the complexity of :math:`f` and as the tolerances tighten) and give the
    log-determinant. Both are accurate to the solver's tolerances, not to machine precision:
    with a field of moderate size, a float64 round trip at ``rtol = atol = 1e-8`` is accurate
    to about ``1e-8``. Adaptive solves land a step on the end time instead of interpolating
    there.

    Solves use :mod:`torchdiffeq` (see :class:`~pyro_flows.transforms._ode.ODESolver`);
    with ``adjoint=True`` gradients come from the adjoint ODE, with memory independent of the
    number of steps, for the field's parameters and for a context that requires grad.
    :attr:`nfe` counts the evaluations of :math:`f`, forward and backward. With
    ``regularize=True`` each solve also integrates the kinetic energy
    :math:`\int_0^T \|f\|^2 dt` and the Jacobian norm
    :math:`\int_0^T \|\partial f/\partial z\|_F^2 dt` (estimated with the same probe under
    Hutchinson), read by :meth:`regularization_terms` and
    :func:`~pyro_flows.nn.ode_regularization`.

    Arguments:
        input_dim: The event size :math:`D`.
        field: A module computing :math:`f` as ``field(t, z)`` (``field(t, z, context)`` when
            ``context`` is given) with ``t`` a scalar tensor and ``z`` of shape
            ``(*batch, D)``, mapping rows independently; e.g. a
            :class:`~pyro_flows.nn.VectorField`.
        end_time: The integration time :math:`T > 0`.
        trace: ``"exact"``, ``"hutchinson"`` or ``"auto"``: exact when
            :math:`D \le` ``exact_dim``, and in :meth:`eval` mode when
            :math:`D \le` ``eval_exact_dim``; Hutchinson otherwise.
        noise: The probe of Hutchinson's estimator, ``"gaussian"`` or ``"rademacher"``.
        exact_dim: The largest :math:`D` for which ``"auto"`` uses the exact trace in training.
        eval_exact_dim: The largest :math:`D` for which ``"auto"`` uses it in eval mode.
        method: The torchdiffeq method (adaptive: ``"dopri5"``, ``"dopri8"``, ``"bosh3"``,
            ...; fixed-step: ``"rk4"``, ``"euler"``, ``"midpoint"``, ...).
        rtol: The relative tolerance of the adaptive methods.
        atol: The absolute tolerance of the adaptive methods.
        step_size: The step of the fixed-step methods.
        adjoint: Compute gradients with :func:`torchdiffeq.odeint_adjoint`.
        options: Further torchdiffeq solver options (e.g. ``{"max_num_steps": 1000}``).
        adjoint_options: Options of the adjoint solve; by default those of the forward solve
            with ``{"norm": "seminorm"}`` (``{"norm": "full"}`` for torchdiffeq's default).
        regularize: Integrate the kinetic and Jacobian penalties along each solve.
        context: A context passed to ``field`` (set by :meth:`ConditionalFFJORD.condition`).
        cache_size: 1 to reuse the last pass, 0 to never cache.

    Example:
        >>> t = ffjord(2, hidden_dims=[16], rtol=1e-8, atol=1e-8)
        >>> x = torch.randn(10, 2)
        >>> y = t(x)
        >>> torch.allclose(t.inv(y.clone()), x, atol=1e-5)
        True
        >>> t.nfe.forward > 0
        True

    References:
        | FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models
          (Grathwohl et al., 2019)
        | https://arxiv.org/abs/1810.01367
        | Neural Ordinary Differential Equations (Chen et al., 2018)
        | https://arxiv.org/abs/1806.07366
    """

    def __init__(
        self,
        input_dim: int,
        field: nn.Module,
        *,
        end_time: float = 1.0,
        trace: str = "auto",
        noise: str = "gaussian",
        exact_dim: int = 8,
        eval_exact_dim: int = 64,
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        step_size: float | None = None,
        adjoint: bool = False,
        options: dict[str, Any] | None = None,
        adjoint_options: dict[str, Any] | None = None,
        regularize: bool = False,
        context: Tensor | None = None,
        cache_size: int = 1,
        _record: _Record | None = None,
    ) -> None:
        super().__init__(input_dim, cache_size=cache_size)
        if not isinstance(field, nn.Module):
            raise TypeError(f"field must be a torch.nn.Module, got {type(field).__name__}")
        self.field = field
        self.end_time = check_positive_float(end_time, "end_time")
        self.trace = check_choice(trace, TRACE_ESTIMATORS, "trace")
        self.noise = check_choice(noise, NOISES, "noise")
        self.exact_dim = check_positive_int(exact_dim, "exact_dim", minimum=0)
        self.eval_exact_dim = check_positive_int(eval_exact_dim, "eval_exact_dim", minimum=0)
        self.solver = ODESolver(
            method, rtol, atol, step_size, adjoint, options or {}, adjoint_options
        )
        if not isinstance(regularize, bool):
            raise TypeError(f"regularize must be True or False, got {regularize!r}")
        self.regularize = regularize
        self.context = context
        self._record = _Record() if _record is None else _record

    @property
    def exact(self) -> bool:
        """Whether a pass run now uses the exact trace (it depends on ``trace`` and the mode)."""
        if self.trace != "auto":
            return self.trace == "exact"
        limit = self.exact_dim if self.training else self.eval_exact_dim
        return self.input_dim <= limit

    @property
    def nfe(self) -> NFECounter:
        """The counts of field evaluations (``nfe.forward``, ``nfe.backward``; ``nfe.reset()``)."""
        return self._record.nfe

    def regularization_terms(self) -> dict[str, Tensor] | None:
        r"""The penalties of the last solve, per row: ``{"kinetic": ..., "jacobian": ...}``.

        Each is :math:`\int_0^T (\cdot)\, dt \ge 0` along the row's trajectory, with autograd
        history; None without ``regularize=True`` or before the first solve.
        """
        return self._record.terms if self.regularize else None

    def train(self, mode: bool = True) -> FFJORD:
        """Sets the mode (which may change the trace estimator) and forgets the cached pass."""
        self.clear_cache()
        return super().train(mode)

    def _solve(self, z: Tensor, forward: bool) -> tuple[Tensor, Tensor]:
        context = self.context
        if context is not None:
            z, _ = broadcast_context(z, context)
        noise = None if self.exact else hutchinson_noise(z, self.noise)
        zeros = z.new_zeros(z.shape[:-1])
        state = (z, zeros, zeros, zeros) if self.regularize else (z, zeros)
        params = [*self.field.parameters()]
        if context is not None:
            params.append(context)
        dynamics = _Dynamics(self.field, context, noise, self.regularize)
        t0, t1 = (0.0, self.end_time) if forward else (self.end_time, 0.0)
        out = self.solver.solve(dynamics, state, t0, t1, params=params, counter=self.nfe)
        if self.regularize:
            sign = 1.0 if forward else -1.0
            self._record.terms = {"kinetic": sign * out[2], "jacobian": sign * out[3]}
        return out[0], out[1]

    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._solve(x, forward=True)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        x, minus_ladj = self._solve(y, forward=False)
        return x, -minus_ladj

    def extra_repr(self) -> str:  # noqa: D102
        s = self.solver
        steps = f"step_size={s.step_size}" if s.step_size else f"rtol={s.rtol}, atol={s.atol}"
        return (
            f"input_dim={self.input_dim}, end_time={self.end_time}, trace={self.trace!r}, "
            f"method={s.method!r}, {steps}, adjoint={s.adjoint}, regularize={self.regularize}"
        )


class ConditionalFFJORD(ConditionalFlowTransform):
    r"""FFJORD whose vector field also sees a context :math:`c`: :math:`dz/dt = f(t, z, c)`.

    ``.condition(c)`` returns an :class:`FFJORD` sharing this module's field (and NFE
    counter and penalties); a context that requires grad receives gradients, with or
    without ``adjoint=True``.

    Arguments:
        input_dim: The event size :math:`D`.
        context_dim: The context size :math:`C`.
        field: A module computing ``field(t, z, context)``, e.g. a
            :class:`~pyro_flows.nn.VectorField` with ``context_dim``.
        settings: The keyword arguments of :class:`FFJORD` (``end_time``, ``trace``,
            ``noise``, ``method``, ``rtol``, ``atol``, ``step_size``, ``adjoint``,
            ``options``, ``regularize``, ...).

    Example:
        >>> t = conditional_ffjord(2, 3, hidden_dims=[16])
        >>> t.condition(torch.randn(3))(torch.randn(10, 2)).shape
        torch.Size([10, 2])

    References:
        | FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models
          (Grathwohl et al., 2019)
        | https://arxiv.org/abs/1810.01367
    """

    def __init__(
        self, input_dim: int, context_dim: int, field: nn.Module, **settings: Any
    ) -> None:
        super().__init__(input_dim, context_dim)
        for key in ("context", "_record"):
            if key in settings:
                raise TypeError(f"ConditionalFFJORD got an unexpected keyword argument {key!r}")
        FFJORD(input_dim, field, **settings)  # validates the settings
        self.field = field
        self._settings = dict(settings)
        self._record = _Record()

    @property
    def nfe(self) -> NFECounter:
        """The counts of field evaluations of every conditioned transform."""
        return self._record.nfe

    def regularization_terms(self) -> dict[str, Tensor] | None:
        """The penalties of the last solve of a conditioned transform (see :class:`FFJORD`)."""
        return self._record.terms if self._settings.get("regularize", False) else None

    def _condition(self, context: Tensor) -> FFJORD:
        t = FFJORD(
            self.input_dim, self.field, context=context, _record=self._record, **self._settings
        )
        return t.train(self.training)


def _field(
    input_dim: int,
    context_dim: int | None,
    hidden_dims: Sequence[int] | None,
    activation: str,
    time_freqs: int,
    concat_squash: bool,
) -> VectorField:
    width = max(64, 10 * (input_dim + (context_dim or 0)))
    hidden = check_hidden_dims(hidden_dims if hidden_dims is not None else [width, width])
    return VectorField(
        input_dim,
        hidden,
        context_dim,
        activation=activation,
        time_freqs=time_freqs,
        concat_squash=concat_squash,
    )


def ffjord(
    input_dim: int,
    hidden_dims: Sequence[int] | None = None,
    *,
    activation: str = "tanh",
    time_freqs: int = 0,
    concat_squash: bool = True,
    **kwargs: Any,
) -> FFJORD:
    r"""Builds an :class:`FFJORD` with a :class:`~pyro_flows.nn.VectorField`.

    Arguments:
        input_dim: The event size :math:`D`.
        hidden_dims: Hidden layer sizes of the field (default ``[w, w]``,
            :math:`w = \max(64, 10 D)`).
        activation: The field's activation (``"tanh"``, ``"softplus"``, ``"elu"``, ``"silu"``).
        time_freqs: Fourier frequencies of the time input (0: the time itself).
        concat_squash: Concat-squash layers (time in every layer) or a plain MLP.
        kwargs: Passed to :class:`FFJORD` (``end_time``, ``trace``, ``noise``, ``method``,
            ``rtol``, ``atol``, ``step_size``, ``adjoint``, ``options``, ``regularize``, ...).

    Example:
        >>> t = ffjord(3, hidden_dims=[32, 32], trace="hutchinson", adjoint=True)
        >>> t(torch.randn(4, 3)).shape
        torch.Size([4, 3])
    """
    check_positive_int(input_dim, "input_dim")
    field = _field(input_dim, None, hidden_dims, activation, time_freqs, concat_squash)
    return FFJORD(input_dim, field, **kwargs)


def conditional_ffjord(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] | None = None,
    *,
    activation: str = "tanh",
    time_freqs: int = 0,
    concat_squash: bool = True,
    **kwargs: Any,
) -> ConditionalFFJORD:
    r"""Builds a :class:`ConditionalFFJORD` with a :class:`~pyro_flows.nn.VectorField`.

    Arguments:
        input_dim: The event size :math:`D`.
        context_dim: The context size :math:`C`.
        hidden_dims: Hidden layer sizes of the field (default ``[w, w]``,
            :math:`w = \max(64, 10 (D + C))`).
        activation: The field's activation.
        time_freqs: Fourier frequencies of the time input (0: the time itself).
        concat_squash: Concat-squash layers (time and context in every layer) or a plain MLP.
        kwargs: Passed to :class:`FFJORD` (see :func:`ffjord`).

    Example:
        >>> t = conditional_ffjord(2, 4, hidden_dims=[16], method="rk4", step_size=0.25)
        >>> t.condition(torch.randn(5, 4))(torch.randn(5, 2)).shape
        torch.Size([5, 2])
    """
    check_positive_int(input_dim, "input_dim")
    check_positive_int(context_dim, "context_dim")
    field = _field(input_dim, context_dim, hidden_dims, activation, time_freqs, concat_squash)
    return ConditionalFFJORD(input_dim, context_dim, field, **kwargs)
