r"""The physics-informed VAE: a VAE whose objective adds penalties of physical inconsistency."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from .cvae import CVAE
from .likelihoods import Likelihood

__all__ = ["PIVAE"]

Residual = Callable[[Tensor, Tensor | None], Tensor]


def _weight(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{name} must be a number >= 0, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


class PIVAE(CVAE):
    r"""A (conditional) VAE trained with physical-inconsistency penalties, as Pyro factors.

    The user gives the physics as a residual function :math:`r(\hat x, y)` of a decoder output
    :math:`\hat x` (e.g. the discrete equation on a grid, :meth:`Poisson1D.residual
    <pyro_flows.models.Poisson1D.residual>`), zero when :math:`\hat x` obeys it. With the
    per-sample penalty :math:`\ell(\hat x) = \operatorname{mean}_j r_j(\hat x)^2`, each SVI
    step on a minibatch :math:`X_1` minimises

    .. math:: \mathcal L = \mathcal L_{VAE} + \alpha_1 L^d_{phy} + \alpha_2 L^s_{phy}, \qquad
              L^d_{phy} = \frac{1}{|X_1|} \sum_{x \in X_1} \ell\big(D(z_x)\big),\; z_x \sim
              q(z \mid x), \qquad
              L^s_{phy} = \frac{1}{|Z_2|} \sum_{z \in Z_2} \ell\big(D(z)\big),

    where :math:`\mathcal L_{VAE}` is the negative ELBO, :math:`D(z_x)` the reconstruction
    of :math:`x` (:math:`D(E(X_1))`), and :math:`Z_2` a minibatch of a synthetic latent set
    :math:`Z_{syn}` drawn once from the prior before training (at the first call of
    :meth:`model`, or by :meth:`draw_synthetic`); a conditional model pairs each synthetic
    latent with the context of a random training point.

    The penalties enter :meth:`model` as ``pyro.factor("physics_data", ...)`` inside the data
    plate and ``pyro.factor("physics_synthetic", ...)`` inside a plate over :math:`Z_{syn}`,
    so SVI optimises them with the ELBO. Pyro scales a factor in a subsampled plate of size
    :math:`N` by :math:`N / B`; each per-point term is divided by the plate size, so the
    factors add exactly :math:`-\alpha_1 L^d_{phy}` and :math:`-\alpha_2 L^s_{phy}` to the
    log-joint, whatever the batch sizes: :math:`\alpha` means what was set.

    Note:
        :math:`\mathcal L_{VAE}` is Pyro's ELBO of the whole data set (a sum over its :math:`N`
        points), while the penalties are means. To reproduce an algorithm written with the
        per-point mean ELBO and weights :math:`\alpha'`, set :math:`\alpha = N \alpha'`.

    Arguments:
        encoder: As in :class:`~pyro_flows.models.CVAE`.
        decoder: Maps ``[z, y]`` to the generated fields (the likelihood's parameters).
        likelihood: The observation model, typically
            :class:`~pyro_flows.models.Gaussian` with the sensor noise and ``index`` picking
            the sensors from the generated fields.
        latent_dim: The latent size.
        residual: ``residual(output, y)`` returns residuals of shape ``(*batch, R)`` for
            decoder outputs ``(*batch, P)`` (``y`` is None for an unconditional model).
        context_dim: The context size, or None.
        alpha_data: :math:`\alpha_1`, the weight of the penalty on reconstructions.
        alpha_synthetic: :math:`\alpha_2`, the weight of the penalty on synthetic decodings.
        num_synthetic: The size :math:`M` of :math:`Z_{syn}`.
        synthetic_batch_size: The size of :math:`Z_2` (default: the data minibatch size).
        kwargs: Passed to :class:`~pyro_flows.models.CVAE` (``posterior``, ``prior``, ...).

    Example:
        >>> from pyro_flows.models import MLP, Gaussian, Poisson1D
        >>> p = Poisson1D(9)
        >>> sensors = p.sensors(2, 3)
        >>> fields, x = p.simulate(20, sensors)
        >>> vae = PIVAE(MLP(5, 8), MLP(2, 18), Gaussian(0.05, index=sensors), 2, p.residual,
        ...             alpha_data=1e-3, alpha_synthetic=1e-3, num_synthetic=50)
        >>> tr = pyro.poutine.trace(vae.model).get_trace(x.float(), batch_size=10)
        >>> tr.nodes["physics_data"]["fn"].batch_shape, tr.nodes["physics_synthetic"]["scale"]
        (torch.Size([10]), 5.0)

    References:
        | PI-VAE: Physics-Informed Variational Auto-Encoder for stochastic differential
          equations (Zhong & Meidani, 2023)
        | https://arxiv.org/abs/2203.11363
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: Likelihood,
        latent_dim: int,
        residual: Residual,
        context_dim: int | None = None,
        *,
        alpha_data: float = 1.0,
        alpha_synthetic: float = 1.0,
        num_synthetic: int = 1000,
        synthetic_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", "pivae")
        super().__init__(encoder, decoder, likelihood, latent_dim, context_dim, **kwargs)
        if not callable(residual):
            raise TypeError(
                f"residual must be a function (output, y) -> residuals, got {residual!r}"
            )
        self.residual = residual
        self.alpha_data = _weight(alpha_data, "alpha_data")
        self.alpha_synthetic = _weight(alpha_synthetic, "alpha_synthetic")
        self.num_synthetic = check_positive_int(num_synthetic, "num_synthetic")
        if synthetic_batch_size is not None:
            check_positive_int(synthetic_batch_size, "synthetic_batch_size")
        self.synthetic_batch_size = synthetic_batch_size
        self.register_buffer("z_syn", None)
        self.register_buffer("y_syn", None)

    def penalty(self, output: Tensor, y: Tensor | None = None) -> Tensor:
        r"""The per-sample penalty :math:`\ell = \operatorname{mean}_j r_j^2`, shape ``batch``."""
        r = self.residual(output, y)
        if not torch.is_tensor(r) or r.shape[:-1] != output.shape[:-1]:
            raise ValueError(
                "residual must return a tensor of shape (*batch, R) for outputs of shape "
                f"(*batch, P); got {getattr(r, 'shape', type(r).__name__)} for "
                f"{tuple(output.shape)}"
            )
        return r.pow(2).mean(-1)

    @torch.no_grad()
    def draw_synthetic(self, y: Tensor | None = None) -> Tensor:
        r"""Draws :math:`Z_{syn}` (``num_synthetic`` latents) from the current prior.

        Arguments:
            y: Training contexts ``(N, C)`` of a conditional model; each synthetic latent gets
                the context of a random row.

        Returns:
            :math:`Z_{syn}`, also kept in the buffer ``z_syn`` (and its contexts in ``y_syn``).
        """
        self._check_context(y)
        if y is None:
            z = self.prior_distribution(None).sample((self.num_synthetic,))
        else:
            rows = torch.randint(len(y), (self.num_synthetic,), device=y.device)
            self.y_syn = y[rows]
            z = self.prior_distribution(self.y_syn).sample()
        self.z_syn = z
        return z

    def _in_data_plate(self, out: Tensor, y: Tensor | None, n: int) -> None:
        if self.alpha_data > 0:
            # Pyro multiplies by n / B: the factor's total is -alpha * (mean over the batch).
            pyro.factor("physics_data", -self.alpha_data * self.penalty(out, y) / n)

    def _after_data_plate(
        self, x: Tensor | None, y: Tensor | None, batch_size: int | None
    ) -> None:
        if self.alpha_synthetic == 0:
            return
        if self.z_syn is None:
            self.draw_synthetic(y)
        m = len(self.z_syn)
        size = self.synthetic_batch_size or batch_size
        with pyro.plate("synthetic", m, subsample_size=min(size or m, m)) as j:
            y2 = None if self.y_syn is None else self.y_syn[j]
            out = self.decode(self.z_syn[j], y2)
            pyro.factor("physics_synthetic", -self.alpha_synthetic * self.penalty(out, y2) / m)

    @torch.no_grad()
    def physics_losses(self, x: Tensor, y: Tensor | None = None) -> tuple[float, float]:
        r"""The current :math:`(L^d_{phy}, L^s_{phy})` on all of ``x`` and all of :math:`Z_{syn}`.

        :math:`L^d_{phy}` uses one draw :math:`z \sim q(z \mid x)` per point; :math:`L^s_{phy}`
        is NaN before :math:`Z_{syn}` is drawn.
        """
        self._size(x, y)
        rec = self.decode(self.posterior(x, y).sample(), y)
        ld = self.penalty(rec, y).mean().item()
        if self.z_syn is None:
            return ld, math.nan
        return ld, self.penalty(self.decode(self.z_syn, self.y_syn), self.y_syn).mean().item()
