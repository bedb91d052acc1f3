"""Pyro's dense conditioner networks, with contiguous outputs and an optional residual stack.

Pyro's :class:`~pyro.nn.DenseNN` returns its parameters as strided slices of one output, on
which elementwise kernels run several times slower on CPU. These subclasses keep Pyro's
layers and ``state_dict`` keys and write equal-sized parameters as ``(P, M, n)`` with one
batched matmul instead (see :mod:`pyro_flows.nn.made` for the same change to MADE).
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.nn import ConditionalDenseNN as _PyroConditionalDenseNN
from pyro.nn import DenseNN as _PyroDenseNN
from torch import Tensor

from .made import hidden_features, init_residual

__all__ = ["ConditionalDenseNN", "DenseNN"]


def _heads(net: _PyroConditionalDenseNN, x: Tensor) -> Tensor | tuple[Tensor, ...]:
    h = hidden_features(net, x)
    last = net.layers[-1]
    num, sizes = net.count_params, net.param_dims
    if num < 2 or len(set(sizes)) != 1:
        out = last(h)  # Pyro's own shaping (strided slices) for unequal or single parameters
        if net.count_params == 1:
            return out
        return tuple(out[..., s] for s in net.param_slices)
    size = sizes[0]
    batch = h.shape[:-1]
    flat = h.reshape(-1, h.shape[-1])
    weight = last.weight.view(num, size, -1).transpose(-1, -2)  # (P, H, n)
    out = torch.baddbmm(last.bias.view(num, 1, size), flat.expand(num, *flat.shape), weight)
    return tuple(p.view(*batch, size) for p in out.unbind(0))


class DenseNN(_PyroDenseNN):
    r"""Pyro's :class:`~pyro.nn.DenseNN` with contiguous outputs and optional residual layers.

    Same arguments, parameters and outputs (to rounding) as Pyro's class. ``residual=True``
    (hidden layers of one width) makes the layers after the first residual,
    :math:`h \leftarrow h + W f(h) + b`, each starting at zero.

    Example:
        >>> net = DenseNN(2, [16, 16], param_dims=[3, 3], residual=True)
        >>> shift, scale = net(torch.randn(5, 2))
        >>> shift.is_contiguous(), scale.shape
        (True, torch.Size([5, 3]))

    References:
        | Identity Mappings in Deep Residual Networks (He et al., 2016)
        | https://arxiv.org/abs/1603.05027
    """

    def __init__(self, *args: Any, residual: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        init_residual(self, residual, self.hidden_dims)

    def _forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        return _heads(self, x)


class ConditionalDenseNN(_PyroConditionalDenseNN):
    r"""Pyro's :class:`~pyro.nn.ConditionalDenseNN` with the changes of :class:`DenseNN`.

    Example:
        >>> net = ConditionalDenseNN(2, 4, [16], param_dims=[3, 3])
        >>> shift, scale = net(torch.randn(5, 2), torch.randn(4))
        >>> shift.shape
        torch.Size([5, 3])
    """

    def __init__(self, *args: Any, residual: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        init_residual(self, residual, self.hidden_dims)

    def _forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        return _heads(self, x)
