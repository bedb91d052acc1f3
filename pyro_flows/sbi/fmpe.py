r"""Flow matching posterior estimation: a conditional vector field trained on simulations."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from .._validation import check_choice, check_hidden_dims, check_positive_int
from ..matching import FlowMatchingHistory, FlowMatchingPrior, fit_flow_matching
from ..nn import VectorField
from ..nn.fields import ACTIVATIONS
from ..transforms.standardization import robust_loc_scale
from ._base import PosteriorEstimator, _embedding

__all__ = ["FMPE", "PosteriorField"]


class PosteriorField(nn.Module):
    r"""The field :math:`v(t, \tilde u, x) = f(t, \tilde u, e((x - \mu_x) / \sigma_x))` of FMPE.

    :math:`\tilde u = (u - \mu_u) / \sigma_u` are standardised unconstrained parameters and
    :math:`e` an embedding network; the four statistics are buffers set from the training
    rows by :meth:`initialize`, so they are saved with the parameters.

    Arguments:
        field: A conditional :class:`~pyro_flows.nn.VectorField` whose ``context_dim`` is the
            embedding's output size.
        embedding: The embedding network of :math:`x`.
        theta_dim: :math:`D`.
        x_dim: :math:`C`.

    Example:
        >>> v = PosteriorField(VectorField(2, [8], context_dim=3), nn.Identity(), 2, 3)
        >>> v(torch.rand(4), torch.randn(4, 2), torch.randn(4, 3)).shape
        torch.Size([4, 2])
    """

    def __init__(self, field: nn.Module, embedding: nn.Module, theta_dim: int, x_dim: int) -> None:
        super().__init__()
        self.field = field
        self.embedding = embedding
        self.input_dim = theta_dim
        self.context_dim = x_dim
        self.register_buffer("u_loc", torch.zeros(theta_dim))
        self.register_buffer("u_scale", torch.ones(theta_dim))
        self.register_buffer("x_loc", torch.zeros(x_dim))
        self.register_buffer("x_scale", torch.ones(x_dim))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, u: Tensor, x: Tensor) -> None:
        """Sets the standardisations from rows of :math:`u` and :math:`x` (robust statistics)."""
        for (loc, scale), rows in ((("u_loc", "u_scale"), u), (("x_loc", "x_scale"), x)):
            m, s = robust_loc_scale(rows)
            getattr(self, loc).copy_(m)
            getattr(self, scale).copy_(s)
        self.initialized.fill_(True)

    def embed(self, x: Tensor) -> Tensor:
        """The embedding :math:`e` of standardised rows ``(*batch, C)``."""
        batch = x.shape[:-1]
        e = self.embedding(((x - self.x_loc) / self.x_scale).reshape(-1, x.shape[-1]))
        return e.reshape(*batch, e.shape[-1])

    def standardize(self, u: Tensor) -> Tensor:
        r""":math:`\tilde u = (u - \mu_u) / \sigma_u`."""
        return (u - self.u_loc) / self.u_scale

    def forward(self, t: Tensor, u: Tensor, x: Tensor) -> Tensor:
        """The velocity at standardised points ``u`` given raw ``x`` (rows broadcast)."""
        return self.field(t, u, self.embed(x))


class FMPE(PosteriorEstimator):
    r"""Flow matching posterior estimation: the posterior as a continuous flow.

    A conditional vector field :math:`v_\phi(t, \tilde u, x)` is regressed on the conditional
    velocity of the linear path between :math:`\tilde u_0 \sim N(0, I)` and a standardised
    simulated parameter :math:`\tilde u_1`,

    .. math:: \min_\phi\ \mathbb{E}_{t, (\theta, x), \tilde u_0}
              \left\| v_\phi(t, t \tilde u_1 + (1 - t) \tilde u_0, x)
              - (\tilde u_1 - \tilde u_0) \right\|^2 ,

    (:func:`~pyro_flows.matching.fit_flow_matching`); the flow of :math:`v_\phi(\cdot, \cdot,
    x_o)` then carries :math:`N(0, I)` to :math:`q(\tilde u \mid x_o)`. Samples solve the ODE;
    log-densities use the instantaneous change of variables
    (:class:`~pyro_flows.matching.FlowMatchingPrior`). As in :class:`~pyro_flows.sbi.NPE`,
    :math:`\theta = T(\sigma_u \odot \tilde u + \mu_u)` with :math:`T` =
    ``biject_to(prior.support)``, so no sample leaves the prior's support, and :math:`x`
    passes through a standardisation and an embedding network trained with the field.
    Training keeps the parameters of the lowest validation loss and stops early after
    ``patience`` validations without improvement.

    Arguments:
        prior: The prior :math:`p(\theta)`, with event shape ``(D,)``.
        hidden_dims: The hidden sizes of the field.
        activation: The field's activation (see :class:`~pyro_flows.nn.VectorField`).
        time_freqs: The number of Fourier features of the time.
        embedding_net: ``"mlp"`` (default), ``"identity"``/None, or an ``nn.Module``.
        embedding_dim: The output size of the default MLP embedding.
        num_steps: The most Adam steps per :meth:`fit`.
        batch_size: The minibatch size.
        lr: The peak learning rate.
        val_fraction: The fraction of simulations held out for validation.
        patience: Stop after this many validations without a lower validation loss.
        eval_every: Steps between validations.
        clip_grad_norm: The maximum gradient norm per step (None: no clipping).
        method: The ODE solver of samples and densities (``"dopri5"``, ``"rk4"``, ...).
        ode_steps: The number of steps of a fixed-step ``method``.
        rtol: The relative tolerance of an adaptive ``method``.
        atol: The absolute tolerance of an adaptive ``method``.
        seed: Seeds the initialisation, the split and the training draws.
        progress: Show tqdm bars.
        dtype: ``"float32"`` or ``"float64"``.

    Example:
        >>> import pyro.distributions as dist
        >>> prior = dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1)
        >>> theta = prior.sample((500,))
        >>> x = theta + 0.1 * torch.randn(500, 2)
        >>> fmpe = FMPE(prior, hidden_dims=[32], num_steps=50, method="rk4", ode_steps=5,
        ...             progress=False).fit(theta, x)
        >>> post = fmpe.posterior(torch.tensor([0.5, -0.5]))
        >>> draws = post.sample((100,))
        >>> bool((draws.abs() < 1).all()), post.log_prob(draws).shape
        (True, torch.Size([100]))

    References:
        | Flow Matching for Scalable Simulation-Based Inference (Dax et al., 2023)
        | https://arxiv.org/abs/2305.17161
        | Flow Matching for Generative Modeling (Lipman et al., 2023)
        | https://arxiv.org/abs/2210.02747
    """

    _FORMAT = "pyro_flows.sbi.FMPE"

    def __init__(
        self,
        prior: torch.distributions.Distribution,
        hidden_dims: Sequence[int] = (128, 128, 128),
        *,
        activation: str = "silu",
        time_freqs: int = 4,
        embedding_net: str | nn.Module | None = "mlp",
        embedding_dim: int | None = None,
        num_steps: int = 5000,
        batch_size: int = 256,
        lr: float = 1e-3,
        val_fraction: float = 0.1,
        patience: int | None = 10,
        eval_every: int = 100,
        clip_grad_norm: float | None = 5.0,
        method: str = "dopri5",
        ode_steps: int | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        seed: int | None = None,
        progress: bool = True,
        dtype: str = "float32",
    ) -> None:
        super().__init__(prior, embedding_net, embedding_dim, dtype, seed, progress)
        self.hidden_dims = check_hidden_dims(hidden_dims)
        self.activation = check_choice(activation, tuple(ACTIVATIONS), "activation")
        self.time_freqs = check_positive_int(time_freqs, "time_freqs", minimum=0)
        self._set_training(
            num_steps=num_steps,
            batch_size=batch_size,
            lr=lr,
            val_fraction=val_fraction,
            patience=patience,
            eval_every=eval_every,
            clip_grad_norm=clip_grad_norm,
        )
        FlowMatchingPrior(VectorField(1, [1]), method=method, num_steps=ode_steps)  # checks
        self.method = method
        self.ode_steps = ode_steps
        self.rtol = rtol
        self.atol = atol

    def _config(self) -> dict[str, Any]:
        return {
            "hidden_dims": self.hidden_dims,
            "activation": self.activation,
            "time_freqs": self.time_freqs,
            "method": self.method,
            "ode_steps": self.ode_steps,
            "rtol": self.rtol,
            "atol": self.atol,
            **self._common_config(),
        }

    def _build(self, x_dim: int) -> PosteriorField:
        embedding, e_dim = _embedding(self.embedding_net, x_dim, self.embedding_dim)
        field = VectorField(
            self.theta_dim,
            self.hidden_dims,
            context_dim=e_dim,
            activation=self.activation,
            time_freqs=self.time_freqs,
        )
        return PosteriorField(field, embedding, self.theta_dim, x_dim)

    def _train(self, u: Tensor, x: Tensor, settings: dict[str, Any]) -> FlowMatchingHistory:
        s = {k: getattr(self, k) for k in self._FIT_SETTINGS}
        s.update(settings)
        model: PosteriorField = self.model_
        if not bool(model.initialized):
            model.initialize(u, x)
        gen = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(u.shape[0], generator=gen)
        num_val = max(int(s["val_fraction"] * u.shape[0]), 1)
        val, train = perm[:num_val], perm[num_val:]
        ut = model.standardize(u)
        best: dict[str, Any] = {"loss": math.inf, "state": None, "bad": 0}

        def early_stop(step: int, history: FlowMatchingHistory) -> bool:
            if not history.val_steps or history.val_steps[-1] != step:
                return False
            loss = history.val_loss[-1]
            if loss < best["loss"]:
                best.update(loss=loss, state=copy.deepcopy(model.state_dict()), bad=0)
            else:
                best["bad"] += 1
            return s["patience"] is not None and best["bad"] >= s["patience"]

        history = fit_flow_matching(
            model,
            ut[train],
            context=x[train],
            val_data=ut[val],
            val_context=x[val],
            num_steps=s["num_steps"],
            batch_size=s["batch_size"],
            lr=s["lr"],
            eval_every=s["eval_every"],
            clip_grad_norm=s["clip_grad_norm"],
            progress=self.progress,
            seed=self.seed,
            callback=early_stop,
        )
        if best["state"] is not None:
            model.load_state_dict(best["state"])
        return history

    def _distribution(self, x_o: Tensor) -> torch.distributions.Distribution:
        model: PosteriorField = self.model_
        flow = FlowMatchingPrior(
            model.field,
            context=model.embed(x_o).detach(),
            method=self.method,
            num_steps=self.ode_steps,
            rtol=self.rtol,
            atol=self.atol,
        )
        affine = dist.transforms.AffineTransform(model.u_loc, model.u_scale, event_dim=1)
        return dist.TransformedDistribution(flow, [affine])
