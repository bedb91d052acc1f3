"""Glow's invertible 1x1 convolution: a learned channel mixing, LU-parametrised or plain."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._shaped import ShapedFlowTransform

__all__ = ["InvertibleConv1x1", "invertible_conv1x1"]


class InvertibleConv1x1(ShapedFlowTransform):
    r"""An invertible linear map of the channels, applied at every pixel: :math:`y = W x`.

    With ``lu=True`` (default) the weight is kept in LU form,

    .. math:: W = P L (U + \mathrm{diag}(s)), \qquad
              \log|\det J| = H W \textstyle\sum_c \log|s_c|,

    with :math:`P` a fixed permutation, :math:`L` unit lower triangular, :math:`U` strictly
    upper triangular and :math:`s = \sigma \odot e^{\log|s|}` with fixed signs
    :math:`\sigma`: the log-determinant costs :math:`O(C)` and the inverse two triangular
    solves. With ``lu=False`` :math:`W` is a free matrix and the log-determinant is
    :math:`H W \log|\det W|` by ``slogdet`` (:math:`O(C^3)`), for comparison. Both start at a
    random rotation. For vectors (``event_dim=1``) it is a learned linear map (:math:`HW = 1`),
    a generalised permutation between coupling layers.

    Arguments:
        event_shape: ``D`` or ``(D,)`` for vectors, ``(C, H, W)`` for images.
        lu: Whether to use the LU parametrisation.
        generator: A random generator for the initial rotation.

    Example:
        >>> t = invertible_conv1x1((4, 3, 3))
        >>> x = torch.randn(2, 4, 3, 3)
        >>> torch.allclose(t.inv(t(x).clone()), x, atol=1e-5)
        True

    References:
        | Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018)
        | https://arxiv.org/abs/1807.03039
    """

    def __init__(
        self,
        event_shape: Sequence[int] | int,
        lu: bool = True,
        generator: torch.Generator | None = None,
        cache_size: int = 1,
    ) -> None:
        super().__init__(event_shape, cache_size=cache_size)
        if not isinstance(lu, bool):
            raise TypeError(f"lu must be True or False, got {lu!r}")
        self.lu = lu
        c = self.channels
        if lu:
            self.register_buffer("perm", torch.eye(c))
            self.register_buffer("sign_s", torch.ones(c))
            self.lower = nn.Parameter(torch.zeros(c, c))
            self.upper = nn.Parameter(torch.zeros(c, c))
            self.log_abs_s = nn.Parameter(torch.zeros(c))
            self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        else:
            self.weight = nn.Parameter(torch.eye(c))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        r"""Starts at a random rotation :math:`W` (an orthogonal matrix, :math:`|\det W| = 1`)."""
        c = self.channels
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=generator, dtype=torch.float64))
        if not self.lu:
            self.weight.copy_(q)
            return
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.perm.copy_(p)
        self.sign_s.copy_(torch.sign(s))
        self.log_abs_s.copy_(s.abs().log())
        self.lower.copy_(torch.tril(lower, -1))
        self.upper.copy_(torch.triu(upper, 1))

    def _factors(self) -> tuple[Tensor, Tensor]:
        """``P L`` (unit lower triangular after the permutation) and ``U + diag(s)``."""
        eye = torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign_s * self.log_abs_s.exp())
        return lower, upper

    def matrix(self) -> Tensor:
        """The weight :math:`W` of shape ``(C, C)``."""
        if not self.lu:
            return self.weight
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def inverse_matrix(self) -> Tensor:
        r""":math:`W^{-1}`, by two triangular solves in the LU form."""
        if not self.lu:
            return torch.linalg.inv(self.weight)
        lower, upper = self._factors()
        # W^{-1} = U^{-1} L^{-1} P^T
        eye = torch.eye(self.channels, dtype=lower.dtype, device=lower.device)
        inv_lower = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        inv_upper = torch.linalg.solve_triangular(upper, eye, upper=True)
        return inv_upper @ inv_lower @ self.perm.T

    def log_abs_det(self) -> Tensor:
        r""":math:`\log|\det W|` (one pixel): :math:`\sum_c \log|s_c|`, or ``slogdet`` if plain."""
        if self.lu:
            return self.log_abs_s.sum()
        return torch.linalg.slogdet(self.weight).logabsdet

    @property
    def sign(self) -> int:
        r"""The sign of :math:`\det J` (for one-dimensional events)."""
        return int(torch.sign(torch.linalg.det(self.matrix().detach())).item())

    def _mix(self, weight: Tensor, x: Tensor) -> Tensor:
        if self.event_ndim == 1:
            return x @ weight.T
        # channel mixing at every pixel: contract the channel axis, keep batch and pixels
        return torch.einsum("ij,...jhw->...ihw", weight, x)

    def _ladj_value(self, like: Tensor) -> Tensor:
        pixels = 1 if self.event_ndim == 1 else self.event_shape[1] * self.event_shape[2]
        return (pixels * self.log_abs_det()).expand(self._batch(like))

    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._mix(self.matrix(), x), self._ladj_value(x)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._mix(self.inverse_matrix(), y), self._ladj_value(y)

    def _ladj(self, x: Tensor, y: Tensor) -> Tensor:
        return self._ladj_value(x)

    def extra_repr(self) -> str:  # noqa: D102
        return f"event_shape={self.event_shape}, lu={self.lu}"


def invertible_conv1x1(
    event_shape: Sequence[int] | int, lu: bool = True, generator: torch.Generator | None = None
) -> InvertibleConv1x1:
    """Builds an :class:`InvertibleConv1x1` (LU-parametrised unless ``lu=False``).

    Example:
        >>> t = invertible_conv1x1(3)
        >>> x = torch.zeros(3)
        >>> abs(t.log_abs_det_jacobian(x, t(x)).item()) < 1e-5  # it starts at a rotation
        True
    """
    return InvertibleConv1x1(event_shape, lu=lu, generator=generator)
