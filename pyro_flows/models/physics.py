r"""A worked physics for PI-VAEs: the 1-D stochastic Poisson equation on a grid."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import check_last_dim, check_positive_float, check_positive_int

__all__ = ["Poisson1D"]


class Poisson1D:
    r"""The stochastic Poisson problem :math:`u''(x) = -f(x)` on :math:`[0, 1]`, :math:`u(0) = u(1) = 0`.

    Fields live on the uniform grid :math:`x_i = i h`, :math:`i = 0, \dots, G - 1`,
    :math:`h = 1 / (G - 1)`, boundaries included; a pair is stored as one vector
    :math:`[u_0, \dots, u_{G-1}, f_0, \dots, f_{G-1}]` of size :math:`2G` (the decoder output of a
    PI-VAE). The discrete residual is

    .. math:: r_i = \frac{u_{i-1} - 2 u_i + u_{i+1}}{h^2} + f_i \quad (0 < i < G - 1), \qquad
              r_0 = \frac{u_0}{h^2}, \quad r_{G-1} = \frac{u_{G-1}}{h^2},

    zero for the finite-difference solution (:meth:`solve`) and :math:`O(h^2)` for the exact
    solution of the continuous problem. The boundary terms are divided by :math:`h^2` so that
    an error :math:`\delta` in :math:`u` costs about as much at a boundary as inside.

    The forcing is a Gaussian random field, :math:`f \sim GP(\mu, k)`,
    :math:`k(x, x') = \sigma^2 \exp(-(x - x')^2 / 2\ell^2)`; :meth:`simulate` draws pairs and
    sparse noisy sensor readings of both fields.

    Arguments:
        num_points: The grid size :math:`G` (boundaries included).
        length_scale: :math:`\ell` of the forcing's kernel.
        std: :math:`\sigma` of the forcing.
        mean: The forcing's constant mean :math:`\mu`.

    Example:
        >>> import math
        >>> p = Poisson1D(33)
        >>> x = p.grid
        >>> u, f = torch.sin(math.pi * x), math.pi**2 * torch.sin(math.pi * x)
        >>> r = p.residual(torch.cat([u, f]))
        >>> round(r.abs().max().item(), 4), round(math.pi**4 * p.dx**2 / 12, 4)  # O(h^2)
        (0.0079, 0.0079)

    References:
        | PI-VAE: Physics-Informed Variational Auto-Encoder for stochastic differential
          equations (Zhong & Meidani, 2023)
        | https://arxiv.org/abs/2203.11363
    """

    def __init__(
        self,
        num_points: int = 33,
        length_scale: float = 0.15,
        std: float = 10.0,
        mean: float = 0.0,
    ) -> None:
        self.num_points = check_positive_int(num_points, "num_points", minimum=3)
        self.length_scale = check_positive_float(length_scale, "length_scale")
        self.std = check_positive_float(std, "std")
        if isinstance(mean, bool) or not isinstance(mean, int | float) or not math.isfinite(mean):
            raise ValueError(f"mean must be a finite number, got {mean!r}")
        self.mean = float(mean)
        self.dx = 1.0 / (num_points - 1)

    @property
    def grid(self) -> Tensor:
        """The grid points :math:`x_i`, shape ``(G,)`` (default dtype)."""
        return torch.linspace(0.0, 1.0, self.num_points)

    def split(self, fields: Tensor) -> tuple[Tensor, Tensor]:
        """Splits ``(..., 2G)`` fields into :math:`u` and :math:`f`, each ``(..., G)``."""
        check_last_dim(fields, 2 * self.num_points, "fields")
        return fields[..., : self.num_points], fields[..., self.num_points :]

    def residual(self, fields: Tensor, context: Tensor | None = None) -> Tensor:
        """The residual :math:`r` of shape ``(..., G)`` (``context`` is unused)."""
        u, f = self.split(fields)
        h2 = self.dx**2
        interior = (u[..., :-2] - 2 * u[..., 1:-1] + u[..., 2:]) / h2 + f[..., 1:-1]
        return torch.cat([u[..., :1] / h2, interior, u[..., -1:] / h2], dim=-1)

    def solve(self, f: Tensor) -> Tensor:
        r"""The finite-difference solution :math:`u` (shape of ``f``, ``(..., G)``): :math:`r = 0`."""
        check_last_dim(f, self.num_points, "f")
        n = self.num_points - 2
        a = -2 * torch.eye(n, dtype=f.dtype, device=f.device)
        a += torch.diag(torch.ones(n - 1, dtype=f.dtype, device=f.device), 1)
        a += torch.diag(torch.ones(n - 1, dtype=f.dtype, device=f.device), -1)
        rhs = -(self.dx**2) * f[..., 1:-1]
        u = torch.linalg.solve(a, rhs.reshape(-1, n).T).T.reshape(rhs.shape)
        zero = torch.zeros_like(f[..., :1])
        return torch.cat([zero, u, zero], dim=-1)

    def sample_forcing(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws forcings :math:`f` of shape ``(num_samples, G)`` (float64)."""
        check_positive_int(num_samples, "num_samples")
        x = self.grid.double()
        k = self.std**2 * torch.exp(-((x[:, None] - x) ** 2) / (2 * self.length_scale**2))
        chol = torch.linalg.cholesky(k + 1e-8 * self.std**2 * torch.eye(len(x), dtype=x.dtype))
        eps = torch.randn(num_samples, len(x), generator=generator, dtype=x.dtype)
        return self.mean + eps @ chol.T

    def sensors(self, num_u: int, num_f: int) -> Tensor:
        r"""Indices into a :math:`2G` field vector of evenly spaced sensors.

        ``num_u`` sensors of :math:`u` at interior points and ``num_f`` of :math:`f` spanning the
        whole grid.
        """
        check_positive_int(num_u, "num_u")
        check_positive_int(num_f, "num_f", minimum=2)
        g = self.num_points
        if num_u > g - 2 or num_f > g:
            raise ValueError(f"at most {g - 2} u-sensors and {g} f-sensors fit on this grid")
        iu = torch.linspace(0, g - 1, num_u + 2).round().long()[1:-1]
        i_f = torch.linspace(0, g - 1, num_f).round().long()
        return torch.cat([iu, g + i_f])

    def simulate(
        self,
        num_samples: int,
        sensors: Tensor,
        noise: float | Tensor = 0.05,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""Draws field pairs and their sparse, noisy sensor readings.

        Arguments:
            num_samples: The number of pairs.
            sensors: Indices into the :math:`2G` field vector (:meth:`sensors`).
            noise: The standard deviation of the Gaussian sensor noise (one, or one per sensor).
            generator: The random generator.

        Returns:
            The fields ``(num_samples, 2G)`` (exact finite-difference pairs, float64) and the
            readings ``(num_samples, len(sensors))``.
        """
        if torch.is_tensor(noise):
            if noise.shape not in ((), sensors.shape) or not bool((noise > 0).all()):
                raise ValueError("noise must be positive, one value or one per sensor")
            noise = noise.double()
        else:
            noise = check_positive_float(noise, "noise")
        f = self.sample_forcing(num_samples, generator)
        fields = torch.cat([self.solve(f), f], dim=-1)
        readings = fields[:, sensors]
        readings = readings + noise * torch.randn(
            readings.shape, generator=generator, dtype=readings.dtype
        )
        return fields, readings
