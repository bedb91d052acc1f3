"""The records behind the caches: a layer's last pass and a flow's last draw, as named types.

A :class:`~pyro_flows.transforms.FlowTransform` keeps its last pass as a :class:`Pass`;
:class:`~pyro_flows.distributions.NormalizingFlow` keeps its last draw as a :class:`Draw`.
Both answer only for the very tensors they hold and only while :class:`ParamState` says the
parameters are those the values were computed with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Deferred", "Draw", "ParamState", "Pass", "resolve", "state_of"]


class Deferred:
    """A log-determinant computed on first request, so that a sampling pass never pays for it.

    ``_call_and_ladj``/``_inverse_and_ladj`` may return one in place of the tensor.
    """

    __slots__ = ("compute",)

    def __init__(self, compute: Callable[[], Tensor]) -> None:
        self.compute = compute


def resolve(ladj: Tensor | Deferred) -> Tensor:
    """The tensor of a log-determinant, computing it now if it was :class:`Deferred`."""
    return ladj.compute() if isinstance(ladj, Deferred) else ladj


@dataclass(frozen=True, slots=True)
class ParamState:
    """The state a cached value was computed under: the grad mode and every tensor's version.

    Arguments:
        grad_enabled: Whether gradients were enabled (a value computed with gradients on may
            serve a no-grad call, not the reverse: it would lack the graph).
        versions: ``(version, data_ptr)`` of every parameter and buffer of the module tree.
            ``optimizer.step()``, ``load_state_dict`` and ``.to()`` all change it, so a cache
            keyed on it never answers with values of old parameters (Pyro issue #2564).
    """

    grad_enabled: bool
    versions: tuple[tuple[int, int], ...]

    def serves(self, now: ParamState) -> bool:
        """Whether a value computed under this state may answer a call made under ``now``."""
        return self.versions == now.versions and (self.grad_enabled or not now.grad_enabled)


def state_of(module: torch.nn.Module) -> ParamState:
    """The :class:`ParamState` of ``module`` now."""
    # A direct walk of the module tree, cheaper than parameters()/buffers() (docs/benchmarks.md):
    # it runs on every pass of every layer.
    versions = []
    stack = [module]
    while stack:
        m = stack.pop()
        for t in m._parameters.values():
            if t is not None:
                versions.append((t._version, t.data_ptr()))
        for t in m._buffers.values():
            if t is not None:
                versions.append((t._version, t.data_ptr()))
        for c in m._modules.values():
            if c is not None:
                stack.append(c)
    return ParamState(torch.is_grad_enabled(), tuple(versions))


@dataclass(frozen=True, slots=True)
class Pass:
    r"""A layer's last pass: ``y = f(x)`` (or ``x = f^{-1}(y)``) and the forward log-det.

    Arguments:
        x: The input of the forward direction.
        y: The output of the forward direction.
        ladj: :math:`\log|\det \partial y / \partial x|`, or a :class:`Deferred` one.
        state: The parameters' state during the pass.
    """

    x: Tensor
    y: Tensor
    ladj: Tensor | Deferred
    state: ParamState


@dataclass(frozen=True, slots=True)
class Draw:
    """A flow's last draw ``x = f(z)``, so that scoring ``x`` itself needs no pass.

    Arguments:
        z: The base noise.
        x: The sample.
        x_version: ``x._version`` at the draw: an in-place change of ``x`` voids the record.
        ladjs: The log-determinants of the chain's parts (some maybe :class:`Deferred`).
        context: The context of the draw (None for an unconditional flow).
        context_version: ``context._version`` at the draw, or None.
        state: The flow's parameters' state at the draw.
    """

    z: Tensor
    x: Tensor
    x_version: int
    ladjs: list[Tensor | Deferred]
    context: Tensor | None
    context_version: int | None
    state: ParamState
