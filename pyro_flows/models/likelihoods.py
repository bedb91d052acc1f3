r"""Observation models :math:`p(x \mid z, y)` of VAEs, from a decoder's output.

A likelihood turns the decoder's output, shape ``(*batch, P * G)``, into a distribution with
event shape ``(D,)``: the output holds :math:`P` parameters (``num_params``) for each of
:math:`G` features, stacked parameter by parameter (``[loc_1..loc_G, scale_1..scale_G]``), and
``index`` optionally picks the :math:`D` observed features out of the :math:`G` generated ones
(e.g. sensors on a grid).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch import Tensor, nn
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from .._validation import check_choice, check_positive_float, check_positive_int

__all__ = [
    "Bernoulli",
    "DequantizedLogistic",
    "DiscretizedLogistic",
    "Gaussian",
    "Likelihood",
    "likelihood",
]


class Likelihood(nn.Module):
    r"""Base class: splits the decoder output into parameters and builds the distribution.

    Arguments:
        index: The indices of the observed features among the :math:`G` generated ones
            (a 1-D integer tensor), or None to observe all of them.
    """

    num_params: int = 1

    def __init__(self, index: Tensor | None = None) -> None:
        super().__init__()
        if index is not None:
            if not torch.is_tensor(index) or index.dim() != 1 or index.is_floating_point():
                raise TypeError("index must be a 1-D integer tensor of observed feature indices")
            index = index.long()
        self.register_buffer("index", index)

    def split(self, output: Tensor) -> list[Tensor]:
        """The :math:`P` parameter tensors, each of shape ``(*batch, D)``."""
        size = output.shape[-1]
        if size % self.num_params:
            raise ValueError(
                f"{type(self).__name__} takes {self.num_params} decoder outputs per feature; "
                f"the decoder gave {size}, not a multiple of {self.num_params}"
            )
        params = list(output.split(size // self.num_params, dim=-1))
        if self.index is not None:
            params = [p.index_select(-1, self.index) for p in params]
        return params

    def forward(self, output: Tensor) -> dist.Distribution:
        r"""Returns :math:`p(x \mid \text{output})`, batch shape ``output.shape[:-1]``."""
        return self.distribution(*self.split(output))

    def distribution(self, *params: Tensor) -> dist.Distribution:
        """Builds the distribution (event shape ``(D,)``) from the split parameters."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    r"""Binary data: :math:`p(x \mid z) = \prod_d \mathrm{Bernoulli}(x_d; \sigma(\ell_d))`.

    One decoder output per feature, the logit :math:`\ell_d`. Data must be 0 or 1.

    Example:
        >>> Bernoulli()(torch.zeros(2, 3)).log_prob(torch.ones(2, 3))
        tensor([-2.0794, -2.0794])
    """

    num_params = 1

    def distribution(self, logits: Tensor) -> dist.Distribution:  # noqa: D102
        return dist.Bernoulli(logits=logits).to_event(1)


class Gaussian(Likelihood):
    r"""Real data: :math:`p(x \mid z) = \prod_d N(x_d; \mu_d, \sigma_d^2)`.

    With ``scale`` given, :math:`\sigma_d` is that fixed noise level and the decoder gives one
    output per feature (:math:`\mu_d`); with ``scale=None`` it gives two,
    :math:`\mu_d` and :math:`\sigma_d = \text{softplus}(s_d) + \sigma_{min}`.

    Arguments:
        scale: The known noise standard deviation (a number, or a 1-D tensor with one per
            observed feature), or None to learn it per point and feature.
        min_scale: The floor :math:`\sigma_{min}` of a learned scale.
        index: See :class:`Likelihood`.

    Example:
        >>> lik = Gaussian(scale=0.5, index=torch.tensor([0, 2]))
        >>> lik(torch.zeros(4, 3)).event_shape
        torch.Size([2])
    """

    def __init__(
        self,
        scale: float | Tensor | None = None,
        min_scale: float = 1e-3,
        index: Tensor | None = None,
    ) -> None:
        super().__init__(index)
        if torch.is_tensor(scale):
            if scale.dim() > 1 or not bool((scale > 0).all()):
                raise ValueError("scale must be a positive number or a 1-D tensor of them")
            self.register_buffer("scale", scale)
        else:
            self.scale = None if scale is None else check_positive_float(scale, "scale")
        self.min_scale = check_positive_float(min_scale, "min_scale")
        self.num_params = 1 if scale is not None else 2

    def distribution(self, loc: Tensor, raw: Tensor | None = None) -> dist.Distribution:  # noqa: D102
        if raw is None:
            return dist.Normal(loc, self.scale).to_event(1)
        return dist.Normal(loc, nn.functional.softplus(raw) + self.min_scale).to_event(1)


class DiscretizedLogistic(TorchDistribution):
    r"""A logistic density integrated over the cells of :math:`L` integer levels.

    .. math:: P(k) = F\!\left(\tfrac{k + 1/2 - \mu}{s}\right)
              - F\!\left(\tfrac{k - 1/2 - \mu}{s}\right), \quad k = 0, \dots, L - 1,

    with :math:`F` the logistic CDF, and the outer cells extended to :math:`\mp\infty` so the
    probabilities sum to one. This is the exact probability of the level :math:`k` when the
    uniformly dequantized value :math:`k + u`, :math:`u \sim U(-\tfrac12, \tfrac12)`, has a
    logistic density; the log-probabilities are computed in log space
    (:math:`\sigma(a) - \sigma(b) = \sigma(a)\,\sigma(-b)\,(1 - e^{b - a})`).

    Arguments:
        loc: The location :math:`\mu`, in units of levels.
        scale: The scale :math:`s > 0`, in units of levels.
        num_levels: The number :math:`L` of levels.

    Example:
        >>> d = DiscretizedLogistic(torch.tensor([2.0]), torch.tensor([0.5]), num_levels=5)
        >>> d.log_prob(torch.arange(5.0).unsqueeze(-1)).exp().sum().item()
        1.0

    References:
        | PixelCNN++ (Salimans et al., 2017)
        | https://arxiv.org/abs/1701.05517
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = False

    def __init__(
        self, loc: Tensor, scale: Tensor, num_levels: int, validate_args: bool | None = None
    ) -> None:
        self.num_levels = check_positive_int(num_levels, "num_levels", minimum=2)
        self.loc, self.scale = broadcast_all(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:  # noqa: D102
        return constraints.integer_interval(0, self.num_levels - 1)

    def expand(self, batch_shape: torch.Size, _instance=None) -> DiscretizedLogistic:  # noqa: D102
        batch_shape = torch.Size(batch_shape)
        return DiscretizedLogistic(
            self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.num_levels
        )

    def log_prob(self, value: Tensor) -> Tensor:  # noqa: D102
        if self._validate_args:
            self._validate_sample(value)
        upper = (value + 0.5 - self.loc) / self.scale
        lower = (value - 0.5 - self.loc) / self.scale
        log_cell = torch.log(-torch.expm1(-1.0 / self.scale))
        inner = nn.functional.logsigmoid(upper) + nn.functional.logsigmoid(-lower) + log_cell
        first = nn.functional.logsigmoid(upper)
        last = nn.functional.logsigmoid(-lower)
        out = torch.where(value <= 0, first, inner)
        return torch.where(value >= self.num_levels - 1, last, out)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:  # noqa: D102
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            u = u.clamp(torch.finfo(u.dtype).tiny, 1 - torch.finfo(u.dtype).eps)
            v = self.loc + self.scale * (u.log() - (-u).log1p())
            # The outer cells reach to -inf and +inf, so rounding then clipping is exact.
            return v.round().clamp(0, self.num_levels - 1)

    def _level_probs(self) -> tuple[Tensor, Tensor]:
        # P(k) for every level k, shape batch + (L,)
        levels = torch.arange(self.num_levels, dtype=self.loc.dtype, device=self.loc.device)
        shape = self.loc.shape + (1,)
        d = DiscretizedLogistic(
            self.loc.reshape(shape), self.scale.reshape(shape), self.num_levels
        )
        return levels, d.log_prob(levels).exp()

    @property
    def mean(self) -> Tensor:
        r"""The exact mean :math:`\sum_k k P(k)`."""
        levels, p = self._level_probs()
        return (p * levels).sum(-1)

    @property
    def variance(self) -> Tensor:
        r"""The exact variance :math:`\sum_k (k - \bar k)^2 P(k)`."""
        levels, p = self._level_probs()
        mean = (p * levels).sum(-1, keepdim=True)
        return (p * (levels - mean) ** 2).sum(-1)


class DequantizedLogistic(Likelihood):
    r"""Integer data (pixel levels): a continuous density integrated over each level's cell.

    The decoder gives two outputs per feature, :math:`a_d` and :math:`b_d`; the level
    :math:`x_d \in \{0, \dots, L - 1\}` has the :class:`DiscretizedLogistic` probability with
    :math:`\mu_d = (L - 1)\,a_d` and :math:`s_d = (L - 1)\,\text{softplus}(b_d) + 0.01`.
    Log-likelihoods are exact log-probabilities of the integer data, so bounds are in nats of
    the discrete data (no :math:`-D \log L` dequantization correction is needed).

    Arguments:
        num_levels: The number :math:`L` of integer levels (17 for scikit-learn's digits).
        index: See :class:`Likelihood`.

    Example:
        >>> lik = DequantizedLogistic(num_levels=17)
        >>> lik(torch.zeros(3, 128)).log_prob(torch.zeros(3, 64)).shape
        torch.Size([3])
    """

    num_params = 2

    def __init__(self, num_levels: int, index: Tensor | None = None) -> None:
        super().__init__(index)
        self.num_levels = check_positive_int(num_levels, "num_levels", minimum=2)

    def distribution(self, a: Tensor, b: Tensor) -> dist.Distribution:  # noqa: D102
        span = self.num_levels - 1
        scale = span * nn.functional.softplus(b) + 0.01
        return DiscretizedLogistic(span * a, scale, self.num_levels).to_event(1)


_LIKELIHOODS = {"bernoulli": Bernoulli, "gaussian": Gaussian, "dequantized": DequantizedLogistic}


def likelihood(name: str, **kwargs: object) -> Likelihood:
    """Builds a likelihood by name: ``"bernoulli"``, ``"gaussian"`` or ``"dequantized"``.

    Keyword arguments go to the class (``scale``, ``num_levels``, ``index``).

    Example:
        >>> likelihood("dequantized", num_levels=17).num_params
        2
    """
    check_choice(name, tuple(_LIKELIHOODS), "likelihood")
    return _LIKELIHOODS[name](**kwargs)
