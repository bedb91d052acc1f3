"""Space-to-depth reshaping of images (Glow's squeeze) and its inverse."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._shaped import ShapedFlowTransform, check_event_shape

__all__ = ["Squeeze", "squeeze", "squeeze_image", "unsqueeze_image"]


def squeeze_image(x: Tensor) -> Tensor:
    """``(*batch, C, H, W)`` to ``(*batch, 4C, H/2, W/2)``: each 2x2 patch becomes 4 channels."""
    *batch, c, h, w = x.shape
    x = x.reshape(*batch, c, h // 2, 2, w // 2, 2)
    n = len(batch)
    x = x.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)  # (C, 2, 2, H/2, W/2)
    return x.reshape(*batch, 4 * c, h // 2, w // 2)


def unsqueeze_image(y: Tensor) -> Tensor:
    """The inverse of :func:`squeeze_image`: ``(*batch, 4C, H, W)`` to ``(*batch, C, 2H, 2W)``."""
    *batch, c4, h, w = y.shape
    y = y.reshape(*batch, c4 // 4, 2, 2, h, w)
    n = len(batch)
    y = y.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)  # (C, H, 2, W, 2)
    return y.reshape(*batch, c4 // 4, 2 * h, 2 * w)


class Squeeze(ShapedFlowTransform):
    r"""Space-to-depth: each :math:`2 \times 2` patch of every channel becomes 4 channels.

    .. math:: (C, H, W) \mapsto (4C, H/2, W/2), \qquad \log|\det J| = 0

    A permutation of the pixels, so it is volume preserving; the inverse is depth-to-space.
    It lets 1x1 convolutions and channel-split couplings mix neighbouring pixels, and is how a
    multi-scale flow goes to a coarser level.

    Arguments:
        event_shape: The input shape ``(C, H, W)`` with even :math:`H` and :math:`W`.

    Example:
        >>> t = squeeze((1, 4, 4))
        >>> x = torch.arange(16.0).reshape(1, 4, 4)
        >>> t(x).shape, t(x)[:, 0, 0].tolist()
        (torch.Size([4, 2, 2]), [0.0, 1.0, 4.0, 5.0])

    References:
        | Density estimation using Real NVP (Dinh et al., 2017)
        | https://arxiv.org/abs/1605.08803
    """

    def __init__(self, event_shape: Sequence[int], cache_size: int = 1) -> None:
        shape = check_event_shape(event_shape)
        if len(shape) != 3 or shape[1] % 2 or shape[2] % 2:
            raise ValueError(
                f"event_shape must be an image shape (C, H, W) with even H and W, got {shape}"
            )
        super().__init__(shape, cache_size=cache_size)
        c, h, w = shape
        self.out_shape = (4 * c, h // 2, w // 2)

    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return squeeze_image(x), x.new_zeros(self._batch(x))

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return unsqueeze_image(y), y.new_zeros(y.shape[:-3])

    def _ladj(self, x: Tensor, y: Tensor) -> Tensor:
        return x.new_zeros(self._batch(x))

    def forward_shape(self, shape: Sequence[int]) -> torch.Size:  # noqa: D102
        shape = tuple(shape)
        if shape[len(shape) - 3 :] != self.event_shape:
            raise ValueError(f"shape must end with {self.event_shape}, got {shape}")
        return torch.Size(shape[:-3] + self.out_shape)

    def inverse_shape(self, shape: Sequence[int]) -> torch.Size:  # noqa: D102
        shape = tuple(shape)
        if shape[len(shape) - 3 :] != self.out_shape:
            raise ValueError(f"shape must end with {self.out_shape}, got {shape}")
        return torch.Size(shape[:-3] + self.event_shape)


def squeeze(event_shape: Sequence[int]) -> Squeeze:
    """Builds a :class:`Squeeze` for images of shape ``(C, H, W)`` (even :math:`H`, :math:`W`).

    Example:
        >>> squeeze((2, 4, 6)).forward_shape((5, 2, 4, 6))
        torch.Size([5, 8, 2, 3])
    """
    return Squeeze(event_shape)
