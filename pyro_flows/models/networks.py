"""Encoders and decoders for VAEs: MLPs for vectors, small convolutional nets for images."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._validation import check_hidden_dims, check_positive_int

__all__ = ["ConvDecoder", "ConvEncoder", "CoordinateDecoder", "MLP"]


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    if isinstance(image_shape, int) or len(image_shape) != 3:
        raise ValueError(f"image_shape must be (channels, height, width), got {image_shape!r}")
    for s in image_shape:
        check_positive_int(s, "every entry of image_shape")
    return tuple(image_shape)


def _check_channels(channels: Sequence[int]) -> tuple[int, int]:
    channels = check_hidden_dims(channels, "channels")
    if len(channels) != 2:
        raise ValueError(f"channels must have two entries, got {channels!r}")
    return channels[0], channels[1]


class MLP(nn.Sequential):
    r"""A multilayer perceptron :math:`\mathbb R^{D_{in}} \to \mathbb R^{D_{out}}`.

    .. math:: h_0 = x, \quad h_{k} = \sigma(W_k h_{k-1} + b_k), \quad y = W_{K+1} h_K + b_{K+1}

    Acts on any batch shape ``(*batch, D_in)``.

    Arguments:
        input_dim: The input size :math:`D_{in}`.
        output_dim: The output size :math:`D_{out}`.
        hidden_dims: The hidden layer sizes.
        activation: The non-linearity :math:`\sigma` (a module class).

    Example:
        >>> net = MLP(3, 2, hidden_dims=[16, 16])
        >>> net(torch.randn(5, 4, 3)).shape
        torch.Size([5, 4, 2])
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        hidden_dims: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        check_positive_int(input_dim, "input_dim")
        check_positive_int(output_dim, "output_dim")
        hidden = check_hidden_dims(hidden_dims)
        layers: list[nn.Module] = []
        sizes = [input_dim, *hidden]
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), activation()]
        layers.append(nn.Linear(sizes[-1], output_dim))
        super().__init__(*layers)
        self.input_dim = input_dim
        self.output_dim = output_dim


