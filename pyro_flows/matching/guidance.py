r"""Classifier-free guidance: one field trained with and without its context, mixed at sampling.

A guided field sees the context with a flag appended, :math:`(c, 1)`, or the null context
:math:`(0, 0)` (the context dropped, with probability ``context_dropout`` during training), so
it learns both :math:`v(t, x \mid c)` and :math:`v(t, x \mid \varnothing)`; its
``context_dim`` is therefore :math:`C + 1`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GuidedField", "drop_context", "flag_context"]


def flag_context(context: Tensor, keep: Tensor | float) -> Tensor:
    r"""Returns :math:`(k\, c, k)`: the context, zeroed where dropped, with the flag :math:`k \in \{0, 1\}`.

    Arguments:
        context: The context, shape ``(*batch, C)``.
        keep: 1 to keep, 0 to drop: a number, or a tensor of shape ``batch`` (or
            ``(*batch, 1)``).

    Example:
        >>> flag_context(torch.tensor([2.0, 3.0]), 1.0)
        tensor([2., 3., 1.])
        >>> flag_context(torch.tensor([2.0, 3.0]), 0.0)
        tensor([0., 0., 0.])
    """
    keep = torch.as_tensor(keep, dtype=context.dtype, device=context.device)
    if keep.dim() == context.dim() - 1:
        keep = keep.unsqueeze(-1)
    keep = keep.expand(*context.shape[:-1], 1)
    return torch.cat([context * keep, keep], dim=-1)


def drop_context(context: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Flags each row of ``context`` (shape ``(n, C)``), dropping it with probability ``p``.

    Example:
        >>> drop_context(torch.ones(3, 2), 0.0)[:, -1]
        tensor([1., 1., 1.])
    """
    keep = (torch.rand(context.shape[:-1], generator=generator) >= p).to(context)
    return flag_context(context, keep)


class GuidedField(nn.Module):
    r"""The classifier-free guided field of a field trained with :func:`drop_context`.

    .. math:: \tilde v(t, x \mid c) = v(t, x \mid \varnothing)
              + w \left( v(t, x \mid c) - v(t, x \mid \varnothing) \right)

    :math:`w = 1` is the conditional field, :math:`w = 0` the unconditional one and
    :math:`w > 1` sharpens the conditional (at the price of diversity). Called as
    ``field(t, x, context)`` with the raw context of size :math:`C`; it costs two evaluations
    of the wrapped field (one when :math:`w = 1`).

    Arguments:
        field: A conditional field whose context size is :math:`C + 1`.
        weight: The guidance weight :math:`w \ge 0`.

    Example:
        >>> from pyro_flows.nn import VectorField
        >>> guided = GuidedField(VectorField(2, [16], context_dim=4), weight=2.0)
        >>> guided(torch.tensor(0.5), torch.randn(5, 2), torch.randn(5, 3)).shape
        torch.Size([5, 2])

    References:
        | Classifier-Free Diffusion Guidance (Ho & Salimans, 2022)
        | https://arxiv.org/abs/2207.12598
        | Guided Flows for Generative Modeling and Decision Making (Zheng et al., 2023)
        | https://arxiv.org/abs/2311.13443
    """

    def __init__(self, field: nn.Module, weight: float = 1.0) -> None:
        super().__init__()
        if not isinstance(field, nn.Module):
            raise TypeError(f"field must be a torch.nn.Module, got {type(field).__name__}")
        ok = isinstance(weight, (int, float)) and not isinstance(weight, bool)
        if not (ok and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        self.field = field
        self.weight = float(weight)

    def forward(self, t: Tensor, x: Tensor, context: Tensor) -> Tensor:
        r"""Returns :math:`\tilde v(t, x \mid c)`, shaped like ``x``."""
        if self.weight == 1.0:
            return self.field(t, x, flag_context(context, 1.0))
        null = flag_context(torch.zeros_like(context), 0.0)
        uncond = self.field(t, x, null)
        if self.weight == 0.0:
            return uncond
        cond = self.field(t, x, flag_context(context, 1.0))
        return uncond + self.weight * (cond - uncond)

    def extra_repr(self) -> str:  # noqa: D102
        return f"weight={self.weight}"
