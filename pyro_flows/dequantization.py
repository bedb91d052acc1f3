r"""Flows on discrete data: uniform and variational dequantization, logit pre-processing, bits/dim.

A flow is a density on real vectors; images are integers in ``{0, ..., L - 1}``. Dequantization
adds noise :math:`u \in [0, 1)^D` and scales, :math:`v = (x + u) / L \in (0, 1)^D`; a logit
maps :math:`v` to the real line, where the flow :math:`p` lives. For any noise density
:math:`q(u \mid x)` (Jensen's inequality),

.. math:: \log P(x) \ge \mathbb{E}_{q(u \mid x)}\Big[\log p(w) + \log\Big|\frac{dw}{dv}\Big|
          - D \log L - \log q(u \mid x)\Big], \qquad w = \mathrm{logit}(v),

and :func:`bits_per_dim` turns a log-likelihood in nats into :math:`-\log_2 P(x) / D`. Every
term is accounted for: the :math:`1/L` scaling, the logit's log-determinant and the entropy of
the noise (zero for uniform noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Transform, constraints

from ._validation import check_hidden_dims, check_positive_int
from .transforms import conditional_image_affine_coupling, invertible_conv1x1
from .transforms._shaped import check_event_shape
from .transforms.squeeze import squeeze_image, unsqueeze_image

__all__ = [
    "DequantizedFlow",
    "LatticeDequantization",
    "LogitTransform",
    "UniformDequantization",
    "VariationalDequantization",
    "bits_per_dim",
    "check_levels",
    "lattice_widths",
]


def bits_per_dim(log_likelihood: Tensor, num_dims: int) -> Tensor:
    r"""Converts :math:`\log P(x)` in nats to bits per dimension, :math:`-\log P(x) / (D \ln 2)`.

    Example:
        >>> bits_per_dim(torch.tensor(-64 * math.log(17)), 64)  # uniform over 17 levels
        tensor(4.0875)
    """
    check_positive_int(num_dims, "num_dims")
    return -log_likelihood / (num_dims * math.log(2.0))


def check_levels(x: Tensor, levels: int, name: str = "x") -> None:
    """Raises unless ``x`` holds integers in ``{0, ..., levels - 1}`` (as any dtype)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.numel() == 0:
        return
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > levels - 1 or not torch.equal(x, torch.round(x)):
        raise ValueError(
            f"{name} must hold integers in [0, {levels - 1}] (levels={levels}), got values in "
            f"[{lo}, {hi}]" + ("" if torch.equal(x, torch.round(x)) else " that are not integers")
        )


class LogitTransform(Transform):
    r"""Logit pre-processing of values in :math:`(0, 1)`, with its exact log-determinant.

    .. math:: w = \mathrm{logit}(\alpha + (1 - 2\alpha)\, v), \qquad
              \log\Big|\frac{dw}{dv}\Big| = \textstyle\sum_i \big[\log(1 - 2\alpha)
              - \log p_i - \log(1 - p_i)\big], \quad p = \alpha + (1 - 2\alpha) v,

    summed over the ``event_dim`` rightmost dimensions. :math:`\alpha` keeps :math:`w` finite
    at :math:`v \in \{0, 1\}` (RealNVP uses 0.05 on images).

    Arguments:
        alpha: The margin :math:`\alpha \in [0, 1/2)`.
        event_dim: The number of event dimensions (1 for vectors, 3 for images).

    Example:
        >>> t = LogitTransform(alpha=0.05, event_dim=1)
        >>> v = torch.tensor([[0.5, 0.5]])
        >>> t(v), t.log_abs_det_jacobian(v, t(v))  # dw/dv = 0.9 / 0.25 at v = 1/2
        (tensor([[0., 0.]]), tensor([2.5619]))

    References:
        | Density estimation using Real NVP (Dinh et al., 2017)
        | https://arxiv.org/abs/1605.08803
    """

    bijective = True
    sign = +1

    def __init__(self, alpha: float = 0.05, event_dim: int = 1, cache_size: int = 0) -> None:
        if not (isinstance(alpha, (int, float)) and 0 <= alpha < 0.5):
            raise ValueError(f"alpha must be a number in [0, 0.5), got {alpha!r}")
        check_positive_int(event_dim, "event_dim")
        super().__init__(cache_size=cache_size)
        self.alpha = float(alpha)
        self._event_dim = event_dim

    @constraints.dependent_property(is_discrete=False)
    def domain(self) -> constraints.Constraint:  # noqa: D102
        return constraints.independent(constraints.unit_interval, self._event_dim)

    @constraints.dependent_property(is_discrete=False)
    def codomain(self) -> constraints.Constraint:  # noqa: D102
        return constraints.independent(constraints.real, self._event_dim)

    def _call(self, v: Tensor) -> Tensor:
        p = self.alpha + (1 - 2 * self.alpha) * v
        return torch.log(p) - torch.log1p(-p)

    def _inverse(self, w: Tensor) -> Tensor:
        return (torch.sigmoid(w) - self.alpha) / (1 - 2 * self.alpha)

    def log_abs_det_jacobian(self, v: Tensor, w: Tensor) -> Tensor:
        r"""Returns :math:`\log|\det \partial w / \partial v|`, summed over the event."""
        p = self.alpha + (1 - 2 * self.alpha) * v
        ladj = math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)
        return ladj.flatten(ladj.dim() - self._event_dim).sum(-1)


