r"""Simulations :math:`(\theta, x)` from a Pyro model's prior predictive or from a torch simulator."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import Transform

from .._progress import progress_bar
from .._validation import check_positive_int

__all__ = [
    "ModelPrior",
    "ModelSimulator",
    "SiteLayout",
    "Simulations",
    "simulate",
    "simulate_model",
]

_PLATE = "_pyro_flows_simulations"


@dataclass(frozen=True)
class SiteLayout:
    r"""How named Pyro sites are packed into one flat vector per simulation.

    Site ``names[i]`` of shape ``shapes[i]`` occupies the columns
    ``offsets[i] : offsets[i] + prod(shapes[i])`` of the vector, in row-major order.

    Arguments:
        names: The site names, in packing order.
        shapes: The shape of each site's value in one simulation.

    Example:
        >>> layout = SiteLayout(("a", "b"), ((), (2, 2)))
        >>> layout.dim, layout.offsets
        (5, (0, 1))
        >>> {k: v.shape for k, v in layout.unpack(torch.zeros(7, 5)).items()}
        {'a': torch.Size([7]), 'b': torch.Size([7, 2, 2])}
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shapes) or not self.names:
            raise ValueError("a SiteLayout needs one shape per name, and at least one site")

    @property
    def sizes(self) -> tuple[int, ...]:
        """The number of scalars of each site."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """The first column of each site."""
        out, pos = [], 0
        for size in self.sizes:
            out.append(pos)
            pos += size
        return tuple(out)

    @property
    def dim(self) -> int:
        """The length of the packed vector."""
        return sum(self.sizes)

    def pack(self, values: dict[str, Tensor], batch: int) -> Tensor:
        """Packs ``{name: (batch, *shape)}`` into rows of shape ``(batch, dim)``."""
        parts = []
        for name, shape in zip(self.names, self.shapes, strict=True):
            v = values[name]
            if v.numel() != batch * math.prod(shape):
                raise ValueError(
                    f"site {name!r} has shape {tuple(v.shape)} for {batch} simulations; expected "
                    f"{batch} x {shape}. Vectorise the model over a batch dimension on the left "
                    "(plates for its own batch dimensions, .to_event for event dimensions), or "
                    "pass vectorize=False"
                )
            parts.append(v.reshape(batch, -1).to(torch.get_default_dtype()))
        return torch.cat(parts, dim=-1)

    def unpack(self, flat: Tensor) -> dict[str, Tensor]:
        """Splits rows ``(*batch, dim)`` into ``{name: (*batch, *shape)}``."""
        if flat.shape[-1] != self.dim:
            raise ValueError(
                f"expected rows of {self.dim} values (sites {list(self.names)}), "
                f"got shape {tuple(flat.shape)}"
            )
        batch = flat.shape[:-1]
        parts = flat.split(list(self.sizes), dim=-1)
        return {
            n: p.reshape(batch + torch.Size(s))
            for n, s, p in zip(self.names, self.shapes, parts, strict=True)
        }


@dataclass(frozen=True)
class Simulations:
    r"""Pairs :math:`(\theta_i, x_i)`, one row each, unpacked with ``theta, x = sims``.

    Arguments:
        theta: The parameters, shape ``(num_simulations, D)``, in the prior's support.
        x: The simulated data, shape ``(num_simulations, C)``.
        theta_layout: How ``theta`` packs the model's latent sites (None for a plain simulator).
        x_layout: How ``x`` packs the model's observed sites (None for a plain simulator).
    """

    theta: Tensor
    x: Tensor
    theta_layout: SiteLayout | None = None
    x_layout: SiteLayout | None = None

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.theta, self.x))

    def __len__(self) -> int:
        return self.theta.shape[0]


# -- Pyro models --------------------------------------------------------------------------------


def _sites(trace: poutine.Trace) -> dict[str, dict]:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("_deterministic", False)
    }


def _values(trace: poutine.Trace) -> dict[str, Tensor]:
    return {n: s["value"] for n, s in trace.nodes.items() if s["type"] == "sample"}


def _max_plate_nesting(trace: poutine.Trace) -> int:
    dims = [
        -frame.dim
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.dim is not None
    ]
    return max(dims, default=0)


def _model_sites(
    model: Callable[..., Any],
    latent_sites: Sequence[str] | None,
    observed_sites: Sequence[str] | None,
    args: tuple,
    kwargs: dict,
) -> tuple[SiteLayout, SiteLayout, dict[str, constraints.Constraint], int]:
    """Traces ``model`` once: the latent and observed layouts, supports, plate nesting."""
    if not callable(model):
        raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
    with torch.no_grad():
        trace = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
    sites = _sites(trace)
    observed = [n for n, s in sites.items() if s["infer"].get("was_observed", False)]
    latent = [n for n in sites if n not in observed]
    for what, given in (
        ("latent_sites", latent_sites),
        ("observed_sites", observed_sites),
    ):
        if given is None:
            continue
        if isinstance(given, str) or not isinstance(given, Sequence):
            raise TypeError(f"{what} must be a sequence of site names, got {given!r}")
        unknown = [n for n in given if n not in sites]
        if unknown:
            raise ValueError(
                f"{what}: the model has no sample site {unknown[0]!r}; its sites are "
                f"{sorted(sites)}"
            )
    latent = list(latent if latent_sites is None else latent_sites)
    observed = list(observed if observed_sites is None else observed_sites)
    if not latent:
        raise ValueError("the model has no latent sample site: pass latent_sites")
    if not observed:
        raise ValueError(
            "the model has no observed site (pyro.sample(..., obs=...)): pass observed_sites"
        )
    both = set(latent) & set(observed)
    if both:
        raise ValueError(f"sites {sorted(both)} are both latent and observed")
    for name in latent:
        fn = sites[name]["fn"]
        if fn.support.is_discrete:
            raise ValueError(f"latent site {name!r} is discrete ({fn.support}); NPE needs reals")
    theta_layout = SiteLayout(tuple(latent), tuple(tuple(sites[n]["value"].shape) for n in latent))
    x_layout = SiteLayout(tuple(observed), tuple(tuple(sites[n]["value"].shape) for n in observed))
    supports = {n: sites[n]["fn"].support for n in latent}
    return theta_layout, x_layout, supports, _max_plate_nesting(trace)


def _check_count(num: int, name: str) -> int:
    return check_positive_int(num, name)


class _SitesConstraint(constraints.Constraint):
    """The support of a packed vector of sites: each block in its site's support."""

    event_dim = 1

    def __init__(self, layout: SiteLayout, supports: dict[str, constraints.Constraint]) -> None:
        self.layout = layout
        self.supports = supports
        super().__init__()

    def check(self, value: Tensor) -> Tensor:  # noqa: D102
        out = torch.ones(value.shape[:-1], dtype=torch.bool, device=value.device)
        for name, v in self.layout.unpack(value).items():
            ok = self.supports[name].check(v)
            batch = value.dim() - 1
            out = out & ok.reshape(*value.shape[:-1], -1).all(-1) if ok.dim() > batch else out & ok
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}: {self.supports[n]}" for n in self.layout.names)
        return f"SitesConstraint({inner})"


