"""The ``pyro-flows`` command line: fit a flow to a data file, then score, sample and plot.

.. code-block:: bash

    pyro-flows fit data.csv --flow maf --layers 5 --hidden 64,64 --out model.pt
    pyro-flows score model.pt test.csv --out logp.csv
    pyro-flows sample model.pt -n 1000 --out samples.csv
    pyro-flows plot model.pt test.csv --out fig.png

Data files are ``.csv`` (with or without a header line), ``.npy`` (a 2-D array) or ``.npz``
(choose the array with ``--key``). User errors (a missing file, a non-numeric or constant
column, NaN/inf values, ...) print one line naming the file, column or option and exit with
status 1 (2 for a malformed command line); outputs are written to a temporary file that is
renamed only when complete, so a failed command leaves no partial file.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .density import DensityEstimator
    from .training import FitHistory

__all__ = ["CLIError", "main"]

PROG = "pyro-flows"
_DATA_SUFFIXES = (".csv", ".npy", ".npz")


class CLIError(Exception):
    """A user error: printed as one line (no traceback), exit status 1."""


# -- reading data -----------------------------------------------------------------------------


@dataclass
class Table:
    """A data file's columns before conversion: names, and each column's raw values.

    Arguments:
        path: The file, for messages.
        names: One name per column: the header's, or the column's index as a string.
        header: Whether the names came from a header line.
        columns: Per column, a list of strings (CSV) or a float array (``.npy``/``.npz``).
        lines: For CSV, the line number of every data row (for messages), else None.
    """

    path: str
    names: list[str]
    header: bool
    columns: list
    lines: list[int] | None

    @property
    def num_rows(self) -> int:
        """The number of data rows."""
        return len(self.columns[0]) if self.columns else 0

    def where(self, i: int) -> str:
        """Names row ``i`` for a message (its line number in a CSV)."""
        return f"line {self.lines[i]}" if self.lines is not None else f"row {i}"

    def label(self, j: int) -> str:
        """Names column ``j`` for a message."""
        return f"column {self.names[j]!r}" if self.header else f"column {j}"


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _read_csv(path: Path, header: str, delimiter: str) -> Table:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise CLIError(f"{path}: not a text CSV file (it is not UTF-8)") from None
    rows, lines = [], []
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        for row in reader:
            if not row or all(not f.strip() for f in row) or row[0].lstrip().startswith("#"):
                continue
            rows.append([f.strip() for f in row])
            lines.append(reader.line_num)
    except csv.Error as e:
        raise CLIError(f"{path}: unreadable CSV at line {reader.line_num}: {e}") from None
    if not rows:
        raise CLIError(f"{path}: the file holds no data")
    has_header = {"yes": True, "no": False}.get(header)
    if has_header is None:  # auto: a first line with any non-number is a header
        has_header = not all(_is_number(f) for f in rows[0])
    width = len(rows[0])
    for row, line in zip(rows, lines, strict=True):
        if len(row) != width:
            raise CLIError(
                f"{path}: line {line} has {len(row)} fields, but line {lines[0]} has {width} "
                f"(is the delimiter {delimiter!r} right? see --delimiter)"
            )
    if has_header:
        names = [n if n else str(j) for j, n in enumerate(rows[0])]
        rows, lines = rows[1:], lines[1:]
        if not rows:
            raise CLIError(f"{path}: the file has a header line but no data rows")
    else:
        names = [str(j) for j in range(width)]
    columns = [list(col) for col in zip(*rows, strict=True)]
    return Table(str(path), names, has_header, columns, lines)


_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


def _unreadable(path: Path | str, e: BaseException) -> CLIError:
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return CLIError(f"{path}: not a readable numpy file, or a corrupt one ({reason})")


def _load_array(f: IO[bytes], path: Path, key: str | None) -> tuple[np.ndarray, str]:
    """Reads the array of an open ``.npy``/``.npz`` file; returns it and its name for messages."""
    magic = f.read(6)
    f.seek(0)
    if not (magic.startswith(_NPY_MAGIC) or magic.startswith(_ZIP_MAGIC)):
        what = ".npy" if path.suffix.lower() == ".npy" else ".npz (zip)"
        raise CLIError(f"{path}: not a numpy file (it does not start with the {what} signature)")
    try:
        loaded = np.load(f, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise CLIError(f"{path}: holds Python objects, not a numeric array") from None
        raise _unreadable(path, e) from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise _unreadable(path, e) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        if key is not None:
            raise CLIError(f"--key {key!r} applies to .npz files only, not {path}")
        return loaded, str(path)
    with loaded:
        keys = list(loaded.keys())
        if not keys:
            raise CLIError(f"{path}: the .npz file holds no arrays")
        if key is None:
            if len(keys) > 1:
                raise CLIError(
                    f"{path}: holds several arrays ({', '.join(keys)}); choose one with --key"
                )
            key = keys[0]
        if key not in keys:
            raise CLIError(
                f"{path}: has no array {key!r} (--key); its arrays are: {', '.join(keys)}"
            )
        try:
            return loaded[key], f"{path}[{key}]"
        except ValueError as e:
            if "allow_pickle" not in str(e):
                raise _unreadable(f"{path}[{key}]", e) from None
            raise CLIError(f"{path}: array {key!r} holds Python objects, not numbers") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise _unreadable(f"{path}[{key}]", e) from None


def _read_array(path: Path, key: str | None) -> Table:
    with open(path, "rb") as f:
        arr, where = _load_array(f, path, key)
    if arr.dtype.kind not in "biuf":
        raise CLIError(f"{where}: holds {arr.dtype} values, not real numbers")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise CLIError(f"{where}: must be a 2-D array (rows x columns), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CLIError(f"{where}: the array is empty (shape {arr.shape})")
    arr = arr.astype(np.float64)
    names = [str(j) for j in range(arr.shape[1])]
    return Table(where, names, False, [arr[:, j] for j in range(arr.shape[1])], None)


def read_table(
    path: str, *, key: str | None = None, header: str = "auto", delimiter: str = ","
) -> Table:
    """Reads a ``.csv``, ``.npy`` or ``.npz`` file; raises :class:`CLIError` naming the file."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _DATA_SUFFIXES:
        raise CLIError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; use one of "
            f"{', '.join(_DATA_SUFFIXES)}"
        )
    if not p.exists():
        raise CLIError(f"{path}: no such file")
    if p.is_dir():
        raise CLIError(f"{path}: is a directory, not a data file")
    if suffix == ".csv":
        if key is not None:
            raise CLIError(f"--key {key!r} applies to .npz files only, not {path}")
        return _read_csv(p, header, delimiter)
    return _read_array(p, key)