class ConvEncoder(nn.Module):
    r"""A small convolutional encoder of flattened images to feature vectors.

    Two stride-2 convolutions (kernel 3) halve the height and width twice; a linear layer maps
    the flattened maps to ``output_dim`` features. Inputs are flat, shape
    ``(*batch, C * H * W)``, so the encoder fits any model written for vectors.

    Arguments:
        image_shape: ``(C, H, W)`` of one image.
        output_dim: The size of the feature vector.
        channels: The channels of the two convolutions.

    Example:
        >>> enc = ConvEncoder((1, 8, 8), 10)
        >>> enc(torch.randn(7, 64)).shape
        torch.Size([7, 10])
    """

    def __init__(
        self, image_shape: Sequence[int], output_dim: int, channels: Sequence[int] = (16, 32)
    ) -> None:
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        self.input_dim = math.prod(self.image_shape)
        self.output_dim = check_positive_int(output_dim, "output_dim")
        c1, c2 = _check_channels(channels)
        c, h, w = self.image_shape
        self.conv = nn.Sequential(
            nn.Conv2d(c, c1, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        h2, w2 = (h + 3) // 4, (w + 3) // 4  # two stride-2 convolutions, padding 1
        self.head = nn.Linear(c2 * h2 * w2, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Maps ``(*batch, C * H * W)`` to ``(*batch, output_dim)``."""
        batch = x.shape[:-1]
        h = self.conv(x.reshape(-1, *self.image_shape))
        return self.head(h.flatten(1)).reshape(*batch, self.output_dim)


class ConvDecoder(nn.Module):
    r"""A small transposed-convolution decoder of vectors to flattened images.

    A linear layer maps the input to maps of a quarter of the height and width; two stride-2
    transposed convolutions double them twice (the result is cropped to ``(H, W)``). The output
    has ``out_channels`` values per pixel (e.g. one logit, or a location and a log-scale),
    flattened channel by channel: shape ``(*batch, out_channels * H * W)``.

    Arguments:
        input_dim: The input size (e.g. latent plus context).
        image_shape: ``(C, H, W)`` of one image.
        out_channels: Values per pixel and channel of the image (the likelihood's parameters).
        channels: The channels after the linear layer and after the first transposed conv.

    Example:
        >>> dec = ConvDecoder(4, (1, 8, 8), out_channels=2)
        >>> dec(torch.randn(3, 5, 4)).shape
        torch.Size([3, 5, 128])
    """

    def __init__(
        self,
        input_dim: int,
        image_shape: Sequence[int],
        out_channels: int = 1,
        channels: Sequence[int] = (32, 16),
    ) -> None:
        super().__init__()
        self.input_dim = check_positive_int(input_dim, "input_dim")
        self.image_shape = _check_image_shape(image_shape)
        check_positive_int(out_channels, "out_channels")
        c1, c2 = _check_channels(channels)
        c, h, w = self.image_shape
        self._start = (c1, (h + 3) // 4, (w + 3) // 4)
        self.output_dim = out_channels * c * h * w
        self.head = nn.Linear(input_dim, math.prod(self._start))
        self.deconv = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c2, out_channels * c, 4, stride=2, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        """Maps ``(*batch, input_dim)`` to ``(*batch, out_channels * C * H * W)``."""
        batch = z.shape[:-1]
        h = self.head(z.reshape(-1, z.shape[-1])).reshape(-1, *self._start)
        out = self.deconv(h)[..., : self.image_shape[1], : self.image_shape[2]]
        return out.reshape(*batch, self.output_dim)


class CoordinateDecoder(nn.Module):
    r"""A decoder of fields on a grid that evaluates one network at every grid point.

    .. math:: [u_1(x_i), \dots, u_F(x_i)] = g([z, x_i]), \quad i = 1, \dots, G,

    so the generated fields vary smoothly with the coordinate (as in DeepONet-style and PI-VAE
    decoders), unlike a decoder that outputs the :math:`G` values independently. The output
    is flattened field by field: ``(*batch, F * G)``, i.e. ``[u_1(x_1..x_G), u_2(...), ...]``.

    Arguments:
        input_dim: The input size (latent plus context).
        coords: The grid, shape ``(G,)`` or ``(G, d)``.
        num_fields: The number :math:`F` of fields.
        hidden_dims: Hidden sizes of the network :math:`g`.
        activation: Its non-linearity (smooth by default, so fields have derivatives).

    Example:
        >>> dec = CoordinateDecoder(3, torch.linspace(0, 1, 9), num_fields=2, hidden_dims=[16])
        >>> dec(torch.randn(4, 5, 3)).shape
        torch.Size([4, 5, 18])
    """

    def __init__(
        self,
        input_dim: int,
        coords: Tensor,
        num_fields: int = 1,
        hidden_dims: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.Tanh,
    ) -> None:
        super().__init__()
        self.input_dim = check_positive_int(input_dim, "input_dim")
        self.num_fields = check_positive_int(num_fields, "num_fields")
        if not torch.is_tensor(coords) or coords.dim() not in (1, 2):
            raise ValueError("coords must be a tensor of shape (G,) or (G, d)")
        coords = coords.reshape(len(coords), -1).to(torch.get_default_dtype())
        self.register_buffer("coords", coords)
        self.output_dim = num_fields * len(coords)
        self.net = MLP(input_dim + coords.shape[1], num_fields, hidden_dims, activation)

    def forward(self, z: Tensor) -> Tensor:
        """Maps ``(*batch, input_dim)`` to ``(*batch, num_fields * G)``."""
        g = len(self.coords)
        zz = z.unsqueeze(-2).expand(*z.shape[:-1], g, z.shape[-1])
        xx = self.coords.expand(*z.shape[:-1], *self.coords.shape)
        out = self.net(torch.cat([zz, xx], -1))  # (*batch, G, F)
        return out.transpose(-1, -2).reshape(*z.shape[:-1], self.output_dim)
