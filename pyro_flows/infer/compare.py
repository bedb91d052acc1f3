"""Fit several guides to one model with SVI and compare them: ELBO, PSIS k-hat, wall time."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO
from pyro.infer.util import zero_grads
from pyro.optim import ClippedAdam
from tqdm import tqdm

from .._validation import check_positive_int
from ..checkpoint import Checkpointer, set_rng_state
from ..distributed import DistributedContext, resolve_device, setup
from .diagnostics import ImportanceSamples, importance_sample, pareto_k_reading

__all__ = [
    "GuideReport",
    "SkippedStepsWarning",
    "compare_guides",
    "fit_svi",
    "format_table",
    "pair_plot",
]

GuideFactory = Callable[[Callable[..., Any]], Callable[..., Any]]


class SkippedStepsWarning(UserWarning):
    """:func:`fit_svi` skipped steps whose loss or gradient was NaN or infinite."""


#: Pyro's own warnings about a NaN or infinite loss, replaced by one SkippedStepsWarning.
_PYRO_NAN_WARNING = r"Encountered (NaN|[+-]inf)"


def fit_svi(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_steps: int = 1000,
    lr: float = 1e-2,
    lr_decay: float = 0.1,
    num_particles: int = 1,
    vectorize_particles: bool = True,
    clip_norm: float = 10.0,
    progress: bool = False,
    step_times: list[float] | None = None,
    elbo: ELBO | None = None,
    max_bad_steps: int = 20,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    checkpoint_minutes: float | None = None,
    resume: str | os.PathLike | bool | None = None,
    **kwargs: Any,
) -> list[float]:
    r"""Fits ``guide`` to ``model`` with SVI and clipped Adam, skipping non-finite steps.

    The learning rate decays geometrically from ``lr`` to ``lr * lr_decay`` over the steps.
    Each step is Pyro's :meth:`~pyro.infer.SVI.step` (``elbo.loss_and_grads`` on the
    parameters it touches, then the optimizer) with a check in between: if the loss or any
    gradient is NaN or infinite (or the model or guide built a distribution from NaN
    parameters), the update is not applied and every learning rate is halved. Parameters thus
    stay finite. One :class:`SkippedStepsWarning` at the end counts the skipped steps; after
    ``max_bad_steps`` bad steps in a row, or if no step was finite, a
    :class:`FloatingPointError` names the parameters whose gradients were not finite (or says
    the loss was not) and suggests fixes.

    With ``device``, the tensors among ``args`` and ``kwargs`` are moved there and the steps
    run with it as torch's default device, so that the parameters the guide creates and the
    model's constants land there too (by default nothing moves). ``checkpoint``/``resume``
    work as in :func:`~pyro_flows.training.fit`: the parameter store, the optimiser's
    per-parameter states and learning rates, the losses, the skipped steps and the random
    states are saved, and a resumed run takes the steps the uninterrupted one would have.
    Under ``torchrun`` each rank runs the model and guide on its own draws (a subsampled
    ``pyro.plate`` draws its own rows, keeping its scale :math:`N / B`), the gradients are
    averaged over the ranks (an ELBO estimate from :math:`W` times the draws), the
    parameters start from rank 0's, and rank 0 alone writes the checkpoint.

    Arguments:
        model: A Pyro model.
        guide: A guide for it (its parameters are created at the first step).
        args: The arguments of the model and the guide.
        num_steps: The number of SVI steps (skipped steps included).
        lr: The initial learning rate.
        lr_decay: The factor of the learning rate at the last step.
        num_particles: The number of draws per ELBO estimate (of the default ``elbo``).
        vectorize_particles: Whether to draw the particles in one vectorised pass (idem).
        clip_norm: Gradient clipping of :class:`~pyro.optim.ClippedAdam`.
        progress: Whether to show a progress bar.
        step_times: If a list, the wall time of every step (seconds) is appended to it.
        elbo: The objective, any :class:`~pyro.infer.ELBO`; by default
            :class:`~pyro.infer.Trace_ELBO` with ``num_particles`` and
            ``vectorize_particles`` (which are then ignored).
        max_bad_steps: The number of consecutive non-finite steps that stops the fit.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a device to run on, or
            None to leave the tensors where they are.
        checkpoint: The checkpoint file to write, or None.
        checkpoint_every: The number of steps between checkpoints.
        checkpoint_minutes: Also write a checkpoint when this many minutes have passed since
            the last one (a wall-clock budget for a pre-emptible job), or None.
        resume: A checkpoint file to continue from, or True for ``checkpoint`` when it
            exists.
        kwargs: The keyword arguments of the model and the guide.

    Returns:
        The loss (the negative ELBO estimate) at every step; NaN or infinite at skipped steps.

    Raises:
        FloatingPointError: After ``max_bad_steps`` consecutive non-finite steps, or if every
            step was non-finite.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model():
        ...     pyro.sample("x", dist.Normal(3.0, 0.5))
        >>> pyro.clear_param_store()
        >>> losses = fit_svi(model, AutoNormal(model), num_steps=300, lr=0.05)
        >>> len(losses), round(pyro.param("AutoNormal.locs.x").item())
        (300, 3)
    """
    check_positive_int(num_steps, "num_steps")
    check_positive_int(num_particles, "num_particles")
    check_positive_int(max_bad_steps, "max_bad_steps")
    if not (0 < lr_decay <= 1):
        raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay!r}")
    if elbo is None:
        elbo = Trace_ELBO(
            num_particles=num_particles,
            vectorize_particles=vectorize_particles and num_particles > 1,
        )
    elif not isinstance(elbo, ELBO):
        raise TypeError(f"elbo must be a pyro.infer.ELBO, got {type(elbo).__name__}")
    optim = ClippedAdam({"lr": lr, "lrd": lr_decay ** (1 / num_steps), "clip_norm": clip_norm})
    losses: list[float] = []
    bad: list[int] = []  # the skipped steps (1-based)
    streak = 0
    dev = None if device is None else resolve_device(device)
    if dev is not None:
        args, kwargs = _to_device(args, dev), _to_device(kwargs, dev)
    dist_ctx = setup(dev)
    saver = Checkpointer.create(
        checkpoint, checkpoint_every, resume, dist_ctx.is_main, checkpoint_minutes
    )
    state = saver.load("fit_svi")
    start = 0
    if state is not None:
        Checkpointer.check_config(state, {"num_steps": num_steps}, saver.resume)
        # the guide sets itself up (an autoguide traces the model, drawing from the prior)
        # before the store and the random states are restored, as it did before step 1
        with contextlib.nullcontext() if dev is None else dev:
            poutine.block(poutine.trace(guide).get_trace)(*args, **kwargs)
        pyro.get_param_store().set_state(state["params"])
        optim.set_state(state["optim"])
        optim.pt_optim_args["lr"] = state["lr"]
        losses, bad, streak, start = state["losses"], state["bad"], state["streak"], state["step"]
        set_rng_state(state["rng"])
    bar = tqdm(
        range(start, num_steps),
        disable=not (progress and dist_ctx.is_main),
        desc="svi",
        dynamic_ncols=True,
    )
    with contextlib.nullcontext() if dev is None else dev:
        if dist_ctx.active and state is None:
            _share_initial_params(guide, args, kwargs, dist_ctx)
        for step in bar:
            t0 = time.perf_counter()
            loss, params, error = _loss_and_grads(elbo, model, guide, args, kwargs)
            if dist_ctx.active:
                loss, error = _average_over_ranks(loss, params, error, dist_ctx)
            finite = error is None and math.isfinite(loss) and _grads_finite(params)
            if finite:
                optim(params)
                streak = 0
            else:
                bad.append(step + 1)
                streak += 1
                _scale_lr(optim, 0.5)
            if not finite and (streak >= max_bad_steps or len(bad) == num_steps):
                raise FloatingPointError(_diagnose(bad, streak, loss, params, error)) from error
            zero_grads(params)
            if step_times is not None:
                step_times.append(time.perf_counter() - t0)
            losses.append(loss)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")
            if saver.due(step + 1, step + 1 == num_steps):
                saver.save(
                    "fit_svi",
                    {
                        "step": step + 1,
                        "config": {"num_steps": num_steps},
                        "params": pyro.get_param_store().get_state(),
                        "optim": optim.get_state(),
                        "lr": optim.pt_optim_args["lr"],
                        "losses": losses,
                        "bad": bad,
                        "streak": streak,
                    },
                )
    if bad:
        first = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        warnings.warn(
            f"fit_svi skipped {len(bad)} of {num_steps} steps with a non-finite loss or "
            f"gradient (steps {first}); the learning rate was halved at each, to "
            f"{0.5 ** len(bad):.3g} x its schedule",
            SkippedStepsWarning,
            stacklevel=2,
        )
    return losses


def _loss_and_grads(
    elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> tuple[float, set[torch.Tensor], ValueError | None]:
    """One ``elbo.loss_and_grads`` with the unconstrained parameters it touched, as SVI.step."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PYRO_NAN_WARNING, category=UserWarning)
        with poutine.trace(param_only=True) as capture:
            try:
                loss = elbo.loss_and_grads(model, guide, *args, **kwargs)
            except ValueError as err:
                # a distribution's argument check found NaN parameters: a non-finite step
                if "invalid values" not in str(err):
                    raise
                loss, error = math.nan, err
            else:
                error = None
    params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
    return float(loss), params, error


