"""The contract every pyro_flows transform meets: a safe cache, a module-valued inverse."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from pyro.distributions import TransformModule
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import ComposeTransformModule
from pyro.nn import DenseNN
from torch import Tensor, nn
from torch.distributions import constraints
from torch.distributions.utils import _sum_rightmost

from .._validation import (
    check_finite,
    check_hidden_dims,
    check_last_dim,
    check_positive_float,
    check_positive_int,
)
from .cache import Deferred, Pass, resolve, state_of

__all__ = [
    "Compose",
    "ConditionalCompose",
    "ConditionalFlowTransform",
    "FlowTransform",
    "HypernetConditional",
    "InverseFlowTransform",
    "bounded_log_scale",
    "broadcast_context",
    "dense_hypernet",
    "one_input_made",
    "precise_softplus",
    "sum_last",
    "uncached_call",
    "uncached_inverse",
]


def bounded_log_scale(raw: Tensor, bound: float | None) -> Tensor:
    r"""Maps a raw network output to a log-scale in :math:`(-b, b)`: :math:`s = b \tanh(r / b)`.

    Smooth (gradients never vanish abruptly as with a hard clamp) and the identity near 0, so
    a zero-initialised network starts at the identity map. ``bound=None`` leaves ``raw`` as is.

    Example:
        >>> bounded_log_scale(torch.tensor([0.0, 100.0]), 5.0)
        tensor([0., 5.])
    """
    if bound is None:
        return raw
    return bound * torch.tanh(raw / bound)


def check_log_scale_bound(bound: float | None) -> float | None:
    """Returns ``bound`` (a positive number, or None for no bound) for :func:`bounded_log_scale`.

    Raises a TypeError for a non-number, a ValueError for a number that is not positive.
    """
    return None if bound is None else check_positive_float(bound, "log_scale_bound")


def precise_softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x))`` to float64 precision everywhere.

    torch's default threshold (20) replaces the value by ``x`` above 20, an error of 2e-9; at
    40 the neglected ``exp(-40) = 4e-18`` is below half an ulp of ``x`` in float64.
    """
    return torch.nn.functional.softplus(x, beta=1.0, threshold=40.0)


def sum_last(t: Tensor, weight: float = 1.0) -> Tensor:
    """``weight * t.sum(-1)``, as one matrix-vector product.

    Summing rows of a few dozen entries is a reduction torch's CPU kernels do poorly; BLAS's
    ``gemv`` does it faster (docs/benchmarks.md), and ``weight`` rides along at no extra pass.
    The ones vector is made from ``t`` itself, so it follows its dtype and device.
    """
    return t @ t.new_full(t.shape[-1:], weight)


def dense_hypernet(
    context_dim: int,
    hidden_dims: Sequence[int] | None,
    param_dims: list[int],
    default_width: int,
    **kwargs: Any,
) -> nn.Module:
    """A :class:`pyro.nn.DenseNN` from a context to parameters of sizes ``param_dims``.

    ``hidden_dims`` defaults to two layers of ``default_width`` (Pyro uses ``10 * D``);
    ``kwargs`` go to ``DenseNN`` (e.g. ``nonlinearity``).
    """
    check_positive_int(context_dim, "context_dim")
    hidden = check_hidden_dims(hidden_dims or [default_width, default_width])
    return DenseNN(context_dim, hidden, param_dims=param_dims, **kwargs)


