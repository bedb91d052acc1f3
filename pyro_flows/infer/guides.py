"""Automatic normalizing-flow guides: any Pyro model, any flow family of the library."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.transforms import AffineTransform, ComposeTransform, LowerCholeskyAffine
from pyro.infer.autoguide import AutoContinuous, AutoLaplaceApproximation
from pyro.infer.autoguide.initialization import init_to_feasible
from pyro.nn import PyroParam
from pyro.ops.hessian import hessian
from torch import Tensor, nn
from torch.distributions import biject_to

from .._validation import check_choice, check_positive_int
from ..flows import Family, build, lookup_family
from .compare import fit_svi

__all__ = [
    "AutoFlowGuide",
    "LaplaceFallbackWarning",
    "SlowGuideWarning",
    "guide_direction",
    "init_to_centre",
]

_DIRECTIONS = ("auto", "forward", "inverse")
_AFFINES = ("diagonal", "full", "none")


class SlowGuideWarning(UserWarning):
    """A flow guide that cannot sample and score its own samples in one pass per layer."""


class LaplaceFallbackWarning(UserWarning):
    """The Hessian of a Laplace warm start was not positive definite; a fallback was used."""


def init_to_centre(site: dict | None = None) -> Tensor | Callable[[dict], Tensor]:
    r"""Starts each latent site at the centre of its prior: the default of :class:`AutoFlowGuide`.

    A site with real support starts at its prior's mean (given its parents' starting values),
    when that is finite; any other site, or a prior without a finite mean, starts where the
    unconstrained value is zero (Pyro's ``init_to_feasible``, the start of
    :class:`~pyro.infer.autoguide.AutoNormal`): a scale at 1, an interval's midpoint, a
    simplex's centre.

    Both are deterministic. Pyro's ``init_to_median`` takes the median of 15 prior draws, whose
    error is :math:`\approx 0.3` prior sds: tens of units for the vague priors of a
    hierarchical model (``Normal(0, 100)``), and every group effect then starts at its own
    random offset. An optimizer with learning rate :math:`\eta` moves a parameter by at most
    about :math:`\eta` per step, so a start that far away is never undone (the radon model's
    numbers are in docs/benchmarks.md, flow guide starts). Prior means of scale sites are
    avoided for the same reason: ``HalfNormal(100)``'s mean 80 is :math:`\log 80 \approx 4.4`
    units from a posterior scale near 1.

    Arguments:
        site: A sample site, or None to return this function (as Pyro's ``init_to_*``).

    Example:
        >>> import pyro.distributions as dist
        >>> site = {"name": "b", "fn": dist.Normal(torch.tensor(3.0), 100.0), "is_observed": False}
        >>> init_to_centre(site)
        tensor(3.)
        >>> init_to_centre({"name": "s", "fn": dist.HalfNormal(100.0), "is_observed": False})
        tensor(1.)
    """
    if site is None:
        return init_to_centre
    fn = site["fn"]
    support = fn.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if support is constraints.real:
        try:
            mean = fn.mean.detach()
        except (NotImplementedError, AttributeError):
            mean = None
        if mean is not None and bool(torch.isfinite(mean).all()):
            value = mean.expand(fn.shape()).clone()
            value._pyro_custom_init = False
            return value
    return init_to_feasible(site)


def guide_direction(family: Family | str, direction: str = "auto") -> str:
    r"""The direction in which a flow family is used inside a variational guide.

    A guide draws :math:`\theta = T(z)`, :math:`z \sim N(0, I)`, and scores exactly the
    :math:`\theta` it drew: :math:`\log q(\theta) = \log N(z) - \log|\det \partial T/\partial z|`.
    With the library's version-keyed cache, the log-determinant of the pass that produced
    :math:`\theta` is reused, so the cost of a guide step is the cost of **one** pass of
    :math:`T`. Hence:

    * ``fast_direction="sample"`` or ``"both"`` (IAF, planar, coupling, splines, NAF, BNAF,
      and any family registered later that says so): :math:`T` is the built stack, used
      forwards (``"forward"``).
    * ``fast_direction="density"`` (MAF): the stack's forward pass solves a recursion in
      :math:`D` network passes, but its inverse is one pass. The guide uses
      :math:`T = \text{stack}^{-1}` (``"inverse"``), which is again a one-pass map from noise to
      latents, with the same parameters and the same expressive power; a MAF used this way is
      an IAF. Nothing is lost: the guide never needs the other direction.
    * A family with no analytic inverse whose fast direction is ``"density"``, or with an
      unknown ``fast_direction``, can only be used forwards, slowly; a
      :class:`SlowGuideWarning` says so.

    Arguments:
        family: A :class:`~pyro_flows.flows.Family` or a name known to
            :func:`~pyro_flows.flows.build`.
        direction: ``"auto"`` (the rule above), or ``"forward"`` / ``"inverse"`` to force one;
            forcing the slow direction warns.

    Returns:
        ``"forward"`` or ``"inverse"``.

    Example:
        >>> guide_direction("iaf"), guide_direction("maf"), guide_direction("realnvp")
        ('forward', 'inverse', 'forward')
    """
    check_choice(direction, _DIRECTIONS, "direction")
    name = family if isinstance(family, str) else None
    if isinstance(family, str):
        _, family = lookup_family(family)
    label = f"flow {name!r}" if name else "this flow family"
    fast = family.fast_direction
    if direction == "auto":
        if fast in ("sample", "both"):
            return "forward"
        if fast == "density" and family.invertible:
            return "inverse"
        warnings.warn(
            f"{label} (fast_direction={fast!r}, invertible={family.invertible}) cannot draw and "
            "score its own samples in one pass per layer; the guide samples with its forward "
            "direction, which may cost D network passes per layer",
            SlowGuideWarning,
            stacklevel=2,
        )
        return "forward"
    if direction == "inverse" and not family.invertible:
        raise ValueError(f"{label} has no analytic inverse; use direction='forward' or 'auto'")
    slow = (direction == "forward" and fast == "density") or (
        direction == "inverse" and fast == "sample"
    )
    if slow:
        warnings.warn(
            f"direction={direction!r} uses the slow direction of {label} "
            f"(fast_direction={fast!r}): every guide sample costs D network passes per layer; "
            "direction='auto' picks the one-pass direction",
            SlowGuideWarning,
            stacklevel=2,
        )
    return direction


class AutoFlowGuide(AutoContinuous):
    r"""A normalizing-flow variational family for any Pyro model with continuous latents.

    As Pyro's :class:`~pyro.infer.autoguide.AutoContinuous` guides, it maps every latent site
    to an unconstrained space with :func:`~torch.distributions.biject_to` of its support,
    concatenates the sites into one vector :math:`u \in \mathbb{R}^D` and models it as

    .. math:: u = m + S\, T(z), \qquad z \sim N(0, I_D),

    where :math:`T` is a flow built by name with :func:`~pyro_flows.flows.build` (or given by a
    factory), used in its one-pass sampling direction (see :func:`guide_direction`), and
    :math:`(m, S)` is a learnable affine map: :math:`S` diagonal (``affine="diagonal"``), lower
    triangular (``"full"``, as :class:`~pyro.infer.autoguide.AutoMultivariateNormal`) or absent
    (``"none"``, as Pyro's :class:`~pyro.infer.autoguide.AutoNormalizingFlow`). The site values
    are :math:`\theta = \text{biject\_to}(\text{support})(u)` and the guide's density includes
    the log-Jacobian of that map, so constrained sites (positive, simplex, interval, ...) are
    handled exactly as Pyro's autoguides handle them.

    :math:`m` starts at ``init_loc_fn``'s value (mapped to the unconstrained space) and
    :math:`S` at ``init_scale`` times the identity, so at step 0 the guide is close to
    :math:`N(m, \text{init\_scale}^2 I)` pushed through a freshly initialised flow. The
    default start, :func:`init_to_centre`, is each real site's prior mean and the unconstrained
    zero elsewhere (a scale at 1): deterministic, unlike Pyro's ``init_to_median``, whose
    medians of 15 prior draws put the group effects of a hierarchical model with vague priors
    tens of units away, farther than an optimizer travels in thousands of steps. The default
    scale 1 is that of Pyro's flow guides; on the funnel and logistic regression examples it
    fits faster than the 0.1 of :class:`~pyro.infer.autoguide.AutoNormal` (reverse KL grows a
    too-narrow start slowly).

    Widths follow the dimension :math:`D` of the latent vector. The default networks of the
    MADE families (``"iaf"``, ``"maf"``) have one hidden layer of :math:`3D + 1` units (as
    Pyro's :class:`~pyro.infer.autoguide.AutoIAFNormal`), whatever the density estimators'
    default; other families use their helper's default, which also grows with :math:`D`. A
    MADE needs every hidden layer at least :math:`D` wide, so narrower ``hidden_dims`` (say
    ``[64, 64]`` for a 91-latent model) are widened to :math:`D` with a
    :class:`~pyro_flows.nn.made.HiddenWidthWarning`, for every user of the MADE helpers. Train
    with :func:`~pyro_flows.infer.fit_svi`: a step whose loss or gradient is not finite is
    skipped and the learning rate halved, with one warning that counts them, and a run of them
    stops with an error that names the parameters.

    Warning:
        On tightly identified posteriors far from the initial point (posterior standard
        deviations of :math:`10^{-3}` in the unconstrained space), flow guides are fragile: a
        narrow start can diverge (noisy gradients random-walk the log-scales of the layers
        until a draw overflows) and a wide one may not shrink to the posterior in thousands of
        steps. Start them from a Laplace approximation instead (``warm_start=1500,
        affine="full"``, or :meth:`init_from` a fitted Gaussian guide); docs/benchmarks.md
        (flow guide starts) has the ``sblrc-blr`` runs that show both.

    Unlike Pyro's flow guides, :meth:`median` and :meth:`quantiles` are answered: by Monte
    Carlo, from ``num_mc_samples`` draws, per coordinate (see :meth:`quantiles` for the error).

    Note:
        The flow acts on standardised noise, before the affine map. Families that act element-
        wise (``"spline"``) or radially (``"radial"``) cannot correlate coordinates: give them
        ``affine="full"``. Spline layers are the identity outside ``[-bound, bound]`` (default
        5 for ``"spline"`` and ``"nsf"``, 3 for Pyro's other spline families), so they cannot
        reshape tails beyond it: pass e.g. ``bound=8.0``.

    Arguments:
        model: A Pyro model with continuous latent sites of fixed shapes.
        flow: A name known to :func:`~pyro_flows.flows.build` (any key of
            :data:`~pyro_flows.flows.FAMILIES` or alias, including families registered after
            this class was written), or a factory ``flow(D)`` returning a transform (module)
            that maps noise to :math:`\mathbb{R}^D` (as ``init_transform_fn`` of
            :class:`~pyro.infer.autoguide.AutoNormalizingFlow`); a factory is used forwards
            unless ``direction="inverse"``.
        num_layers: The number of layers of a named flow.
        hidden_dims: The hidden sizes of each layer's network (for families that have one);
            by default they grow with the dimension (see above).
        init_loc_fn: A per-site initialisation function, as in Pyro's autoguides (default
            :func:`init_to_centre`).
        init_scale: The initial scale of :math:`S`.
        affine: ``"diagonal"``, ``"full"`` or ``"none"``.
        direction: ``"auto"``, ``"forward"`` or ``"inverse"`` (see :func:`guide_direction`).
        num_mc_samples: The number of draws behind :meth:`median` and :meth:`quantiles`.
        warm_start: If positive, on its first call the guide fits Pyro's
            :class:`~pyro.infer.autoguide.AutoLaplaceApproximation` to the model with this many
            Adam steps (a MAP fit, then the Gaussian of the Hessian there) and starts
            :math:`(m, S)` at it (:meth:`init_from`): the cure for tight posteriors far from the
            initial point. Needs an affine map (``"full"`` keeps the correlations).
            If the Hessian at the MAP is not positive definite, directions without curvature
            start at ``init_scale`` (or, failing that, a diagonal from the Hessian's diagonal),
            with a :class:`LaplaceFallbackWarning`.
        warm_start_lr: The learning rate of that MAP fit.
        flow_kwargs: Passed to :func:`~pyro_flows.flows.build` (e.g. ``permutation``,
            ``log_scale_bound``, ``count_bins``).

    Example:
        >>> import pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     sigma = pyro.sample("sigma", dist.HalfNormal(5.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, sigma), obs=y)
        >>> y = torch.randn(20) + 3.0
        >>> guide = AutoFlowGuide(model, "iaf", num_layers=2, hidden_dims=[8])
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}),
        ...                      pyro.infer.Trace_ELBO())
        >>> losses = [svi.step(y) for _ in range(5)]
        >>> draws = guide.sample_posterior(100, y)
        >>> draws["mu"].shape, bool((draws["sigma"] > 0).all())
        (torch.Size([100]), True)
        >>> sorted(guide.median(y))
        ['mu', 'sigma']

    References:
        | Variational Inference with Normalizing Flows (Rezende and Mohamed, 2015)
        | https://arxiv.org/abs/1505.05770
        | Automatic Differentiation Variational Inference (Kucukelbir et al., 2017)
        | https://arxiv.org/abs/1603.00788
    """

    scale_tril_constraint = constraints.unit_lower_cholesky

    def __init__(
        self,
        model: Callable[..., Any],
        flow: str | Callable[[int], nn.Module] = "iaf",
        num_layers: int = 3,
        hidden_dims: Sequence[int] | None = None,
        *,
        init_loc_fn: Callable[[dict], Tensor] = init_to_centre,
        init_scale: float = 1.0,
        affine: str = "diagonal",
        direction: str = "auto",
        num_mc_samples: int = 10_000,
        warm_start: int = 0,
        warm_start_lr: float = 2e-2,
        **flow_kwargs: Any,
    ) -> None:
        check_positive_int(num_layers, "num_layers")
        check_positive_int(num_mc_samples, "num_mc_samples")
        check_choice(affine, _AFFINES, "affine")
        if not (isinstance(init_scale, int | float) and math.isfinite(init_scale)):
            raise TypeError(f"init_scale must be a positive number, got {init_scale!r}")
        if init_scale <= 0:
            raise ValueError(f"init_scale must be a positive number, got {init_scale!r}")
        if isinstance(flow, str):
            self._family_name, family = lookup_family(flow)
            self._direction = guide_direction(family, direction)
        elif callable(flow):
            check_choice(direction, _DIRECTIONS, "direction")
            self._family_name = None
            self._direction = "inverse" if direction == "inverse" else "forward"
        else:
            raise TypeError(f"flow must be a family name or a factory, got {type(flow).__name__}")
        self._flow_spec = flow
        self._num_layers = num_layers
        self._hidden_dims = hidden_dims
        self._flow_kwargs = flow_kwargs
        self._init_scale = float(init_scale)
        self._affine = affine
        self.num_mc_samples = num_mc_samples
        if warm_start:
            check_positive_int(warm_start, "warm_start")
            if affine == "none":
                raise ValueError("warm_start needs an affine map: use affine='diagonal' or 'full'")
        if not (isinstance(warm_start_lr, int | float) and warm_start_lr > 0):
            raise ValueError(f"warm_start_lr must be a positive number, got {warm_start_lr!r}")
        self._warm_start = warm_start
        self._init_loc_fn = init_loc_fn
        self._warm_start_lr = float(warm_start_lr)
        super().__init__(model, init_loc_fn=init_loc_fn)

    @property
    def direction(self) -> str:
        """``"forward"`` or ``"inverse"``: how the flow is used (see :func:`guide_direction`)."""
        return self._direction

    def _build_flow(self, latent_dim: int) -> nn.Module:
        if self._family_name is None:
            return self._flow_spec(latent_dim)
        _, family = lookup_family(self._family_name)
        if latent_dim < family.min_dim:
            raise ValueError(
                f"flow {self._family_name!r} needs at least {family.min_dim} latent dimensions, "
                f"but this model has {latent_dim}; use a family with min_dim 1 (e.g. 'spline', "
                "'planar', 'radial')"
            )
        hidden_dims = self._hidden_dims
        if hidden_dims is None and family.ordered:
            # MADE families: one layer of 3D + 1 (Pyro's AutoIAFNormal: 3D + 10), not the
            # density estimators' default; a guide's step cost stays that of Pyro's IAF
            hidden_dims = [3 * latent_dim + 1]
        return build(
            self._family_name,
            latent_dim,
            self._num_layers,
            hidden_dims=hidden_dims,
            **self._flow_kwargs,
        )

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        loc = self._init_loc()
        self.flow = self._build_flow(self.latent_dim).to(dtype=loc.dtype, device=loc.device)
        if self._affine != "none":
            # loc and the softplus-inverse of the scale in one parameter: one optimizer entry
            raw_scale = torch.full_like(loc, math.log(math.expm1(self._init_scale)))
            self.affine_params = nn.Parameter(torch.stack([loc, raw_scale]))
        if self._affine == "full":
            eye = torch.eye(self.latent_dim, dtype=loc.dtype, device=loc.device)
            self.scale_tril = PyroParam(eye, constraint=self.scale_tril_constraint)
        self.register_buffer("_zero", loc.new_zeros(()))  # follows .to(device/dtype)
        if self._warm_start:
            self._fit_laplace_start(args, kwargs)

    def _fit_laplace_start(self, args: tuple, kwargs: dict) -> None:
        # The first guide call usually happens inside an ELBO's trace: block it, so the MAP
        # fit's sample and param sites never reach the outer handlers.
        with poutine.block(), torch.enable_grad():
            laplace = AutoLaplaceApproximation(self.model, init_loc_fn=self._init_loc_fn)
            laplace._pyro_name = f"{self._pyro_name}.warm_start"  # never a user's parameters
            fit_svi(
                self.model,
                laplace,
                *args,
                num_steps=self._warm_start,
                lr=self._warm_start_lr,
                **kwargs,
            )
            # As AutoLaplaceApproximation.laplace_approximation: the Hessian of -log p at the
            # MAP, but a Hessian that is not positive definite falls back instead of failing.
            guide_trace = poutine.trace(laplace).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
            loss = guide_trace.log_prob_sum() - model_trace.log_prob_sum()
            precision = hessian(loss, laplace.loc)
            loc, scale_tril = _laplace_gaussian(laplace.loc, precision, self._init_scale)
            with torch.no_grad():
                self._set_affine(loc, scale_tril)
        store = pyro.get_param_store()
        for name in [n for n in store.keys() if n.startswith(laplace._pyro_name + ".")]:
            del store[name]

    def get_base_dist(self) -> dist.Distribution:
        """The standard normal :math:`N(0, I_D)` of the noise :math:`z`."""
        return dist.Normal(self._zero, 1.0).expand([self.latent_dim]).to_event(1)

    def _transforms(self) -> list[torch.distributions.Transform]:
        # Every part caches its last pass: TransformedDistribution.log_prob inverts the parts
        # in reverse order, and an uncached affine would hand the flow a fresh tensor, making
        # it run its (possibly slow, possibly missing) inverse instead of reusing its pass.
        flow = self.flow
        parts = [flow.inv if self._direction == "inverse" else flow]
        if self._affine != "none":
            loc, scale = self._loc_and_scale()
            if self._affine == "diagonal":
                parts.append(AffineTransform(loc, scale, event_dim=1, cache_size=1))
            else:
                scale_tril = scale[..., None] * self.scale_tril
                parts.append(LowerCholeskyAffine(loc, scale_tril, cache_size=1))
        return parts

    def _loc_and_scale(self) -> tuple[Tensor, Tensor]:
        loc, raw_scale = self.affine_params
        return loc, nn.functional.softplus(raw_scale)

    @torch.no_grad()
    def init_from(
        self, gaussian_guide: AutoContinuous, *args: Any, **kwargs: Any
    ) -> AutoFlowGuide:
        r"""Starts the affine map :math:`(m, S)` at a fitted Gaussian guide's posterior.

        A warm start for posteriors that are tight or far from the initial point, where a flow
        guide started from ``init_scale`` is slow or unstable (see the warning above): fit a
        cheap Gaussian guide first, then let the flow refine it. The flow itself keeps its
        initialisation and acts on the standardised noise, so it starts as a perturbation of
        that Gaussian. With ``affine="diagonal"`` only the Gaussian's standard deviations are
        used (its correlations need ``affine="full"``).

        Arguments:
            gaussian_guide: A fitted :class:`~pyro.infer.autoguide.AutoDiagonalNormal`,
                :class:`~pyro.infer.autoguide.AutoMultivariateNormal` or
                :class:`~pyro.infer.autoguide.AutoLaplaceApproximation` (any
                ``AutoContinuous`` guide whose ``get_posterior`` is Gaussian) of the same model.
            args: The model's arguments.
            kwargs: The model's keyword arguments.

        Returns:
            This guide.

        Example:
            >>> import pyro.distributions as dist
            >>> from pyro.infer.autoguide import AutoMultivariateNormal
            >>> def model():
            ...     pyro.sample("x", dist.Normal(torch.tensor([3.0, -1.0]), 0.01).to_event(1))
            >>> gaussian = AutoMultivariateNormal(model)
            >>> _ = gaussian()  # (fit it with SVI first)
            >>> guide = AutoFlowGuide(model, "iaf", affine="full").init_from(gaussian)
            >>> torch.allclose(guide.loc, gaussian.loc)
            True
        """
        if self._affine == "none":
            raise ValueError("init_from needs an affine map: use affine='diagonal' or 'full'")
        if not isinstance(gaussian_guide, AutoContinuous):
            raise TypeError(
                "gaussian_guide must be a Pyro AutoContinuous guide (AutoDiagonalNormal, "
                f"AutoMultivariateNormal, AutoLaplaceApproximation), got {type(gaussian_guide)}"
            )
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        if gaussian_guide.prototype_trace is None:
            gaussian_guide._setup_prototype(*args, **kwargs)
        posterior = gaussian_guide.get_posterior(*args, **kwargs)
        if isinstance(posterior, dist.MultivariateNormal):
            loc, scale_tril = posterior.loc, posterior.scale_tril
        elif isinstance(posterior, dist.Independent) and isinstance(
            posterior.base_dist, dist.Normal
        ):
            loc, scale_tril = posterior.mean, torch.diag_embed(posterior.stddev)
        else:
            raise TypeError(
                "gaussian_guide.get_posterior() must be a Normal or MultivariateNormal, got "
                f"{type(posterior).__name__}"
            )
        sites = [name for name, _ in self.prototype_trace.iter_stochastic_nodes()]
        theirs = [name for name, _ in gaussian_guide.prototype_trace.iter_stochastic_nodes()]
        if sites != theirs or loc.shape != (self.latent_dim,):
            raise ValueError(
                f"gaussian_guide is over the sites {theirs} ({loc.shape[-1]} values), but this "
                f"guide is over {sites} ({self.latent_dim} values): fit it on the same model"
            )
        self._set_affine(loc, scale_tril)
        return self

    def _set_affine(self, loc: Tensor, scale_tril: Tensor) -> None:
        loc = loc.detach().to(self._zero)
        scale_tril = scale_tril.detach().to(self._zero)
        scale = scale_tril.diagonal()
        raw_scale = scale + torch.log(-torch.expm1(-scale))  # the inverse of softplus
        self.affine_params.copy_(torch.stack([loc, raw_scale]))
        if self._affine == "full":
            self.scale_tril = scale_tril / scale[:, None]  # unit diagonal; S = diag(scale) L

    @property
    def loc(self) -> Tensor:
        """The shift :math:`m` of the affine map (None with ``affine="none"``)."""
        return None if self._affine == "none" else self._loc_and_scale()[0]

    @property
    def scale(self) -> Tensor:
        """The diagonal scale of :math:`S` (None with ``affine="none"``)."""
        return None if self._affine == "none" else self._loc_and_scale()[1]

    def get_transform(self, *args: Any, **kwargs: Any) -> ComposeTransform:
        r"""The map :math:`z \mapsto u` from noise to the unconstrained latent vector."""
        return ComposeTransform(self._transforms())

    def get_posterior(self, *args: Any, **kwargs: Any) -> dist.TransformedDistribution:
        """The guide's distribution of the unconstrained latent vector :math:`u`."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return dist.TransformedDistribution(self.get_base_dist(), self._transforms())

    # -- Monte Carlo summaries ---------------------------------------------------------------
    def _unconstrained_draws(self, num_samples: int, args: tuple, kwargs: dict) -> dict:
        posterior = self.get_posterior(*args, **kwargs)
        latent = posterior.sample((num_samples,))
        draws = {}
        pos = 0
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            shape = self._unconstrained_shapes[name]
            size = math.prod(shape)
            u = latent[:, pos : pos + size].reshape(num_samples, *shape)
            draws[name] = (u, biject_to(site["fn"].support))
            pos += size
        return draws

    @torch.no_grad()
    def sample_posterior(self, num_samples: int, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Draws ``num_samples`` values of every latent site, in the constrained space.

        Arguments:
            num_samples: The number of draws.
            args: The model's arguments (only needed before the first guide call).
            kwargs: The model's keyword arguments.

        Returns:
            A dict from site name to a tensor of shape ``(num_samples, *site_shape)``.
        """
        check_positive_int(num_samples, "num_samples")
        draws = self._unconstrained_draws(num_samples, args, kwargs)
        return {name: bijection(u) for name, (u, bijection) in draws.items()}

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """The posterior median of every latent coordinate, by Monte Carlo (see :meth:`quantiles`).

        Returns:
            A dict from site name to a tensor of the site's shape.
        """
        return {k: v[0] for k, v in self.quantiles([0.5], *args, **kwargs).items()}

    @torch.no_grad()
    def quantiles(
        self, quantiles: Sequence[float] | Tensor, *args: Any, **kwargs: Any
    ) -> dict[str, Tensor]:
        r"""Posterior quantiles of every latent site, by Monte Carlo.

        As Pyro's :meth:`~pyro.infer.autoguide.AutoContinuous.quantiles`, quantiles are taken
        per coordinate in the unconstrained space and mapped to the support with
        :func:`~torch.distributions.biject_to`. For sites whose bijection acts element-wise
        (real, positive, interval, ...) these are the marginal quantiles of the site; for
        others (simplex, correlation matrices) they are points of the support, not marginal
        quantiles.

        Each is the sample quantile of ``num_mc_samples`` (:math:`n`) guide draws, so it is the
        exact quantile of a level :math:`\tilde p` with :math:`|\tilde p - p| \le
        2\sqrt{p(1-p)/n}` with probability about 0.95 (for the default :math:`n = 10^4`,
        :math:`\pm 0.01` at the median): a standard error of about
        :math:`\sqrt{p(1-p)/n}\,/\,q(\theta_p)` in the units of the site, where
        :math:`q(\theta_p)` is the marginal density at the quantile. :meth:`quantile_errors`
        estimates it from the draws.

        Arguments:
            quantiles: Levels in :math:`(0, 1)`.
            args: The model's arguments (only needed before the first guide call).
            kwargs: The model's keyword arguments.

        Returns:
            A dict from site name to a tensor of shape ``(len(quantiles), *site_shape)``.
        """
        return self._mc_quantiles(quantiles, args, kwargs)[0]

    @torch.no_grad()
    def quantile_errors(
        self, quantiles: Sequence[float] | Tensor, *args: Any, **kwargs: Any
    ) -> dict[str, Tensor]:
        r"""Standard errors of :meth:`quantiles`, estimated from order statistics.

        For level :math:`p` and :math:`n` draws, the order statistics of ranks
        :math:`np \pm 1.96\sqrt{np(1-p)}` bracket the true quantile with probability about
        0.95; the distance between their images in the support, divided by :math:`2 \times
        1.96`, is the standard error reported.

        Returns:
            A dict from site name to a tensor of shape ``(len(quantiles), *site_shape)``.
        """
        return self._mc_quantiles(quantiles, args, kwargs)[1]

    def _mc_quantiles(
        self, quantiles: Sequence[float] | Tensor, args: tuple, kwargs: dict
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        n = self.num_mc_samples
        q = torch.as_tensor(quantiles, dtype=torch.float64).reshape(-1)
        if q.numel() == 0 or not bool(((q > 0) & (q < 1)).all()):
            raise ValueError(f"quantiles must be levels in (0, 1), got {quantiles!r}")
        half = 1.96 * torch.sqrt(n * q * (1 - q))
        lo = (n * q - half).floor().clamp(0, n - 1).long()
        hi = (n * q + half).ceil().clamp(0, n - 1).long()
        values, errors = {}, {}
        for name, (u, bijection) in self._unconstrained_draws(n, args, kwargs).items():
            shape = u.shape[1:]
            flat = u.reshape(n, -1)
            qs = torch.quantile(flat.double(), q, dim=0).to(flat.dtype).reshape(-1, *shape)
            ordered = flat.sort(0).values
            low = bijection(ordered[lo].reshape(-1, *shape))
            high = bijection(ordered[hi].reshape(-1, *shape))
            values[name] = bijection(qs)
            errors[name] = (high - low).abs() / (2 * 1.96)
        return values, errors


def _laplace_gaussian(
    loc: Tensor, precision: Tensor, fallback_scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    r"""The Gaussian :math:`N(m, H^{-1})` of a Laplace approximation, robust to a non-PD :math:`H`.

    :math:`H` is the Hessian of :math:`-\log p` at the MAP :math:`m`. At a true, well-identified
    mode it is positive definite and the result is :math:`(m, \operatorname{chol}(H^{-1}))`.
    When it is not (a MAP fit stopped at a saddle or on a ridge, a latent the data do not
    inform under a flat prior, round-off), a :class:`LaplaceFallbackWarning` names the fallback:

    * ``"eigenvalue"``: :math:`H` is symmetrised and its eigenvalues that are not clearly
      positive (:math:`\lambda_i \le 10^{-6} \max_j |\lambda_j|`) are replaced by
      :math:`1 / \text{fallback\_scale}^2`: those directions start at the scale a cold start
      would have, the others keep their curvature and correlations.
    * ``"diagonal"``: when :math:`H` has non-finite entries or its eigendecomposition fails,
      standard deviations :math:`H_{ii}^{-1/2}` where :math:`H_{ii} > 0` is finite, else
      ``fallback_scale``, without correlations.

    Arguments:
        loc: The MAP :math:`m`, shape ``(D,)``.
        precision: The Hessian :math:`H`, shape ``(D, D)``.
        fallback_scale: The standard deviation given to directions without curvature.

    Returns:
        ``(loc, scale_tril)``, detached, in the dtype of ``loc``.

    Raises:
        FloatingPointError: If ``loc`` is not finite (the MAP fit diverged).

    Example:
        >>> import warnings
        >>> H = torch.tensor([[4.0, 0.0], [0.0, -1.0]])  # a saddle
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _, scale_tril = _laplace_gaussian(torch.zeros(2), H, fallback_scale=0.3)
        >>> scale_tril.diagonal(), caught[0].category.__name__
        (tensor([0.5000, 0.3000]), 'LaplaceFallbackWarning')
    """
    loc = loc.detach()
    if not bool(torch.isfinite(loc).all()):
        raise FloatingPointError(
            "the MAP fit of the Laplace warm start ended at non-finite values; lower "
            "warm_start_lr or give init_loc_fn a better starting point"
        )
    h = precision.detach().double()
    h = 0.5 * (h + h.T)
    dim = h.shape[-1]
    if bool(torch.isfinite(h).all()):
        chol, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            cov = torch.cholesky_inverse(chol)
            scale_tril, info = torch.linalg.cholesky_ex(0.5 * (cov + cov.T))
            if int(info) == 0:
                return loc, scale_tril.to(loc.dtype)
        try:
            eigvals, eigvecs = torch.linalg.eigh(h)
        except RuntimeError:  # torch.linalg.LinAlgError: no convergence
            eigvals = None
        if eigvals is not None:
            tol = 1e-6 * float(eigvals.abs().max().clamp(min=1e-30))
            flat = eigvals <= tol
            fixed = torch.where(flat, eigvals.new_tensor(fallback_scale**-2), eigvals)
            cov = (eigvecs / fixed) @ eigvecs.T
            scale_tril, info = torch.linalg.cholesky_ex(0.5 * (cov + cov.T))
            if int(info) == 0:
                warnings.warn(
                    f"the Hessian of the Laplace warm start is not positive definite "
                    f"({int(flat.sum())} of {dim} eigenvalues <= {tol:.3g}, the smallest "
                    f"{float(eigvals.min()):.3g}): eigenvalue fallback, those directions start "
                    f"at scale {fallback_scale:g} (init_scale), the others at the Laplace "
                    "approximation",
                    LaplaceFallbackWarning,
                    stacklevel=3,
                )
                return loc, scale_tril.to(loc.dtype)
    diag = h.diagonal()
    good = torch.isfinite(diag) & (diag > 0)
    sd = torch.where(good, diag.clamp(min=1e-300).rsqrt(), diag.new_tensor(fallback_scale))
    warnings.warn(
        f"the Hessian of the Laplace warm start is not usable ({int((~good).sum())} of {dim} "
        "diagonal entries non-positive or non-finite): diagonal fallback, standard deviations "
        f"from its diagonal where positive, else {fallback_scale:g} (init_scale), no correlations",
        LaplaceFallbackWarning,
        stacklevel=3,
    )
    return loc, torch.diag(sd).to(loc.dtype)