def _to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor in it (in tuples, lists and dicts) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple | list):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _share_initial_params(
    guide: Callable, args: tuple, kwargs: dict, dist_ctx: DistributedContext
) -> None:
    """Creates the guide's parameters (one guide pass) and gives every rank rank 0's values."""
    poutine.trace(guide).get_trace(*args, **kwargs)
    store = pyro.get_param_store()
    with torch.no_grad():
        for name in sorted(store.keys()):
            torch.distributed.broadcast(store[name].unconstrained(), src=0)


def _average_over_ranks(
    loss: float, params: set[torch.Tensor], error: Exception | None, dist_ctx: DistributedContext
) -> tuple[float, Exception | None]:
    """Averages the loss and the gradients over the ranks (NaN everywhere if any rank failed)."""
    store = pyro.get_param_store()
    bad = error is not None or not math.isfinite(loss)
    loss = dist_ctx.all_sum(torch.tensor([loss if not bad else math.nan], dtype=torch.float64))
    for p in sorted(params, key=store.param_name):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_(dist_ctx.all_sum(p.grad) / dist_ctx.world_size)
    return float(loss.item()) / dist_ctx.world_size, error


def _grads_finite(params: set[torch.Tensor]) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    # one fused max-|g| per tensor (NaN or inf where any entry is), a third of the cost of an
    # isfinite().all() per tensor; the max cannot overflow as a sum of squares could
    return bool(torch.stack(torch._foreach_norm(grads, math.inf)).isfinite().all())