@contextmanager
def one_input_made() -> Iterator[None]:
    """Lets Pyro build a conditional MADE over one input without its warning.

    Pyro warns that such a network (``ConditionalAutoRegressiveNN`` with ``input_dim = 1``)
    should be an affine map instead; given a context it is one: its outputs see the context
    only, so a conditional autoregressive layer of one variable is a map of :math:`x` whose
    parameters come from the context, which is what a conditional density of one variable needs.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "ConditionalAutoRegressiveNN input_dim = 1")
        yield


def broadcast_context(x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
    """Expands ``x`` of shape ``(*b1, D)`` and ``context`` of shape ``(*b2, C)`` to one batch shape."""
    batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
    return x.expand(*batch, x.shape[-1]), context.expand(*batch, context.shape[-1])


class FlowTransform(TransformModule):
    r"""Base class of the bijective vector transforms of pyro_flows.

    A subclass implements :meth:`_call_and_ladj` (and :meth:`_inverse_and_ladj`); this class
    turns them into Pyro's ``_call``/``_inverse``/``log_abs_det_jacobian`` triple, keeping the
    :math:`\log|\det J|` computed by either direction so that scoring the output of a pass costs
    nothing more.

    Unlike Pyro's and torch's transforms, the cache is keyed on the identity of the tensors *and*
    on the version of every parameter: after an optimizer step a transform recomputes, so the
    same data tensor can be scored at every step (Pyro issue #2564), and ``t.inv`` is itself a
    module that exposes the parameters (Pyro issue #2543).

    Implementing a flow (the contract suite's registry tests fail when a helper, an export or a
    family misses its step):

    1. **The layer**, in a module of its own in ``pyro_flows/transforms/`` (one per family):
       subclass this class (``ShapedFlowTransform`` of ``_shaped.py`` for image events), set
       ``domain``/``codomain``, and implement :meth:`_call_and_ladj` and
       :meth:`_inverse_and_ladj`, both returning the *forward* log-determinant summed over
       the event (a :class:`~pyro_flows.transforms.cache.Deferred` where only scoring needs
       it), plus :meth:`_ladj` where the log-determinant alone is cheaper than a pass. Never
       touch the cache: :meth:`_call`/:meth:`_inverse` keep the pass as a
       :class:`~pyro_flows.transforms.cache.Pass`. Where no closed-form inverse exists,
       solve to a stated tolerance and say how in the docstring.
    2. **State**: parameters are ``nn.Parameter`` objects or submodules; arguments are checked with
       ``pyro_flows._validation`` (TypeError for the wrong kind, ValueError for a bad value).
    3. **The conditional variant** subclasses :class:`ConditionalFlowTransform` (or
       :class:`HypernetConditional`): ``_condition(context)`` returns the layer above on the
       context. It accepts ``input_dim = 1``: the layer's parameters then come from the
       context alone.
    4. **Helpers** ``name(input_dim, ..., hidden_dims=None, ...)`` and
       ``conditional_name(input_dim, context_dim, ...)``, with their return types annotated.
    5. **Exports**: the new names go in the module's sorted ``__all__`` only; the package
       exports every module's list (a new module also joins ``_MODULES`` and the star
       imports of ``pyro_flows/transforms/__init__.py``).
    6. **Tests**: a case per helper in ``TRANSFORMS`` of ``tests/transforms/test_contract.py``
       (the shared suite: round trips, log-det against autograd, shapes, SVI, persistence,
       conditioning, dtypes); family-specific checks in ``tests/transforms/test_<family>.py``.
    7. **The builder**: a :class:`~pyro_flows.flows.Family` in
       :data:`~pyro_flows.flows.FAMILIES` (``min_dim``, ``invertible``, ``fast_direction``,
       ...), named in :func:`~pyro_flows.flows.build`'s docstring list.
    8. **Docs**: docstring with the equation, a doctest and references; measurements go to
       ``docs/benchmarks.md``, leaving the code a one-line reason.

    Arguments:
        input_dim: The size :math:`D` of the event; inputs have shape ``(*batch, D)``.
        cache_size: 1 (default) to reuse the last ``(x, y)`` pair, 0 to never cache.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, input_dim: int, cache_size: int = 1) -> None:
        super().__init__(cache_size=cache_size)
        self.input_dim = check_positive_int(input_dim, "input_dim")
        self._saved: Pass | None = None  # the last pass, see _remember

    # -- to be implemented by subclasses -------------------------------------------------------
    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``y = f(x)`` and ``log|det df/dx|`` of shape ``x.shape[:-1]``.

        The log-determinant may be a :class:`Deferred` when it costs work the output does not.
        """
        raise NotImplementedError

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``x = f^{-1}(y)`` and the *forward* ``log|det df/dx|`` at that ``x``."""
        raise NotImplementedError

    def _ladj(self, x: Tensor, y: Tensor) -> Tensor:
        """``log|det df/dx|`` for an (x, y) pair that is not cached; recomputes from ``x``."""
        return resolve(self._call_and_ladj(x)[1])

    # -- Pyro/torch transform interface --------------------------------------------------------
    @property
    def sign(self) -> int:
        r"""The sign of :math:`\det J` for one-dimensional events (always +1: orientation kept)."""
        return 1

    def _call(self, x: Tensor) -> Tensor:
        check_last_dim(x, self.input_dim, "x")
        y, ladj = self._call_and_ladj(x)
        self._remember(x, y, ladj)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        check_last_dim(y, self.input_dim, "y")
        x, ladj = self._inverse_and_ladj(y)
        self._remember(x, y, ladj)
        return x

    def _remember(self, x: Tensor, y: Tensor, ladj: Tensor | Deferred) -> None:
        """Keeps the pass ``y = f(x)`` as the cache (a subclass's ``_call`` calls it too)."""
        # Straight into __dict__: nn.Module.__setattr__'s checks cost more than a small layer.
        self.__dict__["_saved"] = Pass(x, y, ladj, state_of(self))

    def _hit_x(self, x: Tensor) -> bool:
        # The last pass answers only for the very same tensor and unchanged parameters.
        saved = self._saved
        return saved is not None and saved.x is x and saved.state.serves(state_of(self))

    def _hit_y(self, y: Tensor) -> bool:
        saved = self._saved
        return saved is not None and saved.y is y and saved.state.serves(state_of(self))

    def _saved_ladj(self) -> Tensor:
        # The log-det of the last pass, computed now if that pass deferred it.
        saved = self._saved
        ladj = saved.ladj
        if isinstance(ladj, Deferred):
            ladj = ladj.compute()
            if torch.is_grad_enabled() == saved.state.grad_enabled:  # keep a value of its mode
                self.__dict__["_saved"] = Pass(saved.x, saved.y, ladj, saved.state)
        return ladj

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Returns :math:`\log|\det \partial y/\partial x|`, shape ``x.shape[:-1]``."""
        saved = self._saved
        if saved is not None and saved.y is y and self._hit_x(x):
            return self._saved_ladj()
        return self._ladj(x, y)

    def __call__(self, x: Tensor) -> Tensor:
        """Computes ``y = f(x)``, answering from the cache when ``x`` is the last input."""
        if self._cache_size == 1 and self._hit_x(x):
            return self._saved.y
        return self._call(x)

    def _inv_call(self, y: Tensor) -> Tensor:
        if self._cache_size == 1 and self._hit_y(y):
            return self._saved.x
        return self._inverse(y)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""Returns ``y = f(x)`` and :math:`\log|\det \partial y/\partial x|` from one pass."""
        if not (self._cache_size == 1 and self._hit_x(x)):
            self._call(x)  # a fresh pass is valid by construction: no second cache check
        return self._saved.y, self._saved_ladj()

    def inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        r"""Returns ``x = f^{-1}(y)`` and the forward :math:`\log|\det J|` at ``x``, one pass."""
        if not (self._cache_size == 1 and self._hit_y(y)):
            self._inverse(y)
        return self._saved.x, self._saved_ladj()

    def clear_cache(self) -> None:
        """Forgets the last pass (never needed for correctness; frees its tensors)."""
        self._saved = None

    def with_cache(self, cache_size: int = 1) -> FlowTransform:
        """Returns this transform with caching switched on (1) or off (0), sharing parameters."""
        if cache_size not in (0, 1):
            raise ValueError(f"cache_size must be 0 or 1, got {cache_size}")
        self._cache_size = cache_size
        return self

    @property
    def inv(self) -> InverseFlowTransform:
        """The inverse transform, itself a module holding this one's parameters."""
        inv = self.__dict__.get("_inv")
        if inv is None:
            inv = InverseFlowTransform(self)
            # Plain attribute, not a submodule: registering it would make a cycle of modules.
            self.__dict__["_inv"] = inv
        return inv

    def forward_shape(self, shape: torch.Size) -> torch.Size:  # noqa: D102
        return shape

    def inverse_shape(self, shape: torch.Size) -> torch.Size:  # noqa: D102
        return shape

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_saved"] = None
        return state

    def __hash__(self) -> int:
        return id(self)


