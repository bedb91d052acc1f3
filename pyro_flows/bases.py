"""Learnable base distributions for flows: a mixture of Gaussians, and EM to initialise it."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ._validation import as_rows, check_choice, check_last_dim, check_positive_int

__all__ = [
    "GaussianMixture",
    "fit_gaussian_mixture",
]

_COVARIANCES = ("diag", "full")
_LOG_TWO_PI = math.log(2 * math.pi)


def _component_log_probs(z: Tensor, loc: Tensor, scale_tril: Tensor) -> Tensor:
    r"""Returns :math:`\log N(z; \mu_k, L_k L_k^\top)` of shape ``(*batch, K)``."""
    diff = z.unsqueeze(-2) - loc  # (*batch, K, D)
    # Solve L_k u = diff for every k: move batch last so one triangular solve covers it all.
    batch = diff.shape[:-2]
    d = diff.reshape(-1, *diff.shape[-2:]).permute(1, 2, 0)  # (K, D, N)
    u = torch.linalg.solve_triangular(scale_tril, d, upper=False)  # (K, D, N)
    maha = u.pow(2).sum(-2).T.reshape(*batch, loc.shape[0])  # (*batch, K)
    half_logdet = scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (K,)
    return -0.5 * maha - half_logdet - 0.5 * loc.shape[-1] * _LOG_TWO_PI


class GaussianMixture(nn.Module):
    r"""A learnable mixture of :math:`K` Gaussians on :math:`\mathbb{R}^D`, as a flow's base.

    .. math:: p(z) = \sum_{k=1}^K \pi_k \, N(z; \mu_k, \Sigma_k), \qquad
              \pi = \operatorname{softmax}(a), \qquad \Sigma_k = L_k L_k^\top

    with :math:`L_k` lower triangular with a positive diagonal :math:`e^{s_k}`: dense below
    the diagonal for ``covariance="full"``, zero for ``"diag"``. The logits :math:`a`, the
    means :math:`\mu_k`, the log-diagonals :math:`s_k` and (full) the strictly lower parts of
    :math:`L_k` are all parameters, trained with the flow by maximum likelihood.

    A flow :math:`x = f(z)` on this base is a mixture of :math:`K` warped Gaussians; with
    :math:`f` the identity it *is* a Gaussian mixture, so initialising the mixture by EM
    (:meth:`initialize`, :func:`fit_gaussian_mixture`) on the data pulled back through the
    initial flow starts training at a fitted mixture model, which the flow then improves.

    Calling the module returns the Pyro distribution (a ``MixtureSameFamily``), so it can
    replace :math:`N(0, I)` in a ``TransformedDistribution``; :meth:`log_prob` is the same
    density computed directly. Sampling is not reparametrised (the component is discrete).

    Arguments:
        input_dim: The event size :math:`D`.
        num_components: The number of components :math:`K`.
        covariance: ``"full"`` or ``"diag"``.

    Example:
        >>> base = GaussianMixture(2, num_components=3)
        >>> base.log_prob(torch.zeros(4, 2)).shape
        torch.Size([4])
        >>> base().sample((5,)).shape
        torch.Size([5, 2])

    References:
        | Normalizing Flows for Probabilistic Modeling and Inference (Papamakarios et al.,
        | 2021), section 2.3.3 on flexible base distributions
        | https://arxiv.org/abs/1912.02762
    """

    def __init__(self, input_dim: int, num_components: int = 1, covariance: str = "full") -> None:
        super().__init__()
        self.input_dim = check_positive_int(input_dim, "input_dim")
        self.num_components = check_positive_int(num_components, "num_components")
        self.covariance = check_choice(covariance, _COVARIANCES, "covariance")
        k, d = num_components, input_dim
        self.logits = nn.Parameter(torch.zeros(k))
        self.loc = nn.Parameter(torch.zeros(k, d))
        self.log_diag = nn.Parameter(torch.zeros(k, d))
        if covariance == "full":
            self.lower = nn.Parameter(torch.zeros(k, d, d))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Equal weights, means spread as :math:`N(0, I)` draws, unit covariances."""
        with torch.no_grad():
            self.logits.zero_()
            if self.num_components > 1:
                self.loc.normal_()
            else:
                self.loc.zero_()
            self.log_diag.zero_()
            if self.covariance == "full":
                self.lower.zero_()

    @property
    def scale_tril(self) -> Tensor:
        r"""The Cholesky factors :math:`L_k`, shape ``(K, D, D)``."""
        diag = torch.diag_embed(self.log_diag.exp())
        if self.covariance == "diag":
            return diag
        return diag + torch.tril(self.lower, diagonal=-1)

    @property
    def weights(self) -> Tensor:
        r"""The mixture weights :math:`\pi_k`, shape ``(K,)``."""
        return self.logits.softmax(-1)

    def log_prob(self, z: Tensor) -> Tensor:
        r"""Returns :math:`\log p(z)` of shape ``z.shape[:-1]`` (a log-sum-exp over components)."""
        check_last_dim(z, self.input_dim, "z")
        if self.covariance == "diag":
            scale = self.log_diag.exp()
            u = (z.unsqueeze(-2) - self.loc) / scale
            comp = (
                -0.5 * u.pow(2).sum(-1)
                - self.log_diag.sum(-1)
                - 0.5 * self.input_dim * _LOG_TWO_PI
            )
        else:
            comp = _component_log_probs(z, self.loc, self.scale_tril)
        return torch.logsumexp(comp + self.logits.log_softmax(-1), dim=-1)

    def forward(self) -> dist.MixtureSameFamily:
        """Returns the mixture as a Pyro distribution with event shape ``(D,)``."""
        if self.covariance == "diag":
            comps = dist.Normal(self.loc, self.log_diag.exp()).to_event(1)
        else:
            comps = dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), comps)

    @torch.no_grad()
    def initialize(
        self,
        z: Tensor,
        *,
        num_iters: int = 100,
        num_inits: int = 3,
        reg_covar: float = 1e-6,
        seed: int | None = 0,
    ) -> float:
        """Sets the parameters to a mixture fitted to the rows ``z`` by EM.

        The arguments after ``z`` are those of :func:`fit_gaussian_mixture`. Returns the
        mean log-likelihood of ``z`` under the fitted mixture.
        """
        z = as_rows(z, "z")
        check_last_dim(z, self.input_dim, "z")
        weights, loc, cov, ll = fit_gaussian_mixture(
            z,
            self.num_components,
            covariance=self.covariance,
            num_iters=num_iters,
            num_inits=num_inits,
            reg_covar=reg_covar,
            seed=seed,
        )
        chol = torch.linalg.cholesky(cov)
        dtype = self.loc.dtype
        self.logits.copy_(weights.log().to(dtype))
        self.loc.copy_(loc.to(dtype))
        self.log_diag.copy_(chol.diagonal(dim1=-2, dim2=-1).log().to(dtype))
        if self.covariance == "full":
            self.lower.copy_(torch.tril(chol, diagonal=-1).to(dtype))
        return ll


