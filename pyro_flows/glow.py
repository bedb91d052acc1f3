r"""Multi-scale Glow: a Pyro distribution over images, plain or class-conditional."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import constraints

from ._validation import check_hidden_dims, check_positive_int
from .transforms import Compose, conv_net, glow_step
from .transforms._shaped import check_event_shape
from .transforms.squeeze import squeeze_image, unsqueeze_image

__all__ = ["Glow", "GlowDistribution"]

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


class Glow(nn.Module):
    r"""Multi-scale Glow (:math:`L` levels of :math:`K` steps) with learned Gaussian priors.

    In the direction that scores data, each level squeezes the image (space to depth), runs
    :math:`K` :func:`~pyro_flows.transforms.glow_step` (ActNorm, 1x1 convolution, affine
    coupling), then, except at the last level, factors out half of the channels
    :math:`z_l` with a Gaussian prior whose mean and scale a zero-initialised conv net reads
    from the other half :math:`h_l`; the last level's output has a learned Gaussian prior:

    .. math:: \log p(x) = \sum_{l < L} \log N\big(z_l; \mu_l(h_l), \sigma_l(h_l)\big)
              + \log N\big(h_L; \mu, \sigma\big) + \sum \log|\det J_{\text{steps}}|.

    With ``num_classes`` the model is class-conditional :math:`p(x \mid y)`: a one-hot label
    shifts the top prior and every split prior through linear maps (Glow's class-conditional
    prior). Calling the module gives a :class:`GlowDistribution` (a Pyro distribution);
    :meth:`log_prob`, :meth:`sample` (with a ``temperature`` that scales every prior's
    standard deviation) and :meth:`bits_per_dim` are shortcuts. The model is a density on
    real images (e.g. the logit of dequantized pixels); for discrete pixels wrap it in
    :class:`~pyro_flows.dequantization.DequantizedFlow`. ActNorm layers initialise on the first
    batch scored.

    Arguments:
        input_shape: The image shape ``(C, H, W)``; :math:`H` and :math:`W` divisible by
            :math:`2^L`.
        num_levels: The number of levels :math:`L`.
        num_steps: The number of steps :math:`K` per level.
        hidden_channels: Channels of every coupling network.
        num_classes: The number of classes for a class-conditional model, or None.
        lu: LU-parametrised 1x1 convolutions (default) or plain ones.
        log_scale_bound: The bound of the couplings' log-scales, or None.

    Example:
        >>> glow = Glow((1, 8, 8), num_levels=2, num_steps=2, hidden_channels=[16])
        >>> x = torch.randn(10, 1, 8, 8)
        >>> glow.log_prob(x).shape, glow.sample(3, temperature=0.7).shape
        (torch.Size([10]), torch.Size([3, 1, 8, 8]))
        >>> cglow = Glow((1, 8, 8), num_steps=1, hidden_channels=[16], num_classes=10)
        >>> cglow(torch.tensor([3, 7])).sample((5,)).shape      # 5 draws of each class
        torch.Size([5, 2, 1, 8, 8])

    References:
        | Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018)
        | https://arxiv.org/abs/1807.03039
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_levels: int = 2,
        num_steps: int = 4,
        hidden_channels: Sequence[int] = (64, 64),
        num_classes: int | None = None,
        lu: bool = True,
        log_scale_bound: float | None = 3.0,
    ) -> None:
        super().__init__()
        shape = check_event_shape(input_shape, "input_shape")
        self.num_levels = check_positive_int(num_levels, "num_levels")
        check_positive_int(num_steps, "num_steps")
        hidden = check_hidden_dims(hidden_channels, "hidden_channels")
        factor = 2**num_levels
        if len(shape) != 3 or shape[1] % factor or shape[2] % factor:
            raise ValueError(
                f"input_shape must be (C, H, W) with H and W divisible by 2**num_levels = "
                f"{factor}, got {input_shape!r}"
            )
        if num_classes is not None:
            check_positive_int(num_classes, "num_classes", minimum=2)
        self.input_shape = shape
        self.num_classes = num_classes
        self.num_dims = math.prod(shape)

        self.levels = nn.ModuleList()
        self.split_priors = nn.ModuleList()
        self.split_class = nn.ModuleList()
        self.latent_shapes: list[tuple[int, int, int]] = []
        c, h, w = shape
        for level in range(num_levels):
            c, h, w = 4 * c, h // 2, w // 2
            steps = [glow_step((c, h, w), hidden, lu, log_scale_bound) for _ in range(num_steps)]
            self.levels.append(Compose(steps))
            if level < num_levels - 1:
                kept = c // 2
                self.split_priors.append(conv_net(kept, 2 * (c - kept), hidden[:1]))
                if num_classes is not None:
                    self.split_class.append(_zero_linear(num_classes, 2 * (c - kept)))
                self.latent_shapes.append((c - kept, h, w))
                c = kept
        self.top_shape = (c, h, w)
        self.latent_shapes.append(self.top_shape)
        self.top_prior = nn.Parameter(torch.zeros(2 * c, h, w))
        self.top_class = None if num_classes is None else _zero_linear(num_classes, 2 * c * h * w)

    # -- priors ----------------------------------------------------------------------------------
    def _one_hot(self, y: Tensor | None, batch: torch.Size, like: Tensor) -> Tensor | None:
        if self.num_classes is None:
            if y is not None:
                raise ValueError("y was given but this Glow is not class-conditional")
            return None
        if y is None:
            raise ValueError(
                f"this Glow is class-conditional: pass labels y in [0, {self.num_classes - 1}]"
            )
        if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex():
            raise TypeError(f"y must be an integer tensor of class labels, got {y!r}")
        if y.numel() and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(
                f"y must hold labels in [0, {self.num_classes - 1}], "
                f"got values in [{y.min().item()}, {y.max().item()}]"
            )
        onehot = nn.functional.one_hot(y, self.num_classes).to(like)
        return onehot.expand(*batch, self.num_classes).reshape(-1, self.num_classes)

    def _split_prior(self, level: int, h: Tensor, onehot: Tensor | None) -> tuple[Tensor, Tensor]:
        out = self.split_priors[level](h)
        if onehot is not None:
            out = out + self.split_class[level](onehot)[..., None, None]
        mean, log_scale = out.chunk(2, dim=1)
        return mean, log_scale

    def _top_prior(self, n: int, onehot: Tensor | None) -> tuple[Tensor, Tensor]:
        out = self.top_prior.expand(n, *self.top_prior.shape)
        if onehot is not None:
            out = out + self.top_class(onehot).reshape(n, *self.top_prior.shape)
        mean, log_scale = out.chunk(2, dim=1)
        return mean, log_scale

    # -- the two directions ----------------------------------------------------------------------
    def _check_x(self, x: Tensor) -> torch.Size:
        if not isinstance(x, Tensor) or tuple(x.shape[-3:]) != self.input_shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x must have shape (..., {', '.join(map(str, self.input_shape))}), got {got}"
            )
        return x.shape[:-3]

    def _batch(self, x: Tensor, y: Tensor | None) -> torch.Size:
        batch = self._check_x(x)
        return batch if y is None else torch.broadcast_shapes(batch, y.shape)

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""Maps images to standard-normal noise: returns :math:`\epsilon` and :math:`\log p(x)`.

        :math:`\epsilon` of shape ``(*batch, C H W)`` holds every latent standardised by its
        prior, :math:`\epsilon_l = (z_l - \mu_l) / \sigma_l`, so that ``decode(eps)`` gives
        ``x`` back; :math:`\log p(x)` has shape ``batch``.
        """
        batch = self._batch(x, y)
        onehot = self._one_hot(y, batch, x)
        h = x.expand(*batch, *self.input_shape).reshape(-1, *self.input_shape)
        log_prob = h.new_zeros(h.shape[0])
        noise = []
        for level, steps in enumerate(self.levels):
            h, ladj = steps.inverse_and_ladj(squeeze_image(h))
            log_prob = log_prob - ladj
            if level < self.num_levels - 1:
                h, z = _split(h)
                mean, log_scale = self._split_prior(level, h, onehot)
                eps, lp = _standardise(z, mean, log_scale)
                noise.append(eps)
                log_prob = log_prob + lp
        mean, log_scale = self._top_prior(h.shape[0], onehot)
        eps, lp = _standardise(h, mean, log_scale)
        noise.append(eps)
        log_prob = log_prob + lp
        eps = torch.cat([e.flatten(1) for e in noise], dim=1)
        return eps.reshape(*batch, self.num_dims), log_prob.reshape(batch)

    def decode(self, eps: Tensor, y: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        r"""Maps noise of shape ``(*batch, C H W)`` to images: the inverse of :meth:`encode`.

        Every latent is :math:`z_l = \mu_l + T \sigma_l \epsilon_l` for the temperature
        :math:`T`.
        """
        if not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise ValueError(f"temperature must be a non-negative number, got {temperature!r}")
        if not isinstance(eps, Tensor) or eps.shape[-1:] != (self.num_dims,):
            raise ValueError(f"eps must have shape (..., {self.num_dims})")
        batch = eps.shape[:-1] if y is None else torch.broadcast_shapes(eps.shape[:-1], y.shape)
        onehot = self._one_hot(y, batch, eps)
        eps = temperature * eps.expand(*batch, self.num_dims).reshape(-1, self.num_dims)
        sizes = [math.prod(s) for s in self.latent_shapes]
        parts = list(eps.split(sizes, dim=1))
        n = eps.shape[0]
        mean, log_scale = self._top_prior(n, onehot)
        h = mean + log_scale.exp() * parts[-1].reshape(n, *self.top_shape)
        for level in reversed(range(self.num_levels)):
            if level < self.num_levels - 1:
                mean, log_scale = self._split_prior(level, h, onehot)
                z = mean + log_scale.exp() * parts[level].reshape(n, *self.latent_shapes[level])
                h = torch.cat([h, z], dim=1)
            h = unsqueeze_image(self.levels[level](h))
        return h.reshape(*batch, *self.input_shape)

    # -- distribution API ------------------------------------------------------------------------
    def forward(self, y: Tensor | None = None, temperature: float = 1.0) -> GlowDistribution:
        r"""Returns :math:`p(x)` or :math:`p(x \mid y)` as a :class:`GlowDistribution`."""
        return GlowDistribution(self, y, temperature)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        r"""Returns :math:`\log p(x)` (or :math:`\log p(x \mid y)`) of shape ``batch``."""
        return self.encode(x, y)[1]

    def rsample(
        self, n: int | Sequence[int] = 1, y: Tensor | None = None, temperature: float = 1.0
    ) -> Tensor:
        """Draws ``n`` images (or a shape of them) with gradients; see :meth:`sample`."""
        shape = (n,) if isinstance(n, int) else tuple(n)
        batch = () if y is None else tuple(y.shape)
        ref = self.top_prior
        eps = torch.randn(*shape, *batch, self.num_dims, dtype=ref.dtype, device=ref.device)
        return self.decode(eps, y, temperature)

    def sample(
        self, n: int | Sequence[int] = 1, y: Tensor | None = None, temperature: float = 1.0
    ) -> Tensor:
        """Draws ``n`` images, shape ``(n, *y.shape, C, H, W)``, at a temperature (no gradients).

        A temperature below 1 scales down every prior's standard deviation (Glow uses 0.7),
        trading diversity for cleaner samples.
        """
        with torch.no_grad():
            return self.rsample(n, y, temperature)

    def bits_per_dim(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        r"""Returns :math:`-\log p(x) / (D \ln 2)` of shape ``batch`` (a density, in bits/dim).

        For discrete pixels use :meth:`pyro_flows.dequantization.DequantizedFlow.bits_per_dim`,
        which adds the dequantization and pre-processing terms.
        """
        return -self.log_prob(x, y) / (self.num_dims * math.log(2.0))


class GlowDistribution(dist.TorchDistribution):
    r"""The distribution of a :class:`Glow` (for ``pyro.sample``): :math:`p(x)` or :math:`p(x|y)`.

    Arguments:
        model: The :class:`Glow`.
        y: Class labels of shape ``batch_shape`` for a class-conditional model, or None.
        temperature: The sampling temperature (``log_prob`` is always at temperature 1).
        batch_shape: The batch shape (default: that of ``y``, or ``()``); set by ``expand``,
            e.g. inside a ``pyro.plate``.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 3)
    has_rsample = True

    def __init__(
        self,
        model: Glow,
        y: Tensor | None = None,
        temperature: float = 1.0,
        batch_shape: torch.Size | tuple | None = None,
    ) -> None:
        self.model = model
        self.temperature = temperature
        if batch_shape is None:
            batch_shape = () if y is None else y.shape
        batch_shape = torch.Size(batch_shape)
        self.y = None if y is None else y.expand(batch_shape)
        super().__init__(batch_shape, torch.Size(model.input_shape), validate_args=False)

    def log_prob(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.model.log_prob(x, self.y)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:  # noqa: D102
        # labels carry the batch shape; without them the batch is drawn as more samples
        shape = tuple(sample_shape) + (tuple(self.batch_shape) if self.y is None else ())
        return self.model.rsample(shape, self.y, self.temperature)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:  # noqa: D102
        with torch.no_grad():
            return self.rsample(sample_shape)

    def expand(self, batch_shape: torch.Size, _instance: object = None) -> GlowDistribution:
        """Returns the distribution with batch shape ``batch_shape`` (labels broadcast)."""
        return GlowDistribution(self.model, self.y, self.temperature, batch_shape)


def _zero_linear(n_in: int, n_out: int) -> nn.Linear:
    # class effects start at zero: the conditional model starts as the unconditional one
    layer = nn.Linear(n_in, n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _split(h: Tensor) -> tuple[Tensor, Tensor]:
    kept = h.shape[1] // 2
    return h[:, :kept], h[:, kept:]


def _standardise(z: Tensor, mean: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """``(z - mean) / scale`` and the Gaussian log-density of ``z``, summed per row."""
    eps = (z - mean) * torch.exp(-log_scale)
    log_prob = -0.5 * eps.pow(2) - log_scale - _HALF_LOG_TWO_PI
    return eps, log_prob.flatten(1).sum(1)
