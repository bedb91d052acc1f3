"""A :class:`FlowTransform` whose events have any shape: vectors ``(D,)`` or images ``(C, H, W)``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import constraints

from .._validation import check_positive_int
from .base import FlowTransform

__all__ = ["ShapedFlowTransform", "check_event_shape"]


def check_event_shape(event_shape: Sequence[int] | int, name: str = "event_shape") -> tuple:
    """Returns ``event_shape`` as a tuple: an integer ``D`` (a vector) or ``(C, H, W)``."""
    if isinstance(event_shape, int) and not isinstance(event_shape, bool):
        event_shape = (event_shape,)
    if not isinstance(event_shape, Sequence) or len(event_shape) not in (1, 3):
        raise ValueError(
            f"{name} must be an integer D, a vector shape (D,) or an image shape (C, H, W), "
            f"got {event_shape!r}"
        )
    for size in event_shape:
        check_positive_int(size, f"every entry of {name}")
    return tuple(event_shape)


class ShapedFlowTransform(FlowTransform):
    """A :class:`FlowTransform` on events of shape ``(D,)`` (``event_dim=1``) or ``(C, H, W)``.

    ``domain`` and ``codomain`` are set per instance from the event shape; inputs are checked
    to end with that shape, and log-determinants are summed over all event dimensions.

    Arguments:
        event_shape: The event shape of the input.
        cache_size: 1 (default) to reuse the last ``(x, y)`` pair, 0 to never cache.
    """

    def __init__(self, event_shape: Sequence[int] | int, cache_size: int = 1) -> None:
        event_shape = check_event_shape(event_shape)
        super().__init__(math.prod(event_shape), cache_size=cache_size)
        self.event_shape = event_shape
        self.out_shape = event_shape  # a reshaping transform (Squeeze) overrides it
        constraint = constraints.independent(constraints.real, len(event_shape))
        self.domain = self.codomain = constraint

    @property
    def event_ndim(self) -> int:
        """The number of event dimensions: 1 for vectors, 3 for images."""
        return len(self.event_shape)

    @property
    def channels(self) -> int:
        """The features of a vector or the channels :math:`C` of an image."""
        return self.event_shape[0]

    def _check(self, x: Tensor, shape: tuple, name: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape) :]) != shape:
            raise ValueError(
                f"{name} must have shape (..., {', '.join(map(str, shape))}) "
                f"(event shape {shape}), got shape {tuple(x.shape)}"
            )

    def _call(self, x: Tensor) -> Tensor:
        self._check(x, self.event_shape, "x")
        y, ladj = self._call_and_ladj(x)
        self._remember(x, y, ladj)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        self._check(y, self.out_shape, "y")
        x, ladj = self._inverse_and_ladj(y)
        self._remember(x, y, ladj)
        return x

    def _batch(self, x: Tensor) -> torch.Size:
        return x.shape[: x.dim() - self.event_ndim]

    def extra_repr(self) -> str:  # noqa: D102
        return f"event_shape={self.event_shape}"

    def __repr__(self) -> str:
        # torch's Transform.__repr__ would hide the module's arguments and submodules
        return nn.Module.__repr__(self)
