"""Permutation layers placed between the layers of a flow."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_positive_int
from .base import FlowTransform

__all__ = ["Permutation", "permutation", "reverse"]


class Permutation(FlowTransform):
    r"""Reorders the features of a vector: :math:`y_i = x_{\pi(i)}`, with :math:`\log|\det J| = 0`.

    The permutation is a buffer, so it follows ``.to(device)`` and is saved in ``state_dict``.

    Arguments:
        perm: A permutation of ``range(D)``.

    Example:
        >>> t = Permutation(torch.tensor([2, 0, 1]))
        >>> t(torch.tensor([10.0, 20.0, 30.0]))
        tensor([30., 10., 20.])
    """

    def __init__(self, perm: Tensor, cache_size: int = 1) -> None:
        perm = torch.as_tensor(perm, dtype=torch.long)
        if perm.dim() != 1 or not torch.equal(perm.sort().values, torch.arange(len(perm))):
            raise ValueError(f"perm must be a permutation of range(D), got {perm.tolist()}")
        super().__init__(len(perm), cache_size=cache_size)
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.index_select(-1, self.perm), x.new_zeros(x.shape[:-1])

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y.index_select(-1, self.inv_perm), y.new_zeros(y.shape[:-1])

    def _ladj(self, x: Tensor, y: Tensor) -> Tensor:
        return x.new_zeros(x.shape[:-1])


def permutation(input_dim: int, generator: torch.Generator | None = None) -> Permutation:
    """Builds a :class:`Permutation` with a uniformly random order of ``input_dim`` features."""
    check_positive_int(input_dim, "input_dim")
    return Permutation(torch.randperm(input_dim, generator=generator))


def reverse(input_dim: int) -> Permutation:
    """Builds a :class:`Permutation` that reverses the order of ``input_dim`` features."""
    check_positive_int(input_dim, "input_dim")
    return Permutation(torch.arange(input_dim - 1, -1, -1))
