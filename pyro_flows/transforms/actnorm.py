"""Activation normalisation (Glow's ActNorm): a per-channel affine map initialised from data."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._shaped import ShapedFlowTransform

__all__ = ["ActNorm", "actnorm"]


class ActNorm(ShapedFlowTransform):
    r"""Per-channel scale and shift, initialised from the first batch of data.

    From base noise to data (Pyro's direction) and back, for each feature or channel :math:`c`,

    .. math:: y_c = x_c\, e^{s_c} + b_c, \qquad x_c = (y_c - b_c)\, e^{-s_c}, \qquad
              \log|\det J| = H W \textstyle\sum_c s_c

    (:math:`H W = 1` for vectors). The first inverse pass over data (the direction in which a
    density scores data) sets :math:`b_c` and :math:`s_c` to the mean and log standard
    deviation of channel :math:`c` over the batch (and the pixels), so that the inverse outputs
    have zero mean and unit variance; after that they are trained like any parameter.

    The rule: that first inverse pass initialises only a layer *untouched since construction*
    (or :meth:`reset_parameters`): no forward pass, no ``load_state_dict``, and :math:`b, s`
    still exactly 0 (so neither an optimizer step nor a hand-set value). A layer touched in any
    of these ways keeps its parameters: a forward pass on an untouched layer (e.g. sampling a
    Glow guide in SVI) fixes it as the identity it is, so ``t.inv(t(x))`` is ``x``. A boolean
    buffer ``initialized`` records that the layer is past this point; :meth:`initialize` sets
    the parameters from data explicitly, at any time.

    Arguments:
        event_shape: ``D`` or ``(D,)`` for vectors (``event_dim=1``), ``(C, H, W)`` for images
            (``event_dim=3``).
        eps: Added to the standard deviation at initialisation, so a constant channel gives a
            large but finite scale.

    Example:
        >>> t = actnorm((3, 4, 4))
        >>> y = 5.0 + 2.0 * torch.randn(64, 3, 4, 4)
        >>> x = t.inv(y)                       # the first pass over data initialises
        >>> bool(t.initialized), round(x.mean().item(), 4), round(x.std().item(), 2)
        (True, 0.0, 1.0)

    References:
        | Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018)
        | https://arxiv.org/abs/1807.03039
    """

    def __init__(
        self, event_shape: Sequence[int] | int, eps: float = 1e-6, cache_size: int = 1
    ) -> None:
        super().__init__(event_shape, cache_size=cache_size)
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a non-negative number, got {eps!r}")
        self.eps = float(eps)
        shape = (self.channels,) + (1,) * (self.event_ndim - 1)
        self.loc = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.register_buffer("initialized", torch.tensor(False))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Sets the identity map and marks the layer as untouched (to initialise from data)."""
        with torch.no_grad():
            self.loc.zero_()
            self.log_scale.zero_()
            self.initialized.fill_(False)
        self.__dict__["_loaded"] = False

    def _untouched(self) -> bool:
        """Not loaded, and the parameters still at their reset values (the identity)."""
        return not (
            self.__dict__.get("_loaded", False)
            or bool(self.loc.detach().any())
            or bool(self.log_scale.detach().any())
        )

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self.__dict__["_loaded"] = True  # a loaded layer keeps what it was given
        with torch.no_grad():
            self.initialized.fill_(True)

    @torch.no_grad()
    def initialize(self, y: Tensor) -> None:
        """Sets shift and scale so that the inverse of this batch has zero mean, unit variance.

        Arguments:
            y: Data of shape ``(*batch, *event_shape)`` with at least two values per channel.
        """
        self._check(y, self.event_shape, "y")
        # channels first, then every other value (rows of the batch and pixels) of the channel
        values = y.movedim(y.dim() - self.event_ndim, 0).reshape(self.channels, -1)
        if values.shape[1] < 2:
            raise ValueError(
                "ActNorm initialises from data with at least 2 values per channel; got a "
                f"batch of shape {tuple(y.shape)}: pass a larger batch or call initialize()"
            )
        mean = values.mean(1)
        std = values.std(1, unbiased=False)
        self.loc.copy_(mean.reshape(self.loc.shape))
        self.log_scale.copy_((std + self.eps).log().reshape(self.log_scale.shape))
        self.initialized.fill_(True)

    def _pixels(self) -> int:
        return 1 if self.event_ndim == 1 else self.event_shape[1] * self.event_shape[2]

    def _ladj_value(self, like: Tensor) -> Tensor:
        ladj = self._pixels() * self.log_scale.sum()
        return ladj.expand(self._batch(like))

    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.initialized:  # a forward pass first: the layer stays as it is
            self.initialized.fill_(True)
        return x * self.log_scale.exp() + self.loc, self._ladj_value(x)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        if not self.initialized:
            if self._untouched():
                self.initialize(y)
            else:
                self.initialized.fill_(True)
        return (y - self.loc) * torch.exp(-self.log_scale), self._ladj_value(y)

    def _ladj(self, x: Tensor, y: Tensor) -> Tensor:
        return self._ladj_value(x)

    def extra_repr(self) -> str:  # noqa: D102
        return f"event_shape={self.event_shape}, initialized={bool(self.initialized)}"


def actnorm(event_shape: Sequence[int] | int, eps: float = 1e-6) -> ActNorm:
    """Builds an :class:`ActNorm` for vectors (``D``) or images (``(C, H, W)``).

    Example:
        >>> actnorm(4)(torch.randn(2, 4)).shape
        torch.Size([2, 4])
    """
    return ActNorm(event_shape, eps=eps)