def _split_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [s.strip() for s in text.split(",")]
    return [s for s in items if s]


def _select(table: Table, spec: list[str], option: str) -> list[int]:
    """Column indices for names or integer positions in ``spec``; errors name ``option``."""
    out = []
    for item in spec:
        if item in table.names:
            if table.names.count(item) > 1:
                raise CLIError(f"{table.path}: the header has several columns named {item!r}")
            j = table.names.index(item)
        else:
            try:
                j = int(item)
            except ValueError:
                raise CLIError(
                    f"{table.path}: has no column {item!r} ({option}); its columns are: "
                    f"{', '.join(table.names)}"
                ) from None
            if not -len(table.names) <= j < len(table.names):
                raise CLIError(
                    f"{table.path}: has {len(table.names)} columns; {option} index {j} is out "
                    "of range"
                )
            j %= len(table.names)
        if j in out:
            raise CLIError(f"{option}: column {table.names[j]!r} is listed twice")
        out.append(j)
    if not out:
        raise CLIError(f"{option}: no columns given")
    return out


def _numeric(table: Table, cols: list[int]) -> np.ndarray:
    """The columns ``cols`` as a float64 array; errors name the file, column and line."""
    out = np.empty((table.num_rows, len(cols)))
    for k, j in enumerate(cols):
        col = table.columns[j]
        if isinstance(col, np.ndarray):
            out[:, k] = col
            continue
        for i, s in enumerate(col):
            try:
                out[i, k] = float(s)
            except ValueError:
                what = "an empty value" if not s else f"{s!r}, which is not a number"
                raise CLIError(
                    f"{table.path}: {table.label(j)} is not numeric: {table.where(i)} holds {what}"
                    " (choose the columns with --columns)"
                ) from None
    bad = ~np.isfinite(out)
    if bad.any():
        k = int(np.flatnonzero(bad.any(0))[0])
        i = int(np.flatnonzero(bad[:, k])[0])
        raise CLIError(
            f"{table.path}: {table.label(cols[k])} has {int(bad[:, k].sum())} NaN or infinite "
            f"value(s), the first on {table.where(i)}; clean or drop those rows"
        )
    return out


