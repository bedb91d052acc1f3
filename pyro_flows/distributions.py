"""A normalizing flow as a module that gives Pyro distributions (conditional ones too)."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions.conditional import ConditionalTransformModule
from torch import Tensor, nn

from ._validation import as_rows, check_finite, check_last_dim, check_positive_int
from .transforms.base import sum_last, uncached_call, uncached_inverse
from .transforms.cache import Draw, resolve, state_of
from .transforms.standardization import Standardization

__all__ = ["NormalizingFlow"]

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


class NormalizingFlow(nn.Module):
    r"""A base pushed through a transform: :math:`x = f(z)`, :math:`z \sim p` (default N(0, I)).

    .. math:: \log q(x \mid c) = \log p(f_c^{-1}(x))
              - \log\left|\det \frac{\partial f_c}{\partial z}\right|_{z = f_c^{-1}(x)}

    Calling the module gives a :class:`pyro.distributions.TransformedDistribution`, so it can be
    used wherever Pyro takes a distribution, e.g. ``pyro.sample("x", flow(context))`` after
    ``pyro.module("flow", flow)`` registers its parameters. ``log_prob``, ``sample`` and
    ``rsample`` are shortcuts that also check their inputs (event shape, NaN/inf).

    **Data in its own units.** With ``standardize=True`` (default) the flow ends in a
    :class:`~pyro_flows.transforms.Standardization` layer, :math:`x = \mu + \sigma \odot f(z)`,
    whose per-column :math:`\mu, \sigma` (median and robust scale, see
    :func:`~pyro_flows.transforms.robust_loc_scale`) are set from the training rows by
    :meth:`initialize_from_data`, which :func:`~pyro_flows.training.fit` calls before its first
    step; a conditional flow likewise standardises its context before the layers see it.
    Fitting :math:`a x + b` (:math:`a > 0`, per column) then trains the very same layers as
    fitting :math:`x`, so the density follows the change of units exactly,
    :math:`\log q'(a x + b) = \log q(x) - \sum_i \log a_i`, for every family. Until it is
    set (the boolean buffer ``standardized``) the layer is skipped: an unfitted flow is
    exactly the bare transform.

    The rule: :meth:`initialize_from_data` sets the standardisation only on a flow that is
    *untouched since construction*: not set before (by :meth:`initialize` or
    :meth:`set_standardization`), no ``load_state_dict`` into it, and every parameter and
    buffer still holding its construction value. So an optimizer step, SVI training, or a
    hand-set or data-initialised layer (e.g. a Glow ActNorm that has scored data) counts as a
    touch, and a flow trained or loaded before ``fit`` is fitted further in the units it has;
    ``.to()`` and ``copy.deepcopy`` are not touches. :meth:`initialize` and
    :meth:`set_standardization` always set it. The statistics and the flag are buffers, so
    they round-trip through the ``state_dict``; a state saved before this layer existed loads
    as an unset (skipped) layer.

    The standard normal base is held in buffers, so ``.to(device)`` and ``.to(torch.float64)``
    move everything. A learnable ``base`` (e.g. a
    :class:`~pyro_flows.bases.GaussianMixture`) replaces :math:`N(0, I)` by its density
    :math:`p_\phi(z)`; its parameters are trained with the flow's.

    Arguments:
        transform: A ``TransformModule`` mapping base noise to data, or a
            ``ConditionalTransformModule`` for a conditional density :math:`q(x \mid c)`.
        input_dim: The event size :math:`D`.
        context_dim: The context size :math:`C` of a conditional transform.
        base: None for :math:`N(0, I)`, or a module whose ``log_prob(z)`` returns
            :math:`\log p_\phi(z)` of shape ``z.shape[:-1]`` and whose call returns the
            distribution (event shape ``(D,)``).
        standardize: Whether the flow has the data-end standardisation (and, when
            conditional, the context standardisation) described above.

    Example:
        >>> from pyro_flows.flows import build
        >>> flow = NormalizingFlow(build("maf", 2, num_layers=2), 2)
        >>> x = flow.sample((3,))
        >>> flow.log_prob(x).shape
        torch.Size([3])
        >>> data = 100.0 + 20.0 * torch.randn(500, 2)
        >>> flow.initialize_from_data(data)  # what fit(flow, data) does first
        True
        >>> flow.standardization.loc.round(decimals=-1).tolist()
        [100.0, 100.0]
    """

    def __init__(
        self,
        transform: nn.Module,
        input_dim: int,
        context_dim: int | None = None,
        base: nn.Module | None = None,
        standardize: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(standardize, bool):
            raise TypeError(f"standardize must be True or False, got {standardize!r}")
        self.input_dim = check_positive_int(input_dim, "input_dim")
        self.conditional = isinstance(transform, ConditionalTransformModule)
        if self.conditional and context_dim is None:
            raise ValueError("context_dim is required for a conditional transform")
        if context_dim is not None:
            if not self.conditional:
                raise ValueError("context_dim was given but the transform is not conditional")
            check_positive_int(context_dim, "context_dim")
        self.context_dim = context_dim
        self.transform = transform
        self.register_buffer("base_loc", torch.zeros(input_dim))
        self.register_buffer("base_scale", torch.ones(input_dim))
        if base is not None:
            if not (isinstance(base, nn.Module) and callable(getattr(base, "log_prob", None))):
                raise TypeError(
                    f"base must be an nn.Module with a log_prob method, got {type(base).__name__}"
                )
            dim = getattr(base, "input_dim", input_dim)
            if dim != input_dim:
                raise ValueError(f"base has input_dim {dim}, but the flow has {input_dim}")
        self.base = base
        self.standardization = Standardization.identity(input_dim) if standardize else None
        self.context_standardization = (
            Standardization.identity(context_dim) if standardize and self.conditional else None
        )
        if standardize:  # whether the standardisation holds statistics (else it is skipped)
            self.register_buffer("standardized", torch.tensor(False))
        self.__dict__["_pristine"] = self._fingerprint()

    # -- standardisation -----------------------------------------------------------------------
    def _fingerprint(self) -> tuple[float, ...]:
        """Sums of every float parameter and buffer, as float32: a change shows, a move doesn't.

        Flags (boolean buffers, e.g. an ActNorm's ``initialized``) are left out: a pass that
        only flips one changes no map.
        """
        sums = []
        with torch.no_grad():
            for t in (*self.parameters(), *self.buffers()):
                if not t.is_floating_point():
                    continue
                v = t.detach().to("cpu", torch.float32).double()
                sums += [v.sum().item(), v.square().sum().item()]
        return tuple(sums)

    def is_untouched(self) -> bool:
        """Whether the flow is as constructed (the rule in the class docstring)."""
        return (
            self.standardization is not None
            and not bool(self.standardized)
            and not self.__dict__.get("_loaded", False)
            and self._fingerprint() == self.__dict__.get("_pristine")
        )

    def initialize(self, data: Tensor, context: Tensor | None = None) -> None:
        """Sets the standardisation from the rows of ``data`` (and ``context``), unconditionally.

        Arguments:
            data: Rows of shape ``(num_rows, D)``, at least 2, finite.
            context: For a conditional flow, the context rows ``(num_rows, C)``.
        """
        if self.standardization is None:
            raise ValueError("this flow was built with standardize=False; nothing to initialise")
        x = as_rows(data, "data")
        check_last_dim(x, self.input_dim, "data")
        if self.conditional:
            if context is None:
                raise ValueError("this flow is conditional: initialize needs the context rows")
            c = as_rows(context, "context")
            check_last_dim(c, self.context_dim, "context")
            if c.shape[0] != x.shape[0]:
                raise ValueError(
                    f"context must have one row per row of data ({x.shape[0]}), got {c.shape[0]}"
                )
            self.context_standardization.initialize(c)
        elif context is not None:
            raise ValueError("context was given but this flow is not conditional")
        self.standardization.initialize(x)
        self.standardized.fill_(True)

    @torch.no_grad()
    def set_standardization(
        self,
        loc: Tensor,
        scale: Tensor,
        context_loc: Tensor | None = None,
        context_scale: Tensor | None = None,
    ) -> None:
        r"""Sets the standardisation by hand: :math:`x = \mu + \sigma \odot f(z)`.

        Arguments:
            loc: :math:`\mu`, shape ``(D,)``.
            scale: :math:`\sigma > 0`, shape ``(D,)``.
            context_loc: For a conditional flow, the context's shift (default 0), shape
                ``(C,)``; the layers see ``(c - context_loc) / context_scale``.
            context_scale: The context's positive scale (default 1), shape ``(C,)``.
        """
        if self.standardization is None:
            raise ValueError("this flow was built with standardize=False; nothing to set")
        if not self.conditional and (context_loc is not None or context_scale is not None):
            raise ValueError("context_loc/context_scale given but this flow is not conditional")
        self.standardization.set_(loc, scale)
        if self.conditional:
            cs = self.context_standardization
            cs.set_(
                torch.zeros_like(cs.loc) if context_loc is None else context_loc,
                torch.ones_like(cs.scale) if context_scale is None else context_scale,
            )
        self.standardized.fill_(True)

    def initialize_from_data(self, data: Tensor, context: Tensor | None = None) -> bool:
        """:meth:`initialize`, only if the flow :meth:`is_untouched`; returns whether it did.

        :func:`~pyro_flows.training.fit` calls this with its training rows before its first
        step.
        """
        if not self.is_untouched():
            return False
        self.initialize(data, context)
        return True

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        # A loaded flow is never re-initialised by fit; a state saved before the
        # standardisation existed loads as an unset layer, i.e. the flow it was.
        self.__dict__["_loaded"] = True
        for name, layer in (
            ("standardization", self.standardization),
            ("context_standardization", self.context_standardization),
        ):
            key = f"{prefix}{name}."
            if layer is not None and key + "loc" not in state_dict:
                state_dict[key + "loc"] = torch.zeros_like(layer.loc)
                state_dict[key + "scale"] = torch.ones_like(layer.scale)
                state_dict.setdefault(prefix + "standardized", torch.tensor(False))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _active_standardization(self) -> Standardization | None:
        std = self.standardization
        return std if std is not None and bool(self.standardized) else None

    def _cast(self, t: Tensor, name: str) -> Tensor:
        """``t`` in the flow's dtype: real or integer values of another dtype are cast to it."""
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype == self.base_loc.dtype:
            return t
        # the layers' precision (a flow may keep its base buffers in another one)
        dtype = next(
            (v.dtype for v in self.transform.state_dict().values() if v.is_floating_point()),
            self.base_loc.dtype,
        )
        if t.dtype == dtype:
            return t
        if t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"{name} has dtype {t.dtype}; the flow takes real values ({dtype})")
        return t.to(dtype)

    def _transform(self, context: Tensor | None) -> nn.Module:
        if context is not None:
            context = self._cast(context, "context")
        if not self.conditional:
            if context is not None:
                raise ValueError("context was given but this flow is not conditional")
            return self.transform
        if context is None:
            raise ValueError(
                f"this flow is conditional: pass a context of shape (..., {self.context_dim})"
            )
        if self._active_standardization() is not None:
            check_last_dim(context, self.context_dim, "context")
            context = self.context_standardization.inv(context)
        return self.transform.condition(context)

    def forward(self, context: Tensor | None = None) -> dist.TransformedDistribution:
        r"""Returns the distribution :math:`q(x)` or, for a conditional flow, :math:`q(x \mid c)`.

        A context of shape ``(*batch, C)`` gives a distribution with batch shape ``batch``.
        """
        transform = self._transform(context)
        if self.base is None:
            base = dist.Normal(self.base_loc, self.base_scale).to_event(1)
        else:
            base = self.base()
        if context is not None:
            base = base.expand(context.shape[:-1])
        std = self._active_standardization()
        return dist.TransformedDistribution(base, [transform] if std is None else [transform, std])

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r"""Returns :math:`\log q(x \mid c)` of shape ``x.shape[:-1]`` (broadcast with the context).

        Equal to ``self(context).log_prob(x)``, computed in one pass through the layers without
        building the distribution objects (the input checks here make torch's redundant). The
        flow's last draw (``x`` itself, from :meth:`rsample` or :meth:`sample`, with the same
        context and unchanged parameters) is scored from its saved noise and log-determinant,
        with no pass at all: an IAF scores its own samples for free. ``x`` and ``context`` of
        another dtype (float64 data for a float32 flow, integers) are cast to the flow's.
        """
        x = self._cast(x, "x")
        check_last_dim(x, self.input_dim, "x")
        check_finite(x, "x")
        z_and_ladj = self._draw_hit(x, context)
        if z_and_ladj is None:
            z_and_ladj = self._uncached_inverse(x, context)
            if z_and_ladj is None:  # a transform from elsewhere: Pyro's machinery
                return self(context).log_prob(x)
        z, ladj = z_and_ladj
        if self.base is None:
            log_base = sum_last(z.square(), -0.5) - self.input_dim * _HALF_LOG_TWO_PI
        else:
            log_base = self.base.log_prob(z)
        return log_base - ladj

    def inverse(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r"""Maps data to base noise, :math:`z = f_c^{-1}(x)`, shape ``x.shape``."""
        x = self._cast(x, "x")
        check_last_dim(x, self.input_dim, "x")
        check_finite(x, "x")
        z_and_ladj = self._draw_hit(x, context)
        if z_and_ladj is None:
            z_and_ladj = self._uncached_inverse(x, context)
            if z_and_ladj is None:
                return self._transform(context).inv(self._standardize(x))
        return z_and_ladj[0]

    def _standardize(self, x: Tensor) -> Tensor:
        std = self._active_standardization()
        return x if std is None else std._inverse_and_ladj(x)[0]

    def _uncached_inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """``(z, log|det J|)`` through the standardisation and the transform, or None."""
        std = self._active_standardization()
        ladj0 = None
        if std is not None:
            x, ladj0 = std._inverse_and_ladj(x)
        out = uncached_inverse(self._transform(context), x)
        if out is None or ladj0 is None:
            return out
        return out[0], out[1] + ladj0

    def clear_cache(self) -> None:
        """Forgets the record of the last draw and the layers' caches, freeing their tensors."""
        self.__dict__.pop("_draw", None)
        for module in self.modules():
            if module is not self and callable(getattr(module, "clear_cache", None)):
                module.clear_cache()

    def _draw_hit(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """``(z, log|det J|)`` of the last draw if it produced ``x`` (unchanged), else None."""
        draw: Draw | None = self.__dict__.get("_draw")
        if draw is None or draw.x is not x or draw.x_version != x._version:
            return None
        if draw.context is not context:
            return None
        if context is not None and draw.context_version != context._version:
            return None
        if not draw.state.serves(state_of(self)):
            return None
        ladjs = [resolve(ladj) for ladj in draw.ladjs]
        total = ladjs[0]
        for ladj in ladjs[1:]:
            total = total + ladj
        if torch.is_grad_enabled() == draw.state.grad_enabled:  # keep a value of its mode
            self.__dict__["_draw"] = Draw(
                draw.z, x, draw.x_version, [total], context, draw.context_version, draw.state
            )
        return draw.z, total

    def rsample(
        self, sample_shape: torch.Size | tuple = (), context: Tensor | None = None
    ) -> Tensor:
        """Draws reparametrised samples of shape ``sample_shape + context batch + (D,)``."""
        if self.base is not None:
            return self(context).rsample(torch.Size(sample_shape))
        # Same draws as Normal(0, 1).sample (one randn), without building the distribution,
        # whose cost shows for small networks (docs/benchmarks.md, overhead).
        transform = self._transform(context)
        batch = () if context is None else context.shape[:-1]
        shape = torch.Size(sample_shape) + batch + (self.input_dim,)
        z = torch.randn(shape, dtype=self.base_loc.dtype, device=self.base_loc.device)
        # With gradients the graph keeps every intermediate anyway: the parts' caches cost no
        # memory and let Pyro's path, self(context).log_prob, score the draw too.
        std = self._active_standardization()
        out = None if torch.is_grad_enabled() else uncached_call(transform, z)
        if out is None:
            return transform(z) if std is None else std(transform(z))
        # Without: one record for the whole chain (see log_prob), and the parts' caches stay
        # untouched, so no layer keeps its tensors alive between calls.
        x, ladjs = out
        if std is not None:
            x, ladj = std._call_and_ladj(x)
            ladjs = [*ladjs, ladj]
        version = None if context is None else context._version
        self.__dict__["_draw"] = Draw(z, x, x._version, ladjs, context, version, state_of(self))
        return x

    def sample(
        self, sample_shape: torch.Size | tuple = (), context: Tensor | None = None
    ) -> Tensor:
        """Draws samples without gradients (shapes as :meth:`rsample`).

        The flow keeps a record of its last draw, so ``log_prob`` and ``inverse`` of these very
        samples (same context, unchanged parameters) take no network pass.
        """
        with torch.no_grad():
            if self.base is not None:  # e.g. a mixture, which has no rsample
                return self(context).sample(torch.Size(sample_shape))
            return self.rsample(sample_shape, context)
