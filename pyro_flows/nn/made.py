"""Pyro's MADE networks, returning each parameter as its own contiguous tensor.

Pyro's :class:`~pyro.nn.AutoRegressiveNN` computes all parameters with one ``(..., P * D)``
output and hands back strided views of it. Elementwise kernels on those views (the ``tanh``
of a bounded log-scale, the ``exp`` of a scale) run about ten times slower on CPU than on
contiguous tensors, which made them as costly as the network itself. The subclasses here keep
Pyro's masks, layers and ``state_dict`` keys and change only the last layer's product: one
matmul per parameter, so each comes out as its own contiguous tensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from torch import Tensor, nn

__all__ = ["MADE", "ConditionalMADE", "HiddenWidthWarning", "hidden_features", "widen_hidden_dims"]


class HiddenWidthWarning(UserWarning):
    """Hidden layers narrower than a MADE's input were widened to the input size."""


def widen_hidden_dims(input_dim: int, hidden_dims: Sequence[int]) -> list[int]:
    r"""Hidden widths for a MADE over :math:`D` inputs: each layer at least :math:`D` wide.

    A MADE gives each hidden unit a degree in :math:`\{1, \dots, D - 1\}` and connects it only
    to inputs of lower or equal degree; a layer with fewer units than degrees leaves some
    outputs blind to some of the inputs before them, so Pyro's MADE refuses widths below
    :math:`D`. Here such widths are raised to :math:`D`, with a :class:`HiddenWidthWarning`,
    instead: a width chosen for a small model then still works on a larger one.

    Arguments:
        input_dim: The number of inputs :math:`D` of the MADE.
        hidden_dims: The requested widths.

    Returns:
        ``[max(h, input_dim) for h in hidden_dims]``.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     widths = widen_hidden_dims(91, [64, 128])
        >>> widths, caught[0].category.__name__
        ([91, 128], 'HiddenWidthWarning')
    """
    hidden = [int(h) for h in hidden_dims]
    wide = [max(h, input_dim) for h in hidden]
    if wide != hidden:
        warnings.warn(
            f"hidden_dims {hidden} are narrower than the MADE's input ({input_dim}); widened to "
            f"{wide}, since every hidden layer of a MADE needs at least input_dim units",
            HiddenWidthWarning,
            stacklevel=3,
        )
    return wide


def _fast(net: ConditionalAutoRegressiveNN) -> bool:
    return net.skip_layer is None and net.all_ones and net.count_params > 1


def hidden_features(net: nn.Module, x: Tensor) -> Tensor:
    r"""The last hidden layer of a Pyro-style MLP (``net.layers``, ``net.f``), after activation.

    With ``net.residual`` the layers after the first add to their input, in pre-activation
    form: :math:`h \leftarrow h + W f(h) + b` (He et al., 2016).
    """
    # A plain list: slicing an nn.ModuleList builds a new module on every call.
    layers, f = list(net.layers._modules.values()), net.f
    h = layers[0](x)
    if getattr(net, "residual", False):
        for layer in layers[1:-1]:
            h = h + layer(f(h))
        return f(h)
    # A linear layer's backward needs its input, not its output, so ReLU may overwrite the
    # output in place (also under autograd); a fresh output per layer was a third of the time.
    if type(f) is nn.ReLU:
        f = torch.relu_
    h = f(h)
    for layer in layers[1:-1]:
        h = f(layer(h))
    return h


def init_masked_fan_in(net: nn.Module) -> None:
    r"""Draws each hidden unit's weights as torch draws a dense layer of the unit's true fan-in.

    A masked layer is initialised by :class:`torch.nn.Linear` from its full input width
    :math:`n`, :math:`W_{ij} \sim U(-1/\sqrt n, 1/\sqrt n)`, but unit :math:`i` sees only the
    :math:`m_i = \sum_j M_{ij}` inputs its mask keeps, so its pre-activation starts
    :math:`\sqrt{n / m_i}` times too small: in 2-D every first-layer unit of a MADE sees one of
    the two inputs, in 32-D a unit of degree 1 one of 32. Scaling row :math:`i` of each hidden
    layer's weight by :math:`\sqrt{n / m_i}` gives :math:`U(-1/\sqrt{m_i}, 1/\sqrt{m_i})`,
    the dense rule for the unit's real inputs. The output layer is left as it is, so the flow
    starts as close to the identity as before. In the A/B runs of docs/benchmarks.md this
    lowered MAF's KL on 8 gaussians and checkerboard at the same size (Pyro's and zuko's
    MADEs use the full width).
    """
    with torch.no_grad():
        for layer in list(net.layers)[:-1]:
            kept = layer.mask.sum(-1, keepdim=True)
            layer.weight.mul_((layer.in_features / kept.clamp_min(1)).sqrt())


def init_residual(net: nn.Module, residual: bool, hidden_dims: Sequence[int]) -> None:
    """Checks the widths of a residual stack and starts each residual layer at zero."""
    net.residual = bool(residual)
    if not residual:
        return
    if len(set(hidden_dims)) != 1 or len(hidden_dims) < 2:
        raise ValueError(
            f"residual=True needs at least two hidden layers of one width, got {list(hidden_dims)}"
        )
    # Each residual layer starts as the identity map, so depth does not disturb the start.
    with torch.no_grad():
        for layer in net.layers[1:-1]:
            layer.weight.zero_()
            layer.bias.zero_()