def _check_constant(table: Table, values: np.ndarray, cols: list[int], option: str) -> None:
    constant = np.ptp(values, axis=0) == 0
    if constant.any():
        k = int(np.flatnonzero(constant)[0])
        raise CLIError(
            f"{table.path}: {table.label(cols[k])} is constant (every value is "
            f"{values[0, k]:g}): it has no density; leave it out with {option}"
        )


# -- writing outputs --------------------------------------------------------------------------


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (after resolving links, hard links included)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_out(
    path: str,
    option: str = "--out",
    suffixes: Sequence[str] | None = None,
    inputs: Sequence[tuple[str | None, str]] = (),
) -> Path:
    """Checks, before any work, that ``path`` can be written; returns it as a Path.

    ``inputs`` holds the command's input files as ``(path or None, what)``: writing over one of
    them would destroy it, so that is refused.
    """
    p = Path(path)
    for source, what in inputs:
        if source is not None and _same_file(p, Path(source)):
            raise CLIError(
                f"{option} {path}: is the input file {source} ({what}); writing there would "
                "destroy it: choose another output path"
            )
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise CLIError(
            f"{option} {path}: unsupported file type {p.suffix or '(none)'!r}; use one of "
            f"{', '.join(suffixes)}"
        )
    parent = p.parent
    if not parent.is_dir():
        raise CLIError(f"{option} {path}: the directory {str(parent)!r} does not exist")
    if p.is_dir():
        raise CLIError(f"{option} {path}: is a directory")
    return p


def _write_table(path: Path, values: np.ndarray, names: list[str]) -> None:
    from .density import _atomic_write

    if path.suffix.lower() == ".npy":
        _atomic_write(path, lambda f: np.save(f, values))
        return

    def write(f: io.BufferedWriter) -> None:
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        w.writerow(names)
        w.writerows([f"{v:.10g}" for v in row] for row in values)
        f.write(text.getvalue().encode())

    _atomic_write(path, write)


# -- the sub-commands -------------------------------------------------------------------------


def _hidden(text: str) -> list[int]:
    try:
        dims = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, e.g. 64,64; got {text!r}"
        ) from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive integers, e.g. 64,64; got {text!r}")
    return dims


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _data_columns(
    table: Table, columns: str | None, context: str | None
) -> tuple[list[int], list[int] | None]:
    ctx = None if context is None else _select(table, _split_list(context), "--context")
    if columns is None:
        cols = [j for j in range(len(table.names)) if j not in (ctx or [])]
        if not cols:
            raise CLIError(f"{table.path}: no columns left for the data after --context")
    else:
        cols = _select(table, _split_list(columns), "--columns")
    for j in cols:
        if ctx is not None and j in ctx:
            raise CLIError(f"column {table.names[j]!r} is in both --columns and --context")
    return cols, ctx


