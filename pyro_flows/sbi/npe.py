r"""Neural posterior estimation: a conditional flow :math:`q(\theta \mid x)` fitted on simulations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pyro.distributions.conditional import ConditionalTransformModule
from torch import Tensor, nn

from .._validation import check_hidden_dims, check_positive_int
from ..distributions import NormalizingFlow
from ..flows import FAMILIES, build, lookup_family
from ..training import FitHistory, fit
from ._base import PosteriorEstimator, _embedding

__all__ = ["NPE", "EmbeddedConditional"]


class EmbeddedConditional(ConditionalTransformModule):
    r"""A conditional transform fed by an embedding network: ``condition(c)`` is ``t.condition(e(c))``.

    The embedding's parameters are trained with the transform's; the density of the event is
    unchanged (no log-determinant).

    Arguments:
        transform: A ``ConditionalTransformModule`` whose context size is the embedding's
            output size.
        embedding: A module mapping ``(*batch, C)`` to ``(*batch, E)``.

    Example:
        >>> inner = build("maf", 2, num_layers=1, context_dim=4, hidden_dims=[8])
        >>> t = EmbeddedConditional(inner, nn.Linear(3, 4))
        >>> t.condition(torch.randn(5, 3))(torch.zeros(5, 2)).shape
        torch.Size([5, 2])
    """

    def __init__(self, transform: ConditionalTransformModule, embedding: nn.Module) -> None:
        super().__init__()
        self.transform = transform
        self.embedding = embedding

    def condition(self, context: Tensor) -> nn.Module:
        """Returns the inner transform conditioned on ``embedding(context)``."""
        batch = context.shape[:-1]
        e = self.embedding(context.reshape(-1, context.shape[-1]))
        return self.transform.condition(e.reshape(*batch, e.shape[-1]))

    def __hash__(self) -> int:
        return id(self)


class NPE(PosteriorEstimator):
    r"""Neural posterior estimation with a conditional normalizing flow.

    Fits :math:`q_\phi(\theta \mid x)` to pairs :math:`(\theta_i, x_i) \sim p(\theta)\,
    p(x \mid \theta)` by maximum likelihood,

    .. math:: \max_\phi \frac1N \sum_{i=1}^N \log q_\phi(\theta_i \mid x_i),

    whose optimum, for a flexible enough family, is the posterior :math:`p(\theta \mid x)` for
    every :math:`x` at once (amortised). The flow models :math:`u = T^{-1}(\theta)`, with
    :math:`T` = ``biject_to(prior.support)``, so :math:`q` puts no mass outside a bounded prior
    (no rejection of leaked samples is needed). Inside, :math:`u` and :math:`x` are
    standardised column by column with statistics of the training rows
    (:class:`~pyro_flows.distributions.NormalizingFlow`'s standardisation, recorded in its
    buffers), and :math:`x` passes through an embedding network (an MLP by default; any
    ``nn.Module``) trained jointly with the flow. Training is :func:`~pyro_flows.training.fit`:
    Adam with a cosine schedule, a validation split, early stopping and the best parameters
    restored.

    Arguments:
        prior: The prior :math:`p(\theta)`, a distribution with event shape ``(D,)`` (e.g.
            ``dist.Uniform(lo, hi).to_event(1)`` or a :class:`~pyro_flows.sbi.ModelPrior`).
        flow: A conditional family of :func:`~pyro_flows.flows.build` (``"maf"``,
            ``"affine_coupling"``, ``"nsf"``, ...).
        num_layers: The number of flow layers.
        hidden_dims: The hidden sizes of each layer's network (None: the family's default).
        embedding_net: ``"mlp"`` (default), ``"identity"``/None, or an ``nn.Module`` mapping
            ``(n, C)`` to ``(n, E)``.
        embedding_dim: The output size of the default MLP embedding (default
            :math:`\max(32, C)`).
        flow_kwargs: Further keyword arguments of the family's helper.
        num_steps: The most Adam steps per :meth:`fit`.
        batch_size: The minibatch size.
        lr: The peak learning rate.
        val_fraction: The fraction of the simulations held out for validation.
        patience: Stop after this many validations without improvement (None: never).
        eval_every: The number of steps between validations.
        clip_grad_norm: The maximum gradient norm per step (None: no clipping).
        seed: Seeds the initialisation, the split and the minibatches.
        progress: Show tqdm bars.
        dtype: ``"float32"`` or ``"float64"``.

    Example:
        >>> import pyro.distributions as dist
        >>> prior = dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1)
        >>> theta = prior.sample((500,))
        >>> x = theta + 0.1 * torch.randn(500, 2)
        >>> npe = NPE(prior, num_layers=2, hidden_dims=[16], num_steps=50, progress=False)
        >>> post = npe.fit(theta, x).posterior(torch.tensor([0.5, -0.5]))
        >>> draws = post.sample((1000,))
        >>> draws.shape, bool((draws.abs() < 1).all())
        (torch.Size([1000, 2]), True)

    References:
        | Fast epsilon-free Inference of Simulation Models with Bayesian Conditional Density
          Estimation (Papamakarios and Murray, 2016)
        | https://arxiv.org/abs/1605.06376
        | Automatic Posterior Transformation for Likelihood-Free Inference (Greenberg et al.,
          2019)
        | https://arxiv.org/abs/1905.07488
    """

    _FORMAT = "pyro_flows.sbi.NPE"

    def __init__(
        self,
        prior: torch.distributions.Distribution,
        flow: str = "maf",
        num_layers: int = 5,
        hidden_dims: Sequence[int] | None = None,
        *,
        embedding_net: str | nn.Module | None = "mlp",
        embedding_dim: int | None = None,
        flow_kwargs: dict[str, Any] | None = None,
        num_steps: int = 5000,
        batch_size: int = 256,
        lr: float = 1e-3,
        val_fraction: float = 0.1,
        patience: int | None = 10,
        eval_every: int = 100,
        clip_grad_norm: float | None = 5.0,
        seed: int | None = None,
        progress: bool = True,
        dtype: str = "float32",
    ) -> None:
        super().__init__(prior, embedding_net, embedding_dim, dtype, seed, progress)
        name, family = lookup_family(flow)
        if family.make_conditional is None:
            conditional = sorted(k for k, f in FAMILIES.items() if f.make_conditional)
            raise ValueError(f"flow {flow!r} has no conditional variant; use one of {conditional}")
        if not family.invertible:
            raise ValueError(f"flow {flow!r} cannot score data (no inverse); NPE needs it")
        smallest = family.smallest_dim(context_dim=1)  # q(theta | x) always has a context
        if self.theta_dim < smallest:
            raise ValueError(
                f"flow {flow!r} needs at least {smallest} parameters, the prior has "
                f"{self.theta_dim}"
            )
        self.flow = flow
        self.num_layers = check_positive_int(num_layers, "num_layers")
        self.hidden_dims = None if hidden_dims is None else check_hidden_dims(hidden_dims)
        self.flow_kwargs = dict(flow_kwargs or {})
        self._set_training(
            num_steps=num_steps,
            batch_size=batch_size,
            lr=lr,
            val_fraction=val_fraction,
            patience=patience,
            eval_every=eval_every,
            clip_grad_norm=clip_grad_norm,
        )

    def _config(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "num_layers": self.num_layers,
            "hidden_dims": self.hidden_dims,
            "flow_kwargs": self.flow_kwargs,
            **self._common_config(),
        }

    def _build(self, x_dim: int) -> NormalizingFlow:
        embedding, e_dim = _embedding(self.embedding_net, x_dim, self.embedding_dim)
        inner = build(
            self.flow,
            self.theta_dim,
            self.num_layers,
            context_dim=e_dim,
            hidden_dims=self.hidden_dims,
            **self.flow_kwargs,
        )
        return NormalizingFlow(EmbeddedConditional(inner, embedding), self.theta_dim, x_dim)

    def _train(self, u: Tensor, x: Tensor, settings: dict[str, Any]) -> FitHistory:
        s = {k: getattr(self, k) for k in self._FIT_SETTINGS}
        s.update(settings)
        return fit(
            self.model_,
            u,
            context=x,
            num_steps=s["num_steps"],
            batch_size=s["batch_size"],
            lr=s["lr"],
            val_fraction=s["val_fraction"],
            patience=s["patience"],
            eval_every=s["eval_every"],
            clip_grad_norm=s["clip_grad_norm"],
            progress=self.progress,
            seed=self.seed,
        )

    def _distribution(self, x_o: Tensor) -> torch.distributions.Distribution:
        return self.model_(x_o)

    @property
    def flow_(self) -> NormalizingFlow:
        """The fitted :class:`~pyro_flows.distributions.NormalizingFlow` over :math:`u`."""
        self._check_fitted()
        return self.model_
