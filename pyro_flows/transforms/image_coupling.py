"""Affine coupling for images (Glow): a channel split and a small zero-initialised conv net."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions.conditional import ConditionalTransformModule
from torch import Tensor, nn

from .._validation import check_hidden_dims, check_positive_int
from ._shaped import ShapedFlowTransform, check_event_shape
from .base import bounded_log_scale, check_log_scale_bound

__all__ = [
    "ConditionalImageAffineCoupling",
    "ImageAffineCoupling",
    "conditional_image_affine_coupling",
    "conv_net",
    "image_affine_coupling",
]


def conv_net(in_channels: int, out_channels: int, hidden_channels: Sequence[int]) -> nn.Module:
    """3x3 conv, ReLU, (1x1 conv, ReLU)*, 3x3 conv with a zero-initialised last layer (Glow).

    Starting the last layer at zero makes every coupling the identity at initialisation.
    """
    hidden = check_hidden_dims(hidden_channels, "hidden_channels")
    sizes = [in_channels, *hidden]
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers += [nn.Conv2d(a, b, 3 if k == 0 else 1, padding=1 if k == 0 else 0), nn.ReLU()]
    last = nn.Conv2d(sizes[-1], out_channels, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


def _check_image(shape: Sequence[int]) -> tuple:
    shape = check_event_shape(shape)
    if len(shape) != 3 or shape[0] < 2:
        raise ValueError(f"event_shape must be an image shape (C, H, W) with C >= 2, got {shape}")
    return shape


class ImageAffineCoupling(ShapedFlowTransform):
    r"""Affine coupling on images: the first channels set a shift and scale of the others.

    With :math:`x_A` the first :math:`\lfloor C/2 \rfloor` channels and :math:`x_B` the rest,

    .. math:: y_A = x_A, \qquad y_B = x_B \odot e^{s} + t, \qquad (t, \tilde s) = NN(x_A),
              \qquad s = b \tanh(\tilde s / b), \qquad \log|\det J| = \textstyle\sum s

    where :math:`NN` is a convolutional network (see :func:`conv_net`) whose last layer
    starts at zero, so the layer starts as the identity, and the bound :math:`b` keeps every
    scale in :math:`(e^{-b}, e^{b})`. With a ``context`` image (set by
    :meth:`ConditionalImageAffineCoupling.condition`) the network sees
    :math:`(x_A, \text{context})` stacked along channels.

    Arguments:
        event_shape: The image shape ``(C, H, W)``, :math:`C \ge 2`.
        net: A module mapping ``(N, |A| [+ context channels], H, W)`` to ``(N, 2|B|, H, W)``.
        log_scale_bound: The bound :math:`b`, or None for no bound.
        context: A context image of shape ``(*batch, C_c, H, W)``, or None.

    Example:
        >>> t = image_affine_coupling((4, 3, 3), hidden_channels=[8])
        >>> x = torch.randn(2, 4, 3, 3)
        >>> torch.equal(t(x), x)                 # the identity at initialisation
        True

    References:
        | Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018)
        | https://arxiv.org/abs/1807.03039
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        net: nn.Module,
        log_scale_bound: float | None = 3.0,
        context: Tensor | None = None,
        cache_size: int = 1,
    ) -> None:
        super().__init__(_check_image(event_shape), cache_size=cache_size)
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        self.net = net
        self.log_scale_bound = check_log_scale_bound(log_scale_bound)
        self.context = context
        self.split = self.channels // 2

    def _shift_and_log_scale(self, x_a: Tensor) -> tuple[Tensor, Tensor]:
        inputs = x_a
        if self.context is not None:
            batch = torch.broadcast_shapes(x_a.shape[:-3], self.context.shape[:-3])
            x_a = x_a.expand(*batch, *x_a.shape[-3:])
            context = self.context.expand(*batch, *self.context.shape[-3:])
            inputs = torch.cat([x_a, context], dim=-3)
        batch = inputs.shape[:-3]
        out = self.net(inputs.reshape(-1, *inputs.shape[-3:]))
        out = out.reshape(*batch, *out.shape[-3:])
        shift, raw = out.chunk(2, dim=-3)
        return shift, bounded_log_scale(raw, self.log_scale_bound)

    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[..., : self.split, :, :], x[..., self.split :, :, :]
        shift, log_scale = self._shift_and_log_scale(x_a)
        y_b = x_b * log_scale.exp() + shift
        x_a = x_a.expand(*y_b.shape[:-3], *x_a.shape[-3:])
        return torch.cat([x_a, y_b], dim=-3), log_scale.flatten(-3).sum(-1)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        y_a, y_b = y[..., : self.split, :, :], y[..., self.split :, :, :]
        shift, log_scale = self._shift_and_log_scale(y_a)
        x_b = (y_b - shift) * torch.exp(-log_scale)
        y_a = y_a.expand(*x_b.shape[:-3], *y_a.shape[-3:])
        return torch.cat([y_a, x_b], dim=-3), log_scale.flatten(-3).sum(-1)

    def _ladj(self, x: Tensor, y: Tensor) -> Tensor:
        return self._shift_and_log_scale(x[..., : self.split, :, :])[1].flatten(-3).sum(-1)


