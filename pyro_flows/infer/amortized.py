"""Amortised flow guides: a conditional flow over a local latent, fed by an encoder."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineTransform
from pyro.infer.autoguide import AutoGuide
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn
from torch.distributions import biject_to
from torch.distributions.transforms import ReshapeTransform

from .._validation import check_positive_int
from ..flows import build, lookup_family
from .guides import guide_direction

__all__ = ["AmortizedFlowGuide"]


def _first_arg(*args: Any, **kwargs: Any) -> Tensor:
    if not args:
        raise ValueError("the model takes no positional argument to encode: pass data_fn")
    return args[0]


class AmortizedFlowGuide(AutoGuide):
    r"""An amortised normalizing-flow guide for one local latent site (the pattern of VAEs).

    For a site :math:`z_i` sampled once per data point :math:`x_i` inside a ``pyro.plate``,

    .. math:: h_i = \text{encoder}(x_i), \qquad
              u_i = m(h_i) + s(h_i) \odot T_{h_i}(\varepsilon_i), \quad
              \varepsilon_i \sim N(0, I), \qquad z_i = \text{biject\_to}(\text{support})(u_i),

    where :math:`T_h` is a conditional flow of any family with a conditional variant, built by
    :func:`~pyro_flows.flows.build` with ``context_dim`` the encoder's output size and used in
    its one-pass sampling direction (:func:`~pyro_flows.infer.guide_direction`), and
    :math:`(m, s)` is a linear head on :math:`h` (:math:`s` through a softplus). Shapes,
    support and plate are read from the model, so a guide is one line::

        guide = AmortizedFlowGuide(model, "z", encoder)          # encoder(x) -> (N, C)

    The encoder receives ``data_fn(*args, **kwargs)`` (default: the model's first argument),
    restricted to the plate's subsample when the plate subsamples, and must return one row of
    context per data point, shape ``(*plate_shape, C)``. Global latents go to another guide in
    an :class:`~pyro.infer.autoguide.AutoGuideList`, e.g. with the model blocked to them::

        guide = AutoGuideList(model)
        guide.append(AutoFlowGuide(poutine.block(model, hide=["z"])))
        guide.append(AmortizedFlowGuide(poutine.block(model, expose=["z"]), "z", encoder))

    Arguments:
        model: A Pyro model with the site ``site`` inside one or more plates.
        site: The name of the local latent site.
        encoder: A module mapping the data of each point to a context vector.
        flow: A family with a conditional variant (``"iaf"``, ``"maf"``, ``"affine_coupling"``,
            ``"planar"``, ``"radial"``, ``"spline"``, ...).
        num_layers: The number of flow layers.
        hidden_dims: The hidden sizes of each layer's network.
        context_dim: The encoder's output size; inferred by running the encoder once if omitted.
        data_fn: ``data_fn(*args, **kwargs)`` returns the tensor to encode, with the plate's
            points along its leading dimension(s).
        init_scale: The initial scale :math:`s`.
        direction: ``"auto"``, ``"forward"`` or ``"inverse"`` (see
            :func:`~pyro_flows.infer.guide_direction`).
        flow_kwargs: Passed to :func:`~pyro_flows.flows.build`.

    Example:
        >>> import pyro.distributions as dist
        >>> def model(x):
        ...     with pyro.plate("data", len(x)):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        ...         pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 0.5).to_event(1), obs=x)
        >>> x = torch.randn(10, 1)
        >>> guide = AmortizedFlowGuide(model, "z", torch.nn.Linear(1, 4), hidden_dims=[8])
        >>> guide(x)["z"].shape
        torch.Size([10, 2])
        >>> guide.posterior(x).batch_shape, guide.posterior(x).event_shape
        (torch.Size([10]), torch.Size([2]))
    """

    def __init__(
        self,
        model: Callable[..., Any],
        site: str,
        encoder: nn.Module,
        flow: str = "iaf",
        num_layers: int = 2,
        hidden_dims: Sequence[int] | None = None,
        *,
        context_dim: int | None = None,
        data_fn: Callable[..., Tensor] | None = None,
        init_scale: float = 1.0,
        direction: str = "auto",
        **flow_kwargs: Any,
    ) -> None:
        if not isinstance(site, str):
            raise TypeError(f"site must be a site name, got {site!r}")
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        check_positive_int(num_layers, "num_layers")
        if context_dim is not None:
            check_positive_int(context_dim, "context_dim")
        if not (isinstance(init_scale, int | float) and math.isfinite(init_scale)):
            raise TypeError(f"init_scale must be a positive number, got {init_scale!r}")
        if init_scale <= 0:
            raise ValueError(f"init_scale must be a positive number, got {init_scale!r}")
        self._family_name, family = lookup_family(flow)
        if family.make_conditional is None:
            raise ValueError(f"flow {flow!r} has no conditional variant; pick another family")
        self._direction = guide_direction(family, direction)
        super().__init__(model)
        self.site = site
        self.encoder = encoder
        self._num_layers = num_layers
        self._hidden_dims = hidden_dims
        self._context_dim = context_dim
        self._data_fn = data_fn or _first_arg
        self._init_scale = float(init_scale)
        self._flow_kwargs = flow_kwargs

    @property
    def direction(self) -> str:
        """``"forward"`` or ``"inverse"``: how the conditional flow stack is used."""
        return self._direction

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        nodes = self.prototype_trace.nodes
        if self.site not in nodes or nodes[self.site]["type"] != "sample":
            raise ValueError(f"the model has no sample site {self.site!r}")
        site = nodes[self.site]
        if site["is_observed"] or site_is_subsample(site):
            raise ValueError(f"site {self.site!r} is observed; amortise a latent site")
        others = [n for n, _ in self.prototype_trace.iter_stochastic_nodes() if n != self.site]
        if others:
            raise ValueError(
                f"the model has latent sites {others} besides {self.site!r}: block them with "
                f"poutine.block(model, expose=[{self.site!r}]) and guide them with another "
                "guide in an AutoGuideList"
            )
        self._frames = [f for f in site["cond_indep_stack"] if f.vectorized]
        if not self._frames:
            raise ValueError(f"site {self.site!r} is in no plate: it is not a local latent")
        fn = site["fn"]
        self._support = fn.support
        self._batch_shape = fn.batch_shape
        self._event_shape = fn.event_shape
        unconstrained = biject_to(fn.support).inv(site["value"]).shape
        self._unconstrained_event = unconstrained[len(fn.batch_shape) :]
        self.latent_dim = math.prod(self._unconstrained_event)
        min_dim = lookup_family(self._family_name)[1].conditional_min_dim  # always conditional
        if self.latent_dim < min_dim:
            raise ValueError(
                f"flow {self._family_name!r} needs at least {min_dim} dimensions per point; "
                f"site {self.site!r} has {self.latent_dim}"
            )
        value = site["value"]
        if self._context_dim is None:
            with torch.no_grad():
                self._context_dim = self._encode(args, kwargs, None).shape[-1]
        self.flow = build(
            self._family_name,
            self.latent_dim,
            self._num_layers,
            context_dim=self._context_dim,
            hidden_dims=self._hidden_dims,
            **self._flow_kwargs,
        ).to(dtype=value.dtype, device=value.device)
        self.head = nn.Linear(self._context_dim, 2 * self.latent_dim).to(
            dtype=value.dtype, device=value.device
        )
        with torch.no_grad():
            self.head.weight.mul_(0.01)
            self.head.bias.zero_()
            # softplus(b) = init_scale
            self.head.bias[self.latent_dim :] = math.log(math.expm1(self._init_scale))

    def _encode(self, args: tuple, kwargs: dict, indices: Tensor | None) -> Tensor:
        data = self._data_fn(*args, **kwargs)
        if indices is not None:
            data = data.index_select(0, indices.to(data.device))
        context = self.encoder(data)
        if not torch.is_tensor(context) or context.dim() < 1:
            raise ValueError("the encoder must return a tensor of shape (*plate_shape, C)")
        return context

    def _distribution(self, context: Tensor) -> dist.TransformedDistribution:
        batch = context.shape[:-1]
        base = dist.Normal(context.new_zeros(()), 1.0).expand([*batch, self.latent_dim])
        flow = self.flow.condition(context)
        loc, raw = self.head(context).split(self.latent_dim, dim=-1)
        scale = nn.functional.softplus(raw)
        # Every part caches its pass so that scoring the sample reuses it (see AutoFlowGuide).
        parts = [
            flow.inv if self._direction == "inverse" else flow,
            AffineTransform(loc, scale, event_dim=1, cache_size=1),
        ]
        if self._unconstrained_event != (self.latent_dim,):
            shape = (self.latent_dim,)
            parts.append(ReshapeTransform(shape, self._unconstrained_event, cache_size=1))
        parts.append(biject_to(self._support).with_cache(1))
        return dist.TransformedDistribution(base.to_event(1), parts)

    def posterior(self, *args: Any, **kwargs: Any) -> dist.TransformedDistribution:
        r"""The guide's :math:`q(z_i \mid x_i)` for all data points of ``args`` (no subsampling).

        Its batch shape is the plate shape and its event shape that of the site; use it to
        encode data (``.sample()``, ``.log_prob(z)``) outside of inference.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return self._distribution(self._encode(args, kwargs, None))

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Samples the site, inside the model's plates, for the (subsampled) data points."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        with ExitStack() as stack:
            indices = None
            for frame in self._frames:
                plate = plates[frame.name]
                idx = stack.enter_context(plate)
                full = frame.full_size or frame.size
                if frame.size < full:
                    if len(self._frames) > 1:
                        raise NotImplementedError(
                            "subsampling is supported for a site in a single plate"
                        )
                    indices = idx
            context = self._encode(args, kwargs, indices)
            value = pyro.sample(self.site, self._distribution(context))
        return {self.site: value}

    def median(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        r"""The median of :math:`q(z_i \mid x_i)` per coordinate, from 1001 draws per point."""
        with torch.no_grad():
            draws = self.posterior(*args, **kwargs).sample((1001,))
        return {self.site: draws.median(0).values}
