"""A column-wise affine map between standardised and data units, with statistics from data."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._validation import as_rows, check_positive_int
from .base import FlowTransform

__all__ = ["Standardization", "robust_loc_scale"]

# The interquartile range of N(0, 1): IQR / 1.349 estimates a normal column's standard deviation.
_NORMAL_IQR = 2 * 0.6744897501960817
# The 2%-98% range of N(0, 1).
_NORMAL_96 = 2 * 2.053748910631823


def robust_loc_scale(x: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    r"""Per-column location and scale that a few outliers cannot move far.

    .. math:: \mu_i = \operatorname{median}(x_{\cdot i}), \qquad
              \sigma_i = \max\left(\min\left(\operatorname{sd}(x_{\cdot i}),\,
              \frac{\operatorname{IQR}(x_{\cdot i})}{1.349}\right),\,
              \frac{q_{98\%}(x_{\cdot i}) - q_{2\%}(x_{\cdot i})}{4.108}\right)

    Every term equals the standard deviation for a normal column. The inner minimum
    (Silverman's rule for a bandwidth) scales a column with a few wild values by its bulk,
    not by its extremes, and one with well separated clusters (IQR large) by its standard
    deviation; the outer maximum, the normal-consistent 2%-98% range, widens it for a
    heavy-tailed column so that about 96% of the rows stay within :math:`\pm 2.05\,\sigma`
    (a spline flow is the identity outside its box; see docs/benchmarks.md). Under 2% of
    outliers move none of the quantiles far. A column whose IQR is 0 (mostly one value) uses
    its standard deviation; a constant column gets :math:`\sigma_i = 1`. The statistics
    follow any affine change of units with a positive factor, :math:`x \mapsto a x + b`:
    :math:`\mu \mapsto a \mu + b`, :math:`\sigma \mapsto a \sigma`. Computed in float64.

    Arguments:
        x: Rows of shape ``(num_rows, D)``, ``num_rows >= 2``, finite.

    Returns:
        ``(loc, scale)``, float64 tensors of shape ``(D,)`` on the CPU.

    Example:
        >>> x = torch.cat([torch.linspace(-2.0, 2.0, 199), torch.tensor([1e6])])[:, None]
        >>> round(x.std().item())  # one wild value in 200
        70711
        >>> loc, scale = robust_loc_scale(x)
        >>> round(loc.item(), 2), round(scale.item(), 2)
        (0.01, 1.49)
    """
    x = as_rows(x, "x")
    if x.shape[0] < 2:
        raise ValueError(f"x needs at least 2 rows for a location and scale, got {x.shape[0]}")
    v = x.detach().to("cpu", torch.float64).numpy()
    q02, q1, loc, q3, q98 = np.quantile(v, [0.02, 0.25, 0.5, 0.75, 0.98], axis=0)
    sd = v.std(axis=0)
    iqr = (q3 - q1) / _NORMAL_IQR
    bulk = np.where(iqr > 0, np.minimum(sd, iqr), sd)
    scale = np.maximum(bulk, (q98 - q02) / _NORMAL_96)
    scale = np.where(scale > 0, scale, 1.0)
    return torch.from_numpy(loc.copy()), torch.from_numpy(scale)


def _check_loc_scale(loc: Tensor, scale: Tensor, what: str) -> None:
    if loc.dim() != 1 or loc.shape != scale.shape or loc.numel() == 0:
        raise ValueError(
            f"{what}: loc and scale must be 1-D of one length, got shapes "
            f"{tuple(loc.shape)} and {tuple(scale.shape)}"
        )
    if not bool(torch.isfinite(loc).all() & torch.isfinite(scale).all()):
        raise ValueError(f"{what}: loc and scale must be finite")
    if not bool((scale > 0).all()):
        raise ValueError(f"{what}: every scale must be > 0, got {scale.tolist()}")


class Standardization(FlowTransform):
    r"""The affine map from standardised to data units, placed last in a flow.

    .. math:: y = \mu + \sigma \odot x, \qquad
              \log\left|\det \frac{\partial y}{\partial x}\right| = \sum_i \log \sigma_i

    With :math:`\mu` and :math:`\sigma` a location and scale of each column of the training
    data, the layers before it work on standardised values while the density, through this
    log-determinant, is in the data's own units. Both are buffers: saved in the ``state_dict``,
    never trained. :meth:`initialize` sets them from data, :meth:`set_` by hand.

    Arguments:
        loc: The shift :math:`\mu`, shape ``(D,)``.
        scale: The positive scales :math:`\sigma`, shape ``(D,)``.

    Example:
        >>> t = Standardization(torch.tensor([10.0, -1.0]), torch.tensor([2.0, 0.5]))
        >>> t(torch.tensor([1.0, 2.0]))
        tensor([12.,  0.])
        >>> t.log_abs_det_jacobian(torch.zeros(2), t(torch.zeros(2)))
        tensor(0.)
        >>> s = Standardization.identity(2)
        >>> s.initialize(torch.tensor([[0.0, 5.0], [2.0, 9.0], [4.0, 13.0]]))
        >>> s.loc.tolist()
        [2.0, 9.0]
    """

    def __init__(self, loc: Tensor, scale: Tensor, cache_size: int = 1) -> None:
        loc = torch.as_tensor(loc)
        if not loc.is_floating_point():
            loc = loc.to(torch.get_default_dtype())
        scale = torch.as_tensor(scale, dtype=loc.dtype)
        _check_loc_scale(loc, scale, "Standardization")
        super().__init__(loc.numel(), cache_size=cache_size)
        self.register_buffer("loc", loc.clone())
        self.register_buffer("scale", scale.clone())

    @classmethod
    def identity(cls, input_dim: int) -> Standardization:
        """The identity map (``loc = 0``, ``scale = 1``), for :meth:`initialize` to fill."""
        check_positive_int(input_dim, "input_dim")
        dtype = torch.get_default_dtype()
        return cls(torch.zeros(input_dim, dtype=dtype), torch.ones(input_dim, dtype=dtype))

    @torch.no_grad()
    def set_(self, loc: Tensor, scale: Tensor) -> None:
        r"""Sets :math:`\mu` and :math:`\sigma` (each of shape ``(D,)``) by hand."""
        loc = torch.as_tensor(loc, dtype=self.loc.dtype, device=self.loc.device)
        scale = torch.as_tensor(scale, dtype=self.loc.dtype, device=self.loc.device)
        _check_loc_scale(loc, scale, "Standardization")
        if loc.shape != self.loc.shape:
            raise ValueError(f"loc and scale must have shape {tuple(self.loc.shape)}")
        self.loc.copy_(loc)
        self.scale.copy_(scale)

    def initialize(self, data: Tensor | np.ndarray) -> None:
        r"""Sets :math:`\mu, \sigma` to :func:`robust_loc_scale` of ``data`` (rows ``(N, D)``)."""
        x = as_rows(data, "data")
        if x.shape[1] != self.input_dim:
            raise ValueError(f"data must have {self.input_dim} columns, got {x.shape[1]}")
        self.set_(*robust_loc_scale(x))

    def _ladj_of(self, v: Tensor) -> Tensor:
        return self.scale.log().sum().expand(v.shape[:-1])

    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.loc + self.scale * x, self._ladj_of(x)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return (y - self.loc) / self.scale, self._ladj_of(y)

    def _ladj(self, x: Tensor, y: Tensor) -> Tensor:
        return self._ladj_of(x)

    def extra_repr(self) -> str:  # noqa: D102
        return f"input_dim={self.input_dim}"