def _scale_lr(optim: ClippedAdam, factor: float) -> None:
    """Scales the learning rate of every parameter's optimizer, and of those still to come."""
    optim.pt_optim_args["lr"] *= factor
    for optimizer in optim.optim_objs.values():
        for group in optimizer.param_groups:
            group["lr"] *= factor


def _diagnose(
    bad: list[int], streak: int, loss: float, params: set[torch.Tensor], error: Exception | None
) -> str:
    store = pyro.get_param_store()

    def named(tensors: list[torch.Tensor]) -> str:
        # PyroModule stores a plain nn.Module's parameters as "Guide.child$$$sub.weight"
        names = sorted(store.param_name(p).replace("$$$", ".") for p in tensors)
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        return ", ".join(names[:5]) + more

    bad_grads = [p for p in params if p.grad is not None and not bool(p.grad.isfinite().all())]
    # fit_svi never writes a non-finite value, but a parameter may arrive so
    bad_values = [p for p in params if not bool(p.detach().isfinite().all())]
    first = bad[-streak]
    head = f"SVI had {streak} non-finite steps in a row, from step {first} to step {bad[-1]}: "
    if error is not None:
        lines = str(error).splitlines()
        line = next((x for x in lines if "invalid values" in x), lines[0] if lines else "")
        what = f"a distribution got invalid (NaN) values ({line.strip()[:200]})"
    elif not math.isfinite(loss):
        what = f"the loss was {loss}"
    else:
        what = "the loss was finite but not every gradient"
    if bad_values:
        what += f"; non-finite values of {named(bad_values)}"
    if bad_grads:
        what += f"; non-finite gradients of {named(bad_grads)}"
    return (
        f"{head}{what}. Lower lr, start from a fitted Gaussian (AutoFlowGuide(..., warm_start="
        "1000) or init_from), or use a smaller init_scale; check the model for values that "
        "overflow (exp of large numbers, scales that reach zero)"
    )