class InverseFlowTransform(TransformModule):
    """The inverse of a :class:`FlowTransform`; a module, so its parameters stay visible."""

    bijective = True

    def __init__(self, base: FlowTransform) -> None:
        super().__init__(cache_size=base._cache_size)
        self.base = base

    @constraints.dependent_property(is_discrete=False)
    def domain(self) -> constraints.Constraint:  # noqa: D102
        return self.base.codomain

    @constraints.dependent_property(is_discrete=False)
    def codomain(self) -> constraints.Constraint:  # noqa: D102
        return self.base.domain

    @property
    def sign(self) -> int:  # noqa: D102
        return self.base.sign

    @property
    def inv(self) -> FlowTransform:  # noqa: D102
        return self.base

    def __call__(self, x: Tensor) -> Tensor:
        """Computes the inverse of the wrapped transform (sharing its cache)."""
        return self.base._inv_call(x)

    def _inv_call(self, y: Tensor) -> Tensor:
        return self.base(y)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the inverse of the wrapped transform at ``x`` and its log-determinant."""
        y, ladj = self.base.inverse_and_ladj(x)
        return y, -ladj

    def inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the wrapped transform at ``y`` and this transform's log-determinant there."""
        x, ladj = self.base.call_and_ladj(y)
        return x, -ladj

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return -self.base.log_abs_det_jacobian(y, x)

    def with_cache(self, cache_size: int = 1) -> InverseFlowTransform:  # noqa: D102
        return self.base.with_cache(cache_size).inv

    def forward_shape(self, shape: torch.Size) -> torch.Size:  # noqa: D102
        return self.base.inverse_shape(shape)

    def inverse_shape(self, shape: torch.Size) -> torch.Size:  # noqa: D102
        return self.base.forward_shape(shape)

    def clear_cache(self) -> None:  # noqa: D102
        self.base.clear_cache()

    def __hash__(self) -> int:
        return id(self)


