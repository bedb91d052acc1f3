r"""Bounds of :math:`\log p(x \mid y)` for VAEs, in nats per data point: ELBO and IWAE."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import check_positive_int
from .cvae import CVAE

__all__ = ["elbo", "iwae_bound", "log_weights"]


@torch.no_grad()
def log_weights(
    vae: CVAE,
    x: Tensor,
    y: Tensor | None = None,
    num_samples: int = 100,
    *,
    chunk_size: int = 100,
) -> Tensor:
    r"""Importance log-weights :math:`\log w_k = \log p(x, z_k \mid y) - \log q(z_k \mid x, y)`.

    .. math:: \log w_k = \log p(x \mid z_k, y) + \log p(z_k \mid y) - \log q(z_k \mid x, y),
              \qquad z_k \sim q(z \mid x, y),

    the same terms as the model and guide of :class:`~pyro_flows.models.CVAE` (the physics
    factors of a PI-VAE are penalties, not part of :math:`p(x \mid y)`, and are left out).

    Arguments:
        vae: The model.
        x: Data of shape ``(N, D)``.
        y: Contexts of shape ``(N, C)``, or None.
        num_samples: The number :math:`K` of draws per data point.
        chunk_size: Draws computed at once (bounds the memory, not the result).

    Returns:
        A tensor of shape ``(K, N)``.
    """
    check_positive_int(num_samples, "num_samples")
    check_positive_int(chunk_size, "chunk_size")
    vae._size(x, y)
    q = vae.posterior(x, y)
    prior = vae.prior_distribution(y, (len(x),))
    out = []
    for start in range(0, num_samples, chunk_size):
        k = min(chunk_size, num_samples - start)
        z = q.rsample((k,))
        log_lik = vae.likelihood(vae.decode(z, y)).log_prob(x)
        out.append(log_lik + prior.log_prob(z) - q.log_prob(z))
    return torch.cat(out)


def elbo(vae: CVAE, x: Tensor, y: Tensor | None = None, num_samples: int = 100) -> Tensor:
    r"""Monte Carlo ELBO per data point, :math:`\frac1K \sum_k \log w_k` (nats), shape ``(N,)``.

    Example:
        >>> from pyro_flows.models import cvae
        >>> vae = cvae(3, latent_dim=2, context_dim=1, net_hidden_dims=[8])
        >>> x, y = torch.randn(5, 3), torch.randn(5, 1)
        >>> bool((iwae_bound(vae, x, y, 200) >= elbo(vae, x, y, 200)).all())
        True
    """
    return log_weights(vae, x, y, num_samples).mean(0)


def iwae_bound(vae: CVAE, x: Tensor, y: Tensor | None = None, num_samples: int = 1000) -> Tensor:
    r"""The importance-weighted bound per data point (nats), shape ``(N,)``.

    .. math:: \mathcal L_K = \log \frac1K \sum_{k=1}^K w_k
              \;\le\; \log p(x \mid y), \qquad \mathcal L_1 = \text{ELBO}
              \le \mathcal L_K \le \mathcal L_{K+1}.

    On the same draws it is never below their mean log-weight (Jensen); use
    :math:`K \ge 100` to report it.

    References:
        | Importance Weighted Autoencoders (Burda et al., 2016)
        | https://arxiv.org/abs/1509.00519
    """
    w = log_weights(vae, x, y, num_samples)
    return torch.logsumexp(w, 0) - math.log(num_samples)