@dataclass
class GuideReport:
    r"""How one guide did.

    Arguments:
        name: The guide's label.
        elbo: The ELBO estimated from ``num_samples`` fresh draws.
        elbo_se: Its Monte Carlo standard error.
        iw_elbo: The importance-weighted ELBO of the same draws.
        pareto_k: PSIS :math:`\hat k` of the same draws.
        ess: The effective sample size of the importance weights.
        seconds: The wall time of the SVI fit.
        ms_per_step: The median wall time of an SVI step, in milliseconds (robust to the
            first step's set-up and to load spikes).
        losses: The SVI losses.
        draws: The :class:`~pyro_flows.infer.ImportanceSamples` behind the numbers.
        guide: The fitted guide.
    """

    name: str
    elbo: float
    elbo_se: float
    iw_elbo: float
    pareto_k: float
    ess: float
    seconds: float
    ms_per_step: float
    losses: list[float] = field(repr=False)
    draws: ImportanceSamples = field(repr=False)
    guide: Any = field(repr=False)

    @classmethod
    def from_draws(
        cls,
        name: str,
        draws: ImportanceSamples,
        *,
        seconds: float,
        step_times: Sequence[float],
        losses: list[float],
        guide: Any,
        **extra: Any,
    ) -> GuideReport:
        """The report of a fitted guide, its numbers read off ``draws`` (``extra``: subclass fields)."""
        return cls(
            name=name,
            elbo=draws.elbo(),
            elbo_se=draws.elbo_se(),
            iw_elbo=draws.iw_elbo(),
            pareto_k=draws.pareto_k(),
            ess=draws.ess(),
            seconds=seconds,
            ms_per_step=1000 * statistics.median(step_times) if step_times else math.nan,
            losses=losses,
            draws=draws,
            guide=guide,
            **extra,
        )

    @property
    def reading(self) -> str:
        r"""The reading of :math:`\hat k` (see :func:`~pyro_flows.infer.pareto_k_reading`)."""
        return pareto_k_reading(self.pareto_k, self.draws.num_samples)


def compare_guides(
    model: Callable[..., Any],
    guides: Mapping[str, GuideFactory],
    *args: Any,
    num_steps: int = 1000,
    lr: float = 1e-2,
    num_particles: int = 1,
    num_samples: int = 10_000,
    seed: int = 0,
    progress: bool = False,
    max_plate_nesting: int | None = None,
    failures: dict[str, str] | None = None,
    **kwargs: Any,
) -> dict[str, GuideReport]:
    r"""Fits each guide with :func:`fit_svi` (same steps, seed and learning rate) and scores it.

    Arguments:
        model: A Pyro model.
        guides: Label to ``factory(model)`` returning a fresh guide (see :func:`~pyro_flows.infer.standard_guides`).
        args: The arguments of the model.
        num_steps: SVI steps per guide.
        lr: The initial learning rate.
        num_particles: Draws per ELBO estimate during the fit.
        num_samples: Fresh draws for the ELBO, importance-weighted ELBO and :math:`\hat k`.
        seed: The seed set before each fit.
        progress: Whether to show progress bars.
        max_plate_nesting: Passed to :func:`~pyro_flows.infer.importance_sample`.
        failures: If a dict, a guide whose fit diverges (a NaN or infinite loss, or invalid
            distribution parameters) is recorded there (label to message) and left out of the
            result; by default the error propagates.
        kwargs: The keyword arguments of the model.

    Returns:
        Label to :class:`GuideReport`, in the order of ``guides``.
    """
    reports = {}
    for name, factory in guides.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = factory(model)
        times: list[float] = []
        t0 = time.perf_counter()
        try:
            losses = fit_svi(
                model,
                guide,
                *args,
                num_steps=num_steps,
                lr=lr,
                num_particles=num_particles,
                progress=progress,
                step_times=times,
                **kwargs,
            )
        except (FloatingPointError, ValueError) as err:
            if failures is None:
                raise
            failures[name] = f"diverged: {str(err).splitlines()[0]}"
            continue
        seconds = time.perf_counter() - t0
        draws = importance_sample(
            model,
            guide,
            *args,
            num_samples=num_samples,
            max_plate_nesting=max_plate_nesting,
            **kwargs,
        )
        reports[name] = GuideReport.from_draws(
            name, draws, seconds=seconds, step_times=times, losses=losses, guide=guide
        )
    return reports