class ConditionalImageAffineCoupling(ConditionalTransformModule):
    r"""An :class:`ImageAffineCoupling` whose network also sees a context image.

    .. math:: y_B = x_B \odot e^{s(x_A, c)} + t(x_A, c)

    ``.condition(c)`` with ``c`` of shape ``(*batch, C_c, H, W)`` returns an
    :class:`ImageAffineCoupling` sharing this module's parameters (used by variational
    dequantization, where the context is the discrete image).

    Arguments:
        event_shape: The image shape ``(C, H, W)``, :math:`C \ge 2`.
        context_channels: The number of channels :math:`C_c` of the context.
        net: A module mapping ``(N, |A| + C_c, H, W)`` to ``(N, 2|B|, H, W)``.
        log_scale_bound: The bound of the log-scale, or None.

    Example:
        >>> t = conditional_image_affine_coupling((2, 4, 4), 1, hidden_channels=[8])
        >>> t.condition(torch.randn(5, 1, 4, 4))(torch.randn(5, 2, 4, 4)).shape
        torch.Size([5, 2, 4, 4])

    References:
        | Flow++: Improving Flow-Based Generative Models with Variational Dequantization and
          Architecture Design (Ho et al., 2019)
        | https://arxiv.org/abs/1902.00275
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        context_channels: int,
        net: nn.Module,
        log_scale_bound: float | None = 3.0,
    ) -> None:
        super().__init__()
        self.event_shape = _check_image(event_shape)
        self.context_channels = check_positive_int(context_channels, "context_channels")
        self.net = net
        self.log_scale_bound = check_log_scale_bound(log_scale_bound)

    def condition(self, context: Tensor) -> ImageAffineCoupling:
        """Returns the coupling for a context image of shape ``(*batch, C_c, H, W)``."""
        shape = (self.context_channels, *self.event_shape[1:])
        if not isinstance(context, Tensor) or tuple(context.shape[-3:]) != shape:
            got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(f"context must have shape (..., {shape}), got {got}")
        return ImageAffineCoupling(
            self.event_shape, self.net, self.log_scale_bound, context=context
        )

    def __hash__(self) -> int:
        return id(self)


def image_affine_coupling(
    event_shape: Sequence[int],
    hidden_channels: Sequence[int] = (64, 64),
    log_scale_bound: float | None = 3.0,
) -> ImageAffineCoupling:
    r"""Builds an :class:`ImageAffineCoupling` with a zero-initialised :func:`conv_net`.

    Arguments:
        event_shape: The image shape ``(C, H, W)``, :math:`C \ge 2`.
        hidden_channels: Channels of the hidden conv layers.
        log_scale_bound: The bound of the log-scale, or None.
    """
    shape = _check_image(event_shape)
    split = shape[0] // 2
    net = conv_net(split, 2 * (shape[0] - split), hidden_channels)
    return ImageAffineCoupling(shape, net, log_scale_bound)


def conditional_image_affine_coupling(
    event_shape: Sequence[int],
    context_channels: int,
    hidden_channels: Sequence[int] = (64, 64),
    log_scale_bound: float | None = 3.0,
) -> ConditionalImageAffineCoupling:
    r"""Builds a :class:`ConditionalImageAffineCoupling` with a zero-initialised conv net.

    Arguments:
        event_shape: The image shape ``(C, H, W)``, :math:`C \ge 2`.
        context_channels: The channels of the context image.
        hidden_channels: Channels of the hidden conv layers.
        log_scale_bound: The bound of the log-scale, or None.
    """
    shape = _check_image(event_shape)
    check_positive_int(context_channels, "context_channels")
    split = shape[0] // 2
    net = conv_net(split + context_channels, 2 * (shape[0] - split), hidden_channels)
    return ConditionalImageAffineCoupling(shape, context_channels, net, log_scale_bound)
