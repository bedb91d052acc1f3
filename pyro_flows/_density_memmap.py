"""The out-of-core path of :meth:`pyro_flows.density.DensityEstimator.fit`.

Kept apart from :mod:`pyro_flows.data` so that the data layer depends on no estimator: this
module reads through :mod:`pyro_flows.data` and trains with :func:`pyro_flows.training.fit`,
and :mod:`pyro_flows.density` imports it (never the other way round).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import MemmapTable, _Moments
from .distributed import resolve_device
from .training import fit

__all__ = ["fit_memmap"]


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seeds torch inside the block, leaving the global generator as it was, if seed is given."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def fit_memmap(
    est: Any,
    table: MemmapTable | np.ndarray,
    *,
    small_rows: int = 2000,
    feature_names: list[str] | None = None,
    context_names: list[str] | None = None,
    checkpoint: Any = None,
    checkpoint_every: int = 100,
    resume: Any = None,
) -> Any:
    """Fits a :class:`~pyro_flows.density.DensityEstimator` to a table it never holds whole.

    What :meth:`~pyro_flows.density.DensityEstimator.fit` does with a memmap or a
    :class:`MemmapTable`: the same split of the rows (by index), the column means and
    standard deviations of the training rows from one streaming pass (:func:`column_moments`,
    which also finds NaN, infinite and constant columns), and
    :func:`~pyro_flows.training.fit` reading each minibatch from the file. What needs every
    row in memory is refused or left out: ``flow="auto"`` (it compares several candidates),
    ``base="gmm"`` (initialised by EM), and the lattice dequantisation and discrete-column
    checks (so ``dequantize`` is not applied).

    Arguments:
        est: The estimator, whose settings are used.
        small_rows: Below this many rows the default ``val_fraction`` is a quarter, else a
            tenth (the estimator's ``_AUTO_SMALL``).
        table: The table (a memmap is taken whole, every column data).
        feature_names: The names of the data columns, or None.
        context_names: The names of the context columns, or None.
        checkpoint: A checkpoint file (see :func:`~pyro_flows.training.fit`).
        checkpoint_every: The number of steps between checkpoints.
        resume: A checkpoint file to continue from, or True.

    Returns:
        ``est``, fitted.

    Example:
        >>> import tempfile, pathlib
        >>> from pyro_flows.data import load_npy
        >>> from pyro_flows.density import DensityEstimator
        >>> with tempfile.TemporaryDirectory() as d:
        ...     np.save(pathlib.Path(d) / "x.npy", np.random.default_rng(0).normal(size=(200, 2)))
        ...     est = DensityEstimator("maf", num_steps=2, progress=False)
        ...     est = fit_memmap(est, load_npy(pathlib.Path(d) / "x.npy"))
        >>> est.info_
        {'num_train': 150, 'num_val': 50, 'out_of_core': True}
    """
    if not isinstance(table, MemmapTable):
        table = MemmapTable(table)
    est._check_params()
    if est.flow == "auto":
        raise ValueError(
            "flow='auto' compares several candidates on rows held in memory; name a family "
            "(e.g. flow='maf') to fit a memory-mapped table"
        )
    if est.base == "gmm":
        raise ValueError("base='gmm' is initialised by EM on rows in memory; use base='normal'")
    if table.index is not None:
        raise ValueError("table must be a whole table, not a subset of its rows")
    n, dim = len(table), len(table.columns)
    cdim = None if table.context_columns is None else len(table.context_columns)
    if n < 2:
        raise ValueError(f"too few rows to fit: X has {n} row(s), need >= 2")
    frac = est.val_fraction
    if frac is None:  # the estimator's default: a quarter of a small table, else a tenth
        frac = 0.25 if n < small_rows else 0.1
    if not (isinstance(frac, int | float) and 0 <= frac < 1):
        raise ValueError(f"val_fraction must be in [0, 1), got {frac!r}")
    num_val = int(frac * n)
    if frac > 0 and num_val < 1:
        raise ValueError(f"too few rows for a validation split: val_fraction={frac} of {n} rows")
    if est.patience is not None and not num_val:
        raise ValueError("patience needs validation rows: set val_fraction > 0")
    perm = np.random.default_rng(est.seed).permutation(n)
    train = table.subset(perm[num_val:])
    val = table.subset(perm[:num_val]) if num_val else None

    # one pass in file order: every row checked for NaN, the training rows summarised
    train_mask = np.ones(n, dtype=bool)
    train_mask[perm[:num_val]] = False
    whole = MemmapTable(table.array, table.columns, table.context_columns)
    accs, pos = (_Moments(), _Moments()), 0
    for block in whole.blocks():
        parts = (block,) if isinstance(block, Tensor) else block
        keep = train_mask[pos : pos + parts[0].shape[0]]
        for k, (part, what) in enumerate(zip(parts, ("X", "context"), strict=False)):
            b = part.numpy()
            with np.errstate(over="ignore", invalid="ignore"):
                finite = np.isfinite(b.sum())
            if not finite and not np.isfinite(b).all():
                r, j = np.argwhere(~np.isfinite(b))[0]
                names = feature_names if k == 0 else context_names
                raise ValueError(
                    f"{what} column {repr(names[j]) if names else j} has a NaN or infinite "
                    f"value (row {pos + int(r)}); clean or drop those rows"
                )
            accs[k].update(b[keep])
        pos += parts[0].shape[0]
    m = accs[0].result()
    for j in np.flatnonzero(m["min"] == m["max"]):
        name = repr(feature_names[j]) if feature_names else str(j)
        raise ValueError(
            f"X column {name} is constant on the training rows (every value is "
            f"{m['min'][j]:g}): it has no density; drop the column"
        )
    mean = scale = cmean = cscale = None
    if est.standardize:
        mean, scale = m["mean"], m["std"]
    if cdim is not None and est.standardize:
        mc = accs[1].result()
        cmean, cscale = mc["mean"], np.where(mc["std"] > 0, mc["std"], 1.0)
    device = resolve_device(est.device)
    with _seeded(est.seed):
        model = est._build(dim, cdim, mean, scale, cmean, cscale)
        history = fit(
            model,
            train,
            val_data=val,
            val_fraction=0.0,
            num_steps=est.num_steps,
            batch_size=est.batch_size,
            lr=est.lr,
            weight_decay=est.weight_decay,
            patience=est.patience,
            eval_every=est.eval_every,
            progress=est.progress,
            seed=est.seed,
            device=device,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            resume=resume,
        )
    model.eval()
    est.flow_ = model
    est.history_ = history
    est.n_features_in_ = dim
    est.feature_names_in_ = feature_names
    est.context_dim_ = cdim
    est.context_names_in_ = context_names
    est.mean_, est.scale_ = mean, scale
    est.context_mean_, est.context_scale_ = cmean, cscale
    est.lattice_ = None
    est.selection_ = None
    est.info_ = {"num_train": n - num_val, "num_val": num_val, "out_of_core": True}
    return est
