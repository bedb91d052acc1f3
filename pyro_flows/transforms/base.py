"""The contract every pyro_flows transform meets: a safe cache, a module-valued inverse."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from pyro.distributions import TransformModule
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import ComposeTransformModule
from pyro.nn import DenseNN
from torch import Tensor, nn
from torch.distributions import constraints
from torch.distributions.utils import _sum_rightmost

from .._validation import check_finite, check_hidden_dims, check_last_dim, check_positive_int

__all__ = [
    "Compose",
    "ConditionalCompose",
    "ConditionalFlowTransform",
    "Deferred",
    "FlowTransform",
    "HypernetConditional",
    "InverseFlowTransform",
    "broadcast_context",
    "dense_hypernet",
    "precise_softplus",
    "sum_last",
    "uncached_call",
    "uncached_inverse",
]


def _state_key(module: torch.nn.Module) -> tuple:
    """A key that changes whenever a parameter or buffer is updated in place or moved.

    ``optimizer.step()``, ``load_state_dict`` and ``.to()`` all change it, so a cache keyed on it
    can never answer with values computed from old parameters (Pyro issue #2564).
    """
    # A direct walk of the module tree: four times faster than parameters()/buffers(), and it
    # runs on every pass of every layer.
    key = [torch.is_grad_enabled()]
    stack = [module]
    while stack:
        m = stack.pop()
        for t in m._parameters.values():
            if t is not None:
                key.append((t._version, t.data_ptr()))
        for t in m._buffers.values():
            if t is not None:
                key.append((t._version, t.data_ptr()))
        for c in m._modules.values():
            if c is not None:
                stack.append(c)
    return tuple(key)


def _cache_valid(saved: tuple, now: tuple) -> bool:
    # A value computed with gradients on may serve a no-grad call, not the reverse.
    return saved[1:] == now[1:] and (saved[0] or not now[0])


def precise_softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x))`` to float64 precision everywhere.

    torch's default threshold (20) replaces the value by ``x`` above 20, an error of 2e-9; at
    40 the neglected ``exp(-40) = 4e-18`` is below half an ulp of ``x`` in float64.
    """
    return torch.nn.functional.softplus(x, beta=1.0, threshold=40.0)


def sum_last(t: Tensor, weight: float = 1.0) -> Tensor:
    """``weight * t.sum(-1)``, as one matrix-vector product.

    Summing rows of a few dozen entries is a reduction torch's CPU kernels do poorly; BLAS's
    ``gemv`` does it in half the time, and ``weight`` rides along at no extra pass. The ones
    vector is made from ``t`` itself, so it follows its dtype and device.
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


def broadcast_context(x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
    """Expands ``x`` of shape ``(*b1, D)`` and ``context`` of shape ``(*b2, C)`` to one batch shape."""
    batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
    return x.expand(*batch, x.shape[-1]), context.expand(*batch, context.shape[-1])


class Deferred:
    """A log-determinant computed on first request, so that a sampling pass never pays for it.

    ``_call_and_ladj``/``_inverse_and_ladj`` may return one in place of the tensor.
    """

    __slots__ = ("compute",)

    def __init__(self, compute: Callable[[], Tensor]) -> None:
        self.compute = compute


def _resolve(ladj: Tensor | Deferred) -> Tensor:
    return ladj.compute() if isinstance(ladj, Deferred) else ladj


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
        self._saved = None  # (x, y, ladj, state key) of the last pass

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
        return _resolve(self._call_and_ladj(x)[1])

    # -- Pyro/torch transform interface --------------------------------------------------------
    @property
    def sign(self) -> int:
        r"""The sign of :math:`\det J` for one-dimensional events (always +1: orientation kept)."""
        return 1

    def _call(self, x: Tensor) -> Tensor:
        check_last_dim(x, self.input_dim, "x")
        y, ladj = self._call_and_ladj(x)
        # Straight into __dict__: nn.Module.__setattr__'s checks cost more than a small layer.
        self.__dict__["_saved"] = (x, y, ladj, _state_key(self))
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        check_last_dim(y, self.input_dim, "y")
        x, ladj = self._inverse_and_ladj(y)
        self.__dict__["_saved"] = (x, y, ladj, _state_key(self))
        return x

    def _hit(self, index: int, value: Tensor) -> bool:
        # The last pass answers only for the very same tensor and unchanged parameters.
        saved = self._saved
        return (
            saved is not None
            and saved[index] is value
            and _cache_valid(saved[3], _state_key(self))
        )

    def _saved_ladj(self) -> Tensor:
        # The log-det of the last pass, computed now if that pass deferred it.
        saved = self._saved
        ladj = saved[2]
        if isinstance(ladj, Deferred):
            ladj = ladj.compute()
            if torch.is_grad_enabled() == saved[3][0]:  # keep only a value of the pass's mode
                self.__dict__["_saved"] = (saved[0], saved[1], ladj, saved[3])
        return ladj

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Returns :math:`\log|\det \partial y/\partial x|`, shape ``x.shape[:-1]``."""
        saved = self._saved
        if saved is not None and saved[1] is y and self._hit(0, x):
            return self._saved_ladj()
        return self._ladj(x, y)

    def __call__(self, x: Tensor) -> Tensor:
        """Computes ``y = f(x)``, answering from the cache when ``x`` is the last input."""
        if self._cache_size == 1 and self._hit(0, x):
            return self._saved[1]
        return self._call(x)

    def _inv_call(self, y: Tensor) -> Tensor:
        if self._cache_size == 1 and self._hit(1, y):
            return self._saved[0]
        return self._inverse(y)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""Returns ``y = f(x)`` and :math:`\log|\det \partial y/\partial x|` from one pass."""
        if not (self._cache_size == 1 and self._hit(0, x)):
            self._call(x)  # a fresh pass is valid by construction: no second cache check
        return self._saved[1], self._saved_ladj()

    def inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        r"""Returns ``x = f^{-1}(y)`` and the forward :math:`\log|\det J|` at ``x``, one pass."""
        if not (self._cache_size == 1 and self._hit(1, y)):
            self._inverse(y)
        return self._saved[0], self._saved_ladj()

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
# kept every intermediate tensor alive between calls, which cost about 5% of a 5-layer IAF
# sampling pass at N=10 000 (and memory), and answered nothing a chain cache cannot.


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
        if transform._cache_size == 1 and transform._hit(1, y):
            return transform._saved[0], transform._saved_ladj()
        x, ladj = transform._inverse_and_ladj(y)
        return x, _resolve(ladj)
    if isinstance(transform, InverseFlowTransform):
        x, ladj = transform.base._call_and_ladj(y)
        return x, -_resolve(ladj)
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