def _cmd_fit(args: argparse.Namespace) -> int:
    from .density import DensityEstimator
    from .flows import FAMILIES, _accepts, lookup_family

    out = _check_out(args.out, inputs=[(args.data, "DATA")])
    table = read_table(args.data, key=args.key, header=args.header, delimiter=args.delimiter)
    cols, ctx = _data_columns(table, args.columns, args.context)
    flow = args.flow or ("maf" if len(cols) >= 2 else "spline")
    name, family = lookup_family(flow)
    x = _numeric(table, cols)
    c = None if ctx is None else _numeric(table, ctx)
    _check_constant(table, x, cols, "--columns")
    if len(cols) < family.min_dim:
        raise CLIError(
            f"--flow {flow} needs at least {family.min_dim} data columns; {table.path} "
            f"gives {len(cols)} (--columns); for one column use --flow spline (the default "
            "for one column), planar or radial"
        )
    if ctx is not None and family.make_conditional is None:
        ok = sorted(k for k, f in FAMILIES.items() if f.make_conditional and f.invertible)
        raise CLIError(
            f"--flow {flow} has no conditional variant, so it cannot take --context; "
            f"use one of {', '.join(ok)}"
        )
    num_val = int(args.val_fraction * table.num_rows)
    if args.val_fraction > 0 and num_val < 1:
        raise CLIError(
            f"{table.path}: too few rows ({table.num_rows}) for a validation split with "
            f"--val-fraction {args.val_fraction}: it needs at least "
            f"{math.ceil(1 / args.val_fraction)} rows, or --val-fraction 0"
        )
    if table.num_rows - num_val < 2:
        raise CLIError(f"{table.path}: too few rows ({table.num_rows}) to fit a density")
    if args.patience is not None and num_val == 0:
        raise CLIError("--patience needs a validation split: set --val-fraction > 0")

    if args.base_components is not None and args.base != "gmm":
        raise CLIError("--base-components needs --base gmm")
    if args.base == "gmm":
        k = args.base_components or 1
        if table.num_rows - num_val < k:
            raise CLIError(
                f"--base-components {k} needs at least {k} training rows; {table.path} "
                f"gives {table.num_rows - num_val}"
            )
    flow_kwargs = None
    if args.residual:
        if not _accepts(family.make_conditional if ctx else family.make, "residual"):
            with_residual = sorted(n for n, f in FAMILIES.items() if _accepts(f.make, "residual"))
            raise CLIError(
                f"--residual is not an option of --flow {flow}; it is one of "
                f"{', '.join(with_residual)}"
            )
        if args.hidden is None or len(set(args.hidden)) != 1 or len(args.hidden) < 2:
            raise CLIError(
                "--residual needs at least two hidden layers of one width (e.g. --hidden "
                f"64,64,64,64,64), got --hidden {_show_hidden(args.hidden)}"
            )
        flow_kwargs = {"residual": True}
    est = DensityEstimator(
        flow=flow,
        flow_kwargs=flow_kwargs,
        num_layers=args.layers,
        hidden_dims=None if args.hidden is None else tuple(args.hidden),
        standardize=not args.no_standardize,
        num_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        val_fraction=args.val_fraction,
        patience=args.patience,
        eval_every=args.eval_every,
        seed=args.seed,
        progress=not args.no_progress,
        dtype=args.dtype,
        base=args.base,
        base_components=args.base_components or 1,
        base_covariance=args.base_covariance,
    )
    t0 = time.perf_counter()
    est.fit(
        x,
        c,
        feature_names=[table.names[j] for j in cols],
        context_names=None if ctx is None else [table.names[j] for j in ctx],
    )
    seconds = time.perf_counter() - t0
    est.info_.update(
        {
            "data": str(args.data),
            "key": args.key,
            "header": table.header,
            "fit_seconds": round(seconds, 3),
        }
    )
    est.save(out)

    h = est.history_
    what = f"{name} ({args.layers} layers{_describe_hidden(est)})"
    if args.base == "gmm":
        what += f" on a {est.base_components}-component Gaussian-mixture base"
    rows = f"{est.info_['num_train']} training + {est.info_['num_val']} validation rows"
    given = "" if ctx is None else f" given {len(ctx)} context column(s)"
    print(
        f"fitted {what} to {rows} x {len(cols)} columns{given} of {table.path} in {seconds:.1f}s"
    )
    if h.best_val_nll is not None:
        early = ", stopped early" if h.stopped_early else ""
        print(
            f"best validation NLL {h.best_val_nll:.4f} nats at step {h.best_step} of "
            f"{h.num_steps}{early}"
        )
    else:
        print(f"final training NLL {h.train_loss[-1]:.4f} nats after {h.num_steps} steps")
    print(f"saved {out}")
    return 0


def _show_hidden(hidden: Sequence[int] | None) -> str:
    return "(the family's default)" if hidden is None else ",".join(map(str, hidden))


def _describe_hidden(est: DensityEstimator) -> str:
    """``", hidden 64,64"`` for a family with networks, nothing for one without."""
    from .density import _DEFAULT_HIDDEN
    from .flows import _accepts, lookup_family

    _, family = lookup_family(est.flow)
    make = family.make if est.context_dim_ is None else family.make_conditional
    if not _accepts(make, "hidden_dims"):
        return ""
    hidden = est.hidden_dims if est.hidden_dims is not None else _DEFAULT_HIDDEN
    return f", hidden {','.join(map(str, hidden))}"


