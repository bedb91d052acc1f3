r"""The conditional flow matching loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .paths import ProbabilityPath, get_path

__all__ = ["cfm_loss"]


def cfm_loss(
    field: nn.Module,
    x0: Tensor,
    x1: Tensor,
    path: str | ProbabilityPath = "linear",
    *,
    context: Tensor | None = None,
    t: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""The conditional flow matching loss of a field on paired rows :math:`(x_0, x_1)`.

    .. math:: \mathcal{L}(\theta) = \mathbb{E}_{t \sim U(0, 1),\, (x_0, x_1) \sim \pi}
              \left\| v_\theta(t, x_t[, c]) - u_t \right\|^2 ,

    with :math:`x_t` and :math:`u_t` given by the path. Its gradient equals that of the
    regression on the (intractable) marginal field :math:`u_t(x)`, so its minimiser is that
    field; its minimum is not zero but the expected conditional variance of :math:`u_t` given
    :math:`x_t` (e.g. :math:`D s \pi / 2` from :math:`N(0, I)` to :math:`N(\mu, s^2 I)` on
    the linear path with :math:`\sigma_{\min} = 0`).

    Arguments:
        field: Called as ``field(t, x_t)`` (``field(t, x_t, context)``) with ``t`` of shape
            ``batch``, one time per row.
        x0: Source rows, shape ``(*batch, D)``.
        x1: Data rows, same shape.
        path: A :class:`~pyro_flows.matching.ProbabilityPath` or its name.
        context: The context of each data row, shape ``(*batch, C)``, or None.
        t: The times, shape ``batch``; drawn uniformly when None.
        reduction: ``"mean"`` (over rows) or ``"none"`` (one value per row; the squared error
            is always summed over the :math:`D` coordinates).

    Example:
        >>> from pyro_flows.nn import VectorField
        >>> loss = cfm_loss(VectorField(2, [16]), torch.randn(8, 2), torch.randn(8, 2))
        >>> loss.shape, bool(loss > 0)
        (torch.Size([]), True)

    References:
        | Flow Matching for Generative Modeling (Lipman et al., 2023)
        | https://arxiv.org/abs/2210.02747
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"unknown reduction {reduction!r}; expected 'mean' or 'none'")
    if x0.shape != x1.shape:
        raise ValueError(
            f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}"
        )
    path = get_path(path)
    if t is None:
        t = torch.rand(x1.shape[:-1], dtype=x1.dtype, device=x1.device)
    elif t.shape != x1.shape[:-1]:
        raise ValueError(f"t must have shape {tuple(x1.shape[:-1])}, got {tuple(t.shape)}")
    xt, ut = path.sample_and_velocity(x0, x1, t)
    v = field(t, xt) if context is None else field(t, xt, context)
    if v.shape != xt.shape:
        raise ValueError(
            f"the field returned shape {tuple(v.shape)} for x_t of shape {tuple(xt.shape)}"
        )
    loss = (v - ut).pow(2).sum(-1)
    return loss.mean() if reduction == "mean" else loss