def _contiguous_heads(
    net: ConditionalAutoRegressiveNN, x: Tensor, scales: Sequence[float] | None = None
) -> tuple[Tensor, ...]:
    """The ``_forward`` of Pyro's MADE for ``param_dims`` of ones, without strided outputs."""
    if not _fast(net):
        if scales is not None:
            raise ValueError("scales needs param_dims of ones (at least two) and no skip layer")
        return ConditionalAutoRegressiveNN._forward(net, x)
    h = hidden_features(net, x)
    last = net.layers[-1]
    num, dim = net.output_multiplier, net.input_dim
    # Rows of the last weight are [param 0 for dims 0..D-1, param 1 for dims 0..D-1, ...].
    weight = (last.weight * last.mask).view(num, dim, -1)
    bias = last.bias.view(num, dim)
    if scales is None:
        scales = (1.0,) * num
    elif len(scales) != num:
        raise ValueError(f"scales must have one entry per parameter ({num}), got {scales}")
    batch = h.shape[:-1]
    flat = h.reshape(-1, h.shape[-1])  # (M, H)
    # One product per parameter: each output is its own tensor, which callers may overwrite in
    # place (views of one batched output may not be, under autograd). addmm's alpha and beta
    # apply a scale inside the product, at no extra pass.
    return tuple(
        torch.addmm(bias[p], flat, weight[p].T, beta=a, alpha=a).view(*batch, dim)
        for p, a in enumerate(scales)
    )


class MADE(AutoRegressiveNN):
    r"""Pyro's :class:`~pyro.nn.AutoRegressiveNN` with contiguous output parameters.

    Same arguments, parameters, masks and outputs (to rounding) as Pyro's class; only the
    memory layout of the outputs differs, which makes the flow's elementwise work on them
    several times faster. ``residual=True`` (hidden layers of one width) makes the layers after
    the first residual, :math:`h \leftarrow h + W f(h) + b`, each starting at zero: the
    masks of equal-width layers give every unit the same degree, so the skips keep the
    autoregressive structure. ``fan_in_init=True`` (the default; False gives Pyro's init)
    rescales the hidden layers' initial weights to each unit's unmasked fan-in
    (:func:`init_masked_fan_in`). ``net(x, scales=(a, b))`` returns :math:`(a\,\mu, b\,s)`
    at the cost of scaling the last layer's weights instead of the outputs.

    Example:
        >>> net = MADE(3, [16], param_dims=[1, 1])
        >>> mu, s = net(torch.randn(5, 3))
        >>> mu.is_contiguous(), s.shape
        (True, torch.Size([5, 3]))

    References:
        | MADE: Masked Autoencoder for Distribution Estimation (Germain et al., 2015)
        | https://arxiv.org/abs/1502.03509
        | Identity Mappings in Deep Residual Networks (He et al., 2016)
        | https://arxiv.org/abs/1603.05027
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int],
        *args: Any,
        residual: bool = False,
        fan_in_init: bool = True,
        **kwargs: Any,
    ) -> None:
        hidden_dims = widen_hidden_dims(input_dim, hidden_dims)
        super().__init__(input_dim, hidden_dims, *args, **kwargs)
        if fan_in_init:
            init_masked_fan_in(self)
        init_residual(self, residual, self.hidden_dims)
        if residual and not _fast(self):
            raise ValueError("residual=True needs param_dims of ones and no skip connections")

    def forward(self, x: Tensor, scales: Sequence[float] | None = None) -> tuple[Tensor, ...]:  # noqa: D102
        return _contiguous_heads(self, x, scales)


class ConditionalMADE(ConditionalAutoRegressiveNN):
    r"""Pyro's :class:`~pyro.nn.ConditionalAutoRegressiveNN` with contiguous output parameters.

    ``net(x, context, scales=...)`` as :class:`MADE`.

    Example:
        >>> net = ConditionalMADE(3, 2, [16], param_dims=[1, 1])
        >>> mu, s = net(torch.randn(5, 3), torch.randn(2))
        >>> mu.is_contiguous(), s.shape
        (True, torch.Size([5, 3]))
    """

    def __init__(
        self,
        input_dim: int,
        context_dim: int,
        hidden_dims: Sequence[int],
        *args: Any,
        residual: bool = False,
        fan_in_init: bool = True,
        **kwargs: Any,
    ) -> None:
        hidden_dims = widen_hidden_dims(input_dim, hidden_dims)
        super().__init__(input_dim, context_dim, hidden_dims, *args, **kwargs)
        if fan_in_init:
            init_masked_fan_in(self)
        init_residual(self, residual, self.hidden_dims)
        if residual and not _fast(self):
            raise ValueError("residual=True needs param_dims of ones and no skip connections")

    def forward(  # noqa: D102
        self, x: Tensor, context: Tensor, scales: Sequence[float] | None = None
    ) -> tuple[Tensor, ...]:
        context = context.expand(x.shape[:-1] + context.shape[-1:])
        return _contiguous_heads(self, torch.cat([context, x], dim=-1), scales)
