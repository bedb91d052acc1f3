"""Maximum-likelihood fitting of any module with a ``log_prob``, with early stopping."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ._progress import progress_bar
from ._validation import as_rows, check_choice, check_last_dim, check_positive_int

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


def _mean_nll(model: nn.Module, x: Tensor, c: Tensor | None, chunk: int) -> float:
    """The mean negative log-likelihood of the rows of ``x``, computed in chunks, in float64."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            lp = _log_prob(model, x[i : i + chunk], None if c is None else c[i : i + chunk])
            total -= lp.double().sum().item()
    return total / x.shape[0]


def _log_prob(model: nn.Module, x: Tensor, c: Tensor | None) -> Tensor:
    """``model.log_prob`` with or without context, checked to give one value per row."""
    lp = model.log_prob(x) if c is None else model.log_prob(x, c)
    if not isinstance(lp, Tensor) or lp.shape != x.shape[:1]:
        shape = tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__
        raise ValueError(
            f"model.log_prob must return one log-density per row, shape ({x.shape[0]},); "
            f"got {shape}"
        )
    return lp


def fit(
    model: nn.Module,
    data: Tensor | np.ndarray,
    *,
    context: Tensor | np.ndarray | None = None,
    num_steps: int = 1000,
    batch_size: int = 512,
    lr: float = 1e-3,
    schedule: str = "cosine",
    val_fraction: float = 0.1,
    val_data: Tensor | np.ndarray | None = None,
    val_context: Tensor | np.ndarray | None = None,
    patience: int | None = None,
    eval_every: int = 50,
    progress: bool = True,
    seed: int | None = None,
    weight_decay: float = 0.0,
    clip_grad_norm: float | None = None,
    restore_best: bool = True,
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
    the data's units, :math:`x \mapsto a x + b`, exactly.

    Data are cast to the dtype and device of the model's first parameter. The model is put in
    train mode for the steps and left, at the end, in the mode it had on entry. When ``seed``
    is given, the split and the minibatches come from a seeded :class:`torch.Generator`,
    otherwise from torch's global generator; randomness inside the model always uses the
    global generator.

    Arguments:
        model: A module with parameters and a method ``log_prob(x)`` (or ``log_prob(x, c)``
            when ``context`` is given) returning one log-density per row.
        data: The rows to fit, shape ``(num_rows, input_dim)``, finite floating-point values
            (NaN or inf raise a ValueError naming ``data``; likewise for the other arrays).
        context: The conditioning rows, shape ``(num_rows, context_dim)``, or ``None``.
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
    dtype, device = params[0].dtype, params[0].device
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

    x = as_rows(data, "data")
    if x.shape[0] == 0:
        raise ValueError(f"data is empty (shape {tuple(x.shape)}): nothing to fit")
    c = None if context is None else as_rows(context, "context")
    if c is not None and c.shape[0] != x.shape[0]:
        raise ValueError(
            f"context must have one row per row of data ({x.shape[0]}), got {c.shape[0]} rows"
        )

    gen = None if seed is None else torch.Generator().manual_seed(seed)

    if val_data is not None:
        xv = as_rows(val_data, "val_data")
        check_last_dim(xv, x.shape[1], "val_data")
        if (c is None) != (val_context is None):
            raise ValueError(
                "val_context must be given exactly when context is given "
                f"(context is {'None' if c is None else 'given'})"
            )
        cv = None
        if val_context is not None:
            cv = as_rows(val_context, "val_context")
            check_last_dim(cv, c.shape[1], "val_context")
            if cv.shape[0] != xv.shape[0]:
                raise ValueError(
                    f"val_context must have one row per row of val_data ({xv.shape[0]}), "
                    f"got {cv.shape[0]} rows"
                )
        xt, ct = x, c
    else:
        if val_context is not None:
            raise ValueError("val_context was given without val_data")
        if not (isinstance(val_fraction, int | float) and 0 <= val_fraction < 1):
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        num_val = int(val_fraction * x.shape[0])
        if val_fraction > 0 and num_val < 1:
            raise ValueError(
                f"val_fraction={val_fraction} of {x.shape[0]} rows of data leaves {num_val} "
                "validation rows; use a larger val_fraction, more data, or val_fraction=0"
            )
        perm = torch.randperm(x.shape[0], generator=gen)
        val_idx, train_idx = perm[:num_val], perm[num_val:]
        xt, xv = x[train_idx], (x[val_idx] if num_val else None)
        ct = None if c is None else c[train_idx]
        cv = None if (c is None or not num_val) else c[val_idx]
    if patience is not None and xv is None:
        raise ValueError("patience needs validation data: set val_fraction > 0 or val_data")

    # A data-dependent first step (a NormalizingFlow's standardisation, set only when the
    # flow is untouched), from the training rows in their own precision.
    init = getattr(model, "initialize_from_data", None)
    if callable(init) and ct is None:
        init(xt)
    elif callable(init):
        init(xt, ct)

    def move(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(device=device, dtype=dtype)

    xt, ct, xv, cv = move(xt), move(ct), move(xv), move(cv)
    num_train = xt.shape[0]
    batch_size = min(batch_size, num_train)
    chunk = 4 * batch_size

    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    history = FitHistory()
    was_training = model.training
    best_state: dict[str, Tensor] | None = None
    bad_evals = 0

    def evaluate(step: int) -> bool:
        """Records the validation NLL after ``step``; returns whether to stop."""
        nonlocal best_state, bad_evals
        model.eval()
        nll = _mean_nll(model, xv, cv, chunk)
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

    order = torch.randperm(num_train, generator=gen)
    pos = 0
    bar = progress_bar(num_steps, "fit", progress)
    try:
        model.train()
        if xv is not None:
            evaluate(0)
        for step in range(1, num_steps + 1):
            if pos + batch_size > num_train:
                order, pos = torch.randperm(num_train, generator=gen), 0
            idx = order[pos : pos + batch_size].to(device)
            pos += batch_size

            if schedule == "cosine":
                rate = 0.5 * lr * (1 + math.cos(math.pi * (step - 1) / num_steps))
            else:
                rate = lr
            for group in optimizer.param_groups:
                group["lr"] = rate

            loss = -_log_prob(model, xt[idx], None if ct is None else ct[idx]).mean()
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
                break
    finally:
        bar.close()
        model.train(was_training)

    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return history
