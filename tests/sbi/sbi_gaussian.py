"""The Gaussian-linear task with its closed-form posterior, shared by the sbi tests."""

import pyro.distributions as dist
import torch

#: x | theta ~ N(theta, NOISE), theta ~ N(0, I): correlated noise gives a correlated posterior.
NOISE = torch.tensor([[0.25, 0.15], [0.15, 0.25]])
PRIOR = dist.MultivariateNormal(torch.zeros(2), torch.eye(2))


def exact_posterior(x: torch.Tensor) -> dist.MultivariateNormal:
    """p(theta | x) for x of shape (..., 2)."""
    precision = torch.eye(2) + torch.linalg.inv(NOISE)
    cov = torch.linalg.inv(precision)
    mean = (cov @ torch.linalg.solve(NOISE, x.unsqueeze(-1))).squeeze(-1)
    return dist.MultivariateNormal(mean, cov)


def simulate_pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, 2, generator=g)
    chol = torch.linalg.cholesky(NOISE)
    x = theta + torch.randn(n, 2, generator=g) @ chol.T
    return theta, x


def log_likelihood(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return dist.MultivariateNormal(theta, NOISE).log_prob(x)
