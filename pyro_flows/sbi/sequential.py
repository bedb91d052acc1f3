r"""Sequential rounds for one observation: truncated proposals (TSNPE)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

from .._validation import check_positive_int
from ._base import PosteriorEstimator
from .simulate import simulate

__all__ = ["SequentialResult", "TruncatedPrior", "tsnpe"]


class TruncatedPrior(TorchDistribution):
    r"""The prior restricted to the highest-density region of a posterior estimate.

    .. math:: \tilde p(\theta) \propto p(\theta)\, \mathbb 1\left[q(\theta \mid x_o) \ge
              \tau\right], \qquad \tau = \text{the } \epsilon\text{-quantile of }
              q(\Theta \mid x_o),\ \Theta \sim q(\cdot \mid x_o),

    so the region holds :math:`1 - \epsilon` of :math:`q`'s mass. Samples are drawn by
    rejection from the prior; :attr:`acceptance_rate` estimates :math:`\tilde p`'s normaliser
    :math:`Z = P_p(q \ge \tau)`, which :meth:`log_prob` uses.

    Arguments:
        prior: The prior :math:`p(\theta)`.
        posterior: :math:`q(\theta \mid x_o)`, a distribution with batch shape ``()``.
        quantile: :math:`\epsilon`.
        num_threshold_samples: The draws of :math:`q` that estimate :math:`\tau`.
        max_draws: The most prior draws tried per call of :meth:`sample` before giving up.

    Example:
        >>> import pyro.distributions as dist
        >>> prior = dist.Uniform(-5 * torch.ones(1), 5 * torch.ones(1)).to_event(1)
        >>> q = dist.Normal(torch.zeros(1), 0.1).to_event(1)
        >>> trunc = TruncatedPrior(prior, q, quantile=1e-3)
        >>> draws = trunc.sample((200,))
        >>> bool(draws.abs().max() < 0.5), 0.03 < trunc.acceptance_rate < 0.08
        (True, True)

    References:
        | Truncated Proposals for Scalable and Hassle-Free Simulation-Based Inference
          (Deistler et al., 2022)
        | https://arxiv.org/abs/2210.04815
    """

    arg_constraints: dict[str, constraints.Constraint] = {}

    def __init__(
        self,
        prior: torch.distributions.Distribution,
        posterior: torch.distributions.Distribution,
        quantile: float = 1e-4,
        num_threshold_samples: int = 10_000,
        max_draws: int = 10_000_000,
    ) -> None:
        if not (isinstance(quantile, int | float) and 0 <= quantile < 1):
            raise ValueError(f"quantile must be in [0, 1), got {quantile!r}")
        check_positive_int(num_threshold_samples, "num_threshold_samples")
        self.max_draws = check_positive_int(max_draws, "max_draws")
        if posterior.batch_shape != ():
            raise ValueError(f"posterior must have batch shape (), got {posterior.batch_shape}")
        self.prior = prior
        self.posterior = posterior
        self.quantile = quantile
        with torch.no_grad():
            lp = posterior.log_prob(posterior.sample((num_threshold_samples,)))
        lp = lp[torch.isfinite(lp)]
        self.threshold = (
            float(torch.quantile(lp.double(), quantile)) if quantile > 0 else -math.inf
        )
        self._accepted = 0
        self._tried = 0
        super().__init__(torch.Size(), prior.event_shape, validate_args=False)

    @property
    def support(self) -> constraints.Constraint:  # noqa: D102
        return self.prior.support

    @property
    def acceptance_rate(self) -> float:
        """The fraction of prior draws accepted so far (estimates the normaliser :math:`Z`)."""
        if self._tried == 0:
            self.sample((1000,))
        return self._accepted / self._tried

    def inside(self, theta: Tensor) -> Tensor:
        """Whether each row of ``theta`` lies in the truncated region (boolean, shape batch)."""
        with torch.no_grad():
            return self.posterior.log_prob(theta) >= self.threshold

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        """Draws by rejection from the prior (in batches of at least 1000)."""
        shape = torch.Size(sample_shape)
        n = max(math.prod(shape), 1)
        out, have, tried = [], 0, 0
        while have < n:
            if tried >= self.max_draws:
                raise RuntimeError(
                    f"TruncatedPrior: only {have} of {n} draws accepted in {tried} prior draws "
                    f"(acceptance {have / tried:.2e}); the posterior estimate is far narrower "
                    "than the prior: raise max_draws or the quantile"
                )
            m = max(1000, 2 * (n - have))
            with torch.no_grad():
                theta = self.prior.sample((m,))
                keep = theta[self.inside(theta)]
            tried += m
            out.append(keep)
            have += keep.shape[0]
        self._accepted += have
        self._tried += tried
        return torch.cat(out)[:n].reshape(*shape, -1)

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\log p(\theta) - \log Z` inside the region, :math:`-\infty` outside."""
        lp = self.prior.log_prob(value) - math.log(self.acceptance_rate)
        return torch.where(self.inside(value), lp, torch.full_like(lp, -math.inf))


