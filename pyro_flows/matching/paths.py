r"""Probability paths of flow matching: where a point is at time :math:`t`, and how fast it moves.

Every path here is a Gaussian interpolant between a source point :math:`x_0` (noise) at
:math:`t = 0` and a data point :math:`x_1` at :math:`t = 1`,

.. math:: x_t = a(t)\, x_1 + b(t)\, x_0, \qquad
          u_t = \frac{d x_t}{dt} = a'(t)\, x_1 + b'(t)\, x_0,

and :math:`u_t` is the conditional target velocity the vector field regresses on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "PATHS",
    "LinearPath",
    "ProbabilityPath",
    "RectifiedFlowPath",
    "VariancePreservingPath",
    "get_path",
]


def _number(value: object, name: str, low: float, high: float | None = None) -> float:
    """Returns ``value`` as a float in ``[low, high)``, else raises a ValueError naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and math.isfinite(value) and value >= low and (high is None or value < high):
        return float(value)
    upper = f" and < {high}" if high is not None else ""
    raise ValueError(f"{name} must be a number >= {low}{upper}, got {value!r}")


class ProbabilityPath:
    r"""A path :math:`x_t = a(t) x_1 + b(t) x_0` from the source (:math:`t=0`) to the data (:math:`t=1`).

    Subclasses define the schedules :meth:`coefficients` :math:`(a, b)` and their time
    derivatives :meth:`derivatives` :math:`(a', b')`. ``t`` broadcasts against the rows: one
    time per row has shape ``batch`` (it is given a trailing axis here).
    """

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Returns :math:`(a(t), b(t))`."""
        raise NotImplementedError

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Returns :math:`(a'(t), b'(t))`."""
        raise NotImplementedError

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        r"""Returns :math:`x_t = a(t) x_1 + b(t) x_0` for rows ``x0``, ``x1`` of shape ``(*batch, D)``."""
        a, b = self.coefficients(t.unsqueeze(-1))
        return a * x1 + b * x0

    def velocity(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        r"""Returns the target :math:`u_t = a'(t) x_1 + b'(t) x_0 = d x_t / dt`."""
        da, db = self.derivatives(t.unsqueeze(-1))
        return da * x1 + db * x0

    def sample_and_velocity(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Returns :meth:`sample` and :meth:`velocity` in one call."""
        return self.sample(x0, x1, t), self.velocity(x0, x1, t)

    def conditional_velocity(self, x: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        r"""The conditional field :math:`u_t(x \mid x_1)` at any point :math:`x` (for :math:`b(t) > 0`).

        .. math:: u_t(x \mid x_1) = a'(t) x_1 + \frac{b'(t)}{b(t)} (x - a(t) x_1),

        which equals :meth:`velocity` at :math:`x = x_t`.
        """
        tt = t.unsqueeze(-1)
        a, b = self.coefficients(tt)
        da, db = self.derivatives(tt)
        return da * x1 + db / b * (x - a * x1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearPath(ProbabilityPath):
    r"""The optimal-transport (linear) path of conditional flow matching.

    .. math:: x_t = t\, x_1 + (1 - (1 - \sigma_{\min}) t)\, x_0, \qquad
              u_t = x_1 - (1 - \sigma_{\min})\, x_0 .

    With a standard normal source, :math:`p_t(x \mid x_1) = N(t x_1, (1 - (1 - \sigma_{\min})
    t)^2 I)`: the conditional flow is the optimal transport map between two Gaussians, and
    :math:`p_1(\cdot \mid x_1) = N(x_1, \sigma_{\min}^2 I)`.

    Arguments:
        sigma_min: The width :math:`\sigma_{\min} \in [0, 1)` left around each data point.

    Example:
        >>> path = LinearPath(sigma_min=0.0)
        >>> x0, x1 = torch.zeros(1, 2), torch.ones(1, 2)
        >>> path.sample(x0, x1, torch.tensor([0.25]))
        tensor([[0.2500, 0.2500]])

    References:
        | Flow Matching for Generative Modeling (Lipman et al., 2023)
        | https://arxiv.org/abs/2210.02747
    """

    def __init__(self, sigma_min: float = 0.0) -> None:
        self.sigma_min = _number(sigma_min, "sigma_min", 0.0, 1.0)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        return t, 1 - (1 - self.sigma_min) * t

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        one = torch.ones_like(t)
        return one, -(1 - self.sigma_min) * one

    def __repr__(self) -> str:
        return f"LinearPath(sigma_min={self.sigma_min})"


class RectifiedFlowPath(LinearPath):
    r"""The straight line of rectified flow: :math:`x_t = t x_1 + (1 - t) x_0`, :math:`u_t = x_1 - x_0`.

    The linear path with :math:`\sigma_{\min} = 0`, for any source (not only Gaussian). Rectified
    flow pairs it with *reflow*: train, draw pairs :math:`(x_0, \phi_1(x_0))` from the trained
    ODE (:func:`~pyro_flows.matching.reflow_pairs`), and train again on these pairs with a
    :class:`~pyro_flows.matching.PairedCoupling`; each round straightens the trajectories.

    Example:
        >>> RectifiedFlowPath().velocity(torch.zeros(2), torch.ones(2), torch.tensor(0.3))
        tensor([1., 1.])

    References:
        | Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow
          (Liu et al., 2023)
        | https://arxiv.org/abs/2209.03003
    """

    def __init__(self) -> None:
        super().__init__(sigma_min=0.0)

    def __repr__(self) -> str:
        return "RectifiedFlowPath()"


class VariancePreservingPath(ProbabilityPath):
    r"""The variance-preserving diffusion path, :math:`x_t = \alpha(t) x_1 + \sqrt{1 - \alpha(t)^2}\, x_0`.

    With ``schedule="cosine"``, :math:`\alpha(t) = \sin(\pi t / 2)` (so
    :math:`\sqrt{1-\alpha^2} = \cos(\pi t/2)`): both ends are exact and :math:`u_t` is bounded.
    With ``schedule="linear"``, the path of the VP SDE with a linear noise rate
    :math:`\beta(s) = \beta_{\min} + s (\beta_{\max} - \beta_{\min})` run backwards,

    .. math:: \alpha(t) = e^{-\frac12 T(1 - t)}, \qquad
              T(s) = \int_0^s \beta = \beta_{\min} s + \tfrac12 (\beta_{\max} - \beta_{\min}) s^2,

    whose source end :math:`t = 0` keeps a trace :math:`\alpha(0) = e^{-T(1)/2}` of the data
    (:math:`0.0066` with the defaults) and whose target velocity grows like
    :math:`(1 - t)^{-1/2}` as :math:`t \to 1`.

    Arguments:
        schedule: ``"cosine"`` or ``"linear"``.
        beta_min: :math:`\beta_{\min} > 0` of the linear schedule.
        beta_max: :math:`\beta_{\max} \ge \beta_{\min}` of the linear schedule.

    Example:
        >>> path = VariancePreservingPath()
        >>> a, b = path.coefficients(torch.tensor([0.0, 0.5, 1.0]))
        >>> torch.allclose(a**2 + b**2, torch.ones(3))
        True

    References:
        | Score-Based Generative Modeling through Stochastic Differential Equations
          (Song et al., 2021)
        | https://arxiv.org/abs/2011.13456
        | Flow Matching for Generative Modeling (Lipman et al., 2023)
        | https://arxiv.org/abs/2210.02747
    """

    SCHEDULES: tuple[str, ...] = ("cosine", "linear")

    def __init__(
        self, schedule: str = "cosine", beta_min: float = 0.1, beta_max: float = 20.0
    ) -> None:
        if schedule not in self.SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; expected one of {self.SCHEDULES}")
        self.schedule = schedule
        self.beta_min = _number(beta_min, "beta_min", 0.0)
        if self.beta_min == 0.0:
            raise ValueError("beta_min must be > 0, got 0")
        self.beta_max = _number(beta_max, "beta_max", self.beta_min)

    def _alpha(self, t: Tensor) -> tuple[Tensor, Tensor]:
        # alpha(t) and alpha'(t) of the linear schedule.
        s = 1 - t
        big_t = self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s * s
        beta = self.beta_min + (self.beta_max - self.beta_min) * s
        alpha = torch.exp(-0.5 * big_t)
        return alpha, 0.5 * beta * alpha  # d/dt = -d/ds

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        if self.schedule == "cosine":
            half_pi = 0.5 * math.pi
            return torch.sin(half_pi * t), torch.cos(half_pi * t)
        alpha, _ = self._alpha(t)
        return alpha, torch.sqrt(1 - alpha * alpha)

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        if self.schedule == "cosine":
            half_pi = 0.5 * math.pi
            return half_pi * torch.cos(half_pi * t), -half_pi * torch.sin(half_pi * t)
        alpha, dalpha = self._alpha(t)
        return dalpha, -alpha * dalpha / torch.sqrt(1 - alpha * alpha)

    def __repr__(self) -> str:
        if self.schedule == "cosine":
            return "VariancePreservingPath(schedule='cosine')"
        return (
            f"VariancePreservingPath(schedule='linear', beta_min={self.beta_min}, "
            f"beta_max={self.beta_max})"
        )


#: The paths by name, for :func:`get_path` and the ``path=`` arguments.
PATHS: dict[str, type[ProbabilityPath]] = {
    "linear": LinearPath,
    "rectified": RectifiedFlowPath,
    "vp": VariancePreservingPath,
}


def get_path(path: str | ProbabilityPath) -> ProbabilityPath:
    """Returns ``path`` itself, or the path named ``"linear"``, ``"rectified"`` or ``"vp"``.

    Example:
        >>> get_path("linear")
        LinearPath(sigma_min=0.0)
    """
    if isinstance(path, ProbabilityPath):
        return path
    if isinstance(path, str) and path in PATHS:
        return PATHS[path]()
    raise ValueError(
        f"unknown path {path!r}; expected a ProbabilityPath or one of {sorted(PATHS)}"
    )
