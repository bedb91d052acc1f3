r"""A trained vector field as a Pyro distribution: samples by the ODE, densities by its divergence."""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn
from torch.distributions import constraints

from .._validation import check_choice, check_last_dim, check_positive_int
from ..transforms._ode import NFECounter
from ..transforms.continuous import FFJORD
from .guidance import GuidedField
from .sampling import make_solver, solve_field

__all__ = ["FlowMatchingPrior", "cnf_distribution"]


def _check_base(base: object, dim: int | None) -> dist.Distribution:
    if not isinstance(base, torch.distributions.Distribution):
        raise TypeError(f"base must be a torch Distribution, got {type(base).__name__}")
    if len(base.event_shape) != 1 or (dim is not None and base.event_shape[0] != dim):
        want = "(D,)" if dim is None else f"({dim},)"
        raise ValueError(
            f"base must have event shape {want}, got {tuple(base.event_shape)} "
            "(use .to_event(1) on a univariate distribution)"
        )
    return base


class FlowMatchingPrior(TorchDistribution):
    r"""The density of a continuous flow :math:`dx/dt = v(t, x[, c])` pushing a base to :math:`t=1`.

    Samples solve the ODE from base draws :math:`x_0 \sim p_0` to :math:`t = 1`;
    log-densities solve it backwards from :math:`x` with the instantaneous change of variables,

    .. math:: \log p_1(x) = \log p_0(x_0)
              - \int_0^1 \nabla \cdot v(t, x_t)\, dt, \qquad x_1 = x ,

    through the :class:`~pyro_flows.transforms.FFJORD` machinery (exact trace for
    :math:`D \le` ``exact_dim``, Hutchinson's estimate otherwise). Both are differentiable, with
    respect to ``x``, the context and the field's parameters, so the distribution can be used
    as ``pyro.sample("z", prior)`` under SVI (``rsample`` for guides, ``log_prob`` for models)
    and under NUTS. For NUTS prefer a fixed-step solver (e.g. ``method="rk4"``,
    ``num_steps=10``) and the exact trace: the potential is then a smooth, deterministic
    function of :math:`x` (adaptive steps jump as :math:`x` moves, Hutchinson's is random).

    A context :math:`c` of shape ``(*batch, C)`` gives a batch of conditional densities
    :math:`p(x \mid c)` of batch shape ``batch``; with ``guidance`` :math:`= w` the field (trained
    with :func:`~pyro_flows.matching.drop_context`) is used with classifier-free guidance
    (:class:`~pyro_flows.matching.GuidedField`).

    The costs: a sample is one solve with ``num_steps`` steps (times the stages of the method:
    1 euler, 2 midpoint/heun, 4 rk4) or the adaptive steps of ``dopri5`` (6 evaluations each);
    a log-density is one solve with :math:`D + 1` passes per evaluation (exact) or 2
    (Hutchinson). :attr:`nfe` counts the evaluations.

    Arguments:
        field: The trained vector field, called as ``field(t, x)`` (``field(t, x, context)``)
            with ``t`` a scalar tensor.
        base: The source distribution :math:`p_0` (event shape ``(D,)``); the one the field
            was trained from. Default: :math:`N(0, I)`.
        input_dim: :math:`D`, when neither ``base`` nor ``field.input_dim`` gives it.
        context: The context, shape ``(*batch, C)``, of a conditional field.
        guidance: The classifier-free guidance weight :math:`w` (None: the field is used as it
            is; a number: the field takes ``(context, flag)``, see
            :class:`~pyro_flows.matching.GuidedField`).
        method: ``"euler"``, ``"midpoint"``, ``"heun"``, ``"rk4"``, ``"dopri5"`` or any
            torchdiffeq method.
        num_steps: The number of steps of a fixed-step method.
        rtol: The relative tolerance of an adaptive method.
        atol: The absolute tolerance of an adaptive method.
        trace: ``"auto"`` (exact when :math:`D \le` ``exact_dim``), ``"exact"`` or
            ``"hutchinson"``.
        exact_dim: The largest :math:`D` for which ``"auto"`` uses the exact trace.
        noise: The probe of Hutchinson's estimator, ``"gaussian"`` or ``"rademacher"``.
        validate_args: Whether to check the arguments of :meth:`log_prob` (torch's flag).

    Example:
        >>> from pyro_flows.nn import VectorField
        >>> prior = FlowMatchingPrior(VectorField(2, [16]), method="rk4", num_steps=4)
        >>> x = prior.rsample((5,))
        >>> x.shape, prior.log_prob(x).shape
        (torch.Size([5, 2]), torch.Size([5]))
        >>> cond = FlowMatchingPrior(VectorField(2, [16], context_dim=3), context=torch.randn(4, 3))
        >>> cond.batch_shape, cond.rsample().shape
        (torch.Size([4]), torch.Size([4, 2]))

    References:
        | Flow Matching for Generative Modeling (Lipman et al., 2023)
        | https://arxiv.org/abs/2210.02747
        | FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models
          (Grathwohl et al., 2019)
        | https://arxiv.org/abs/1810.01367
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        field: nn.Module,
        base: torch.distributions.Distribution | None = None,
        *,
        input_dim: int | None = None,
        context: Tensor | None = None,
        guidance: float | None = None,
        method: str = "dopri5",
        num_steps: int | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        trace: str = "auto",
        exact_dim: int = 16,
        noise: str = "gaussian",
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(field, nn.Module):
            raise TypeError(f"field must be a torch.nn.Module, got {type(field).__name__}")
        dim = input_dim if input_dim is not None else getattr(field, "input_dim", None)
        if base is None:
            if dim is None:
                raise ValueError("pass input_dim (or a base distribution): the field has none")
            check_positive_int(dim, "input_dim")
            like = next(field.parameters(), None)
            dtype = like.dtype if like is not None else torch.get_default_dtype()
            device = like.device if like is not None else None
            zeros = torch.zeros(dim, dtype=dtype, device=device)
            base = dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)
        base = _check_base(base, dim)
        dim = base.event_shape[0]
        self.field = field
        self.base = base
        self.context = context
        self.guidance = guidance
        check_choice(trace, ("auto", "exact", "hutchinson"), "trace")
        check_positive_int(exact_dim, "exact_dim", minimum=0)
        self._settings: dict[str, Any] = dict(
            method=method,
            num_steps=num_steps,
            rtol=rtol,
            atol=atol,
            trace=trace,
            exact_dim=exact_dim,
            noise=noise,
        )
        self._solver = make_solver(method, num_steps, rtol, atol)
        if guidance is not None:
            if context is None:
                raise ValueError("guidance needs a context (the field is conditional)")
            effective = GuidedField(field, guidance)
        else:
            effective = field
        if context is not None:
            if not isinstance(context, Tensor) or context.dim() < 1:
                raise ValueError("context must be a tensor of shape (..., C)")
            batch = torch.broadcast_shapes(base.batch_shape, context.shape[:-1])
        else:
            batch = base.batch_shape
        self._field = effective
        exact = trace == "exact" or (trace == "auto" and dim <= exact_dim)
        self._transform = FFJORD(
            dim,
            effective,
            trace="exact" if exact else "hutchinson",
            noise=noise,
            method=self._solver.method,
            rtol=rtol,
            atol=atol,
            step_size=self._solver.step_size,
            context=context,
            cache_size=0,
        )
        super().__init__(batch, base.event_shape, validate_args=validate_args)

    @property
    def input_dim(self) -> int:
        """The event size :math:`D`."""
        return self.event_shape[0]

    @property
    def nfe(self) -> NFECounter:
        """Evaluations of the field by samples and log-densities (``nfe.forward``, ``reset()``)."""
        return self._transform.nfe

    def _rebuild(self, **changes: Any) -> FlowMatchingPrior:
        kwargs: dict[str, Any] = dict(
            base=self.base, context=self.context, guidance=self.guidance, **self._settings
        )
        kwargs.update(changes)
        new = FlowMatchingPrior(self.field, validate_args=self._validate_args, **kwargs)
        new._transform._record = self._transform._record  # one NFE count for the family
        return new

    def condition(self, context: Tensor, guidance: float | None = None) -> FlowMatchingPrior:
        r"""Returns :math:`p(x \mid c)` for a context of shape ``(*batch, C)`` (batch shape ``batch``).

        Arguments:
            context: The context :math:`c`.
            guidance: A classifier-free guidance weight (default: this prior's).
        """
        return self._rebuild(
            context=context, guidance=self.guidance if guidance is None else guidance
        )

    def with_solver(self, **settings: Any) -> FlowMatchingPrior:
        """Returns this prior with other solver settings (``method``, ``num_steps``, ``trace``...)."""
        if "method" in settings and "num_steps" not in settings:
            settings["num_steps"] = None
        return self._rebuild(**settings)

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> FlowMatchingPrior:
        """Returns this distribution with batch shape ``batch_shape`` (for ``pyro.plate``)."""
        batch_shape = torch.Size(batch_shape)
        context = self.context
        if context is not None:
            context = context.expand(*batch_shape, context.shape[-1])
        return self._rebuild(base=self.base.expand(batch_shape), context=context)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        """Draws differentiable samples of shape ``sample_shape + batch_shape + (D,)``."""
        sample_shape = torch.Size(sample_shape)
        z = self.base.expand(self.batch_shape).rsample(sample_shape)
        s = self._settings
        return solve_field(
            self._field,
            z,
            context=self.context,
            method=s["method"],
            num_steps=s["num_steps"],
            rtol=s["rtol"],
            atol=s["atol"],
            counter=self.nfe,
        )

    def log_prob(self, value: Tensor) -> Tensor:
        r"""Returns :math:`\log p_1(x)` of shape ``value.shape[:-1]`` (broadcast with the batch)."""
        if self._validate_args:
            self._validate_sample(value)
        check_last_dim(value, self.input_dim, "value")
        z, ladj = self._transform.inverse_and_ladj(value)
        return self.base.log_prob(z) - ladj

    def inverse(self, value: Tensor) -> Tensor:
        r"""Maps points back to the source (:math:`t = 1 \to 0`), without the log-determinant."""
        s = self._settings
        return solve_field(
            self._field,
            value,
            context=self.context,
            t0=1.0,
            t1=0.0,
            method=s["method"],
            num_steps=s["num_steps"],
            rtol=s["rtol"],
            atol=s["atol"],
            counter=self.nfe,
        )

    def __repr__(self) -> str:
        s = self._settings
        steps = f"num_steps={s['num_steps']}" if s["num_steps"] else f"rtol={s['rtol']}"
        ctx = "" if self.context is None else f", context_shape={tuple(self.context.shape)}"
        return (
            f"FlowMatchingPrior(input_dim={self.input_dim}, method={s['method']!r}, {steps}, "
            f"trace={self._transform.trace!r}, batch_shape={tuple(self.batch_shape)}{ctx})"
        )


def cnf_distribution(
    field: nn.Module,
    input_dim: int | None = None,
    *,
    base: torch.distributions.Distribution | None = None,
    freeze: bool = False,
    **kwargs: Any,
) -> FlowMatchingPrior:
    """Builds a :class:`FlowMatchingPrior` from a trained field; ``freeze`` stops its gradients.

    Arguments:
        field: The trained field.
        input_dim: :math:`D` (default: ``base``'s or ``field.input_dim``).
        base: The source distribution (default :math:`N(0, I)`).
        freeze: Switch off the gradients of the field's parameters (a fixed prior: inference
            then spends nothing on them).
        kwargs: The keyword arguments of :class:`FlowMatchingPrior` (``context``,
            ``guidance``, ``method``, ``num_steps``, ``rtol``, ``atol``, ``trace``...).

    Example:
        >>> from pyro_flows.nn import VectorField
        >>> prior = cnf_distribution(VectorField(2, [16]), method="heun", num_steps=8)
        >>> prior.sample((3,)).shape
        torch.Size([3, 2])
    """
    if freeze:
        field.requires_grad_(False)
    return FlowMatchingPrior(field, base, input_dim=input_dim, **kwargs)
