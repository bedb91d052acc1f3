"""Shared ODE machinery of the continuous flows: validated torchdiffeq settings and counters."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from .._validation import check_choice, check_positive_float

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_STEP_METHODS",
    "METHODS",
    "NFECounter",
    "ODESolver",
    "integrate",
]

#: The adaptive-step Runge-Kutta methods of torchdiffeq (controlled by ``rtol`` and ``atol``).
ADAPTIVE_METHODS: tuple[str, ...] = ("adaptive_heun", "bosh3", "dopri5", "dopri8", "fehlberg2")
#: The fixed-grid methods of torchdiffeq (controlled by ``step_size``).
FIXED_STEP_METHODS: tuple[str, ...] = (
    "euler",
    "explicit_adams",
    "heun2",
    "heun3",
    "implicit_adams",
    "midpoint",
    "rk4",
)
#: Every method :class:`ODESolver` accepts.
METHODS: tuple[str, ...] = tuple(sorted(ADAPTIVE_METHODS + FIXED_STEP_METHODS))

State = Tensor | tuple[Tensor, ...]


def _detached_norm(state: State) -> Tensor:
    """The error norm of the step-size controller: the largest RMS over the parts of the state.

    It is computed on detached values, so the step sizes are constants for autograd: the
    gradient of a solve is the gradient of the discrete Runge-Kutta map with the steps taken,
    and rows of a batch stay independent (their only coupling, the shared step sizes, carries
    no gradient).
    """
    parts = (state,) if isinstance(state, Tensor) else state
    norms = [p.detach().abs().pow(2).mean().sqrt() for p in parts if p.numel() > 0]
    if not norms:
        return parts[0].new_zeros(())
    return torch.stack(norms).max()


@dataclass
class NFECounter:
    """Counts the evaluations of a vector field during solves.

    Arguments:
        forward: Evaluations made while integrating (either direction of the transform).
        backward: Evaluations made by the adjoint solves of ``loss.backward()``
            (``adjoint=True`` only; back-propagating through the solver evaluates nothing).
        solves: The number of solves started.
    """

    forward: int = 0
    backward: int = 0
    solves: int = 0

    @property
    def total(self) -> int:
        """``forward + backward``."""
        return self.forward + self.backward

    def reset(self) -> None:
        """Sets every count back to zero."""
        self.forward = self.backward = self.solves = 0


class _Counted:
    """Wraps a vector field; counts its calls as forward until the solve returns, then backward."""

    def __init__(self, func: Callable[[Tensor, State], State], counter: NFECounter) -> None:
        self.func = func
        self.counter = counter
        self.solving = True

    def __call__(self, t: Tensor, state: State) -> State:
        if self.solving:
            self.counter.forward += 1
        else:
            self.counter.backward += 1
        return self.func(t, state)


@dataclass(frozen=True)
class ODESolver:
    r"""Validated settings of an ODE solve with torchdiffeq, and the solve itself.

    Arguments:
        method: A torchdiffeq method: adaptive (``"dopri5"``, ``"dopri8"``, ``"bosh3"``,
            ``"fehlberg2"``, ``"adaptive_heun"``) or fixed-step (``"rk4"``, ``"euler"``,
            ``"midpoint"``, ``"heun2"``, ``"heun3"``, ``"explicit_adams"``,
            ``"implicit_adams"``).
        rtol: The relative tolerance of the adaptive methods (> 0).
        atol: The absolute tolerance of the adaptive methods (> 0).
        step_size: The step of the fixed-step methods (> 0; required by them, refused by the
            adaptive ones).
        adjoint: Whether gradients come from the adjoint ODE (:func:`torchdiffeq.odeint_adjoint`:
            memory independent of the number of steps, gradients accurate to the tolerances)
            rather than from back-propagation through the solver's operations (exact
            gradients of the discrete solve, memory growing with the number of steps).
        options: Further options of the torchdiffeq solver (e.g. ``max_num_steps``,
            ``first_step``); ``step_size`` and ``norm`` are set by this class.
        adjoint_options: Options of the adjoint solve (default: those of the forward solve).
            Its ``"norm"`` is ``"seminorm"`` (default: the step-size controller of the adjoint
            solve ignores the error of the parameters' adjoint, which is never fed back into
            the dynamics; far fewer steps for the same accuracy of the gradients) or
            ``"full"`` (torchdiffeq's default, every part of the adjoint state).

    Note:
        The step-size controller measures errors with the largest RMS over the parts of the
        state, computed on detached values: step sizes then carry no gradient, so the rows of
        a batch are independent for autograd. In a solve whose dtype cannot reach the
        tolerances (float32 with ``rtol=1e-10``), they are raised to ``10 * eps`` of the dtype.
    """

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    step_size: float | None = None
    adjoint: bool = False
    options: dict[str, Any] | None = field(default_factory=dict)
    adjoint_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_choice(self.method, METHODS, "method")
        object.__setattr__(self, "rtol", check_positive_float(self.rtol, "rtol"))
        object.__setattr__(self, "atol", check_positive_float(self.atol, "atol"))
        if self.method in FIXED_STEP_METHODS:
            if self.step_size is None:
                raise ValueError(f"method {self.method!r} is fixed-step: pass step_size > 0")
            object.__setattr__(
                self, "step_size", check_positive_float(self.step_size, "step_size")
            )
        elif self.step_size is not None:
            raise ValueError(
                f"step_size applies to the fixed-step methods {list(FIXED_STEP_METHODS)}; "
                f"method {self.method!r} adapts its steps to rtol and atol"
            )
        if not isinstance(self.adjoint, bool):
            raise TypeError(f"adjoint must be True or False, got {self.adjoint!r}")
        if self.options is None:
            object.__setattr__(self, "options", {})
        for name in ("options", "adjoint_options"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"{name} must be a dict, got {type(value).__name__}")
            if value is not None and "step_size" in value:
                raise ValueError(f"{name} must not set 'step_size' (pass step_size instead)")
        if "norm" in self.options:
            raise ValueError(
                "options must not set 'norm': the step-size controller's norm is set "
                "by ODESolver (see the note)"
            )
        norm = (self.adjoint_options or {}).get("norm", "seminorm")
        if norm not in ("seminorm", "full"):
            raise ValueError(f"adjoint_options['norm'] must be 'seminorm' or 'full', got {norm!r}")
        object.__setattr__(self, "options", dict(self.options))

    @property
    def adaptive(self) -> bool:
        """Whether the method adapts its steps to ``rtol`` and ``atol``."""
        return self.method in ADAPTIVE_METHODS

    def _solver_options(self, dtype: torch.dtype) -> tuple[dict[str, Any], float, float]:
        options = dict(self.options)
        floor = 10 * torch.finfo(dtype).eps
        rtol, atol = max(self.rtol, floor), max(self.atol, floor)
        if self.adaptive:
            options["norm"] = _detached_norm
        else:
            options["step_size"] = self.step_size
        return options, rtol, atol

    def solve(
        self,
        func: Callable[[Tensor, State], State],
        state: State,
        t0: float,
        t1: float,
        params: Iterable[Tensor] = (),
        counter: NFECounter | None = None,
    ) -> State:
        r"""Integrates :math:`ds/dt = \mathrm{func}(t, s)` from ``t0`` to ``t1``; returns :math:`s(t_1)`.

        Arguments:
            func: The dynamics, called as ``func(t, state)`` with ``t`` a scalar tensor of the
                state's dtype; it returns a tensor (or tuple) shaped like ``state``.
            state: The initial state :math:`s(t_0)`, a tensor or a tuple of tensors of one
                dtype and device.
            t0: The initial time.
            t1: The final time (``t1 < t0`` integrates backwards).
            params: With ``adjoint=True``, the tensors ``func`` uses whose gradients are
                wanted (its parameters, a context...); those that do not require grad are
                dropped. Ignored otherwise (autograd finds them).
            counter: An :class:`NFECounter` to update.
        """
        first = state if isinstance(state, Tensor) else state[0]
        if t0 == t1:
            return state
        times = first.new_tensor([float(t0), float(t1)])
        options, rtol, atol = self._solver_options(first.dtype)
        if self.adaptive:
            # Land a step on t1 rather than interpolating there: torchdiffeq's dense output is of
            # lower order than some methods (bosh3, dopri8) and would dominate their error.
            options["step_t"] = times[1:]
        counted = None
        if counter is not None:
            counter.solves += 1
            counted = _Counted(func, counter)
            func = counted
        try:
            if self.adjoint:
                params = tuple(p for p in params if p.requires_grad)
                adjoint_options = dict(
                    self.options if self.adjoint_options is None else self.adjoint_options
                )
                if self.adaptive:
                    adjoint_options["step_t"] = times[:1]
                    if adjoint_options.pop("norm", "seminorm") == "seminorm":
                        adjoint_options["norm"] = "seminorm"
                else:
                    adjoint_options["step_size"] = self.step_size
                out = odeint_adjoint(
                    func,
                    state,
                    times,
                    rtol=rtol,
                    atol=atol,
                    method=self.method,
                    options=options,
                    adjoint_params=params,
                    adjoint_options=adjoint_options,
                )
            else:
                out = odeint(
                    func, state, times, rtol=rtol, atol=atol, method=self.method, options=options
                )
        finally:
            if counted is not None:
                counted.solving = False
        if isinstance(out, Tensor):
            return out[-1]
        return tuple(o[-1] for o in out)


def integrate(
    field: Callable[[Tensor, Tensor], Tensor],
    x: State,
    t0: float,
    t1: float,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_size: float | None = None,
    adjoint: bool = False,
    options: dict[str, Any] | None = None,
    params: Sequence[Tensor] | None = None,
    counter: NFECounter | None = None,
) -> State:
    r"""Solves :math:`dx/dt = f(t, x)` from :math:`t_0` to :math:`t_1` and returns :math:`x(t_1)`.

    .. math:: x(t_1) = x(t_0) + \int_{t_0}^{t_1} f(t, x(t)) \, dt

    A thin, validated front to :func:`torchdiffeq.odeint` (or :func:`torchdiffeq.odeint_adjoint`
    with ``adjoint=True``) shared by the continuous flows: the time grid is made in the dtype
    and on the device of ``x``, step sizes carry no gradient (see :class:`ODESolver`), and
    evaluations can be counted.

    Arguments:
        field: The vector field, called as ``field(t, x)`` with ``t`` a scalar tensor.
        x: The initial state (a tensor or a tuple of tensors).
        t0: The initial time.
        t1: The final time; ``t1 < t0`` integrates backwards.
        method: A torchdiffeq method (see :data:`METHODS`).
        rtol: The relative tolerance of the adaptive methods.
        atol: The absolute tolerance of the adaptive methods.
        step_size: The step of the fixed-step methods.
        adjoint: Use the adjoint method for gradients.
        options: Further torchdiffeq options.
        params: With ``adjoint=True``, the tensors whose gradients are wanted; by default the
            parameters of ``field`` when it is an :class:`torch.nn.Module`.
        counter: An :class:`NFECounter` to update.

    Example:
        >>> x = integrate(lambda t, x: -x, torch.ones(2), 0.0, 1.0, rtol=1e-9, atol=1e-9)
        >>> torch.allclose(x, torch.tensor(-1.0).exp().expand(2))
        True
    """
    solver = ODESolver(method, rtol, atol, step_size, adjoint, options or {})
    if params is None:
        params = tuple(field.parameters()) if isinstance(field, nn.Module) else ()
    return solver.solve(field, x, t0, t1, params=params, counter=counter)
