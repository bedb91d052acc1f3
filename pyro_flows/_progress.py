"""Progress bars that suit a terminal and a log file alike."""

from __future__ import annotations

import io
import sys
from typing import IO, Any

from tqdm import tqdm

__all__ = ["LOG_INTERVAL", "progress_bar"]

#: Seconds between progress lines when the stream is not a terminal (a log file, a pipe).
LOG_INTERVAL = 30.0


class _LogLines(io.TextIOBase):
    """Writes each redraw of a tqdm bar as a line of its own (no carriage returns)."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        for line in text.replace("\r", "\n").split("\n"):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """A bar whose postfix and description wait for the next timed line instead of forcing one."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        """Sets the postfix, shown on the next line written."""
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """Sets the description, shown on the next line written."""
        super().set_description(desc, refresh=False)


def progress_bar(total: int, desc: str, enabled: bool, file: IO[str] | None = None) -> tqdm:
    r"""A tqdm bar over ``total`` steps on ``file`` (default: standard error).

    On a terminal it redraws in place, as tqdm does; elsewhere (a log file, a pipe, a CI
    job) it writes a plain line at most every :data:`LOG_INTERVAL` seconds and one at the end,
    instead of thousands of carriage-return updates (``set_postfix`` waits for the next line).

    Arguments:
        total: The number of steps.
        desc: The bar's label.
        enabled: False for a disabled bar (nothing is written).
        file: The stream, or None for ``sys.stderr``.

    Example:
        >>> log = io.StringIO()
        >>> with progress_bar(1000, "fit", True, file=log) as bar:
        ...     for _ in range(1000):
        ...         bar.update(1)
        >>> "\r" in log.getvalue(), len(log.getvalue().splitlines()) <= 2
        (False, True)
    """
    stream = sys.stderr if file is None else file
    if not enabled:
        return tqdm(total=total, desc=desc, disable=True)
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return tqdm(total=total, desc=desc, file=stream, dynamic_ncols=True)
    return _LogBar(
        total=total,
        desc=desc,
        file=_LogLines(stream),
        mininterval=LOG_INTERVAL,
        ncols=100,
        ascii=True,
    )
