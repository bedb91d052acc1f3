r"""Training a vector field by conditional flow matching: minibatches, couplings, history."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._progress import progress_bar
from .._validation import (
    as_rows,
    check_choice,
    check_last_dim,
    check_positive_int,
)
from ..checkpoint import Checkpointer, set_rng_state
from ..distributed import resolve_device, setup, wrap_ddp
from .couplings import Coupling, get_coupling
from .guidance import drop_context, flag_context
from .losses import cfm_loss
from .paths import ProbabilityPath, get_path
from .prior import FlowMatchingPrior

__all__ = ["FlowMatchingHistory", "fit_flow_matching"]

Source = torch.distributions.Distribution | Callable[[int], Tensor]


@dataclass
class FlowMatchingHistory:
    """What :func:`fit_flow_matching` did.

    Arguments:
        train_loss: The minibatch CFM loss at every step.
        val_steps: The steps after which validation ran (``0`` is the untrained field).
        val_loss: The CFM loss on the validation rows at each of ``val_steps`` (fixed noise,
            times and pairing, so values are comparable across steps; NaN with a paired
            coupling, whose validation rows have no source partners).
        val_nll: The validation NLL (mean over rows, nats) at each of ``val_steps`` when
            ``val_nll=True``, else empty.
        seconds: The wall time of the training steps, without validation.
    """

    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def num_steps(self) -> int:
        """The number of optimisation steps taken."""
        return len(self.train_loss)


def _draw_source(source: Source, n: int, dim: int, like: Tensor) -> Tensor:
    x0 = source.sample((n,)) if isinstance(source, torch.distributions.Distribution) else source(n)
    if not isinstance(x0, Tensor) or x0.shape != (n, dim):
        shape = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"source must give draws of shape ({n}, {dim}), got {shape}")
    return x0.to(like)


def fit_flow_matching(
    field: nn.Module,
    data: Tensor | np.ndarray,
    *,
    source: Source | None = None,
    path: str | ProbabilityPath = "linear",
    coupling: str | Coupling = "independent",
    source_data: Tensor | np.ndarray | None = None,
    context: Tensor | np.ndarray | None = None,
    guidance: bool = False,
    context_dropout: float = 0.1,
    num_steps: int = 1000,
    batch_size: int = 256,
    lr: float = 1e-3,
    schedule: str = "cosine",
    val_data: Tensor | np.ndarray | None = None,
    val_context: Tensor | np.ndarray | None = None,
    val_nll: bool = False,
    nll_options: dict[str, Any] | None = None,
    eval_every: int = 100,
    progress: bool = True,
    seed: int | None = None,
    clip_grad_norm: float | None = None,
    callback: Callable[[int, FlowMatchingHistory], bool | None] | None = None,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    checkpoint_minutes: float | None = None,
    resume: str | os.PathLike | bool | None = None,
) -> FlowMatchingHistory:
    r"""Trains ``field`` by conditional flow matching with Adam.

    Each step draws a minibatch of data rows :math:`x_1` (reshuffled every epoch), source rows
    :math:`x_0` (from ``source``, or the rows of ``source_data`` at the same indices for a
    paired coupling), pairs them with the coupling, and takes a step on
    :func:`~pyro_flows.matching.cfm_loss` with times :math:`t \sim U(0, 1)`. No ODE is solved
    in training; only the optional validation NLL solves one per chunk of rows.

    The field trains on ``device`` (by default where its parameters are); the rows stay where
    they are and each minibatch moves alone. Under ``torchrun`` each rank takes an equal
    slice of every global minibatch (the world size must divide ``batch_size``; an ``"ot"``
    coupling then pairs within each slice) and DDP averages the gradients; rank 0 alone
    shows progress and writes the checkpoint. ``checkpoint``/``resume`` work as in
    :func:`~pyro_flows.training.fit`: the field, Adam's state, the step, the history, the
    minibatch order and every random generator, so a resumed run takes the steps the
    uninterrupted one would have.

    Arguments:
        field: The vector field, ``field(t, x)`` or ``field(t, x, context)`` with one time
            per row; e.g. a :class:`~pyro_flows.nn.VectorField`.
        data: The data rows :math:`x_1`, shape ``(n, D)``.
        source: The source :math:`p_0`: a distribution with event shape ``(D,)`` or a function
            ``n -> (n, D)`` tensor (default :math:`N(0, I)`). Only sampled here.
        path: A :class:`~pyro_flows.matching.ProbabilityPath` or ``"linear"``,
            ``"rectified"``, ``"vp"``.
        coupling: ``"independent"``, ``"ot"`` (minibatch optimal transport), ``"paired"``
            (needs ``source_data``) or a :class:`~pyro_flows.matching.Coupling`.
        source_data: The source rows paired with ``data`` row by row (paired coupling).
        context: The context of each data row, shape ``(n, C)``, for a conditional field.
        guidance: Train for classifier-free guidance: the field receives ``(context, flag)``
            (its ``context_dim`` is :math:`C + 1`) and the context is dropped with
            probability ``context_dropout``.
        context_dropout: The probability of dropping a row's context (with ``guidance``).
        num_steps: The number of optimisation steps.
        batch_size: The minibatch size (capped at the number of rows).
        lr: The peak learning rate of Adam.
        schedule: ``"cosine"`` (annealed to 0) or ``"constant"``.
        val_data: Validation rows, shape ``(m, D)``; evaluated every ``eval_every`` steps.
        val_context: Their context (required with ``context``).
        val_nll: Also compute the validation NLL with a :class:`FlowMatchingPrior` (the
            source must then have a ``log_prob``).
        nll_options: Keyword arguments of :class:`FlowMatchingPrior` for that NLL (default
            ``dopri5`` with ``rtol = atol = 1e-5``).
        eval_every: The number of steps between validations.
        progress: Show a tqdm progress bar with the losses.
        seed: Seeds torch's global generator (source draws, times) and the minibatch order.
        clip_grad_norm: The maximum gradient norm per step, if given.
        callback: Called as ``callback(step, history)`` after every step; returning True
            stops training (its time is not counted in ``history.seconds``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a device to train on;
            None for the device of the field's parameters.
        checkpoint: The checkpoint file to write, or None.
        checkpoint_every: The number of steps between checkpoints.
        checkpoint_minutes: Also write a checkpoint when this many minutes have passed since
            the last one (a wall-clock budget for a pre-emptible job), or None.
        resume: A checkpoint file to continue from, or True for ``checkpoint`` when it
            exists.

    Returns:
        A :class:`FlowMatchingHistory`.

    Example:
        >>> from pyro_flows.nn import VectorField
        >>> data = torch.randn(512, 2) * 0.5 + 2.0
        >>> field = VectorField(2, [32, 32])
        >>> history = fit_flow_matching(field, data, num_steps=200, progress=False, seed=0)
        >>> history.train_loss[-1] < history.train_loss[0]
        True
    """
    if not isinstance(field, nn.Module):
        raise TypeError(f"field must be a torch.nn.Module, got {type(field).__name__}")
    params = [p for p in field.parameters() if p.requires_grad]
    if not params:
        raise ValueError("field has no trainable parameters; nothing to fit")
    check_positive_int(num_steps, "num_steps")
    check_positive_int(batch_size, "batch_size")
    check_positive_int(eval_every, "eval_every")
    check_choice(schedule, ("constant", "cosine"), "schedule")
    device = resolve_device(device, params[0].device)
    if device != params[0].device:
        field.to(device)
        params = [p for p in field.parameters() if p.requires_grad]
    dtype = params[0].dtype
    dist_ctx = setup(device)
    saver = Checkpointer.create(
        checkpoint, checkpoint_every, resume, dist_ctx.is_main, checkpoint_minutes
    )
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not (isinstance(context_dropout, (int, float)) and 0 <= context_dropout < 1):
        raise ValueError(f"context_dropout must be in [0, 1), got {context_dropout!r}")
    path = get_path(path)
    coupling = get_coupling(coupling)

    x1_all = as_rows(data, "data").to(dtype=dtype)
    n, dim = x1_all.shape
    if n == 0:
        raise ValueError(f"data is empty (shape {tuple(x1_all.shape)}): nothing to fit")
    field_dim = getattr(field, "input_dim", None)
    if isinstance(field_dim, int) and field_dim != dim:
        raise ValueError(
            f"data has {dim} columns, but the field's input_dim is {field_dim}: they must match"
        )
    if coupling.paired != (source_data is not None):
        raise ValueError(
            "source_data must be given exactly when the coupling is paired "
            f"(coupling {coupling!r}, source_data {'given' if source_data is not None else 'None'})"
        )
    x0_all = None
    if source_data is not None:
        x0_all = as_rows(source_data, "source_data").to(dtype=dtype)
        if x0_all.shape != x1_all.shape:
            raise ValueError(
                f"source_data must have the shape of data {tuple(x1_all.shape)}, "
                f"got {tuple(x0_all.shape)}"
            )
    if source is None:
        zeros = torch.zeros(dim, dtype=dtype, device=device)
        source = torch.distributions.Independent(torch.distributions.Normal(zeros, 1.0), 1)
    elif not (isinstance(source, torch.distributions.Distribution) or callable(source)):
        raise TypeError(f"source must be a Distribution or a callable, got {type(source)}")
    c_all = None
    if context is not None:
        c_all = as_rows(context, "context").to(dtype=dtype)
        if c_all.shape[0] != n:
            raise ValueError(
                f"context must have {n} rows (one per data row), got {c_all.shape[0]}"
            )
        field_context = getattr(field, "context_dim", 0)
        if field_context is None:
            raise ValueError(
                "context was given, but the field takes none (its context_dim is None)"
            )
        expected = c_all.shape[1] + int(bool(guidance))  # guidance appends a flag column
        if isinstance(field_context, int) and field_context != expected:
            flag = " plus the guidance flag" if guidance else ""
            raise ValueError(
                f"context has {c_all.shape[1]} columns{flag}, but the field's context_dim is "
                f"{field_context}: they must match"
            )
    elif guidance:
        raise ValueError("guidance=True needs a context")

    xv = cv = None
    if val_data is not None:
        xv = as_rows(val_data, "val_data").to(device=device, dtype=dtype)
        check_last_dim(xv, dim, "val_data")
        if xv.shape[0] == 0:
            raise ValueError("val_data is empty: give at least one validation row, or None")
        if (c_all is None) != (val_context is None):
            raise ValueError("val_context must be given exactly when context is given")
        if val_context is not None:
            cv = as_rows(val_context, "val_context").to(device=device, dtype=dtype)
            if cv.shape[0] != xv.shape[0]:
                raise ValueError("val_context must have one row per row of val_data")
    elif val_nll:
        raise ValueError("val_nll=True needs val_data")

    state = saver.load("fit_flow_matching")
    if seed is None and state is None and (saver.path is not None or dist_ctx.active):
        seed = dist_ctx.broadcast_int(int(torch.randint(0, 2**62, (), device="cpu").item()))
    if state is not None:
        seed = state["config"]["seed"]
    if seed is not None:
        torch.manual_seed(seed + dist_ctx.rank)  # each rank its own noise and times
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, n)
    shard = dist_ctx.shard(batch_size)

    # Fixed validation draws, so the validation loss changes only with the field.
    val_fixed = None
    if xv is not None:
        g = torch.Generator().manual_seed(12345)
        t_val = torch.rand(xv.shape[0], generator=g, device="cpu").to(xv)
        x0_val = _draw_source(source, xv.shape[0], dim, xv) if x0_all is None else None
        val_fixed = (t_val, x0_val)

    def validate(step: int, history: FlowMatchingHistory) -> None:
        was = field.training
        field.eval()
        t_val, x0_val = val_fixed
        ctx = None if cv is None else (flag_context(cv, 1.0) if guidance else cv)
        with torch.no_grad():
            if x0_val is not None:
                a, b, c = coupling(x0_val, xv, ctx) if not coupling.paired else (x0_val, xv, ctx)
                loss = cfm_loss(field, a, b, path, context=c, t=t_val).item()
            else:
                loss = float("nan")
        history.val_steps.append(step)
        history.val_loss.append(loss)
        if val_nll:
            options = {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5, **(nll_options or {})}
            base = source if isinstance(source, torch.distributions.Distribution) else None
            total = 0.0
            with torch.no_grad():
                for i in range(0, xv.shape[0], 4 * batch_size):
                    rows = slice(i, i + 4 * batch_size)
                    ctx_i = None if cv is None else cv[rows]
                    prior = FlowMatchingPrior(
                        field,
                        base,
                        input_dim=dim,
                        context=ctx_i,
                        guidance=1.0 if guidance else None,
                        **options,
                    )
                    total -= prior.log_prob(xv[rows]).double().sum().item()
            history.val_nll.append(total / xv.shape[0])
        field.train(was)

    optimizer = torch.optim.Adam(params, lr=lr)
    history = FlowMatchingHistory()
    order, pos = torch.randperm(n, generator=gen, device="cpu"), 0
    first_step = 1
    config = {"seed": seed, "num_steps": num_steps, "batch_size": batch_size, "rows": n}
    if state is not None:
        Checkpointer.check_config(state, config, saver.resume)
        field.load_state_dict(state["field"])
        optimizer.load_state_dict(state["optimizer"])
        history = FlowMatchingHistory(**state["history"])
        order, pos, first_step = state["order"], state["pos"], state["step"] + 1
        if gen is not None:
            gen.set_state(state["gen"])
        set_rng_state(state["rng"])
        if state.get("stopped"):
            first_step = num_steps + 1
    net = wrap_ddp(field, dist_ctx, device)
    bar = progress_bar(num_steps, "flow matching", progress and dist_ctx.is_main)
    bar.update(first_step - 1)
    was_training = field.training
    try:
        field.train()
        if xv is not None and state is None:
            validate(0, history)
        for step in range(first_step, num_steps + 1):
            start = time.perf_counter()
            if pos + batch_size > n:
                order, pos = torch.randperm(n, generator=gen, device="cpu"), 0
            idx = order[pos : pos + batch_size][shard]
            pos += batch_size
            x1 = x1_all[idx].to(device)
            if x0_all is not None:
                x0 = x0_all[idx].to(device)
            else:
                x0 = _draw_source(source, len(idx), dim, x1)
            ctx = None if c_all is None else c_all[idx].to(device)
            if guidance:
                ctx = drop_context(ctx, context_dropout)
            x0, x1, ctx = coupling(x0, x1, ctx)
            if schedule == "cosine":
                rate = 0.5 * lr * (1 + math.cos(math.pi * (step - 1) / num_steps))
                for group in optimizer.param_groups:
                    group["lr"] = rate
            loss = cfm_loss(net, x0, x1, path, context=ctx)
            if dist_ctx.active:
                value = dist_ctx.all_sum(loss.detach()).item() / dist_ctx.world_size
            else:
                value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"flow matching loss is {value} at step {step}; lower lr or set clip_grad_norm"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(params, clip_grad_norm)
            optimizer.step()
            history.seconds += time.perf_counter() - start
            history.train_loss.append(value)
            bar.update(1)
            if xv is not None and (step % eval_every == 0 or step == num_steps):
                validate(step, history)
                post = {"train": f"{value:.3f}", "val": f"{history.val_loss[-1]:.3f}"}
                if val_nll:
                    post["nll"] = f"{history.val_nll[-1]:.3f}"
                bar.set_postfix(post)
            elif step % 20 == 0:
                bar.set_postfix(train=f"{value:.3f}")
            stop = callback is not None and bool(callback(step, history))
            stop = dist_ctx.any(stop)
            if saver.due(step, step == num_steps or stop):
                saver.save(
                    "fit_flow_matching",
                    {
                        "step": step,
                        "stopped": stop,
                        "config": config,
                        "field": field.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "history": asdict(history),
                        "order": order,
                        "pos": pos,
                        "gen": None if gen is None else gen.get_state(),
                    },
                )
            if stop:
                break
    finally:
        bar.close()
        field.train(was_training)
    return history
