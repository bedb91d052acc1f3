r"""Solving the flow ODE :math:`dx/dt = v(t, x)` of a trained field: samples and trajectories.

Solvers are those of :mod:`torchdiffeq` (through :class:`~pyro_flows.transforms._ode.ODESolver`)
under short names: the fixed-step ``"euler"`` (1 evaluation of the field per step),
``"midpoint"`` (2), ``"heun"`` (2: torchdiffeq's ``"heun2"``, the explicit trapezoidal rule),
``"rk4"`` (4) with ``num_steps`` equal steps, or the adaptive ``"dopri5"`` (and any other
torchdiffeq method) with tolerances.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from ..transforms._ode import ADAPTIVE_METHODS, METHODS, NFECounter, ODESolver
from ..transforms.base import broadcast_context

__all__ = [
    "SOLVERS",
    "make_solver",
    "reflow_pairs",
    "solve_field",
    "trajectory",
]

#: Short names of the usual solvers, mapped to torchdiffeq's; any torchdiffeq method is accepted.
SOLVERS: dict[str, str] = {
    "euler": "euler",
    "midpoint": "midpoint",
    "heun": "heun2",
    "rk4": "rk4",
    "dopri5": "dopri5",
}

# A step a hair longer than 1 / num_steps: torchdiffeq's grid is ceil(T / step + 1) points,
# and rounding in T / (T / n) would otherwise add a tiny extra step now and then.
_STRETCH = 1 + 1e-6


def make_solver(
    method: str = "dopri5",
    num_steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    span: float = 1.0,
) -> ODESolver:
    """Returns the :class:`~pyro_flows.transforms._ode.ODESolver` of a method and step count.

    Arguments:
        method: A name of :data:`SOLVERS` or a torchdiffeq method.
        num_steps: The number of equal steps of a fixed-step method (required by those,
            refused by the adaptive ones).
        rtol: The relative tolerance of an adaptive method.
        atol: The absolute tolerance of an adaptive method.
        span: The length of the time interval the steps cover.

    Example:
        >>> make_solver("heun", num_steps=4).method
        'heun2'
    """
    name = SOLVERS.get(method, method)
    if name not in METHODS:
        raise ValueError(
            f"unknown method {method!r}; expected one of {sorted(SOLVERS)} or a torchdiffeq "
            f"method {list(METHODS)}"
        )
    if name in ADAPTIVE_METHODS:
        if num_steps is not None:
            raise ValueError(
                f"num_steps applies to fixed-step methods; {method!r} adapts its steps to "
                "rtol and atol"
            )
        return ODESolver(name, rtol, atol)
    if num_steps is None:
        raise ValueError(f"method {method!r} is fixed-step: pass num_steps (e.g. 10)")
    check_positive_int(num_steps, "num_steps")
    return ODESolver(name, rtol, atol, step_size=span / num_steps * _STRETCH)


class _FieldDynamics:
    """``f(t, x)`` of a field with a fixed context (expanded to the rows)."""

    def __init__(self, field: nn.Module, context: Tensor | None) -> None:
        self.field = field
        self.context = context

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        if self.context is None:
            return self.field(t, x)
        return self.field(t, x, self.context)


def solve_field(
    field: nn.Module,
    x: Tensor,
    *,
    context: Tensor | None = None,
    t0: float = 0.0,
    t1: float = 1.0,
    method: str = "dopri5",
    num_steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    counter: NFECounter | None = None,
) -> Tensor:
    r"""Integrates :math:`dx/dt = v(t, x[, c])` from ``t0`` to ``t1`` (backwards if ``t1 < t0``).

    With ``t0 = 0`` and ``t1 = 1`` this maps source draws to samples; the reverse maps data to
    the source. Differentiable (back-propagation through the solver's steps).

    Arguments:
        field: Called as ``field(t, x)`` (``field(t, x, context)``), ``t`` a scalar tensor.
        x: The starting points, shape ``(*batch, D)``.
        context: A context broadcast against the rows, shape ``(*batch, C)``.
        t0: The start time.
        t1: The end time.
        method: A name of :data:`SOLVERS` or a torchdiffeq method.
        num_steps: The number of steps of a fixed-step method.
        rtol: The relative tolerance of an adaptive method.
        atol: The absolute tolerance of an adaptive method.
        counter: An :class:`~pyro_flows.transforms._ode.NFECounter` to update.

    Example:
        >>> field = lambda t, x: torch.ones_like(x)   # moves every point by 1 in unit time
        >>> solve_field(field, torch.zeros(2, 1), method="euler", num_steps=3)
        tensor([[1.],
                [1.]])
    """
    solver = make_solver(method, num_steps, rtol, atol, span=abs(t1 - t0))
    if context is not None:
        x, context = broadcast_context(x, context)
    params = list(field.parameters()) if isinstance(field, nn.Module) else []
    return solver.solve(_FieldDynamics(field, context), x, t0, t1, params=params, counter=counter)


def trajectory(
    field: nn.Module,
    x: Tensor,
    times: Sequence[float] | Tensor,
    *,
    context: Tensor | None = None,
    method: str = "dopri5",
    num_steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> Tensor:
    """The points :math:`x(t)` at each of ``times`` (the first is the start), without gradients.

    Fixed-step methods take ``num_steps`` steps between consecutive times.

    Returns:
        A tensor of shape ``(len(times), *batch, D)``.

    Example:
        >>> field = lambda t, x: -x
        >>> path = trajectory(field, torch.ones(1, 1), [0.0, 0.5, 1.0], rtol=1e-8, atol=1e-8)
        >>> torch.allclose(path[:, 0, 0], torch.tensor([0.0, 0.5, 1.0]).neg().exp())
        True
    """
    times = [float(t) for t in times]
    points = [x]
    with torch.no_grad():
        for a, b in zip(times[:-1], times[1:], strict=True):
            step = solve_field(
                field,
                points[-1],
                context=context,
                t0=a,
                t1=b,
                method=method,
                num_steps=num_steps,
                rtol=rtol,
                atol=atol,
            )
            points.append(step)
    return torch.stack(points)


def reflow_pairs(
    field: nn.Module,
    x0: Tensor,
    *,
    context: Tensor | None = None,
    method: str = "dopri5",
    num_steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[Tensor, Tensor]:
    r"""The pairs :math:`(x_0, \phi_1(x_0))` of a trained flow, for a round of rectified flow.

    Training a new field on these pairs with a
    :class:`~pyro_flows.matching.PairedCoupling` (``source_data=x0``, ``data=x1``) and the
    :class:`~pyro_flows.matching.RectifiedFlowPath` straightens the trajectories, so fewer
    steps sample well.

    Example:
        >>> x0, x1 = reflow_pairs(lambda t, x: torch.ones_like(x), torch.zeros(3, 2),
        ...                       method="euler", num_steps=1)
        >>> x1
        tensor([[1., 1.],
                [1., 1.],
                [1., 1.]])

    References:
        | Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow
          (Liu et al., 2023)
        | https://arxiv.org/abs/2209.03003
    """
    with torch.no_grad():
        x1 = solve_field(
            field,
            x0,
            context=context,
            method=method,
            num_steps=num_steps,
            rtol=rtol,
            atol=atol,
        )
    return x0, x1
