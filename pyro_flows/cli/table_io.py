"""Tables in and out of the command line: reading data files, choosing columns, atomic writes.

Data files are ``.csv`` (with or without a header line), ``.npy`` (a 2-D array) or ``.npz``
(one array of it, chosen with ``--key``). Every problem raises :class:`CLIError` with one line
naming the file, line, column or option. Outputs go through
:func:`pyro_flows.density._atomic_write`: a temporary file renamed when complete.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

__all__ = [
    "CLIError",
    "Table",
    "check_out",
    "data_columns",
    "numeric",
    "open_npy",
    "read_table",
    "use_memmap",
    "select",
    "split_list",
    "write_array",
    "write_table",
]

DATA_SUFFIXES = (".csv", ".npy", ".npz")


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
    if suffix not in DATA_SUFFIXES:
        raise CLIError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; use one of "
            f"{', '.join(DATA_SUFFIXES)}"
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


#: ``--memmap auto`` maps a ``.npy`` file of more than this many bytes instead of reading it.
MEMMAP_BYTES = 1 << 30


def use_memmap(path: str, choice: str, key: str | None) -> bool:
    """Whether to open ``path`` memory-mapped: ``--memmap yes``, or ``auto`` for a large .npy.

    Example:
        >>> use_memmap("data.csv", "auto", None)
        False
    """
    p = Path(path)
    npy = p.suffix.lower() == ".npy" and key is None
    if choice == "yes" and not npy:
        raise CLIError(f"--memmap yes applies to .npy files only, not {path}")
    if choice == "no" or not npy:
        return False
    return choice == "yes" or (p.is_file() and p.stat().st_size > MEMMAP_BYTES)


def open_npy(path: str) -> tuple[np.ndarray, Table]:
    """Opens a ``.npy`` file memory-mapped; returns the map and a table of its column names.

    No value is read: the map is read later a minibatch or a chunk at a time. The table's
    ``columns`` are views into the map, for choosing columns by position.
    """
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{path}: no such file")
    with open(p, "rb") as f:
        if not f.read(6).startswith(_NPY_MAGIC):
            raise CLIError(f"{path}: not a numpy file (it does not start with the .npy signature)")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise _unreadable(p, e) from None
    if arr.dtype.kind not in "iuf":
        raise CLIError(f"{path}: holds {arr.dtype} values, not real numbers")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CLIError(f"{path}: must be a non-empty 2-D array (rows x columns), got {arr.shape}")
    names = [str(j) for j in range(arr.shape[1])]
    return arr, Table(str(path), names, False, [arr[:, j] for j in range(arr.shape[1])], None)


# -- choosing columns ------------------------------------------------------------------------


def split_list(text: str | None) -> list[str] | None:
    """Splits an option's comma-separated list, dropping empty items; None stays None."""
    if text is None:
        return None
    items = [s.strip() for s in text.split(",")]
    return [s for s in items if s]


def select(table: Table, spec: list[str], option: str) -> list[int]:
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


def numeric(table: Table, cols: list[int]) -> np.ndarray:
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


def data_columns(
    table: Table, columns: str | None, context: str | None
) -> tuple[list[int], list[int] | None]:
    """The data and context columns chosen by ``--columns`` and ``--context``.

    By default the data are every column that is not a context column.
    """
    ctx = None if context is None else select(table, split_list(context), "--context")
    if columns is None:
        cols = [j for j in range(len(table.names)) if j not in (ctx or [])]
        if not cols:
            raise CLIError(f"{table.path}: no columns left for the data after --context")
    else:
        cols = select(table, split_list(columns), "--columns")
    for j in cols:
        if ctx is not None and j in ctx:
            raise CLIError(f"column {table.names[j]!r} is in both --columns and --context")
    return cols, ctx


# -- writing outputs --------------------------------------------------------------------------


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (after resolving links, hard links included)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_out(
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


def write_array(path: Path, values: np.ndarray) -> None:
    """Writes ``values`` to the ``.npy`` file ``path``, atomically."""
    from ..density import _atomic_write

    _atomic_write(path, lambda f: np.save(f, values))


def write_table(path: Path, values: np.ndarray, names: list[str]) -> None:
    """Writes the rows of ``values`` to ``path``: a CSV with a header line, or a ``.npy``."""
    from ..density import _atomic_write

    if path.suffix.lower() == ".npy":
        write_array(path, values)
        return

    def write(f: IO[bytes]) -> None:
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        w.writerow(names)
        w.writerows([f"{v:.10g}" for v in row] for row in values)
        f.write(text.getvalue().encode())

    _atomic_write(path, write)
