"""Saved models on the command line: loading them and finding their columns in a data file."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

import numpy as np

from .table_io import CLIError, Table, numeric, read_table, select, split_list

if TYPE_CHECKING:
    from ..density import DensityEstimator

__all__ = ["load_model", "model_columns", "parse_values", "read_model_data"]


def load_model(path: str, device: str = "cpu") -> DensityEstimator:
    """Reads a model written by ``fit`` onto ``device`` (``--device``).

    A missing or foreign file is a :class:`CLIError`; CUDA asked for without CUDA is a
    ValueError, printed as one line (exit status 1).
    """
    from ..density import DensityEstimator, ModelFileError
    from ..distributed import resolve_device

    resolve_device(device)  # a bad --device fails before the file is read
    try:
        return DensityEstimator.load(path, device=device)
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file (MODEL)") from None
    except ModelFileError as e:
        raise CLIError(str(e)) from None


def model_columns(
    est: DensityEstimator, table: Table, columns: str | None, context: str | None, model: str
) -> tuple[list[int], list[int] | None]:
    """The data (and context) columns of ``table`` that the model ``est`` (file ``model``) takes.

    ``--columns`` and ``--context`` choose them; without them the model's own columns are
    looked up by name (by position for a model fitted on a file without a header).
    """
    if context is not None and est.context_dim_ is None:
        raise CLIError(f"{model}: the model is not conditional; drop --context")
    names = est.feature_names_in_ or [str(j) for j in range(est.n_features_in_)]
    cnames = est.context_names_in_
    if est.context_dim_ is not None and cnames is None:
        cnames = [str(j) for j in range(est.context_dim_)]
    header = est.info_.get("header", est.feature_names_in_ is not None)

    def from_model(wanted: list[str], option: str) -> list[int]:
        if header and not table.header:
            raise CLIError(
                f"{table.path}: has no header, but the model's columns are named "
                f"{', '.join(names + (cnames or []))}; give them with --columns (and --context) "
                "as positions"
            )
        return select(table, wanted, f"{option} (from the model)")

    if columns is not None:
        cols = select(table, split_list(columns), "--columns")
    else:
        cols = from_model(names, "--columns")
    ctx = None
    if est.context_dim_ is not None:
        if context is not None:
            ctx = select(table, split_list(context), "--context")
        else:
            ctx = from_model(cnames, "--context")
        both = [table.names[j] for j in cols if j in ctx]
        if both:
            raise CLIError(f"column {both[0]!r} is in both --columns and --context")
    if len(cols) != est.n_features_in_:
        raise CLIError(
            f"--columns: the model takes {est.n_features_in_} data columns, got {len(cols)}"
        )
    if ctx is not None and len(ctx) != est.context_dim_:
        raise CLIError(f"--context: the model takes {est.context_dim_} columns, got {len(ctx)}")
    return cols, ctx


def read_model_data(
    args: argparse.Namespace, est: DensityEstimator
) -> tuple[Table, np.ndarray, np.ndarray | None]:
    """Reads ``args.data`` and returns it with the model's data and context columns."""
    table = read_table(args.data, key=args.key, header=args.header, delimiter=args.delimiter)
    cols, ctx = model_columns(est, table, args.columns, args.context, args.model)
    x = numeric(table, cols)
    c = None if ctx is None else numeric(table, ctx)
    return table, x, c


def parse_values(text: str, size: int, option: str) -> np.ndarray:
    """``"1.5,2"`` as an array of ``size`` finite numbers; errors name ``option``."""
    try:
        values = [float(s) for s in text.split(",")]
    except ValueError:
        raise CLIError(
            f"{option}: expected {size} numbers separated by commas, got {text!r}"
        ) from None
    if len(values) != size:
        raise CLIError(f"{option}: the model takes {size} context value(s), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise CLIError(f"{option}: context values must be finite, got {text!r}")
    return np.asarray(values)