@dataclass
class SequentialResult:
    r"""What :func:`tsnpe` did, round by round.

    Arguments:
        estimator: The estimator, fitted on every round's simulations.
        theta: All simulated parameters, in the order simulated.
        x: All simulations.
        rounds: The round of each row of ``theta``.
        acceptance_rates: Per round after the first, the fraction of prior draws inside the
            truncated region (the volume of the region under the prior).
        thresholds: Per round after the first, the log-density threshold :math:`\tau`.
    """

    estimator: PosteriorEstimator
    theta: Tensor
    x: Tensor
    rounds: Tensor
    acceptance_rates: list[float] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)


def tsnpe(
    estimator: PosteriorEstimator,
    simulator: Callable[[Tensor], Tensor],
    x_o: Any,
    *,
    num_rounds: int = 3,
    num_simulations: int | list[int] = 1000,
    quantile: float = 1e-4,
    num_threshold_samples: int = 10_000,
    batch_size: int = 1000,
    progress: bool = True,
) -> SequentialResult:
    r"""Truncated sequential neural posterior estimation for one observation :math:`x_o`.

    Round 1 simulates from the prior; every later round from the prior truncated to the
    :math:`1 - \epsilon` highest-density region of the current :math:`q(\theta \mid x_o)`
    (:class:`TruncatedPrior`). Since the truncated prior is proportional to the prior wherever
    the posterior has mass, the estimator is fitted on all simulations so far with the plain
    NPE loss, no correction (Deistler et al., 2022): more simulations land where
    :math:`p(\theta \mid x_o)` lives, and the amortised fit stays valid inside the region.

    Arguments:
        estimator: An unfitted (or fitted) :class:`~pyro_flows.sbi.NPE` or
            :class:`~pyro_flows.sbi.FMPE`; it holds the prior.
        simulator: ``theta (n, D) -> x (n, C)`` (e.g. a :class:`~pyro_flows.sbi.ModelSimulator`).
        x_o: The observation, shape ``(C,)``.
        num_rounds: The number of rounds.
        num_simulations: Simulations per round (one number, or one per round).
        quantile: :math:`\epsilon`, the mass of :math:`q` left out of the region.
        num_threshold_samples: Draws of :math:`q` that set the region's threshold.
        batch_size: Simulations per simulator call.
        progress: Show tqdm bars.

    Returns:
        A :class:`SequentialResult`; ``result.estimator.posterior(x_o)`` is the posterior.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro_flows.sbi import NPE
        >>> prior = dist.Uniform(-3 * torch.ones(2), 3 * torch.ones(2)).to_event(1)
        >>> sim = lambda t: t + 0.1 * torch.randn_like(t)
        >>> npe = NPE(prior, num_layers=1, hidden_dims=[16], num_steps=100, progress=False)
        >>> res = tsnpe(npe, sim, torch.tensor([1.0, -1.0]), num_rounds=2,
        ...             num_simulations=300, quantile=1e-3, progress=False)
        >>> res.theta.shape, res.acceptance_rates[0] < 0.5
        (torch.Size([600, 2]), True)

    References:
        | Truncated Proposals for Scalable and Hassle-Free Simulation-Based Inference
          (Deistler et al., 2022)
        | https://arxiv.org/abs/2210.04815
    """
    if not isinstance(estimator, PosteriorEstimator):
        raise TypeError(f"estimator must be an NPE or FMPE, got {type(estimator).__name__}")
    check_positive_int(num_rounds, "num_rounds")
    counts = (
        [num_simulations] * num_rounds if isinstance(num_simulations, int) else num_simulations
    )
    if len(counts) != num_rounds:
        raise ValueError(f"num_simulations has {len(counts)} entries for {num_rounds} rounds")
    for c in counts:
        check_positive_int(c, "every entry of num_simulations")
    x_o = torch.as_tensor(x_o)
    if x_o.dim() != 1:
        raise ValueError(f"x_o must be one observation of shape (C,), got {tuple(x_o.shape)}")
    thetas: list[Tensor] = []
    xs: list[Tensor] = []
    rounds: list[Tensor] = []
    rates: list[float] = []
    thresholds: list[float] = []
    proposal: torch.distributions.Distribution = estimator.prior
    for r, n in enumerate(counts):
        if r > 0 or estimator.model_ is not None:
            proposal = TruncatedPrior(
                estimator.prior,
                estimator.posterior(x_o),
                quantile=quantile,
                num_threshold_samples=num_threshold_samples,
            )
        sims = simulate(simulator, proposal, n, batch_size=batch_size, progress=progress)
        if isinstance(proposal, TruncatedPrior):
            rates.append(proposal.acceptance_rate)
            thresholds.append(proposal.threshold)
        thetas.append(sims.theta)
        xs.append(sims.x)
        rounds.append(torch.full((n,), r))
        estimator.fit(torch.cat(thetas), torch.cat(xs))
    return SequentialResult(
        estimator, torch.cat(thetas), torch.cat(xs), torch.cat(rounds), rates, thresholds
    )
