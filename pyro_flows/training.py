"""Maximum-likelihood fitting of any module with a ``log_prob``, with early stopping."""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ._progress import progress_bar
from ._validation import check_choice, check_positive_int
from .checkpoint import Checkpointer, set_rng_state
from .data import Rows, streaming_loc_scale
from .distributed import LogProbModule, resolve_device, setup, wrap_ddp

__all__ = [
    "FitHistory",
    "fit",
]

_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


@dataclass
class FitHistory:
    r"""What :func:`fit` did, step by step.

    Arguments:
        train_loss: The minibatch negative log-likelihood (mean over rows) at every step taken.
        val_steps: The steps after which the validation NLL was evaluated; ``0`` is the
            untrained model.
        val_nll: The validation NLL (mean over rows) at each of ``val_steps``.
        best_step: The step with the lowest validation NLL, ``None`` without validation.
        best_val_nll: That lowest validation NLL, ``None`` without validation.
        stopped_early: Whether training stopped because ``patience`` ran out.
    """

    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    best_step: int | None = None
    best_val_nll: float | None = None
    stopped_early: bool = False

    @property
    def num_steps(self) -> int:
        """The number of optimisation steps taken."""
        return len(self.train_loss)


def _log_prob(model: nn.Module, x: Tensor, c: Tensor | None) -> Tensor:
    """``model.log_prob`` (or a :class:`LogProbModule`'s call), checked: one value per row."""
    if isinstance(model, LogProbModule | DistributedDataParallel):
        lp = model(x) if c is None else model(x, c)
    else:
        lp = model.log_prob(x) if c is None else model.log_prob(x, c)
    if not isinstance(lp, Tensor) or lp.shape != x.shape[:1]:
        shape = tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__
        raise ValueError(
            f"model.log_prob must return one log-density per row, shape ({x.shape[0]},); "
            f"got {shape}"
        )
    return lp


def _nll_sum(
    model: nn.Module,
    x: Rows,
    c: Rows | None,
    idx: Tensor | None,
    chunk: int,
    device: torch.device,
    dtype: torch.dtype,
) -> float:
    """The summed negative log-likelihood of the rows ``idx`` of ``x``, in chunks, in float64."""
    total = 0.0
    n = x.num_rows if idx is None else len(idx)
    with torch.no_grad():
        for i in range(0, n, chunk):
            sel = (
                torch.arange(i, min(i + chunk, n), device="cpu")
                if idx is None
                else idx[i : i + chunk]
            )
            xb = x.gather(sel).to(device=device, dtype=dtype)
            cb = None if c is None else c.gather(sel).to(device=device, dtype=dtype)
            total -= _log_prob(model, xb, cb).double().sum().item()
    return total