def format_table(
    reports: Mapping[str, GuideReport],
    log_z: float | None = None,
    extra: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    r"""A plain-text table of reports: ELBO (± s.e.), IW-ELBO, :math:`\hat k`, ESS, time.

    Arguments:
        reports: The result of :func:`compare_guides`.
        log_z: The true :math:`\log p(x)`, if known: a column ``gap`` (:math:`\log Z -`
            ELBO) is added.
        extra: Further columns: column name to (guide label to value).
    """
    extra = dict(extra or {})
    head = ["guide", "ELBO", "+-se", "IW-ELBO", "k-hat", "reading", "ESS", "s", "ms/step"]
    if log_z is not None:
        head.insert(3, "gap")
    head += list(extra)
    rows = []
    for name, r in reports.items():
        row = [name, f"{r.elbo:.3f}", f"{r.elbo_se:.3f}", f"{r.iw_elbo:.3f}"]
        if log_z is not None:
            row.insert(3, f"{log_z - r.elbo:.3f}")
        row += [f"{r.pareto_k:.2f}", r.reading, f"{r.ess:.0f}", f"{r.seconds:.1f}"]
        row += [f"{r.ms_per_step:.1f}"]
        row += [f"{extra[c].get(name, math.nan):.3f}" for c in extra]
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def pair_plot(
    reports: Mapping[str, GuideReport],
    var_names: Sequence[str],
    path: str | Path,
    coords: Mapping[str, Any] | None = None,
    reference: Mapping[str, Any] | None = None,
    num_points: int = 2000,
    title: str | None = None,
    limits: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> Path:
    """Draws an ArviZ pair plot of two coordinates for each guide, side by side, as a PNG.

    Arguments:
        reports: The result of :func:`compare_guides`.
        var_names: The variables to plot (``arviz.plot_pair``'s ``var_names``), selecting two
            scalar coordinates with ``coords``.
        path: The PNG file to write (its folder is created).
        coords: ArviZ coordinates selecting the coordinates, e.g. ``{"x_dim_0": [0]}``.
        reference: An optional ``(x, y)`` pair of 1-D arrays of reference draws (exact samples or
            MCMC), drawn in grey under each panel.
        num_points: Guide draws shown per panel.
        title: A figure title.
        limits: ``((xmin, xmax), (ymin, ymax))`` of every panel.

    Returns:
        The path written.
    """
    from matplotlib import MatplotlibDeprecationWarning
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    from .diagnostics import _arviz

    az = _arviz()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(reports)
    fig = Figure(figsize=(3.2 * n, 3.4))
    axes = fig.subplots(1, n, squeeze=False, sharex=True, sharey=True)
    for ax, (name, report) in zip(axes[0], reports.items(), strict=True):
        draws = report.draws
        sub = ImportanceSamples(
            samples={k: v[:num_points] for k, v in draws.samples.items()},
            log_weights=draws.log_weights[:num_points],
            log_joint=draws.log_joint[:num_points],
            log_guide=draws.log_guide[:num_points],
            dims=draws.dims,
        )
        if reference is not None:
            rx, ry = reference
            ax.scatter(rx[:num_points], ry[:num_points], s=2, c="0.75", alpha=0.5, zorder=0)
        idata = sub.to_inference_data()
        with warnings.catch_warnings():
            # ArviZ 0.x calls a matplotlib helper deprecated in matplotlib 3.11
            warnings.filterwarnings("ignore", category=MatplotlibDeprecationWarning)
            az.plot_pair(
                idata,
                var_names=list(var_names),
                coords=dict(coords or {}),
                kind="scatter",
                ax=ax,
                scatter_kwargs={"alpha": 0.4, "s": 2, "color": "C0", "zorder": 3},
            )
        ax.set_title(f"{name}\nk-hat {report.pareto_k:.2f}", fontsize=9)
        if limits is not None:
            ax.set_xlim(*limits[0])
            ax.set_ylim(*limits[1])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