class _SitesTransform(Transform):
    """``biject_to`` of a :class:`_SitesConstraint`: each block through its site's bijection."""

    bijective = True
    domain = constraints.real_vector

    def __init__(self, constraint: _SitesConstraint, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.constraint = constraint
        self.layout = constraint.layout
        self.parts = {}
        for name, shape in zip(self.layout.names, self.layout.shapes, strict=True):
            t = biject_to(constraint.supports[name])
            if tuple(t.forward_shape(torch.Size(shape))) != shape:
                raise ValueError(
                    f"latent site {name!r} has support {constraint.supports[name]}, whose "
                    "bijection changes the shape; reparametrise the site in real coordinates"
                )
            self.parts[name] = t

    @property
    def codomain(self) -> constraints.Constraint:  # noqa: D102
        return self.constraint

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def _map(self, flat: Tensor, inverse: bool) -> Tensor:
        out = []
        batch = flat.shape[:-1]
        for name, v in self.layout.unpack(flat).items():
            t = self.parts[name]
            out.append((t.inv(v) if inverse else t(v)).reshape(*batch, -1))
        return torch.cat(out, dim=-1)

    def _call(self, x: Tensor) -> Tensor:
        return self._map(x, False)

    def _inverse(self, y: Tensor) -> Tensor:
        return self._map(y, True)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        batch = x.shape[:-1]
        total = x.new_zeros(batch)
        xs, ys = self.layout.unpack(x), self.layout.unpack(y)
        for name in self.layout.names:
            ladj = self.parts[name].log_abs_det_jacobian(xs[name], ys[name])
            total = total + ladj.reshape(*batch, -1).sum(-1)
        return total


@biject_to.register(_SitesConstraint)
def _biject_sites(constraint: _SitesConstraint) -> _SitesTransform:
    return _SitesTransform(constraint)


class ModelPrior(TorchDistribution):
    r"""The prior of a Pyro model's latent sites, packed into one vector :math:`\theta`.

    ``sample`` runs the model forward (vectorised over draws with a ``pyro.plate``);
    ``log_prob`` conditions the model on the unpacked :math:`\theta` and sums the latent sites'
    log-densities, :math:`\log p(\theta) = \sum_j \log p(\theta_j \mid \theta_{<j})`, so
    hierarchical priors are scored exactly. The support is the product of the sites' supports,
    and ``biject_to(prior.support)`` maps :math:`\mathbb R^D` onto it block by block.

    Arguments:
        model: A Pyro model.
        latent_sites: The sites that make :math:`\theta` (default: every unobserved site).
        observed_sites: The sites that make :math:`x` (default: every observed site).
        model_args: Positional arguments of the model.
        model_kwargs: Keyword arguments of the model.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(0.0, s), obs=torch.tensor(0.3))
        >>> prior = ModelPrior(model)
        >>> theta = prior.sample((4,))
        >>> theta.shape, bool((theta > 0).all())
        (torch.Size([4, 1]), True)
        >>> torch.allclose(prior.log_prob(theta), dist.LogNormal(0.0, 1.0).log_prob(theta[:, 0]))
        True
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_rsample = False

    def __init__(
        self,
        model: Callable[..., Any],
        latent_sites: Sequence[str] | None = None,
        observed_sites: Sequence[str] | None = None,
        *,
        model_args: tuple = (),
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.model_args = tuple(model_args)
        self.model_kwargs = dict(model_kwargs or {})
        layouts = _model_sites(
            model, latent_sites, observed_sites, self.model_args, self.model_kwargs
        )
        self.theta_layout, self.x_layout, self.supports, self.max_plate_nesting = layouts
        self._support = _SitesConstraint(self.theta_layout, self.supports)
        super().__init__(torch.Size(), torch.Size([self.theta_layout.dim]), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:  # noqa: D102
        return self._support

    def _run(self, model: Callable[..., Any], n: int) -> poutine.Trace:
        with pyro.plate(_PLATE, n, dim=-(self.max_plate_nesting + 1)):
            return poutine.trace(model).get_trace(*self.model_args, **self.model_kwargs)

    def _plated_shapes(self) -> dict[str, torch.Size]:
        """Each site's shape per draw under the plate of draws (singleton dims included)."""
        shapes = self.__dict__.get("_shapes")
        if shapes is None:
            with torch.no_grad():
                trace = self._run(poutine.uncondition(self.model), 2)
            shapes = {
                n: s["value"].shape[1:] for n, s in trace.nodes.items() if s["type"] == "sample"
            }
            self.__dict__["_shapes"] = shapes
        return shapes

    def unpack(self, flat: Tensor, x: bool = False) -> dict[str, Tensor]:
        """Rows ``(n, D)`` (or ``(n, C)`` with ``x=True``) as site values for a plated run."""
        layout = self.x_layout if x else self.theta_layout
        shapes = self._plated_shapes()
        n = flat.shape[0]
        return {k: v.reshape(n, *shapes[k]) for k, v in layout.unpack(flat).items()}

    def _site_sums(self, trace: poutine.Trace, names: Sequence[str], n: int) -> Tensor:
        """The sum of the sites' log-densities per draw, shape ``(n,)``."""
        total = torch.zeros(n, dtype=torch.get_default_dtype())
        dim = self.max_plate_nesting + 1
        for name in names:
            site = trace.nodes[name]
            lp = site["fn"].log_prob(site["value"])
            lp = lp.reshape((1,) * max(dim - lp.dim(), 0) + lp.shape).movedim(-dim, 0)
            total = total + lp.reshape(lp.shape[0], -1).sum(-1).expand(n).to(total)
        return total

    def simulate(self, n: int) -> tuple[Tensor, Tensor]:
        """Draws ``n`` pairs ``(theta, x)`` from the prior predictive (one model run)."""
        with torch.no_grad():
            trace = self._run(poutine.uncondition(self.model), n)
        values = _values(trace)
        return self.theta_layout.pack(values, n), self.x_layout.pack(values, n)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        r"""Draws :math:`\theta` of shape ``sample_shape + (D,)``."""
        shape = torch.Size(sample_shape)
        n = max(math.prod(shape), 1)
        block = poutine.block(poutine.uncondition(self.model), hide=list(self.x_layout.names))
        with torch.no_grad():
            trace = self._run(block, n)
        values = _values(trace)
        return self.theta_layout.pack(values, n).reshape(*shape, -1)

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\log p(\theta)` of shape ``value.shape[:-1]``."""
        batch = value.shape[:-1]
        n = max(math.prod(batch), 1)
        sites = self.unpack(value.reshape(n, -1))
        model = poutine.block(
            poutine.condition(poutine.uncondition(self.model), data=sites),
            hide=list(self.x_layout.names),
        )
        trace = self._run(model, n)
        return self._site_sums(trace, self.theta_layout.names, n).to(value).reshape(batch)

    def log_joint(self, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""The prior :math:`\log p(\theta_i)` and likelihood :math:`\log p(x \mid \theta_i)`.

        Arguments:
            theta: Rows ``(n, D)``.
            x: The data, packed: one row ``(C,)`` for every :math:`\theta_i`, or ``(n, C)``.

        Returns:
            Two tensors of shape ``(n,)``.
        """
        n = theta.shape[0]
        if x.dim() == 1:
            x = x.expand(n, -1)
        data = {**self.unpack(theta), **self.unpack(x, x=True)}
        model = poutine.condition(poutine.uncondition(self.model), data=data)
        trace = self._run(model, n)
        prior = self._site_sums(trace, self.theta_layout.names, n).to(theta)
        lik = self._site_sums(trace, self.x_layout.names, n).to(theta)
        return prior, lik


class ModelSimulator:
    r"""The simulator :math:`\theta \mapsto x \sim p(x \mid \theta)` of a Pyro model.

    Calls the model with its latent sites fixed to the unpacked rows of ``theta`` (vectorised
    with a ``pyro.plate``) and returns its observed sites, sampled and packed.

    Arguments:
        prior: The model's :class:`ModelPrior` (it holds the model, its arguments and layouts).

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     m = pyro.sample("m", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(m, 1e-3), obs=torch.tensor(0.0))
        >>> sim = ModelSimulator(ModelPrior(model))
        >>> sim(torch.tensor([[5.0], [-5.0]])).round()
        tensor([[ 5.],
                [-5.]])
    """

    def __init__(self, prior: ModelPrior) -> None:
        if not isinstance(prior, ModelPrior):
            raise TypeError(f"prior must be a ModelPrior, got {type(prior).__name__}")
        self.prior = prior

    def __call__(self, theta: Tensor) -> Tensor:
        """Simulates one ``x`` per row of ``theta`` (shape ``(n, D)``); returns ``(n, C)``."""
        p = self.prior
        if theta.dim() != 2 or theta.shape[-1] != p.theta_layout.dim:
            raise ValueError(
                f"theta must have shape (n, {p.theta_layout.dim}), got {tuple(theta.shape)}"
            )
        n = theta.shape[0]
        sites = p.unpack(theta)
        model = poutine.condition(poutine.uncondition(p.model), data=sites)
        with torch.no_grad():
            trace = p._run(model, n)
        values = _values(trace)
        return p.x_layout.pack(values, n)


# -- the drivers --------------------------------------------------------------------------------


@dataclass
class _Batches:
    total: int
    batch_size: int
    sizes: list[int] = field(init=False)

    def __post_init__(self) -> None:
        full, rest = divmod(self.total, self.batch_size)
        self.sizes = [self.batch_size] * full + ([rest] if rest else [])


def _check_rows(t: Any, n: int, what: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"the {what} must return a torch.Tensor, got {type(t).__name__}")
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2 or t.shape[0] != n:
        raise ValueError(
            f"the {what} returned shape {tuple(t.shape)} for {n} parameters; expected ({n}, C)"
        )
    return t


def simulate(
    simulator: Callable[[Tensor], Tensor],
    prior: torch.distributions.Distribution,
    num_simulations: int,
    *,
    batch_size: int = 1000,
    progress: bool = True,
    seed: int | None = None,
) -> Simulations:
    r"""Draws :math:`\theta_i \sim p(\theta)` and :math:`x_i = f(\theta_i)` in batches.

    Arguments:
        simulator: A function from parameters ``(n, D)`` to data ``(n, C)`` (or ``(n,)``),
            vectorised over rows, e.g. a :class:`ModelSimulator`.
        prior: A distribution with event shape ``(D,)`` (a torch/Pyro distribution, a
            :class:`ModelPrior`, or a truncated proposal).
        num_simulations: The number :math:`N` of pairs.
        batch_size: The most rows per call of the simulator.
        progress: Show a tqdm bar.
        seed: Seeds torch's global generator first.

    Returns:
        A :class:`Simulations`; rows where the simulator gave NaN or infinite values are kept
        (:class:`~pyro_flows.sbi.NPE` refuses them with a message naming the count).

    Example:
        >>> import pyro.distributions as dist
        >>> prior = dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1)
        >>> theta, x = simulate(lambda t: t + 0.1 * torch.randn_like(t), prior, 10,
        ...                     progress=False)
        >>> theta.shape, x.shape
        (torch.Size([10, 2]), torch.Size([10, 2]))
    """
    if not callable(simulator):
        raise TypeError(f"simulator must be callable, got {type(simulator).__name__}")
    if not isinstance(prior, torch.distributions.Distribution):
        raise TypeError(f"prior must be a torch Distribution, got {type(prior).__name__}")
    if len(prior.event_shape) != 1 or prior.batch_shape != ():
        raise ValueError(
            "prior must have batch shape () and event shape (D,), got "
            f"{tuple(prior.batch_shape)} and {tuple(prior.event_shape)} (use .to_event(1))"
        )
    _check_count(num_simulations, "num_simulations")
    check_positive_int(batch_size, "batch_size")
    if seed is not None:
        torch.manual_seed(seed)
    thetas, xs = [], []
    with progress_bar(num_simulations, "simulate", progress) as bar:
        for n in _Batches(num_simulations, batch_size).sizes:
            with torch.no_grad():
                theta = prior.sample((n,))
                x = _check_rows(simulator(theta), n, "simulator")
            thetas.append(theta)
            xs.append(x)
            bar.update(n)
    layout = getattr(prior, "theta_layout", None)
    x_layout = getattr(getattr(simulator, "prior", None), "x_layout", None)
    return Simulations(torch.cat(thetas), torch.cat(xs), layout, x_layout)


def simulate_model(
    model: Callable[..., Any],
    num_simulations: int,
    *,
    latent_sites: Sequence[str] | None = None,
    observed_sites: Sequence[str] | None = None,
    model_args: tuple = (),
    model_kwargs: dict[str, Any] | None = None,
    batch_size: int = 1000,
    progress: bool = True,
    seed: int | None = None,
) -> Simulations:
    r"""Draws :math:`(\theta_i, x_i)` from a Pyro model's prior predictive, in batches.

    The model is run under a ``pyro.plate`` of ``batch_size`` simulations placed left of its
    own plates, with its observations uncondition (``obs=`` values are ignored and the
    observed sites sampled). The latent sites are packed into ``theta`` and the observed ones
    into ``x``, site by site in the given order (see :class:`SiteLayout`); :math:`\theta`
    lies in the prior's support by construction.

    Arguments:
        model: A Pyro model; its batch dimensions under plates, event dimensions declared
            (``.to_event``), as for Pyro's vectorised ELBOs.
        num_simulations: The number :math:`N` of pairs.
        latent_sites: The site names packed into :math:`\theta` (default: every unobserved
            sample site, in the order the model samples them).
        observed_sites: The site names packed into :math:`x` (default: every observed site).
        model_args: Positional arguments of the model.
        model_kwargs: Keyword arguments of the model.
        batch_size: The most simulations per model run.
        progress: Show a tqdm bar.
        seed: Seeds torch's global generator first.

    Returns:
        A :class:`Simulations` with the layouts of ``theta`` and ``x``.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...     with pyro.plate("data", 3):
        ...         pyro.sample("x", dist.Normal(loc, 0.1).to_event(1), obs=torch.zeros(3, 2))
        >>> sims = simulate_model(model, 100, batch_size=40, progress=False)
        >>> sims.theta.shape, sims.x.shape, sims.x_layout.shapes
        (torch.Size([100, 2]), torch.Size([100, 6]), ((3, 2),))
    """
    _check_count(num_simulations, "num_simulations")
    check_positive_int(batch_size, "batch_size")
    prior = ModelPrior(
        model, latent_sites, observed_sites, model_args=model_args, model_kwargs=model_kwargs
    )
    if seed is not None:
        torch.manual_seed(seed)
    thetas, xs = [], []
    with progress_bar(num_simulations, "simulate", progress) as bar:
        for n in _Batches(num_simulations, batch_size).sizes:
            theta, x = prior.simulate(n)
            thetas.append(theta)
            xs.append(x)
            bar.update(n)
    return Simulations(torch.cat(thetas), torch.cat(xs), prior.theta_layout, prior.x_layout)
