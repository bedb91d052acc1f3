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

__all__ = ["ConditionalDenseNN", "DenseNN", "default_hidden_dims"]


def default_hidden_dims(input_dim: int, context_dim: int = 0) -> list[int]:
    r"""Default hidden sizes of MAF and affine coupling networks: two layers of width :math:`w`.

    .. math:: w = \begin{cases} 64 & n < 10 \\ \max(128, 4 n) & n \ge 10 \end{cases}
              \qquad n = D + C,

    the sizes of the equal-size comparison of docs/benchmarks.md (64-64 on 2-D targets,
    128-128 on 10-D and 32-D ones, where both families at these sizes fit to a few tenths of a
    nat in 1 500 steps), growing as :math:`4n` beyond 32 dimensions so that a MADE
    keeps about four hidden units per degree (it needs at least :math:`D`).

    Arguments:
        input_dim: The event size :math:`D`.
        context_dim: The context size :math:`C` of a conditional layer (0 for none).

    Example:
        >>> default_hidden_dims(2), default_hidden_dims(10), default_hidden_dims(50)
        ([64, 64], [128, 128], [200, 200])
    """
    n = input_dim + context_dim
    width = 64 if n < 10 else max(128, 4 * n)
    return [width, width]


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