class ConditionalFlowTransform(ConditionalTransformModule):
    """Base class of conditional transforms: ``.condition(context)`` gives a :class:`FlowTransform`.

    Arguments:
        input_dim: The size :math:`D` of the event.
        context_dim: The size :math:`C` of the context; a context has shape ``(*batch, C)`` and
            broadcasts against the batch shape of the input.
    """

    def __init__(self, input_dim: int, context_dim: int) -> None:
        super().__init__()
        self.input_dim = check_positive_int(input_dim, "input_dim")
        self.context_dim = check_positive_int(context_dim, "context_dim")

    def condition(self, context: Tensor) -> FlowTransform:
        """Returns the transform for ``context`` (shape ``(C,)`` or ``(*batch, C)``)."""
        if context is None:
            raise ValueError(
                f"{type(self).__name__} is conditional: pass a context of shape "
                f"(..., {self.context_dim})"
            )
        check_last_dim(context, self.context_dim, "context")
        check_finite(context, "context")
        return self._condition(context)

    def _condition(self, context: Tensor) -> FlowTransform:
        raise NotImplementedError

    def __hash__(self) -> int:
        return id(self)


class HypernetConditional(ConditionalFlowTransform):
    """A conditional transform whose parameters all come from a hypernetwork of the context.

    ``.condition(c)`` returns ``conditioned(input_dim, hypernet, c)``; subclasses set the
    class attribute ``conditioned``.

    Arguments:
        input_dim: The event size :math:`D`.
        context_dim: The context size :math:`C`.
        hypernet: A module mapping a context of shape ``(*batch, C)`` to the parameters.
    """

    conditioned: type[FlowTransform]

    def __init__(self, input_dim: int, context_dim: int, hypernet: nn.Module) -> None:
        super().__init__(input_dim, context_dim)
        if not isinstance(hypernet, nn.Module):
            raise TypeError(f"hypernet must be a torch.nn.Module, got {type(hypernet).__name__}")
        self.hypernet = hypernet

    def _condition(self, context: Tensor) -> FlowTransform:
        return self.conditioned(self.input_dim, self.hypernet, context)


def _part_call_and_ladj(part: torch.distributions.Transform, x: Tensor) -> tuple[Tensor, Tensor]:
    if hasattr(part, "call_and_ladj"):
        return part.call_and_ladj(x)
    y = part(x)  # a transform from elsewhere: its own cache serves the log-determinant
    ladj = part.log_abs_det_jacobian(x, y)
    return y, _sum_rightmost(ladj, 1 - part.domain.event_dim)


