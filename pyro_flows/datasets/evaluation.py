"""How well a fitted 2-D density matches a toy whose log-density is exact."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

__all__ = ["fit_metrics", "grid_log_density"]


def _log_q(flow: nn.Module, x: Tensor, chunk_size: int) -> Tensor:
    with torch.no_grad():
        return torch.cat([flow.log_prob(chunk) for chunk in x.split(chunk_size)])


def fit_metrics(
    target: Distribution, flow: nn.Module, test: Tensor, chunk_size: int = 8192
) -> dict[str, float]:
    r"""Test NLL, true entropy and :math:`\mathrm{KL}(p\,\|\,q)` with standard errors.

    .. math:: \mathrm{KL}(p\,\|\,q) \approx \frac1n \sum_i \log p(x_i) - \log q(x_i),
              \quad x_i \sim p,

    an unbiased estimate whose standard error is the sample standard deviation over
    :math:`\sqrt n`.

    Arguments:
        target: The true density :math:`p` (exact ``log_prob`` and ``entropy``).
        flow: A fitted model with ``log_prob(x)``, evaluated in chunks without gradients.
        test: Points drawn from :math:`p`, shape ``(n, 2)``, on the flow's device.
        chunk_size: Rows scored per call.

    Example:
        >>> from pyro_flows.datasets import toy_distribution
        >>> p = toy_distribution("8gaussians")
        >>> m = fit_metrics(p, p, p.sample((1000,)).double())
        >>> abs(m["kl"]) < 1e-12
        True
    """
    lq = _log_q(flow, test, chunk_size).double().cpu()
    lp = target.log_prob(test.double().cpu())
    gap = lp - lq
    root_n = math.sqrt(len(test))
    return {
        "test_nll": -lq.mean().item(),
        "test_nll_se": lq.std().item() / root_n,
        "entropy": float(target.entropy()),
        "kl": gap.mean().item(),
        "kl_se": gap.std().item() / root_n,
    }


def grid_log_density(
    flow: nn.Module,
    limit: float,
    n: int,
    device: torch.device | str | None = None,
    chunk_size: int = 8192,
) -> Tensor:
    """``log q`` on an ``n x n`` grid over ``[-limit, limit]^2``, indexed ``[y, x]``, on the CPU.

    Example:
        >>> from pyro_flows.datasets import toy_distribution
        >>> grid_log_density(toy_distribution("8gaussians"), 4.0, 5).shape
        torch.Size([5, 5])
    """
    t = torch.linspace(-limit, limit, n, device=device)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    grid = torch.stack([xx, yy], -1).reshape(-1, 2)
    return _log_q(flow, grid, chunk_size).reshape(n, n).cpu()