class UniformDequantization(nn.Module):
    r"""Uniform noise: :math:`v = (x + u) / L`, :math:`u \sim U[0, 1)^D`, :math:`\log q = 0`.

    Arguments:
        event_shape: The event shape of the data (``D`` or ``(C, H, W)``).
        levels: The number of values :math:`L` of each pixel or feature.

    Example:
        >>> deq = UniformDequantization((1, 2, 2), levels=4)
        >>> v, log_q = deq(torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]]))
        >>> bool(((v >= torch.tensor([0, 0.25, 0.5, 0.75]).reshape(2, 2)) & (v < 1)).all())
        True

    References:
        | A note on the evaluation of generative models (Theis et al., 2016)
        | https://arxiv.org/abs/1511.01844
    """

    def __init__(self, event_shape: Sequence[int] | int, levels: int) -> None:
        super().__init__()
        self.event_shape = check_event_shape(event_shape)
        self.levels = check_positive_int(levels, "levels", minimum=2)

    def _checked(self, x: Tensor) -> torch.Size:
        n = len(self.event_shape)
        if not isinstance(x, Tensor) or tuple(x.shape[x.dim() - n :]) != self.event_shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (..., {self.event_shape}), got {got}")
        check_levels(x, self.levels)
        return x.shape[: x.dim() - n]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""Returns ``v`` in :math:`(0, 1)` and :math:`\log q(u \mid x)` of shape ``batch``."""
        batch = self._checked(x)
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        u = torch.rand_like(x)
        return (x + u) / self.levels, u.new_zeros(batch)


class VariationalDequantization(UniformDequantization):
    r"""Learned noise :math:`q(u \mid x)`: a conditional flow on images (Flow++).

    .. math:: \epsilon \sim \mathrm{Logistic}(0, 1)^D, \quad h = f_x(\epsilon), \quad
              u = \sigma(h), \qquad
              \log q(u \mid x) = \log \mathrm{Logistic}(\epsilon)
              - \log|\det \partial_\epsilon f_x| - \textstyle\sum \log \sigma'(h)

    :math:`f_x` alternates affine couplings, whose networks see features of :math:`x`, a
    reversal of the channels and invertible 1x1 convolutions; it works on the squeezed image
    ``(4C, H/2, W/2)`` so that a one-channel image can be split. The couplings start at the
    identity (zero last layers) and the 1x1 convolutions at the identity matrix, and
    :math:`\sigma(\epsilon)` is exactly uniform for logistic :math:`\epsilon`: an untrained
    :math:`q` *is* uniform dequantization, so training it jointly with the flow can only
    tighten the bound from there. (Flow++ uses a Gaussian :math:`\epsilon`, which starts the
    bound lower by :math:`\mathrm{KL}(q \,\|\, U)`.)

    Arguments:
        event_shape: The image shape ``(C, H, W)`` with even :math:`H` and :math:`W`.
        levels: The number of values :math:`L` of each pixel.
        num_steps: The number of coupling steps of :math:`f_x`.
        hidden_channels: Channels of the coupling networks.
        context_channels: Channels of the features of :math:`x` the couplings see.

    Example:
        >>> deq = VariationalDequantization((1, 4, 4), levels=17, hidden_channels=[8])
        >>> v, log_q = deq(torch.randint(0, 17, (5, 1, 4, 4)).float())
        >>> v.shape, log_q.shape
        (torch.Size([5, 1, 4, 4]), torch.Size([5]))

    References:
        | Flow++: Improving Flow-Based Generative Models with Variational Dequantization and
          Architecture Design (Ho et al., 2019)
        | https://arxiv.org/abs/1902.00275
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        levels: int,
        num_steps: int = 4,
        hidden_channels: Sequence[int] = (32, 32),
        context_channels: int = 8,
    ) -> None:
        super().__init__(event_shape, levels)
        c, h, w = self._image_shape()
        check_positive_int(num_steps, "num_steps")
        check_hidden_dims(hidden_channels, "hidden_channels")
        check_positive_int(context_channels, "context_channels")
        self.inner_shape = (4 * c, h // 2, w // 2)
        self.features = nn.Sequential(
            nn.Conv2d(c, context_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(context_channels, context_channels, 3, padding=1),
        )
        ctx = 4 * context_channels
        self.couplings = nn.ModuleList(
            conditional_image_affine_coupling(self.inner_shape, ctx, hidden_channels)
            for _ in range(num_steps)
        )
        self.mixers = nn.ModuleList(invertible_conv1x1(self.inner_shape) for _ in range(num_steps))
        with torch.no_grad():  # start at W = I, so that q starts uniform
            for mixer in self.mixers:
                mixer.perm.copy_(torch.eye(4 * c))
                mixer.sign_s.fill_(1.0)
                for p in (mixer.lower, mixer.upper, mixer.log_abs_s):
                    p.zero_()

    def _image_shape(self) -> tuple:
        shape = self.event_shape
        if len(shape) != 3 or shape[1] % 2 or shape[2] % 2:
            raise ValueError(
                f"event_shape must be an image shape (C, H, W) with even H and W, got {shape}"
            )
        return shape

    def forward(self, x: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""Returns ``v`` in :math:`(0, 1)` and :math:`\log q(u \mid x)` of shape ``batch``.

        ``noise`` (shape ``(*batch, 4C, H/2, W/2)``) fixes :math:`\epsilon` instead of drawing it.
        """
        batch = self._checked(x)
        x = x.to(self.mixers[0].lower.dtype)  # integers (or another precision) to the model's
        flat = x.reshape(-1, *self.event_shape)
        context = self.features(flat / (self.levels - 1) - 0.5)
        context = squeeze_image(context).reshape(*batch, -1, *self.inner_shape[1:])
        if noise is None:  # standard logistic noise, logit(U) with U uniform
            p = torch.rand(*batch, *self.inner_shape, dtype=x.dtype, device=x.device)
            eps = torch.log(p) - torch.log1p(-p)
        else:
            eps = noise.expand(*batch, *self.inner_shape)
        h, ladj = eps, 0.0
        for coupling, mixer in zip(self.couplings, self.mixers, strict=True):
            h, step_ladj = coupling.condition(context).call_and_ladj(h)
            h = h.flip(-3)  # the other half of the channels is transformed next (|det| = 1)
            h, mix_ladj = mixer.call_and_ladj(h)
            ladj = ladj + step_ladj + mix_ladj
        # log density of the logistic at eps, and log sigmoid'(h); both are
        # log sigmoid(t) + log sigmoid(-t)
        log_eps = _log_dsigmoid(eps)
        log_q = (log_eps - _log_dsigmoid(h)).flatten(-3).sum(-1) - ladj
        u = torch.sigmoid(h)
        # back to the data layout: (4C, H/2, W/2) -> (C, H, W)
        return (x + unsqueeze_image(u)) / self.levels, log_q


def _log_dsigmoid(t: Tensor) -> Tensor:
    return nn.functional.logsigmoid(t) + nn.functional.logsigmoid(-t)


class DequantizedFlow(nn.Module):
    r"""A flow on the logit of dequantized data: a model of discrete data with a bits/dim score.

    Wraps a continuous density ``flow`` (anything with ``log_prob(w)`` or
    ``log_prob(w, context)``, e.g. :class:`~pyro_flows.glow.Glow` or
    :class:`~pyro_flows.distributions.NormalizingFlow`) with a dequantizer and the logit
    pre-processing; see the module docstring for the bound. The dequantizer's parameters are
    trained with the flow's by maximising :meth:`elbo`.

    Arguments:
        flow: The continuous density on :math:`w`.
        dequantizer: A :class:`UniformDequantization` or :class:`VariationalDequantization`.
        alpha: The margin of the :class:`LogitTransform`.

    Example:
        >>> from pyro_flows.flows import normalizing_flow
        >>> model = DequantizedFlow(
        ...     normalizing_flow("realnvp", 4, num_layers=2), UniformDequantization(4, levels=8)
        ... )
        >>> x = torch.randint(0, 8, (10, 4)).float()
        >>> model.elbo(x).shape, model.bits_per_dim(x, num_samples=4).shape
        (torch.Size([10]), torch.Size([10]))

    References:
        | Flow++: Improving Flow-Based Generative Models with Variational Dequantization and
          Architecture Design (Ho et al., 2019)
        | https://arxiv.org/abs/1902.00275
    """

    def __init__(
        self, flow: nn.Module, dequantizer: UniformDequantization, alpha: float = 0.05
    ) -> None:
        super().__init__()
        if not isinstance(dequantizer, UniformDequantization):
            raise TypeError(
                "dequantizer must be a UniformDequantization or VariationalDequantization, got "
                f"{type(dequantizer).__name__}"
            )
        self.flow = flow
        self.dequantizer = dequantizer
        self.logit = LogitTransform(alpha, event_dim=len(dequantizer.event_shape))
        self.levels = dequantizer.levels
        self.num_dims = math.prod(dequantizer.event_shape)

    def _flow_log_prob(self, w: Tensor, context: Tensor | None) -> Tensor:
        return self.flow.log_prob(w) if context is None else self.flow.log_prob(w, context)

    def log_weights(
        self, x: Tensor, context: Tensor | None = None, num_samples: int = 1
    ) -> Tensor:
        r"""Returns :math:`\log p(x + u_k) - \log q(u_k \mid x)` for K noise draws, shape ``(K, *batch)``.

        Each term is the log of an unbiased estimate of :math:`P(x)`: the flow's log-density
        at the logit, the logit's log-determinant, :math:`-D \log L` and :math:`-\log q`.
        """
        check_positive_int(num_samples, "num_samples")
        xs = x.expand(num_samples, *x.shape)
        if context is not None:
            context = context.expand(num_samples, *context.shape)
        v, log_q = self.dequantizer(xs)
        w = self.logit(v)
        log_p = self._flow_log_prob(w, context) + self.logit.log_abs_det_jacobian(v, w)
        return log_p - self.num_dims * math.log(self.levels) - log_q

    def elbo(self, x: Tensor, context: Tensor | None = None, num_samples: int = 1) -> Tensor:
        r"""The variational lower bound on :math:`\log P(x)` in nats, shape ``batch``."""
        return self.log_weights(x, context, num_samples).mean(0)

    def importance_weighted(
        self, x: Tensor, context: Tensor | None = None, num_samples: int = 10
    ) -> Tensor:
        r"""The importance-weighted estimate :math:`\log \frac1K \sum_k p(x + u_k)/q(u_k|x)`.

        Never below :meth:`elbo` on the same draws; its expectation increases with
        :math:`K` towards :math:`\log P(x)` (Burda et al., 2016).
        """
        log_w = self.log_weights(x, context, num_samples)
        return torch.logsumexp(log_w, 0) - math.log(num_samples)

    def bits_per_dim(
        self, x: Tensor, context: Tensor | None = None, num_samples: int | None = None
    ) -> Tensor:
        """Bits/dim of each ``x`` (shape ``batch``): from :meth:`elbo`, or the IW estimate.

        With ``num_samples`` the importance-weighted estimate with that many draws is used
        (lower, i.e. tighter); average with ``.mean()`` for a data set.
        """
        if num_samples is None:
            ll = self.elbo(x, context)
        else:
            ll = self.importance_weighted(x, context, num_samples)
        return bits_per_dim(ll, self.num_dims)

    @torch.no_grad()
    def sample(self, w: Tensor) -> Tensor:
        r"""Maps flow samples ``w`` to discrete data, :math:`\lfloor L\, \mathrm{logit}^{-1}(w)\rfloor`.

        Values the flow puts outside the logit's range are rounded to the nearest level.
        """
        v = self.logit.inv(w)
        return torch.floor(v * self.levels).clamp(0, self.levels - 1)


# -- rounded tables ---------------------------------------------------------------------------

#: The most rows (cell points times data rows) :class:`LatticeDequantization` scores at once.
_POINT_ROWS = 65536
#: A column is on a lattice only if it spans at most this many lattice steps.
_MAX_LATTICE_STEPS = 1e6


def _float_gcd(a: float, b: float, tol: float) -> float:
    """The largest ``h`` (up to ``tol``) of which both ``a`` and ``b`` are integer multiples."""
    a, b = max(a, b), min(a, b)
    while b > tol:
        a, b = b, abs(a - b * round(a / b))
    return a


def lattice_widths(x: np.ndarray | Tensor, *, min_relative_width: float = 1e-3) -> np.ndarray:
    r"""Detects columns recorded on a grid (rounded data) and returns each grid's width.

    A column is on a lattice of width :math:`h` when every value is
    :math:`x_{\min} + k h` for an integer :math:`k`: data rounded to 0.1 cm, counts,
    scaled integers. :math:`h` is the greatest common divisor of the gaps between its
    distinct values, found by Euclid's algorithm on floats (to a relative tolerance of
    :math:`10^{-9}` of the column's magnitude, so decimal values such as 0.1 are found exactly
    although they are not exact in binary), and then checked on every value. A column counts
    as continuous (width 0) when it has no such :math:`h`, when it spans more than
    :math:`10^6` steps, or when :math:`h` is below ``min_relative_width`` times its standard
    deviation (so fine that rounding cannot matter to a density).

    Arguments:
        x: Rows of shape ``(num_rows, D)``, finite.
        min_relative_width: The smallest :math:`h / \operatorname{sd}` counted as a lattice.

    Returns:
        The widths :math:`h_j \ge 0`, a float64 array of shape ``(D,)`` (0: continuous).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = np.c_[np.round(rng.normal(5, 1, 100), 1), rng.normal(size=100),
        ...           rng.integers(0, 3, 100)]
        >>> lattice_widths(x).round(6).tolist()
        [0.1, 0.0, 1.0]
    """
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (num_rows, D), got {x.shape}")
    if not (isinstance(min_relative_width, int | float) and min_relative_width >= 0):
        raise ValueError(f"min_relative_width must be a number >= 0, got {min_relative_width!r}")
    widths = np.zeros(x.shape[1])
    for j in range(x.shape[1]):
        v = np.unique(x[:, j])
        if v.size < 2:
            continue
        span = v[-1] - v[0]
        tol = 1e-9 * max(np.abs(v).max(), span)
        gaps = np.diff(v)
        gaps = gaps[gaps > tol]
        h = gaps.min()
        for g in gaps:
            r = g / h
            if abs(r - round(r)) > 1e-6 * r:
                h = _float_gcd(g, h, tol * 10)
                if h <= tol * 10 or span / h > _MAX_LATTICE_STEPS:
                    break
        if h <= tol * 10 or span / h > _MAX_LATTICE_STEPS:
            continue
        k = (v - v[0]) / h
        if np.abs(k - np.round(k)).max() > 1e-3:
            continue
        if h < min_relative_width * x[:, j].std():
            continue
        widths[j] = h
    return widths


class LatticeDequantization(nn.Module):
    r"""A density of rounded data: a continuous density smoothed over each lattice cell.

    With the columns recorded on grids of widths :math:`h` (0 for a continuous column), the
    model of the data is the continuous density :math:`q` of the dequantised rows
    :math:`\tilde x = x + h \odot (u - \tfrac12)`, :math:`u \sim U[0, 1)^D`, and its density
    at any point is :math:`q` averaged over the cell around it,

    .. math:: p(x) = \mathbb{E}_{u \sim U[0,1)^D}\big[q(x + h \odot (u - \tfrac12))\big]
              = \frac{1}{\prod_{j: h_j > 0} h_j} \int_{\mathrm{cell}(x)} q(\tilde x)\,
              d\tilde x_{h > 0},

    a proper density on :math:`\mathbb{R}^D` (the convolution of :math:`q` with the uniform
    box), finite everywhere, on the lattice or off it; at a lattice point it is the
    probability of the rounded value divided by the cell's volume. A continuous density fitted
    to the rounded values themselves can instead grow without bound on the lattice and score
    an unseen value, even a neighbouring one, at :math:`-\infty`.

    In train mode :meth:`log_prob` returns :math:`\log q(x + h \odot (u - \frac12))` at one
    fresh draw per row: its mean is the lower bound :math:`\mathbb{E}_u \log q \le \log p(x)`
    (Jensen), maximised by fitting :math:`q` to the dequantised data (Theis et al., 2016). In
    eval mode it returns the estimate :math:`\log \frac1S \sum_s q(x + h \odot (u_s -
    \frac12))` over ``num_draws`` fixed scrambled Sobol points :math:`u_s`, the same for
    every row, so a score is deterministic and does not depend on the other rows; it tends to
    :math:`\log p(x)` as :math:`S` grows.

    Arguments:
        density: A module with ``log_prob(x)`` (or ``log_prob(x, context)``) and, for
            :meth:`sample`, ``sample(shape)`` (or ``sample(shape, context)``).
        width: The lattice widths :math:`h`, shape ``(D,)``, each >= 0.
        num_draws: The number :math:`S` of cell points of the eval-mode estimate.

    Example:
        >>> from pyro_flows.distributions import NormalizingFlow
        >>> from pyro_flows.transforms import Standardization
        >>> q = NormalizingFlow(Standardization.identity(1), 1, standardize=False)
        >>> p = LatticeDequantization(q, torch.tensor([1.0])).eval()
        >>> float(p.log_prob(torch.tensor([[0.0]])).exp())  # P(-1/2 < z < 1/2) for N(0, 1)
        0.38...

    References:
        | A note on the evaluation of generative models (Theis et al., 2016)
        | https://arxiv.org/abs/1511.01844
    """

    def __init__(self, density: nn.Module, width: Tensor, num_draws: int = 64) -> None:
        super().__init__()
        width = torch.as_tensor(width)
        if not width.is_floating_point():
            width = width.to(torch.get_default_dtype())
        if width.dim() != 1 or not bool(torch.isfinite(width).all() & (width >= 0).all()):
            raise ValueError(f"width must be a 1-D tensor of finite values >= 0, got {width}")
        self.density = density
        self.num_draws = check_positive_int(num_draws, "num_draws")
        self.register_buffer("width", width.clone())
        points = torch.quasirandom.SobolEngine(width.numel(), scramble=True, seed=0)
        self.register_buffer("points", points.draw(self.num_draws, dtype=torch.float64) - 0.5)

    def _log_q(self, x: Tensor, context: Tensor | None) -> Tensor:
        return self.density.log_prob(x) if context is None else self.density.log_prob(x, context)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r"""Returns :math:`\log p(x)` (eval mode) or a one-draw bound (train mode), shape batch."""
        width = self.width.to(x.dtype)
        if self.training:
            return self._log_q(x + width * (torch.rand_like(x) - 0.5), context)
        # the cell points in groups of at most _POINT_ROWS rows in all, one pass per group
        points = self.points.to(x.dtype)
        rows = max(1, math.prod(x.shape[:-1]))
        group = max(1, _POINT_ROWS // rows)
        parts = []
        for i in range(0, self.num_draws, group):
            u = points[i : i + group].reshape(-1, *([1] * (x.dim() - 1)), x.shape[-1])
            c = None if context is None else context.expand(u.shape[0], *context.shape)
            parts.append(self._log_q(x + width * u, c))
        return torch.logsumexp(torch.cat(parts), 0) - math.log(self.num_draws)

    @torch.no_grad()
    def sample(self, shape: Sequence[int] = (), context: Tensor | None = None) -> Tensor:
        r"""Draws from :math:`p`: a draw of :math:`q` plus :math:`h \odot (u - \frac12)`."""
        x = self.density.sample(shape) if context is None else self.density.sample(shape, context)
        return x + self.width.to(x.dtype) * (torch.rand_like(x) - 0.5)