def _load_model(path: str) -> DensityEstimator:
    from .density import DensityEstimator, ModelFileError

    try:
        return DensityEstimator.load(path)
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file (MODEL)") from None
    except ModelFileError as e:
        raise CLIError(str(e)) from None


def _model_columns(
    est: DensityEstimator, table: Table, columns: str | None, context: str | None
) -> tuple[list[int], list[int] | None]:
    """The data (and context) columns of ``table`` that the model ``est`` expects."""
    if columns is not None or context is not None:
        cols, ctx = _data_columns(table, columns, context)
    else:
        names = est.feature_names_in_ or [str(j) for j in range(est.n_features_in_)]
        cnames = est.context_names_in_
        if est.context_dim_ is not None and cnames is None:
            cnames = [str(j) for j in range(est.context_dim_)]
        header = est.info_.get("header", est.feature_names_in_ is not None)
        if header and not table.header:
            raise CLIError(
                f"{table.path}: has no header, but the model's columns are named "
                f"{', '.join(names + (cnames or []))}; give them with --columns (and --context) "
                "as positions"
            )
        cols = _select(table, names, "--columns (from the model)")
        ctx = None if cnames is None else _select(table, cnames, "--context (from the model)")
    if len(cols) != est.n_features_in_:
        raise CLIError(
            f"--columns: the model takes {est.n_features_in_} data columns, got {len(cols)}"
        )
    if (ctx is None) != (est.context_dim_ is None):
        if ctx is None:
            raise CLIError(
                f"the model is conditional on {est.context_dim_} column(s): give --context"
            )
        raise CLIError("--context: the model was fitted without a context")
    if ctx is not None and len(ctx) != est.context_dim_:
        raise CLIError(f"--context: the model takes {est.context_dim_} columns, got {len(ctx)}")
    return cols, ctx


def _read_model_data(
    args: argparse.Namespace, est: DensityEstimator
) -> tuple[Table, np.ndarray, np.ndarray | None]:
    table = read_table(args.data, key=args.key, header=args.header, delimiter=args.delimiter)
    cols, ctx = _model_columns(est, table, args.columns, args.context)
    x = _numeric(table, cols)
    c = None if ctx is None else _numeric(table, ctx)
    return table, x, c


def _cmd_score(args: argparse.Namespace) -> int:
    out = (
        None
        if args.out is None
        else _check_out(
            args.out,
            suffixes=(".csv", ".npy"),
            inputs=[(args.model, "MODEL"), (args.data, "DATA")],
        )
    )
    est = _load_model(args.model)
    table, x, c = _read_model_data(args, est)
    logp = est.score_samples(x, c)
    if out is not None and out.suffix.lower() == ".npy":
        from .density import _atomic_write

        _atomic_write(out, lambda f: np.save(f, logp))
    elif out is not None:
        _write_table(out, logp[:, None], ["log_prob"])
    n = len(logp)
    nll = -logp.mean()
    se = logp.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    print(f"{table.path}: {n} rows, mean NLL {nll:.4f} ± {se:.4f} nats (± one standard error)")
    if out is not None:
        print(f"wrote {out}")
    return 0


def _parse_values(text: str, size: int, option: str) -> np.ndarray:
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


