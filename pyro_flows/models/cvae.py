r"""The conditional VAE as a Pyro model and guide, with flow posteriors and flow priors."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineTransform
from torch import Tensor, nn

from .._validation import check_choice, check_finite, check_last_dim, check_positive_int
from ..distributions import NormalizingFlow
from ..flows import build, lookup_family, normalizing_flow
from ..infer.guides import guide_direction
from .likelihoods import Likelihood
from .likelihoods import likelihood as likelihood_by_name
from .networks import MLP, ConvDecoder, ConvEncoder

__all__ = ["CVAE", "cvae"]

Prior = str | Callable[[Tensor | None], dist.Distribution]


def _is_frozen(module: nn.Module) -> bool:
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


class CVAE(nn.Module):
    r"""A conditional variational autoencoder, written as a Pyro model and guide.

    .. math:: p_\theta(x, z \mid y) = p_\theta(x \mid z, y)\, p_\psi(z \mid y), \qquad
              q_\phi(z \mid x, y), \qquad
              \text{ELBO} = \mathbb E_q\big[\log p_\theta(x \mid z, y) + \log p_\psi(z \mid y)
              - \log q_\phi(z \mid x, y)\big].

    :meth:`model` and :meth:`guide` register the module with ``pyro.module`` and sample the
    latent ``"z"`` inside ``pyro.plate("data", N, subsample_size=batch_size)``, so
    ``SVI(vae.model, vae.guide, optim, Trace_ELBO()).step(x, y, batch_size=128)`` takes one
    minibatch step on an unbiased estimate of the ELBO of the whole data set (Pyro scales the
    minibatch by :math:`N/B`). Without a context (``context_dim=None``) it is a plain VAE and
    ``y`` is omitted everywhere.

    **Posterior** :math:`q_\phi(z \mid x, y)`: with :math:`c = [\text{encoder}(x), y]`,
    ``"normal"`` is :math:`N(m(c), \text{diag}\, s(c)^2)`, :math:`(m, s)` a linear head
    (:math:`s = \text{softplus} + 10^{-4}`); a family name (``"iaf"``, ``"maf"``,
    ``"affine_coupling"``, ``"spline"``, ... any family with a conditional variant) is
    :math:`z = m(c) + s(c) \odot T_c(\varepsilon)`, :math:`\varepsilon \sim N(0, I)`, with
    :math:`T_c` a conditional flow of ``num_layers`` layers used in its one-pass sampling
    direction (:func:`~pyro_flows.infer.guide_direction`), as in
    :class:`~pyro_flows.infer.AmortizedFlowGuide`.

    **Prior** :math:`p_\psi(z \mid y)`: ``"normal"`` is :math:`N(0, I)`; a family name is a
    conditional flow on the latent with context :math:`y` (or an unconditional one), trained
    with the rest; any callable ``prior(y)`` returning a Pyro distribution with event shape
    ``(latent_dim,)`` and batch shape ``y.shape[:-1]`` (called with ``y=None`` without a
    context) is used as is (e.g. a flow-matching
    prior, or a :class:`~pyro_flows.distributions.NormalizingFlow`). A callable that is a
    module with trainable parameters is trained jointly; one whose parameters are all frozen
    stays frozen and is not part of this module (not registered with ``pyro.module``). The prior
    scores the guide's samples, so a flow prior should be a density-direction family
    (``"maf"``, coupling, splines).

    Arguments:
        encoder: A module mapping data ``(*batch, D)`` to features ``(*batch, H)``.
        decoder: A module mapping ``[z, y]`` of shape ``(*batch, latent_dim + C)`` to the
            likelihood's parameters.
        likelihood: A :class:`~pyro_flows.models.Likelihood` (Bernoulli, Gaussian,
            dequantized).
        latent_dim: The latent size :math:`L`.
        context_dim: The context size :math:`C`, or None for an unconditional VAE.
        posterior: ``"normal"`` or a conditional flow family name.
        prior: ``"normal"``, a flow family name, or a callable ``y -> distribution``.
        num_layers: Layers of a flow posterior.
        hidden_dims: Hidden sizes of each flow layer's network (posterior and prior).
        prior_layers: Layers of a flow prior (default: ``num_layers``).
        encoder_dim: The encoder's output size :math:`H`; read from ``encoder.output_dim`` if
            omitted.
        name: The name under which ``pyro.module`` registers the parameters.
        flow_kwargs: Passed to :func:`~pyro_flows.flows.build` for the posterior flow.

    Example:
        >>> vae = cvae(4, latent_dim=2, context_dim=3, posterior="iaf", hidden_dims=[16])
        >>> x, y = torch.randn(10, 4), torch.randn(10, 3)
        >>> vae.guide(x, y, batch_size=5)["z"].shape
        torch.Size([5, 2])
        >>> vae.sample(y[0], 7).shape, vae.sample(y[:2], 7).shape
        (torch.Size([7, 4]), torch.Size([7, 2, 4]))

    References:
        | Learning Structured Output Representation using Deep Conditional Generative Models
          (Sohn et al., 2015)
        | https://papers.nips.cc/paper/5775
        | Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016)
        | https://arxiv.org/abs/1606.04934
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: Likelihood,
        latent_dim: int,
        context_dim: int | None = None,
        *,
        posterior: str = "normal",
        prior: Prior = "normal",
        num_layers: int = 2,
        hidden_dims: Sequence[int] | None = None,
        prior_layers: int | None = None,
        encoder_dim: int | None = None,
        name: str = "cvae",
        **flow_kwargs: Any,
    ) -> None:
        super().__init__()
        for arg, value in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(value, nn.Module):
                raise TypeError(f"{arg} must be a torch.nn.Module, got {type(value).__name__}")
        if not isinstance(likelihood, Likelihood):
            raise TypeError(
                "likelihood must be a pyro_flows.models.Likelihood (Bernoulli, Gaussian, "
                f"DequantizedLogistic), got {type(likelihood).__name__}"
            )
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        if context_dim is not None:
            check_positive_int(context_dim, "context_dim")
        self.context_dim = context_dim
        encoder_dim = encoder_dim if encoder_dim is not None else getattr(encoder, "output_dim", 0)
        self.encoder_dim = check_positive_int(encoder_dim, "encoder_dim (or encoder.output_dim)")
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        hidden_dims = list(hidden_dims) if hidden_dims is not None else None

        # q(z | x, y): a location-scale head on c = [encoder(x), y], and optionally a flow
        c = self.encoder_dim + (context_dim or 0)
        self.head = nn.Linear(c, 2 * latent_dim)
        self.posterior_flow = None
        self.posterior_name = posterior
        if not isinstance(posterior, str):
            raise TypeError(f"posterior must be 'normal' or a flow family name, got {posterior!r}")
        if posterior != "normal":
            family_name, family = lookup_family(posterior)
            if family.make_conditional is None:
                raise ValueError(f"posterior flow {posterior!r} has no conditional variant")
            self._direction = guide_direction(family)
            self.posterior_flow = build(
                family_name,
                latent_dim,
                check_positive_int(num_layers, "num_layers"),
                context_dim=c,
                hidden_dims=hidden_dims,
                **flow_kwargs,
            )

        # p(z | y)
        self.__dict__["_frozen_prior"] = None
        self.prior = None
        if isinstance(prior, str):
            self.prior_name = prior
            if prior != "normal":
                family_name, family = lookup_family(prior)
                if not family.invertible:
                    raise ValueError(
                        f"prior flow {prior!r} cannot score the guide's samples (no inverse); "
                        "use a density-direction family such as 'maf'"
                    )
                self.prior = normalizing_flow(
                    family_name,
                    latent_dim,
                    check_positive_int(
                        num_layers if prior_layers is None else prior_layers, "prior_layers"
                    ),
                    context_dim=context_dim,
                    hidden_dims=hidden_dims,
                )
        elif callable(prior):
            self.prior_name = type(prior).__name__
            if isinstance(prior, nn.Module) and not _is_frozen(prior):
                self.prior = prior
            else:
                # Not a submodule: it stays out of pyro.module and the state dict of the VAE.
                self.__dict__["_frozen_prior"] = prior
        else:
            raise TypeError(
                "prior must be 'normal', a flow family name, or a callable y -> distribution, "
                f"got {prior!r}"
            )

    # -- the distributions -----------------------------------------------------------------
    def _check_context(self, y: Tensor | None) -> None:
        if self.context_dim is None:
            if y is not None:
                raise ValueError("this VAE has no context (context_dim=None): omit y")
            return
        if y is None:
            raise ValueError(f"this VAE is conditional: pass y of shape (N, {self.context_dim})")
        check_last_dim(y, self.context_dim, "y")
        check_finite(y, "y")

    def prior_distribution(self, y: Tensor | None, batch_shape: Sequence[int] = ()) -> Any:
        r"""Returns :math:`p(z \mid y)` with batch shape ``y.shape[:-1]`` (or ``batch_shape``)."""
        batch = torch.Size(batch_shape if y is None else y.shape[:-1])
        if self.prior is None and self._frozen_prior is None:
            zeros = self.head.bias.new_zeros(*batch, self.latent_dim)
            return dist.Normal(zeros, 1.0).to_event(1)
        fn = self.prior if self.prior is not None else self._frozen_prior
        if isinstance(fn, NormalizingFlow) and not fn.conditional:
            d = fn()
        else:
            d = fn(y)
        if tuple(d.event_shape) != (self.latent_dim,):
            raise ValueError(
                f"prior must give distributions with event shape ({self.latent_dim},), got "
                f"{tuple(d.event_shape)}"
            )
        return d.expand(batch) if tuple(d.batch_shape) != tuple(batch) else d

    def _posterior_context(self, x: Tensor, y: Tensor | None) -> Tensor:
        h = self.encoder(x)
        return h if y is None else torch.cat([h, y.expand(*h.shape[:-1], y.shape[-1])], -1)

    def posterior(self, x: Tensor, y: Tensor | None = None) -> Any:
        r"""Returns :math:`q(z \mid x, y)`: batch shape ``x.shape[:-1]``, event ``(L,)``."""
        self._check_context(y)
        c = self._posterior_context(x, y)
        loc, raw = self.head(c).split(self.latent_dim, dim=-1)
        scale = nn.functional.softplus(raw) + 1e-4
        if self.posterior_flow is None:
            return dist.Normal(loc, scale).to_event(1)
        flow = self.posterior_flow.condition(c)
        base = dist.Normal(torch.zeros_like(loc), 1.0).to_event(1)
        # Every part caches its pass, so scoring the guide's own sample costs no second pass.
        parts = [
            flow.inv if self._direction == "inverse" else flow,
            AffineTransform(loc, scale, event_dim=1, cache_size=1),
        ]
        return dist.TransformedDistribution(base, parts)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """The decoder's output (the likelihood's parameters) at ``z`` and context ``y``."""
        if y is not None:
            z = torch.cat([z, y.expand(*z.shape[:-1], y.shape[-1])], -1)
        return self.decoder(z)

    # -- Pyro model and guide ----------------------------------------------------------------
    def _size(self, x: Tensor | None, y: Tensor | None) -> int:
        self._check_context(y)
        if x is not None:
            if not torch.is_tensor(x) or x.dim() < 2:
                raise ValueError("x must be a tensor of shape (N, D)")
            check_finite(x, "x")
            if y is not None and len(y) != len(x):
                raise ValueError(f"x and y must have as many rows, got {len(x)} and {len(y)}")
            return len(x)
        if y is None:
            raise ValueError("pass data x (or, to generate, a context y)")
        return len(y)

    @staticmethod
    def _take(t: Tensor | None, idx: Tensor) -> Tensor | None:
        return None if t is None else t.index_select(0, idx.to(t.device))

    def _plate(self, n: int, batch_size: int | None) -> pyro.plate:
        if batch_size is not None:
            check_positive_int(batch_size, "batch_size")
            batch_size = min(batch_size, n)
        return pyro.plate("data", n, subsample_size=batch_size)

    def _register(self) -> None:
        pyro.module(self.name, self)

    def model(
        self, x: Tensor | None, y: Tensor | None = None, *, batch_size: int | None = None
    ) -> Tensor:
        """The generative model: ``z ~ p(z | y)``, ``x ~ p(x | z, y)`` for a minibatch.

        Arguments:
            x: Data of shape ``(N, D)``, or None to generate.
            y: Contexts of shape ``(N, C)`` (None for an unconditional VAE).
            batch_size: The minibatch size :math:`B` (None: all :math:`N` points).

        Returns:
            The decoder's output for the minibatch.
        """
        self._register()
        n = self._size(x, y)
        with self._plate(n, batch_size) as idx:
            yb = self._take(y, idx)
            z = pyro.sample("z", self.prior_distribution(yb, (len(idx),)))
            out = self.decode(z, yb)
            pyro.sample("x", self.likelihood(out), obs=self._take(x, idx))
            self._in_data_plate(out, yb, n)
        self._after_data_plate(x, y, batch_size)
        return out

    def _in_data_plate(self, out: Tensor, y: Tensor | None, n: int) -> None:
        """A hook for subclasses (the PI-VAE's physics factor)."""

    def _after_data_plate(
        self, x: Tensor | None, y: Tensor | None, batch_size: int | None
    ) -> None:
        """A hook for subclasses (the PI-VAE's synthetic-latent factor)."""

    def guide(
        self, x: Tensor, y: Tensor | None = None, *, batch_size: int | None = None
    ) -> dict[str, Tensor]:
        r"""The amortised guide: ``z ~ q(z | x, y)`` for the same minibatch as :meth:`model`."""
        self._register()
        n = self._size(x, y)
        with self._plate(n, batch_size) as idx:
            z = pyro.sample("z", self.posterior(self._take(x, idx), self._take(y, idx)))
        return {"z": z}

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self, y: Tensor | None = None, num_samples: int = 1, *, mean: bool = False
    ) -> Tensor:
        r"""Conditional generation: :math:`x \sim p(x \mid z, y)`, :math:`z \sim p(z \mid y)`.

        Arguments:
            y: One context ``(C,)`` or several ``(M, C)``; None for an unconditional VAE.
            num_samples: The number of draws per context.
            mean: Return the likelihood's mean :math:`E[x \mid z, y]` instead of a draw.

        Returns:
            Shape ``(num_samples, *y.shape[:-1], D)``.
        """
        self._check_context(y)
        check_positive_int(num_samples, "num_samples")
        z = self.prior_distribution(y).sample((num_samples,))
        lik = self.likelihood(self.decode(z, y))
        return lik.mean if mean else lik.sample()