def _kmeans_pp(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: each new centre drawn with probability proportional to D(x)^2."""
    n = x.shape[0]
    centres = [x[torch.randint(n, (1,), generator=gen)].squeeze(0)]
    d2 = (x - centres[0]).pow(2).sum(-1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        c = x[torch.multinomial(p, 1, generator=gen)].squeeze(0)
        centres.append(c)
        d2 = torch.minimum(d2, (x - c).pow(2).sum(-1))
    return torch.stack(centres)


def _m_step(
    x: Tensor, resp: Tensor, covariance: str, reg_covar: float
) -> tuple[Tensor, Tensor, Tensor]:
    nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps  # (K,)
    loc = resp.T @ x / nk[:, None]  # (K, D)
    diff = x.unsqueeze(1) - loc  # (N, K, D)
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    if covariance == "diag":
        var = torch.einsum("nk,nkd->kd", resp, diff.pow(2)) / nk[:, None] + reg_covar
        cov = torch.diag_embed(var)
    else:
        cov = torch.einsum("nk,nkd,nke->kde", resp, diff, diff) / nk[:, None, None]
        cov = cov + reg_covar * eye
    return nk / x.shape[0], loc, cov


def fit_gaussian_mixture(
    x: Tensor,
    num_components: int,
    *,
    covariance: str = "full",
    num_iters: int = 100,
    num_inits: int = 3,
    reg_covar: float = 1e-6,
    tol: float = 1e-5,
    seed: int | None = 0,
) -> tuple[Tensor, Tensor, Tensor, float]:
    r"""Fits a Gaussian mixture to the rows of ``x`` by expectation-maximisation, in float64.

    Each of ``num_inits`` runs seeds the means by k-means++, assigns every row to its nearest
    mean, then alternates the E step (responsibilities
    :math:`r_{nk} \propto \pi_k N(x_n; \mu_k, \Sigma_k)`) and the M step

    .. math:: \pi_k = \frac{N_k}{N}, \quad \mu_k = \frac{1}{N_k} \sum_n r_{nk} x_n, \quad
              \Sigma_k = \frac{1}{N_k} \sum_n r_{nk} (x_n - \mu_k)(x_n - \mu_k)^\top
              + \lambda I

    (:math:`N_k = \sum_n r_{nk}`, :math:`\lambda` = ``reg_covar``; ``"diag"`` keeps the
    diagonal only) until the mean log-likelihood gains less than ``tol`` or after
    ``num_iters`` steps. The run with the highest mean log-likelihood is returned, as in
    scikit-learn's ``GaussianMixture(n_init=num_inits)``.

    Arguments:
        x: The rows, shape ``(N, D)`` with :math:`N \ge` ``num_components``.
        num_components: The number of components :math:`K`.
        covariance: ``"full"`` or ``"diag"``.
        num_iters: The most EM steps per run.
        num_inits: The number of k-means++ restarts.
        reg_covar: The ridge :math:`\lambda > 0` added to every covariance's diagonal.
        tol: The convergence threshold on the mean log-likelihood.
        seed: Seeds the k-means++ draws (a local generator; torch's global one is untouched).

    Returns:
        The weights ``(K,)``, means ``(K, D)``, covariances ``(K, D, D)`` (float64) and the
        mean log-likelihood of the rows.

    Example:
        >>> x = torch.cat([torch.randn(200, 2) - 5, torch.randn(200, 2) + 5])
        >>> w, mu, cov, ll = fit_gaussian_mixture(x, 2)
        >>> sorted(round(v) for v in mu[:, 0].tolist())
        [-5, 5]

    References:
        | Maximum likelihood from incomplete data via the EM algorithm (Dempster et al., 1977)
        | k-means++: the advantages of careful seeding (Arthur & Vassilvitskii, 2007)
    """
    x = as_rows(x, "x").to(torch.float64)
    k = check_positive_int(num_components, "num_components")
    check_choice(covariance, _COVARIANCES, "covariance")
    check_positive_int(num_iters, "num_iters")
    check_positive_int(num_inits, "num_inits")
    if not (isinstance(reg_covar, int | float) and reg_covar > 0):
        raise ValueError(f"reg_covar must be a number > 0, got {reg_covar!r}")
    if x.shape[0] < k:
        raise ValueError(
            f"num_components={k} needs at least {k} rows of x, got {x.shape[0]} row(s)"
        )
    gen = torch.Generator().manual_seed(0 if seed is None else seed)
    best = None
    for _ in range(num_inits):
        centres = _kmeans_pp(x, k, gen)
        nearest = torch.cdist(x, centres).argmin(-1)
        resp = nn.functional.one_hot(nearest, k).to(x.dtype)
        ll_old = -math.inf
        for _ in range(num_iters):
            weights, loc, cov = _m_step(x, resp, covariance, reg_covar)
            chol = torch.linalg.cholesky(cov)
            joint = _component_log_probs(x, loc, chol) + weights.log()
            norm = torch.logsumexp(joint, -1)
            ll = norm.mean().item()
            resp = (joint - norm[:, None]).exp()
            if ll - ll_old < tol:
                break
            ll_old = ll
        weights, loc, cov = _m_step(x, resp, covariance, reg_covar)
        chol = torch.linalg.cholesky(cov)
        ll = torch.logsumexp(_component_log_probs(x, loc, chol) + weights.log(), -1).mean().item()
        if best is None or ll > best[3]:
            best = (weights, loc, cov, ll)
    return best