def _cmd_sample(args: argparse.Namespace) -> int:
    out = _check_out(
        args.out,
        suffixes=(".csv", ".npy"),
        inputs=[(args.model, "MODEL"), (args.context_data, "--context-data")],
    )
    est = _load_model(args.model)
    names = est.feature_names_in_ or [str(j) for j in range(est.n_features_in_)]
    cnames = est.context_names_in_ or [str(j) for j in range(est.context_dim_ or 0)]
    if est.context_dim_ is None:
        if args.context is not None or args.context_data is not None:
            raise CLIError(f"{args.model}: the model is not conditional; drop --context")
        values = est.sample(args.n or 1000, seed=args.seed)
        header = names
    else:
        if (args.context is None) == (args.context_data is None):
            raise CLIError(
                f"{args.model}: the model is conditional on ({', '.join(cnames)}): give "
                "either --context VALUES or --context-data FILE"
            )
        if args.context is not None:
            c = _parse_values(args.context, est.context_dim_, "--context")
            x = est.sample(args.n or 1000, c, seed=args.seed)
            c = np.broadcast_to(c, (x.shape[0], c.size))
        else:
            table = read_table(
                args.context_data, key=args.key, header=args.header, delimiter=args.delimiter
            )
            option = "--context-data (the model's context columns)"
            if table.header:
                ctx = _select(table, cnames, option)
            elif len(table.names) == est.context_dim_:
                ctx = list(range(est.context_dim_))  # a file of the context columns only
            elif est.info_.get("header") is False:
                ctx = _select(table, cnames, option)  # positions in the training file's layout
            else:
                raise CLIError(
                    f"{table.path}: has no header and {len(table.names)} columns, but the model "
                    f"takes the context columns {', '.join(cnames)}: add a header line"
                )
            rows = _numeric(table, ctx)
            n = args.n or 1
            x = est.sample(n, rows, seed=args.seed).reshape(-1, est.n_features_in_)
            c = np.tile(rows, (n, 1))
        values = np.concatenate([x, c], axis=1)
        header = names + cnames
    if not np.isfinite(values).all():
        print(
            f"warning: {int((~np.isfinite(values)).any(1).sum())} sampled row(s) are not finite",
            file=sys.stderr,
        )
    _write_table(out, values, header)
    print(f"wrote {values.shape[0]} samples to {out}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from matplotlib.figure import Figure

    fig = Figure()
    formats = tuple(f".{k}" for k in fig.canvas.get_supported_filetypes())
    out = _check_out(
        args.out, suffixes=formats, inputs=[(args.model, "MODEL"), (args.data, "DATA")]
    )
    est = _load_model(args.model)
    table, x, c = _read_model_data(args, est)
    rng = np.random.default_rng(args.seed)
    if x.shape[0] > args.n:
        keep = rng.choice(x.shape[0], args.n, replace=False)
        x = x[keep]
        c = None if c is None else c[keep]
    if c is None:
        s = est.sample(x.shape[0], seed=args.seed)
    else:
        s = est.sample(1, c, seed=args.seed)[0]  # one draw at each data row's context
    s = s[np.isfinite(s).all(1)]
    names = est.feature_names_in_ or [str(j) for j in range(est.n_features_in_)]
    k = min(len(names), args.max_columns)
    _draw(fig, x[:, :k], s[:, :k], names[:k], est.history_, table.path)
    from .density import _atomic_write

    fmt = out.suffix.lower()[1:]
    _atomic_write(out, lambda f: fig.savefig(f, format=fmt, dpi=args.dpi))
    shown = "" if k == len(names) else f" (first {k} of {len(names)} columns, see --max-columns)"
    print(f"wrote {out}: pair plot of {x.shape[0]} data rows against samples{shown}")
    return 0


def _draw(
    fig: Figure, x: np.ndarray, s: np.ndarray, names: list[str], history: FitHistory, source: str
) -> None:
    k = x.shape[1]
    size = max(2.2 * k, 4.0)
    fig.set_size_inches(size, size + 2.4)
    grid = fig.add_gridspec(k + 1, k, height_ratios=[1.0] * k + [1.1], hspace=0.35, wspace=0.3)
    lo = np.minimum(np.percentile(x, 0.5, 0), np.percentile(s, 0.5, 0))
    hi = np.maximum(np.percentile(x, 99.5, 0), np.percentile(s, 99.5, 0))
    pad = 0.05 * np.where(hi > lo, hi - lo, 1.0)
    lo, hi = lo - pad, hi + pad
    for i in range(k):
        for j in range(k):
            if j > i:
                continue
            ax = fig.add_subplot(grid[i, j])
            if i == j:
                bins = np.linspace(lo[i], hi[i], 40)
                ax.hist(x[:, i], bins, density=True, alpha=0.5, color="C0", label="data")
                ax.hist(s[:, i], bins, density=True, histtype="step", color="C1", label="model")
                ax.set_yticks([])
                if i == 0:
                    ax.legend(fontsize="small", frameon=False)
            else:
                ax.scatter(x[:, j], x[:, i], s=2, alpha=0.3, color="C0", linewidths=0)
                ax.scatter(s[:, j], s[:, i], s=2, alpha=0.3, color="C1", linewidths=0)
                ax.set_ylim(lo[i], hi[i])
            ax.set_xlim(lo[j], hi[j])
            if i == k - 1:
                ax.set_xlabel(names[j])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
            ax.tick_params(labelsize="x-small")
    ax = fig.add_subplot(grid[k, :])
    loss = np.asarray(history.train_loss)
    if loss.size:
        steps = np.arange(1, loss.size + 1)
        ax.plot(steps, loss, color="C0", alpha=0.3, lw=0.8, label="train (minibatch)")
        w = max(1, loss.size // 50)
        if w > 1:
            smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1 :], smooth, color="C0", lw=1.2, label=f"train ({w}-step mean)")
    if history.val_steps:
        ax.plot(history.val_steps, history.val_nll, "o-", ms=3, color="C1", label="validation")
        if history.best_step is not None:
            ax.axvline(history.best_step, color="0.5", ls=":", lw=1, label="best")
    if loss.size:
        finite = np.concatenate([loss, np.asarray(history.val_nll, dtype=float)])
        finite = finite[np.isfinite(finite)]
        ax.set_ylim(np.percentile(finite, 1) - 0.1, np.percentile(finite, 95) + 0.1)
    ax.set_xlabel("step")
    ax.set_ylabel("NLL (nats)")
    ax.legend(fontsize="small", frameon=False)
    ax.set_title("training curve", fontsize="medium")
    fig.suptitle(f"{source}: data (blue) and model samples (orange)", fontsize="medium")