class Compose(ComposeTransformModule, TransformModule):
    """A chain of transform modules whose inverse is a module too (parameters stay visible)."""

    def __init__(self, parts: list[torch.nn.Module], cache_size: int = 0) -> None:
        super().__init__(parts, cache_size=cache_size)

    @property
    def inv(self) -> Compose:
        """The inverse chain, built from the parts' inverses in reverse order."""
        inv = self.__dict__.get("_inv")
        if inv is None:
            inv = Compose([p.inv for p in reversed(self.parts)])
            self.__dict__["_inv"] = inv
            inv.__dict__["_inv"] = self
        return inv

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the chain's output and its total log-determinant, one pass per part."""
        total = 0
        for part in self.parts:
            x, ladj = _part_call_and_ladj(part, x)
            total = total + ladj
        return x, total

    def inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Inverts the chain and returns the forward log-determinant at the result."""
        total = 0
        for part in reversed(self.parts):
            if hasattr(part, "inverse_and_ladj"):
                y, ladj = part.inverse_and_ladj(y)
                total = total + ladj
            else:
                y, ladj = _part_call_and_ladj(part.inv, y)
                total = total - ladj
        return y, total

    def clear_cache(self) -> None:
        """Forgets the cached pass of every part."""
        for p in self.parts:
            p.clear_cache()

    def __hash__(self) -> int:
        return id(self)


class ConditionalCompose(ConditionalTransformModule, torch.nn.ModuleList):
    """A chain mixing conditional and plain transforms; ``.condition(c)`` gives a :class:`Compose`."""

    def __init__(self, parts: list[torch.nn.Module]) -> None:
        super().__init__()
        for part in parts:
            self.append(part)

    def condition(self, context: Tensor) -> Compose:
        """Conditions every conditional part on ``context``; plain parts pass through."""
        return Compose(
            [
                p.condition(context) if isinstance(p, ConditionalTransformModule) else p
                for p in self
            ]
        )

    def __hash__(self) -> int:
        return id(self)


# -- chain passes that write no per-layer cache ---------------------------------------------------
# NormalizingFlow's log_prob/rsample hold one cache for the whole chain instead: per-layer caches
# kept every intermediate tensor alive between calls (time and memory, docs/benchmarks.md), and
# answered nothing a chain cache cannot.


def _negated(ladj: Tensor | Deferred) -> Tensor | Deferred:
    if isinstance(ladj, Deferred):
        return Deferred(lambda: -ladj.compute())
    return -ladj


def uncached_call(
    transform: torch.distributions.Transform, x: Tensor
) -> tuple[Tensor, list[Tensor | Deferred]] | None:
    """``y = f(x)`` and the log-determinant of each part, leaving the parts' caches untouched.

    Returns None for a transform that is not built from pyro_flows' transforms (the caller falls
    back to Pyro's machinery). The log-determinants may be :class:`Deferred`.
    """
    if isinstance(transform, FlowTransform):
        y, ladj = transform._call_and_ladj(x)
        return y, [ladj]
    if isinstance(transform, InverseFlowTransform):
        y, ladj = transform.base._inverse_and_ladj(x)
        return y, [_negated(ladj)]
    if isinstance(transform, Compose):
        ladjs: list[Tensor | Deferred] = []
        for part in transform.parts:
            out = uncached_call(part, x)
            if out is None:  # a transform from elsewhere: its own cache serves its log-det
                x, ladj = _part_call_and_ladj(part, x)
                ladjs.append(ladj)
            else:
                x, part_ladjs = out
                ladjs.extend(part_ladjs)
        return x, ladjs
    return None


def uncached_inverse(
    transform: torch.distributions.Transform, y: Tensor
) -> tuple[Tensor, Tensor] | None:
    """``x = f^{-1}(y)`` and the forward log-determinant at ``x``, writing no part's cache.

    A part whose cache holds exactly ``y`` (and unchanged parameters) still answers from it.
    Returns None for a transform not built from pyro_flows' transforms.
    """
    if isinstance(transform, FlowTransform):
        if transform._cache_size == 1 and transform._hit_y(y):
            return transform._saved.x, transform._saved_ladj()
        x, ladj = transform._inverse_and_ladj(y)
        return x, resolve(ladj)
    if isinstance(transform, InverseFlowTransform):
        x, ladj = transform.base._call_and_ladj(y)
        return x, -resolve(ladj)
    if isinstance(transform, Compose):
        total: Tensor | int = 0
        for part in reversed(transform.parts):
            out = uncached_inverse(part, y)
            if out is None:
                y, ladj = _part_call_and_ladj(part.inv, y)
                total = total - ladj
            else:
                y, ladj = out
                total = total + ladj
        return y, total
    return None
