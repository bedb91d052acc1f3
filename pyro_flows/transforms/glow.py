"""One step of Glow: ActNorm, invertible 1x1 convolution and affine coupling, chained."""

from __future__ import annotations

from collections.abc import Sequence

from ._shaped import check_event_shape
from .actnorm import ActNorm
from .base import Compose
from .conv1x1 import InvertibleConv1x1
from .coupling import affine_coupling
from .image_coupling import image_affine_coupling

__all__ = ["glow_step"]


def glow_step(
    event_shape: Sequence[int] | int,
    hidden_dims: Sequence[int] | None = None,
    lu: bool = True,
    log_scale_bound: float | None = 3.0,
) -> Compose:
    r"""One Glow step: ActNorm, invertible 1x1 convolution, affine coupling.

    In the direction that scores data (data to noise, ``.inv``, as in the paper),

    .. math:: h = \mathrm{ActNorm}(x), \quad h' = W h, \quad
              z = \mathrm{Coupling}(h'), \qquad
              \log|\det J| = \log|\det J_{\mathrm{act}}| + H W \log|\det W|
              + \textstyle\sum s,

    so the returned :class:`~pyro_flows.transforms.Compose` maps noise to data (Pyro's
    direction) with the parts in the reverse order, and the ActNorm initialises itself on
    the first batch of data it scores.

    Arguments:
        event_shape: ``D`` for vectors (the coupling is
            :func:`~pyro_flows.transforms.affine_coupling`, :math:`D \ge 2`) or ``(C, H, W)``
            for images (:func:`~pyro_flows.transforms.image_affine_coupling`, :math:`C \ge 2`).
        hidden_dims: Hidden sizes of the coupling network (channels, for images; default
            ``[64, 64]`` for images and ``[10 D, 10 D]`` for vectors).
        lu: LU-parametrised 1x1 convolution (default) or a plain matrix.
        log_scale_bound: The bound of the coupling's log-scale, or None.

    Example:
        >>> step = glow_step((4, 4, 4), hidden_dims=[16])
        >>> y = torch.randn(8, 4, 4, 4)
        >>> x, ladj = step.inv.call_and_ladj(y)   # data to noise; ActNorm initialises here
        >>> x.shape, ladj.shape
        (torch.Size([8, 4, 4, 4]), torch.Size([8]))

    References:
        | Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018)
        | https://arxiv.org/abs/1807.03039
    """
    shape = check_event_shape(event_shape)
    if len(shape) == 1:
        coupling = affine_coupling(shape[0], hidden_dims, log_scale_bound=log_scale_bound)
    else:
        coupling = image_affine_coupling(shape, hidden_dims or (64, 64), log_scale_bound)
    return Compose([coupling, InvertibleConv1x1(shape, lu=lu), ActNorm(shape)])
