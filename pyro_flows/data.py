r"""Rows that need not fit in memory: memory-mapped arrays, datasets, streaming statistics.

The training helpers read their data through :class:`Rows`, which gathers a minibatch of
rows by index and casts it (on the CPU) just before it moves to the model's device. An
in-memory tensor or array is read in place; a memory-mapped ``.npy``
(``np.load(path, mmap_mode="r")``) is read one minibatch at a time, so a table larger than
the memory trains at the cost of the rows each step touches; a
:class:`torch.utils.data.Dataset` (``x`` or ``(x, c)`` per item) is gathered item by item,
or through its ``__getitems__``.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._validation import as_rows

__all__ = [
    "CHUNK_ROWS",
    "MemmapTable",
    "Rows",
    "check_finite_rows",
    "column_moments",
    "is_out_of_core",
    "load_npy",
    "release_pages",
    "streaming_loc_scale",
]

#: Rows per chunk of a streaming pass.
CHUNK_ROWS = 65536
#: Rows per piece of a gather from a memmap.
_GATHER_ROWS = 256
#: Values (rows x columns) per chunk of a streaming pass: 8 MB of float64.
_CHUNK_VALUES = 1_000_000
#: The number of values (rows x columns) of the subsample that gives the quantiles.
_SUBSAMPLE_VALUES = 2_000_000


def is_out_of_core(x: Any) -> bool:
    """Whether ``x`` is read by minibatch rather than held in memory: a memmap or a Dataset."""
    return isinstance(x, np.memmap | Dataset)


def load_npy(path: Any) -> np.ndarray:
    """Opens a ``.npy`` file memory-mapped, read-only: rows are read when indexed.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     np.save(pathlib.Path(d) / "x.npy", np.ones((3, 2)))
        ...     x = load_npy(pathlib.Path(d) / "x.npy")
        ...     type(x).__name__, x.shape
        ('memmap', (3, 2))
    """
    return np.load(path, mmap_mode="r", allow_pickle=False)


def release_pages(x: np.ndarray) -> None:
    """Unmaps the pages of a memmap that reading it brought in (best effort; Linux).

    The data stay in the operating system's file cache, which it reclaims at need, but no
    longer count in this process's resident memory; so a streaming pass over a table larger
    than the memory leaves the process's footprint as it was.
    """
    mm = getattr(x, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    with contextlib.suppress(OSError, ValueError):
        mm.madvise(mmap.MADV_DONTNEED)


def check_finite_rows(x: np.ndarray, name: str, chunk: int = CHUNK_ROWS) -> None:
    """Raises a ValueError naming ``name`` if ``x`` holds NaN or inf, reading it in chunks."""
    for i in range(0, x.shape[0], chunk):
        block = np.asarray(x[i : i + chunk])
        release_pages(x)
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(block.sum()):
                continue
        bad = ~np.isfinite(block)
        if bad.any():
            r, j = np.argwhere(bad)[0]
            raise ValueError(
                f"{name} has a NaN or infinite value (row {i + int(r)}, column {int(j)}); "
                "clean or drop those rows"
            )


class _FileReader:
    """Reads rows of a memmap's file with ``pread``, without mapping its pages.

    Rows gathered through a map stay resident (on a file system with huge pages, 2 MB per
    row read), so the rows of a memmap are read from its file instead.
    """

    def __init__(self, x: np.memmap) -> None:
        mm = x._mmap
        start = x.offset - x.offset % mmap.ALLOCATIONGRANULARITY
        self.base = x.ctypes.data - np.frombuffer(mm, np.uint8).ctypes.data + start
        self.stride = x.strides[0]
        self.shape_dtype = (x.shape[1], x.dtype)
        self.fd = os.open(x.filename, os.O_RDONLY)

    @staticmethod
    def usable(x: np.ndarray) -> bool:
        """Whether ``x`` is a view of a file whose rows lie contiguously in it."""
        return (
            isinstance(x, np.memmap)
            and getattr(x, "_mmap", None) is not None
            and bool(getattr(x, "filename", None))
            and x.strides[1] == x.dtype.itemsize
            and hasattr(os, "preadv")
        )

    def rows(self, idx: np.ndarray) -> np.ndarray:
        dim, dtype = self.shape_dtype
        out = np.empty((len(idx), dim), dtype=dtype)
        for j, i in enumerate(idx.tolist()):
            self._read(out[j], self.base + i * self.stride)
        return out

    def block(self, start: int, stop: int) -> np.ndarray:
        dim, dtype = self.shape_dtype
        out = np.empty((stop - start, dim), dtype=dtype)
        if self.stride == dim * dtype.itemsize:
            self._read(out, self.base + start * self.stride)
            return out
        return self.rows(np.arange(start, stop))

    def _read(self, out: np.ndarray, pos: int) -> None:
        view = memoryview(out).cast("B")
        while view.nbytes:
            n = os.preadv(self.fd, [view], pos)
            if n <= 0:
                raise OSError(f"could not read the data file at byte {pos}")
            view, pos = view[n:], pos + n

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.fd)


class Rows:
    """Rows of a table, gathered by index: from a tensor, an array, a memmap or a Dataset.

    Arguments:
        data: A 2-D tensor or array (a memmap is read lazily, checked for NaN in chunks), or
            a :class:`~torch.utils.data.Dataset` whose items are rows ``x`` or pairs ``(x, c)``.
        name: The argument's name, for messages.
        part: For a Dataset of pairs, which element: 0 for ``x``, 1 for ``c``.

    Example:
        >>> rows = Rows(np.arange(6.0).reshape(3, 2), "data")
        >>> len(rows), rows.dim, rows.gather(torch.tensor([2, 0])).tolist()
        (3, 2, [[4.0, 5.0], [0.0, 1.0]])
    """

    def __init__(self, data: Any, name: str, part: int | None = None) -> None:
        self.name, self.part = name, part
        self.dataset: Dataset | None = None
        self.array: np.ndarray | None = None
        self.tensor: Tensor | None = None
        self.reader: _FileReader | None = None
        if isinstance(data, Dataset):
            self.dataset = data
            first = self._item(0)
            self.num_rows, self.dim = len(data), first.shape[-1]
            self.dtype = first.dtype
        elif isinstance(data, np.memmap):
            if data.ndim != 2 or data.dtype.kind != "f":
                raise ValueError(
                    f"{name} must be a 2-D floating-point array, got shape {data.shape} and "
                    f"dtype {data.dtype}"
                )
            self.array = data
            self.reader = _FileReader(data) if _FileReader.usable(data) else None
            self.num_rows, self.dim = data.shape
            self._check_finite()
            self.dtype = torch.from_numpy(np.empty(0, data.dtype)).dtype
        else:
            self.tensor = as_rows(data, name)
            self.num_rows, self.dim = self.tensor.shape
            self.dtype = self.tensor.dtype

    def __len__(self) -> int:
        return self.num_rows

    def _item(self, i: int) -> Tensor:
        item = self.dataset[i]
        if isinstance(item, tuple | list):
            item = item[self.part or 0]
        elif self.part:
            raise ValueError(f"{self.name} items must be (x, c) pairs when a context is used")
        return torch.as_tensor(item)

    def gather(self, idx: Tensor) -> Tensor:
        """The rows ``idx`` (a 1-D index tensor) as a CPU tensor, in their own dtype."""
        if self.tensor is not None:
            return self.tensor[idx.to(self.tensor.device)]
        if self.reader is not None:
            return torch.from_numpy(self.reader.rows(idx.numpy()))
        if self.array is not None:
            # in pieces, so that the pages one gather maps stay few: each row read maps its page
            # and, by the kernel's fault-around, up to 15 cached neighbours (64 kB)
            flat = idx.numpy()
            rows = np.empty((len(flat), self.dim), dtype=self.array.dtype)
            for j in range(0, len(flat), _GATHER_ROWS):
                rows[j : j + _GATHER_ROWS] = self.array[flat[j : j + _GATHER_ROWS]]
                release_pages(self.array)
            return torch.from_numpy(rows)
        getitems = getattr(self.dataset, "__getitems__", None)
        if callable(getitems):
            items = getitems(idx.tolist())
            if isinstance(items, Tensor):
                return items
            if (
                isinstance(items, tuple | list)
                and len(items) == 2
                and isinstance(items[0], Tensor)
            ):
                if items[0].dim() == 2:  # a batch of pairs given as (x, c)
                    return items[self.part or 0]
            rows = [i[self.part or 0] if isinstance(i, tuple | list) else i for i in items]
            return torch.stack([torch.as_tensor(r) for r in rows])
        return torch.stack([self._item(int(i)) for i in idx])

    def chunks(self, idx: Tensor | None, chunk: int | None = None) -> Iterator[Tensor]:
        """The rows ``idx`` (all rows when None), in file order, in chunks of ``chunk`` rows.

        A memmap is read front to back (a row mask picks ``idx``), so a pass over it reads
        each page once; ``chunk`` defaults to about 8 MB of float64 rows.
        """
        chunk = chunk or max(1024, _CHUNK_VALUES // self.dim)
        if self.array is None:
            n = self.num_rows if idx is None else len(idx)
            for i in range(0, n, chunk):
                sel = torch.arange(i, min(i + chunk, n), device="cpu")
                yield self.gather(sel if idx is None else idx[sel])
            return
        mask = None
        if idx is not None:
            mask = np.zeros(self.num_rows, dtype=bool)
            mask[idx.numpy()] = True
        for i in range(0, self.num_rows, chunk):
            stop = min(i + chunk, self.num_rows)
            if self.reader is not None:
                block = self.reader.block(i, stop)
            else:
                block = np.array(self.array[i:stop])
                release_pages(self.array)
            yield torch.from_numpy(block if mask is None else block[mask[i:stop]])

    def _check_finite(self) -> None:
        """Raises a ValueError naming the first row and column that hold NaN or inf."""
        done = 0
        for block in self.chunks(None):
            b = block.numpy()
            with np.errstate(over="ignore", invalid="ignore"):
                ok = np.isfinite(b.sum())
            if not ok and not np.isfinite(b).all():
                r, j = np.argwhere(~np.isfinite(b))[0]
                raise ValueError(
                    f"{self.name} has a NaN or infinite value (row {done + int(r)}, column "
                    f"{int(j)}); clean or drop those rows"
                )
            done += b.shape[0]


def streaming_loc_scale(
    rows: Rows, idx: Tensor | None = None, max_rows: int | None = None, seed: int = 0
) -> tuple[Tensor, Tensor]:
    r"""The location and scale of :func:`~pyro_flows.transforms.robust_loc_scale`, streamed.

    With at most ``max_rows`` rows, they are read at once and the statistics are exact. With
    more, the standard deviation comes from one streaming pass in chunks (Chan's pairwise
    update of the mean and sum of squares, in float64), and the median and quantiles from a
    seeded uniform subsample of ``max_rows`` rows (the standard error of its median, about
    :math:`\sigma \sqrt{\pi / (2 n)}`, is :math:`0.6\%` of :math:`\sigma` at
    :math:`n = 40\,000`).

    Arguments:
        rows: The table.
        idx: The rows to use (all when None).
        max_rows: The largest number of rows read at once; by default as many as hold
            2,000,000 values (40,000 rows of 50 columns), and at least 10,000.
        seed: Seeds the subsample.

    Example:
        >>> x = torch.randn(1000, 2, dtype=torch.float64) * 3 + 1
        >>> loc, scale = streaming_loc_scale(Rows(x, "x"), max_rows=100)
        >>> bool(abs(scale - x.std(0)).max() < 0.5)
        True
    """
    from .transforms.standardization import _NORMAL_96, _NORMAL_IQR, robust_loc_scale

    n = rows.num_rows if idx is None else len(idx)
    if max_rows is None:
        max_rows = max(10_000, _SUBSAMPLE_VALUES // rows.dim)
    if n <= max_rows:
        sel = torch.arange(n, device="cpu") if idx is None else idx
        return robust_loc_scale(rows.gather(sel))
    sd = column_moments(rows.chunks(idx))["std"]
    g = torch.Generator().manual_seed(seed)
    sub = torch.randperm(n, generator=g, device="cpu")[:max_rows].sort().values
    if idx is not None:
        sub = idx[sub]
    v = rows.gather(sub).double().numpy()
    q02, q1, loc, q3, q98 = np.quantile(v, [0.02, 0.25, 0.5, 0.75, 0.98], axis=0)
    iqr = (q3 - q1) / _NORMAL_IQR
    bulk = np.where(iqr > 0, np.minimum(sd, iqr), sd)
    scale = np.maximum(bulk, (q98 - q02) / _NORMAL_96)
    scale = np.where(scale > 0, scale, 1.0)
    return torch.from_numpy(np.array(loc)), torch.from_numpy(scale)


class MemmapTable(Dataset):
    """Chosen columns and rows of a memory-mapped ``.npy`` table, read with ``pread``.

    A :class:`~torch.utils.data.Dataset` whose items are rows (or ``(x, c)`` pairs when
    ``context_columns`` are given), as float64 tensors; ``__getitems__`` reads a minibatch at
    once, :meth:`blocks` the rows in file order for a streaming pass. Nothing is read until
    asked for, so a table larger than the memory costs only the rows in use.

    Arguments:
        array: A 2-D memmap (:func:`load_npy`).
        columns: The data columns (default: all).
        context_columns: The context columns, or None.
        index: The rows (default: all), e.g. a training split.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     np.save(pathlib.Path(d) / "t.npy", np.arange(12.0).reshape(4, 3))
        ...     t = MemmapTable(load_npy(pathlib.Path(d) / "t.npy"), [0, 2], [1])
        ...     x, c = t.__getitems__([3, 1])
        ...     len(t), x.tolist(), c.tolist()
        (4, [[9.0, 11.0], [3.0, 5.0]], [[10.0], [4.0]])
    """

    def __init__(
        self,
        array: np.ndarray,
        columns: list[int] | None = None,
        context_columns: list[int] | None = None,
        index: np.ndarray | None = None,
    ) -> None:
        if array.ndim != 2 or array.dtype.kind not in "iuf":
            raise ValueError(
                f"a table must be a 2-D array of numbers, got shape {array.shape} and dtype "
                f"{array.dtype}"
            )
        self.array = array
        self.columns = list(range(array.shape[1])) if columns is None else list(columns)
        self.context_columns = None if context_columns is None else list(context_columns)
        self.index = index
        self.reader = _FileReader(array) if _FileReader.usable(array) else None

    def subset(self, index: np.ndarray) -> MemmapTable:
        """The rows ``index`` of this table (positions in it), as a table."""
        index = np.asarray(index, dtype=np.int64)
        base = index if self.index is None else self.index[index]
        return MemmapTable(self.array, self.columns, self.context_columns, base)

    def __len__(self) -> int:
        return self.array.shape[0] if self.index is None else len(self.index)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        if self.reader is not None:
            return self.reader.rows(rows)
        out = np.array(self.array[rows])
        release_pages(self.array)
        return out

    def _split(self, block: np.ndarray) -> Tensor | tuple[Tensor, Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(block[:, self.columns], dtype=np.float64))
        if self.context_columns is None:
            return x
        c = block[:, self.context_columns]
        return x, torch.from_numpy(np.ascontiguousarray(c, dtype=np.float64))

    def __getitem__(self, i: int) -> Tensor | tuple[Tensor, Tensor]:
        out = self.__getitems__([int(i)])
        return out[0] if isinstance(out, Tensor) else (out[0][0], out[1][0])

    def __getitems__(self, idx: list[int]) -> Tensor | tuple[Tensor, Tensor]:
        """The rows ``idx`` (positions in this table): a tensor, or a pair with the context."""
        rows = np.asarray(idx, dtype=np.int64)
        if self.index is not None:
            rows = self.index[rows]
        return self._split(self._read(rows))

    def blocks(self, chunk: int | None = None) -> Iterator[Tensor | tuple[Tensor, Tensor]]:
        """This table's rows in file order, in chunks of about 8 MB."""
        dim = self.array.shape[1]
        chunk = chunk or max(1024, _CHUNK_VALUES // dim)
        n = self.array.shape[0]
        mask = None
        if self.index is not None:
            mask = np.zeros(n, dtype=bool)
            mask[self.index] = True
        for i in range(0, n, chunk):
            stop = min(i + chunk, n)
            if self.reader is not None:
                block = self.reader.block(i, stop)
            else:
                block = np.array(self.array[i:stop])
                release_pages(self.array)
            yield self._split(block if mask is None else block[mask[i:stop]])


class _Moments:
    """Accumulates the count, mean, sum of squares, minimum and maximum of columns."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2, self.low, self.high = 0, None, None, None, None

    def update(self, b: np.ndarray) -> None:
        if b.shape[0] == 0:
            return
        nb, mb = b.shape[0], b.mean(0)
        if self.mean is None:
            self.mean, self.m2 = np.zeros_like(mb), np.zeros_like(mb)
            self.low, self.high = b.min(0), b.max(0)
        delta = mb - self.mean
        self.m2 += ((b - mb) ** 2).sum(0) + delta**2 * self.count * nb / (self.count + nb)
        self.mean += delta * nb / (self.count + nb)
        self.low, self.high = np.minimum(self.low, b.min(0)), np.maximum(self.high, b.max(0))
        self.count += nb

    def result(self) -> dict[str, np.ndarray | int]:
        if self.count == 0:
            raise ValueError("no rows to summarise")
        std = np.sqrt(self.m2 / self.count)
        return {
            "count": self.count,
            "mean": self.mean,
            "std": std,
            "min": self.low,
            "max": self.high,
        }


def column_moments(blocks: Iterator[Tensor]) -> dict[str, np.ndarray | int]:
    """One streaming pass: the count, mean, standard deviation, minimum and maximum per column.

    The mean and sum of squares are combined chunk by chunk in float64 (Chan et al.'s update),
    so the standard deviation (``ddof=0``) matches ``x.std(0)`` of the whole to rounding.

    Example:
        >>> x = torch.randn(1000, 3, dtype=torch.float64)
        >>> m = column_moments(iter(x.split(128)))
        >>> bool(np.allclose(m["std"], x.std(0, unbiased=False).numpy()))
        True
    """
    acc = _Moments()
    for block in blocks:
        acc.update(block.double().numpy())
    return acc.result()
