"""Two-dimensional toy densities with exact log-densities, for tests and examples."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

from .._validation import check_choice, check_last_dim

__all__ = [
    "TOY_DATASETS",
    "Checkerboard",
    "EightGaussians",
    "toy_distribution",
]

_Shape = torch.Size | tuple[int, ...] | list[int]
_EMPTY = torch.Size()


def _draw_setup(generator: torch.Generator | None) -> dict:
    """Keyword arguments that make torch's samplers use ``generator`` (and its device)."""
    if generator is None:
        return {"dtype": torch.get_default_dtype()}
    return {"dtype": torch.get_default_dtype(), "device": generator.device, "generator": generator}


class EightGaussians(TorchDistribution):
    r"""The equal-weight mixture of eight Gaussians of FFJORD's toy experiments.

    The centres lie on a circle of radius :math:`r = 4 / \sqrt{2}` at the angles
    :math:`k \pi / 4`, and every component has the isotropic standard deviation
    :math:`\sigma = 0.5 / \sqrt{2}`:

    .. math:: p(x) = \frac{1}{8} \sum_{k=0}^{7}
              \mathcal{N}\big(x \mid r (\cos \tfrac{k\pi}{4}, \sin \tfrac{k\pi}{4}),
              \sigma^2 I\big)

    :meth:`log_prob` is exact (a log-sum-exp over the components, in the dtype of the value).
    The entropy has no closed form; :meth:`entropy` computes it by the trapezoidal rule on a
    grid of spacing :math:`\sigma / 8` over :math:`[-r - 12\sigma, r + 12\sigma]^2` in float64,
    which for this smooth, fast-decaying integrand is accurate to about ``1e-12``.

    Example:
        >>> p = EightGaussians()
        >>> x = p.sample((1000,))
        >>> x.shape, p.log_prob(x).shape
        (torch.Size([1000, 2]), torch.Size([1000]))
        >>> p.mean, p.variance
        (tensor([0., 0.]), tensor([4.1250, 4.1250]))
        >>> round(p.entropy().item(), 4)
        2.8316

    References:
        | FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models
          (Grathwohl et al., 2019)
        | https://arxiv.org/abs/1810.01367
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    has_rsample = False

    #: Radius of the circle of centres.
    radius = 4.0 / math.sqrt(2.0)
    #: Standard deviation of every component.
    scale = 0.5 / math.sqrt(2.0)
    _entropy_cache: float | None = None

    def __init__(self, validate_args: bool | None = None) -> None:
        super().__init__(torch.Size(), torch.Size([2]), validate_args=validate_args)

    def centres(
        self, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> Tensor:
        """The eight centres, shape ``(8, 2)``, in FFJORD's order."""
        s = 1.0 / math.sqrt(2.0)
        unit = torch.tensor(
            [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [s, s], [s, -s], [-s, s], [-s, -s]],
            dtype=torch.float64,
        )
        return (self.radius * unit).to(dtype=dtype or torch.get_default_dtype(), device=device)

    @property
    def mean(self) -> Tensor:
        """The mean, zero by symmetry."""
        return torch.zeros(2)

    @property
    def variance(self) -> Tensor:
        r"""The marginal variances :math:`\sigma^2 + r^2 / 2`."""
        return torch.full((2,), self.scale**2 + self.radius**2 / 2)

    def sample(
        self, sample_shape: _Shape = _EMPTY, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draws points as FFJORD does: a uniform centre plus isotropic Gaussian noise.

        Arguments:
            sample_shape: The batch shape of the draw; the result has shape
                ``(*sample_shape, 2)`` and the default dtype.
            generator: The random generator to use; torch's global one if ``None``.
        """
        shape = torch.Size(sample_shape)
        kw = _draw_setup(generator)
        gen = {k: v for k, v in kw.items() if k != "dtype"}
        k = torch.randint(8, shape, **gen)
        noise = torch.randn(shape + (2,), **kw)
        return self.centres(kw["dtype"], k.device)[k] + self.scale * noise

    def log_prob(self, value: Tensor) -> Tensor:
        """The exact log-density at ``value`` of shape ``(..., 2)``; returns shape ``(...)``."""
        check_last_dim(value, 2, "value")
        c = self.centres(value.dtype, value.device)
        sq = (value.unsqueeze(-2) - c).pow(2).sum(-1)  # (..., 8)
        log_norm = math.log(2 * math.pi * self.scale**2) + math.log(8.0)
        return torch.logsumexp(-0.5 * sq / self.scale**2, dim=-1) - log_norm

    def entropy(self) -> Tensor:
        r"""The differential entropy :math:`-\int p \log p`, by quadrature (see the class)."""
        if EightGaussians._entropy_cache is None:
            h = self.scale / 8
            half = self.radius + 12 * self.scale
            n = math.ceil(half / h)
            t = torch.arange(-n, n + 1, dtype=torch.float64) * h
            grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
            lp = self.log_prob(grid)
            EightGaussians._entropy_cache = float(-(lp.exp() * lp).sum() * h * h)
        return torch.tensor(EightGaussians._entropy_cache)


class _CheckerboardSupport(constraints.Constraint):
    """The eight half-open squares ``[2i, 2i + 2) x [2j, 2j + 2)`` with ``i + j`` even."""

    event_dim = 1
    is_discrete = False

    def check(self, value: Tensor) -> Tensor:
        inside = ((value >= -4) & (value < 4)).all(-1)
        cell = torch.floor(value / 2)
        even = torch.remainder(cell.sum(-1), 2) == 0
        return inside & even


class Checkerboard(TorchDistribution):
    r"""The uniform density on FFJORD's checkerboard: 8 squares of side 2 in :math:`[-4, 4)^2`.

    The square :math:`[2i, 2i + 2) \times [2j, 2j + 2)`, :math:`i, j \in \{-2, \dots, 1\}`,
    is in the support when :math:`i + j` is even, so

    .. math:: p(x) = \frac{1}{32} \, \mathbb{1}\big[x \in [-4, 4)^2,\;
              \lfloor x_1 / 2 \rfloor + \lfloor x_2 / 2 \rfloor \text{ even}\big]

    and the entropy is exactly :math:`\log 32`. :meth:`log_prob` returns ``-inf`` outside the
    support rather than raising, so it can score any point (a model's samples, a grid).

    The sampler has FFJORD's law (:math:`x_1 \sim U[-2, 2)`,
    :math:`x_2 = U[0, 1) - 2 B + (\lfloor x_1 \rfloor \bmod 2)` with :math:`B` a fair coin,
    both times 2) but draws a square then a point in it, clamped so that float rounding can
    never put a sample on the closed edge of a square (outside the support).

    Example:
        >>> p = Checkerboard()
        >>> x = p.sample((1000,))
        >>> bool(p.support.check(x).all()), p.log_prob(x).unique()
        (True, tensor([-3.4657]))
        >>> p.log_prob(torch.tensor([[1.0, -1.0], [5.0, 0.5]]))
        tensor([-inf, -inf])
        >>> torch.isclose(p.entropy(), torch.tensor(32.0).log())
        tensor(True)

    References:
        | FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models
          (Grathwohl et al., 2019)
        | https://arxiv.org/abs/1810.01367
    """

    arg_constraints: ClassVar[dict] = {}
    support = _CheckerboardSupport()
    has_rsample = False

    def __init__(self, validate_args: bool | None = None) -> None:
        super().__init__(torch.Size(), torch.Size([2]), validate_args=validate_args)

    @staticmethod
    def corners(dtype: torch.dtype | None = None, device: torch.device | None = None) -> Tensor:
        """The lower-left corners of the eight squares, shape ``(8, 2)``."""
        c = [(2 * i, 2 * j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0]
        return torch.tensor(c, dtype=dtype or torch.get_default_dtype(), device=device)

    @property
    def mean(self) -> Tensor:
        """The mean, zero by symmetry."""
        return torch.zeros(2)

    @property
    def variance(self) -> Tensor:
        """The marginal variances: each marginal is uniform on ``[-4, 4)``, so ``64 / 12``."""
        return torch.full((2,), 16.0 / 3.0)

    def sample(
        self, sample_shape: _Shape = _EMPTY, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draws uniform points on the checkerboard.

        Arguments:
            sample_shape: The batch shape of the draw; the result has shape
                ``(*sample_shape, 2)`` and the default dtype.
            generator: The random generator to use; torch's global one if ``None``.
        """
        shape = torch.Size(sample_shape)
        kw = _draw_setup(generator)
        gen = {k: v for k, v in kw.items() if k != "dtype"}
        k = torch.randint(8, shape, **gen)
        lower = self.corners(kw["dtype"], k.device)[k]
        x = lower + 2 * torch.rand(shape + (2,), **kw)
        return torch.minimum(x, torch.nextafter(lower + 2, lower))

    def log_prob(self, value: Tensor) -> Tensor:
        """The exact log-density at ``value`` of shape ``(..., 2)``: ``-log 32`` or ``-inf``."""
        check_last_dim(value, 2, "value")
        inside = self.support.check(value)
        out = torch.full(inside.shape, -math.log(32.0), dtype=value.dtype, device=value.device)
        return out.masked_fill(~inside, -math.inf)

    def entropy(self) -> Tensor:
        """The exact entropy, ``log 32``."""
        return torch.tensor(math.log(32.0))


#: Names accepted by :func:`toy_distribution`.
TOY_DATASETS: tuple[str, ...] = ("8gaussians", "checkerboard")

_TOYS = {"8gaussians": EightGaussians, "checkerboard": Checkerboard}


def toy_distribution(name: str) -> EightGaussians | Checkerboard:
    r"""Returns the 2-D toy distribution called ``name``, one of :data:`TOY_DATASETS`.

    Arguments:
        name: ``"8gaussians"`` (:class:`EightGaussians`) or ``"checkerboard"``
            (:class:`Checkerboard`).

    Example:
        >>> p = toy_distribution("checkerboard")
        >>> x = p.sample((4,), generator=torch.Generator().manual_seed(0))
        >>> p.log_prob(x)
        tensor([-3.4657, -3.4657, -3.4657, -3.4657])
        >>> toy_distribution("spiral")
        Traceback (most recent call last):
            ...
        ValueError: unknown toy dataset 'spiral'; expected one of ['8gaussians', 'checkerboard']
    """
    check_choice(name, TOY_DATASETS, "toy dataset")
    return _TOYS[name]()