# -- the parser -------------------------------------------------------------------------------


def _add_data_options(p: argparse.ArgumentParser, columns_help: str) -> None:
    p.add_argument("--key", help="the array to read from an .npz file")
    p.add_argument(
        "--header",
        choices=("auto", "yes", "no"),
        default="auto",
        help="whether a CSV's first line names the columns (auto: if any field is not a number)",
    )
    p.add_argument("--delimiter", default=",", help="the CSV field separator (default: ',')")
    p.add_argument("--columns", metavar="COLS", help=columns_help)
    p.add_argument(
        "--context",
        metavar="COLS",
        help="the context columns (names or 0-based positions, comma-separated)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Returns the ``pyro-flows`` argument parser with its four sub-commands."""
    from . import __version__
    from .flows import _ALIASES, FAMILIES

    flows = sorted(
        [k for k, f in FAMILIES.items() if f.invertible]
        + [a for a, k in _ALIASES.items() if FAMILIES[k].invertible]
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fit normalizing flows to data files; score, sample and plot them.",
        epilog=f"Run '{PROG} COMMAND --help' for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    fit = sub.add_parser(
        "fit",
        help="fit a flow to a data file and save the model",
        description="Fit a flow by maximum likelihood to the rows of DATA and save it. "
        "Columns are standardised inside the model, so scores are in the data's units.",
    )
    fit.add_argument("data", metavar="DATA", help="a .csv, .npy or .npz file, one row per point")
    fit.add_argument("--out", required=True, help="where to write the model (e.g. model.pt)")
    _add_data_options(
        fit, "the data columns (names or 0-based positions; default: all but --context)"
    )
    fit.add_argument(
        "--flow",
        default=None,
        choices=flows,
        metavar="FAMILY",
        help=f"the flow family: {', '.join(flows)} (default: maf, or spline for one data column)",
    )
    fit.add_argument("--layers", type=_positive_int, default=5, help="number of flow layers")
    fit.add_argument(
        "--hidden",
        type=_hidden,
        default=None,
        help="hidden sizes of each layer's network, e.g. 64,64 (default: 64,64 for the "
        "families with networks; spline, planar and radial have none)",
    )
    fit.add_argument(
        "--residual",
        action="store_true",
        help="residual conditioner networks (maf, iaf, affine_coupling; hidden layers of one "
        "width, e.g. --hidden 64,64,64,64,64): each layer after the first adds to its input",
    )
    fit.add_argument("--steps", type=_positive_int, default=1000, help="Adam steps (default 1000)")
    fit.add_argument("--batch-size", type=_positive_int, default=512)
    fit.add_argument("--lr", type=_positive_float, default=1e-3, help="peak learning rate")
    fit.add_argument(
        "--weight-decay", type=float, default=0.0, help="Adam's L2 penalty (default 0)"
    )
    fit.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.1,
        help="fraction of rows held out for validation; the best validation model is kept "
        "(default 0.1; 0 for none)",
    )
    fit.add_argument(
        "--patience",
        type=_positive_int,
        help="stop after this many validation checks without improvement (early stopping)",
    )
    fit.add_argument(
        "--eval-every", type=_positive_int, default=50, help="steps between validation checks"
    )
    fit.add_argument("--seed", type=int, default=0, help="seed of init, split and batches")
    fit.add_argument(
        "--no-standardize", action="store_true", help="do not standardise the columns"
    )
    fit.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    fit.add_argument(
        "--base",
        choices=("normal", "gmm"),
        default="normal",
        help="the base distribution: normal, N(0, I) (default), or gmm, a learnable Gaussian "
        "mixture initialised by EM and trained with the flow",
    )
    fit.add_argument(
        "--base-components",
        type=_positive_int,
        default=None,
        metavar="K",
        help="number of mixture components of --base gmm (default 1)",
    )
    fit.add_argument(
        "--base-covariance",
        choices=("full", "diag"),
        default="full",
        help="the mixture's covariances (--base gmm; default full)",
    )
    fit.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    fit.set_defaults(run=_cmd_fit)

    sample = sub.add_parser(
        "sample",
        help="draw samples from a saved model",
        description="Draw rows from a saved model into a .csv (with a header) or .npy file. "
        "For a conditional model, the context columns are written after the data columns.",
    )
    sample.add_argument("model", metavar="MODEL", help="a model written by 'fit'")
    sample.add_argument(
        "-n",
        type=_positive_int,
        help="how many samples (default 1000; with --context-data, per context row, default 1)",
    )
    sample.add_argument("--out", required=True, help="where to write the samples (.csv or .npy)")
    sample.add_argument(
        "--context", metavar="VALUES", help="one context, as comma-separated numbers"
    )
    sample.add_argument(
        "--context-data",
        metavar="FILE",
        help="a data file holding the model's context columns: samples for each of its rows",
    )
    sample.add_argument("--key", help="the array to read from an .npz --context-data file")
    sample.add_argument("--header", choices=("auto", "yes", "no"), default="auto")
    sample.add_argument("--delimiter", default=",")
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(run=_cmd_sample)

    score = sub.add_parser(
        "score",
        help="log-density of each row of a data file",
        description="Write log q(x) of each row of DATA, in nats in the data's units, and "
        "print the mean negative log-likelihood with its standard error.",
    )
    score.add_argument("model", metavar="MODEL", help="a model written by 'fit'")
    score.add_argument("data", metavar="DATA", help="a .csv, .npy or .npz file")
    score.add_argument(
        "--out", help="where to write the log-densities (.csv with a header, or a 1-D .npy)"
    )
    _add_data_options(score, "the data columns (default: the model's, found by name)")
    score.set_defaults(run=_cmd_score)

    plot = sub.add_parser(
        "plot",
        help="pair plot of data against model samples, and the training curve",
        description="Draw a pair plot of DATA against as many model samples (drawn at each "
        "row's context for a conditional model), and the training curve, into one figure.",
    )
    plot.add_argument("model", metavar="MODEL", help="a model written by 'fit'")
    plot.add_argument("data", metavar="DATA", help="a .csv, .npy or .npz file")
    plot.add_argument("--out", required=True, help="the figure (.png, .pdf, .svg, ...)")
    _add_data_options(plot, "the data columns (default: the model's, found by name)")
    plot.add_argument(
        "-n", type=_positive_int, default=2000, help="at most this many rows (default 2000)"
    )
    plot.add_argument(
        "--max-columns", type=_positive_int, default=6, help="plot at most this many columns"
    )
    plot.add_argument("--dpi", type=_positive_int, default=100)
    plot.add_argument("--seed", type=int, default=0)
    plot.set_defaults(run=_cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``pyro-flows`` command line; returns the exit status.

    0 on success, 1 for a user error (the message, one line on stderr, names the file, column
    or option), 2 for a malformed command line, 130 when interrupted.

    Arguments:
        argv: The arguments after the program name (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a malformed command line
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted; no output was written", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError, FloatingPointError) as e:
        if args.traceback:
            raise
        message = (
            str(e)
            if not isinstance(e, OSError) or not e.filename
            else (f"{e.filename}: {e.strerror}")
        )
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 1