def cvae(
    input_dim: int,
    latent_dim: int,
    context_dim: int | None = None,
    *,
    net: str = "mlp",
    image_shape: Sequence[int] | None = None,
    net_hidden_dims: Sequence[int] = (128, 128),
    likelihood: str | Likelihood = "gaussian",
    likelihood_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> CVAE:
    """Builds a :class:`CVAE` with MLP or convolutional encoder and decoder of matching sizes.

    Arguments:
        input_dim: The data size :math:`D` (for images, :math:`C H W`).
        latent_dim: The latent size :math:`L`.
        context_dim: The context size :math:`C`, or None.
        net: ``"mlp"`` or ``"conv"`` (then ``image_shape`` is required).
        image_shape: ``(C, H, W)`` of an image, for ``net="conv"``.
        net_hidden_dims: Hidden sizes of the MLP encoder and decoder (the encoder's last entry
            is its output size :math:`H`).
        likelihood: A :class:`~pyro_flows.models.Likelihood` or a name for
            :func:`~pyro_flows.models.likelihood`.
        likelihood_kwargs: Keyword arguments of the likelihood built by name.
        kwargs: Passed to :class:`CVAE` (``posterior``, ``prior``, ``num_layers``, ...).

    Example:
        >>> vae = cvae(64, 4, 10, net="conv", image_shape=(1, 8, 8), likelihood="bernoulli")
        >>> vae.sample(torch.eye(10)[3], 2).shape
        torch.Size([2, 64])
    """
    check_positive_int(input_dim, "input_dim")
    check_positive_int(latent_dim, "latent_dim")
    check_choice(net, ("mlp", "conv"), "net")
    lik = _make_likelihood(likelihood, likelihood_kwargs)
    dec_in = latent_dim + (context_dim or 0)
    out_dim = lik.num_params * input_dim if lik.index is None else None
    if net == "conv":
        if image_shape is None or math.prod(image_shape) != input_dim:
            raise ValueError(f"net='conv' needs image_shape with C*H*W = input_dim = {input_dim}")
        encoder = ConvEncoder(image_shape, 128)
        decoder = ConvDecoder(dec_in, image_shape, out_channels=lik.num_params)
    else:
        hidden = list(net_hidden_dims)
        if not hidden:
            raise ValueError("net_hidden_dims must have at least one entry")
        if out_dim is None:
            raise ValueError("a likelihood with an index needs a custom decoder: use CVAE")
        encoder = MLP(input_dim, hidden[-1], hidden[:-1] or [hidden[-1]])
        decoder = MLP(dec_in, out_dim, list(reversed(hidden)))
    return CVAE(encoder, decoder, lik, latent_dim, context_dim, **kwargs)


def _make_likelihood(lik: str | Likelihood, lik_kwargs: dict[str, Any] | None) -> Likelihood:
    if isinstance(lik, Likelihood):
        if lik_kwargs:
            raise ValueError("likelihood_kwargs apply only to a likelihood given by name")
        return lik
    if not isinstance(lik, str):
        raise TypeError(f"likelihood must be a name or a Likelihood, got {lik!r}")
    return likelihood_by_name(lik, **(lik_kwargs or {}))