def _batch_parts(batch: Any) -> tuple[Tensor, Tensor | None]:
    """A DataLoader's batch as ``(x, c)``: a tensor, or a pair of tensors."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, tuple | list) and len(batch) in (1, 2):
        return batch[0], (batch[1] if len(batch) == 2 else None)
    raise TypeError(
        f"data: a DataLoader must yield tensors x or pairs (x, c), got {type(batch).__name__}"
    )


def _initialize(model: nn.Module, x: Rows, c: Rows | None, idx: Tensor | None) -> None:
    """Calls the model's data-dependent initialisation with the training rows.

    Rows held in memory are passed as they are. Rows read lazily (a memmap, a Dataset) are
    summarised by one streaming pass (:func:`~pyro_flows.data.streaming_loc_scale`) for a
    flow with a standardisation, so that they are never all in memory at once.
    """
    init = getattr(model, "initialize_from_data", None)
    if not callable(init):
        return
    lazy = x.tensor is None
    untouched = getattr(model, "is_untouched", None)
    setter = getattr(model, "set_standardization", None)
    if lazy and callable(untouched) and callable(setter):
        if untouched():
            loc, scale = streaming_loc_scale(x, idx)
            cloc = cscale = None
            if c is not None:
                cloc, cscale = streaming_loc_scale(c, idx)
            setter(loc, scale, cloc, cscale)
        return
    if idx is None and not lazy:
        xt, ct = (
            x.tensor,
            (None if c is None else c.gather(torch.arange(c.num_rows, device="cpu"))),
        )
    else:
        sel = torch.arange(x.num_rows, device="cpu") if idx is None else idx
        xt, ct = x.gather(sel), (None if c is None else c.gather(sel))
    if ct is None:
        init(xt)
    else:
        init(xt, ct)


def fit(
    model: nn.Module,
    data: Tensor | np.ndarray | Dataset | DataLoader,
    *,
    context: Tensor | np.ndarray | None = None,
    num_steps: int = 1000,
    batch_size: int = 512,
    lr: float = 1e-3,
    schedule: str = "cosine",
    val_fraction: float = 0.1,
    val_data: Tensor | np.ndarray | Dataset | None = None,
    val_context: Tensor | np.ndarray | None = None,
    patience: int | None = None,
    eval_every: int = 50,
    progress: bool = True,
    seed: int | None = None,
    weight_decay: float = 0.0,
    clip_grad_norm: float | None = None,
    restore_best: bool = True,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    checkpoint_minutes: float | None = None,
    resume: str | os.PathLike | bool | None = None,
) -> FitHistory:
    r"""Fits ``model`` to ``data`` by maximum likelihood with Adam.

    Each step takes a minibatch :math:`B` of training rows (reshuffled every epoch) and
    minimises the mean negative log-likelihood

    .. math:: \mathcal{L} = -\frac{1}{|B|} \sum_{i \in B} \log q_\theta(x_i \mid c_i)

    with the learning rate :math:`\eta_t = \eta` (``"constant"``) or
    :math:`\eta_t = \frac{\eta}{2} (1 + \cos(\pi t / T))` (``"cosine"``, :math:`T` =
    ``num_steps``). Every ``eval_every`` steps, at step 0 and at the last step, the mean NLL of
    the validation rows is computed under :func:`torch.no_grad` in the model's eval mode.

    Before the first step, a model with a method ``initialize_from_data(x)`` (or
    ``initialize_from_data(x, c)`` with a context) gets it called with the training rows: a
    :class:`~pyro_flows.distributions.NormalizingFlow` sets its data standardisation there
    (when the flow is untouched since construction), which makes the fit follow any change of
    the data's units, :math:`x \mapsto a x + b`, exactly. For data read lazily (a memmap, a
    Dataset) the flow's statistics come from one streaming pass instead
    (:func:`~pyro_flows.data.streaming_loc_scale`).

    **Devices.** The model trains on ``device`` (moved there first), by default where its
    parameters are. The data stay where they are: each minibatch is gathered on the CPU,
    cast to the dtype of the model's first parameter and moved to the device alone.

    **Data larger than memory.** ``data`` may be a memory-mapped array
    (``np.load(path, mmap_mode="r")``, checked for NaN in chunks and read one minibatch at a
    time), a :class:`~torch.utils.data.Dataset` of rows ``x`` or pairs ``(x, c)`` (gathered
    by index, split and shuffled as an array would be), or a
    :class:`~torch.utils.data.DataLoader` of such batches, used as it is: every batch it
    yields is one step, ``val_fraction`` does not apply (give ``val_data``), and under
    ``torchrun`` its sampler chooses each rank's rows.

    **Several processes.** Under ``torchrun`` (or with :mod:`torch.distributed` initialised)
    each of the :math:`W` ranks takes an equal slice of every global minibatch of
    ``batch_size`` rows (:math:`W` must divide it), the model is wrapped in
    :class:`~torch.nn.parallel.DistributedDataParallel`, which averages the gradients, so
    the steps are those of one process on the whole minibatch (see
    :mod:`pyro_flows.distributed`). The validation rows are shared out too and their NLL
    summed over the ranks, so every rank sees the same history and stops early together;
    rank 0 alone shows the progress bar and writes the checkpoint.

    **Checkpoints.** With ``checkpoint``, a file is written atomically every
    ``checkpoint_every`` steps and after the last step, holding the model, Adam's state, the
    step, the history, the early-stopping state (best parameters, evaluations without
    improvement), the minibatch order and the torch, numpy and Python random states (the
    learning rate is a function of the step). ``resume`` continues from such a file with the
    same parameters, to the bit, as the run that wrote it would have reached; it must be
    started with the same data and settings (the checkpoint refuses others). A run without
    ``seed`` draws one and saves it, so that the split is the same on resuming. A
    DataLoader's own position is not saved: a run resumed on one starts a new pass of it.

    Data are cast to the dtype of the model's first parameter. The model is put in train mode
    for the steps and left, at the end, in the mode it had on entry. When ``seed`` is given,
    the split and the minibatches come from a seeded :class:`torch.Generator`, otherwise from
    torch's global generator; randomness inside the model always uses the global generator.

    Arguments:
        model: A module with parameters and a method ``log_prob(x)`` (or ``log_prob(x, c)``
            when ``context`` is given) returning one log-density per row.
        data: The rows to fit, shape ``(num_rows, input_dim)``, finite floating-point values
            (NaN or inf raise a ValueError naming ``data``; likewise for the other arrays):
            a tensor, an array, a memmap, a Dataset or a DataLoader (see above).
        context: The conditioning rows, shape ``(num_rows, context_dim)``, or ``None`` (a
            Dataset or DataLoader of pairs carries its own).
        num_steps: The number of optimisation steps.
        batch_size: The minibatch size (capped at the number of training rows); validation
            runs in chunks of ``4 * batch_size`` rows.
        lr: The peak learning rate of Adam.
        schedule: ``"cosine"`` or ``"constant"``.
        val_fraction: The fraction of ``data`` held out for validation, in :math:`[0, 1)`;
            ignored when ``val_data`` is given (then every row of ``data`` is trained on).
        val_data: Explicit validation rows, shape ``(num_val, input_dim)``.
        val_context: The context rows of ``val_data``; required when ``context`` is given.
        patience: Stop after this many evaluations in a row without a lower validation NLL;
            ``None`` never stops early.
        eval_every: The number of steps between validation evaluations.
        progress: Whether to show a tqdm progress bar with the train and validation NLL.
        seed: A seed for the split and minibatch order.
        weight_decay: Adam's L2 penalty.
        clip_grad_norm: If given, the maximum gradient norm (over all parameters) per step.
        restore_best: Whether to reload, at the end, the parameters of the best validation
            evaluation.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a :class:`torch.device`
            to train on (see :func:`~pyro_flows.distributed.resolve_device`); None for the
            device of the model's parameters.
        checkpoint: The checkpoint file to write, or None.
        checkpoint_every: The number of steps between checkpoints.
        checkpoint_minutes: Also write a checkpoint when this many minutes have passed since
            the last one (a wall-clock budget for a pre-emptible job), or None.
        resume: A checkpoint file to continue from, or True for ``checkpoint`` when that
            file exists (a fresh start otherwise: one command for the first run and every
            restart).

    Returns:
        A :class:`FitHistory`.

    Raises:
        FloatingPointError: If a training loss is NaN or infinite (the step is named); with
            ``restore_best`` the best parameters so far are reloaded first.

    Example:
        >>> class Gaussian(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.loc = torch.nn.Parameter(torch.zeros(2))
        ...     def log_prob(self, x):
        ...         return torch.distributions.Normal(self.loc, 1.0).log_prob(x).sum(-1)
        >>> data = torch.randn(1000, 2) + torch.tensor([3.0, -1.0])
        >>> model = Gaussian()
        >>> history = fit(model, data, num_steps=200, lr=0.1, progress=False, seed=0)
        >>> torch.allclose(model.loc, torch.tensor([3.0, -1.0]), atol=0.2)
        True
        >>> history.num_steps, history.val_steps[:3], history.best_val_nll < history.val_nll[0]
        (200, [0, 50, 100], True)
    """
    if not callable(getattr(model, "log_prob", None)):
        raise TypeError(f"model must have a log_prob method, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters; nothing to fit")
    check_positive_int(num_steps, "num_steps")
    check_positive_int(batch_size, "batch_size")
    check_positive_int(eval_every, "eval_every")
    if patience is not None:
        check_positive_int(patience, "patience")
    check_choice(schedule, _SCHEDULES, "schedule")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not (
        isinstance(weight_decay, int | float) and math.isfinite(weight_decay) and weight_decay >= 0
    ):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if clip_grad_norm is not None and not (
        isinstance(clip_grad_norm, int | float) and clip_grad_norm > 0
    ):
        raise ValueError(f"clip_grad_norm must be a positive number, got {clip_grad_norm!r}")
    device = resolve_device(device, params[0].device)
    if device != params[0].device:
        model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
    dtype = params[0].dtype
    dist_ctx = setup(device)
    saver = Checkpointer.create(
        checkpoint, checkpoint_every, resume, dist_ctx.is_main, checkpoint_minutes
    )

    loader = data if isinstance(data, DataLoader) else None
    x = c = None
    if loader is not None:
        if context is not None:
            raise ValueError("context must be None with a DataLoader: it yields pairs (x, c)")
        num_data = None
    else:
        x = Rows(data, "data")
        if x.num_rows == 0:
            raise ValueError(f"data is empty (shape ({x.num_rows}, {x.dim})): nothing to fit")
        if isinstance(data, Dataset):
            if context is not None:
                raise ValueError("context must be None with a Dataset: its items are (x, c)")
            if isinstance(data[0], tuple | list) and len(data[0]) == 2:
                c = Rows(data, "data", part=1)
        elif context is not None:
            c = Rows(context, "context")
            if c.num_rows != x.num_rows:
                raise ValueError(
                    f"context must have one row per row of data ({x.num_rows}), got "
                    f"{c.num_rows} rows"
                )
        num_data = x.num_rows

    state = saver.load("fit")
    if state is not None:
        seed = state["config"]["seed"]
    elif seed is None and (saver.path is not None or dist_ctx.active):
        # a seed drawn here (and agreed by rank 0) makes the split and order reproducible
        seed = dist_ctx.broadcast_int(int(torch.randint(0, 2**62, (), device="cpu").item()))
    gen = None if seed is None else torch.Generator().manual_seed(seed)

    xv = cv = None
    train_idx = val_idx = None
    if val_data is not None:
        xv = Rows(val_data, "val_data")
        if x is not None and xv.dim != x.dim:
            raise ValueError(
                f"val_data must have shape (..., {x.dim}) (event shape ({x.dim},)), got "
                f"{xv.dim} columns"
            )
        if isinstance(val_data, Dataset):
            first = val_data[0]
            cv = Rows(val_data, "val_data", 1) if isinstance(first, tuple | list) else None
        else:
            if (c is None) != (val_context is None) and loader is None:
                raise ValueError(
                    "val_context must be given exactly when context is given "
                    f"(context is {'None' if c is None else 'given'})"
                )
            if val_context is not None:
                cv = Rows(val_context, "val_context")
                if c is not None and cv.dim != c.dim:
                    raise ValueError(
                        f"val_context must have shape (..., {c.dim}), got {cv.dim} columns"
                    )
                if cv.num_rows != xv.num_rows:
                    raise ValueError(
                        f"val_context must have one row per row of val_data ({xv.num_rows}), "
                        f"got {cv.num_rows} rows"
                    )
        num_train = num_data
    elif loader is not None:
        num_train = None
    else:
        if val_context is not None:
            raise ValueError("val_context was given without val_data")
        if not (isinstance(val_fraction, int | float) and 0 <= val_fraction < 1):
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        num_val = int(val_fraction * num_data)
        if val_fraction > 0 and num_val < 1:
            raise ValueError(
                f"val_fraction={val_fraction} of {num_data} rows of data leaves {num_val} "
                "validation rows; use a larger val_fraction, more data, or val_fraction=0"
            )
        perm = torch.randperm(num_data, generator=gen, device="cpu")
        val_idx, train_idx = perm[:num_val], perm[num_val:]
        if num_val:
            xv, cv = x, c
        num_train = len(train_idx)
    if patience is not None and xv is None:
        raise ValueError("patience needs validation data: set val_fraction > 0 or val_data")

    if loader is None:
        batch_size = min(batch_size, num_train)
        shard = dist_ctx.shard(batch_size)
    chunk = 4 * batch_size
    # this rank's share of the validation rows, whose NLL is summed over the ranks
    num_val_rows = 0 if xv is None else (xv.num_rows if val_idx is None else len(val_idx))
    my_val = None
    if xv is not None:
        all_val = torch.arange(num_val_rows, device="cpu") if val_idx is None else val_idx
        my_val = all_val.tensor_split(dist_ctx.world_size)[dist_ctx.rank]

    # A data-dependent first step (a NormalizingFlow's standardisation, set only when the
    # flow is untouched), from the training rows in their own precision.
    if x is not None:
        _initialize(model, x, c, train_idx)

    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    history = FitHistory()
    was_training = model.training
    best_state: dict[str, Tensor] | None = None
    bad_evals = 0
    first_step = 1
    order = None if num_train is None else torch.randperm(num_train, generator=gen, device="cpu")
    pos = 0
    config = {"seed": seed, "num_steps": num_steps, "batch_size": batch_size, "rows": num_data}
    if state is not None:
        Checkpointer.check_config(state, config, saver.resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = FitHistory(**state["history"])
        best_state, bad_evals = state["best_state"], state["bad_evals"]
        order, pos, first_step = state["order"], state["pos"], state["step"] + 1
        if gen is not None:
            gen.set_state(state["gen"])
        set_rng_state(state["rng"])
        if history.stopped_early:
            first_step = num_steps + 1

    def evaluate(step: int) -> bool:
        """Records the validation NLL after ``step``; returns whether to stop."""
        nonlocal best_state, bad_evals
        model.eval()
        local = _nll_sum(model, xv, cv, my_val, chunk, device, dtype)
        nll = (
            dist_ctx.all_sum(torch.tensor([local], dtype=torch.float64, device="cpu")).item()
            / num_val_rows
        )
        model.train()
        history.val_steps.append(step)
        history.val_nll.append(nll)
        if history.best_val_nll is None or nll < history.best_val_nll:
            history.best_val_nll, history.best_step, bad_evals = nll, step, 0
            if restore_best:
                best_state = copy.deepcopy(model.state_dict())
        else:
            bad_evals += 1
        return patience is not None and bad_evals >= patience

    def save(step: int) -> None:
        saver.save(
            "fit",
            {
                "step": step,
                "config": config,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "history": asdict(history),
                "best_state": best_state,
                "bad_evals": bad_evals,
                "order": order,
                "pos": pos,
                "gen": None if gen is None else gen.get_state(),
            },
        )

    net = wrap_ddp(LogProbModule(model), dist_ctx, device)
    batches = None if loader is None else iter(loader)
    bar = progress_bar(num_steps, "fit", progress and dist_ctx.is_main)
    bar.update(first_step - 1)
    try:
        model.train()
        if xv is not None and state is None:
            evaluate(0)
        for step in range(first_step, num_steps + 1):
            if loader is None:
                if pos + batch_size > num_train:
                    order, pos = torch.randperm(num_train, generator=gen, device="cpu"), 0
                idx = order[pos : pos + batch_size][shard]
                pos += batch_size
                if train_idx is not None:
                    idx = train_idx[idx]
                xb, cb = x.gather(idx), (None if c is None else c.gather(idx))
            else:
                try:
                    batch = next(batches)
                except StopIteration:
                    batches = iter(loader)
                    batch = next(batches)
                xb, cb = _batch_parts(batch)
            xb = xb.to(device=device, dtype=dtype)
            cb = None if cb is None else cb.to(device=device, dtype=dtype)

            if schedule == "cosine":
                rate = 0.5 * lr * (1 + math.cos(math.pi * (step - 1) / num_steps))
            else:
                rate = lr
            for group in optimizer.param_groups:
                group["lr"] = rate

            loss = -_log_prob(net, xb, cb).mean()
            if dist_ctx.active:
                value = dist_ctx.all_sum(loss.detach()).item() / dist_ctx.world_size
            else:
                value = loss.item()
            if not math.isfinite(value):
                if best_state is not None:
                    model.load_state_dict(best_state)
                raise FloatingPointError(
                    f"training loss is {value} at step {step} of {num_steps}; lower lr, set "
                    "clip_grad_norm, or check the model and data"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(params, clip_grad_norm)
            optimizer.step()
            history.train_loss.append(value)
            bar.update(1)

            stop = False
            if xv is not None and (step % eval_every == 0 or step == num_steps):
                stop = evaluate(step)
                bar.set_postfix(train=f"{value:.4f}", val=f"{history.val_nll[-1]:.4f}")
            elif step % 10 == 0:
                bar.set_postfix(train=f"{value:.4f}")
            if stop:
                history.stopped_early = True
            if saver.due(step, step == num_steps or stop):
                save(step)
            if stop:
                break
    finally:
        bar.close()
        model.train(was_training)

    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return history
