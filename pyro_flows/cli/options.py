"""Argument types, the help formatter and the options shared by several sub-commands."""

from __future__ import annotations

import argparse
import math

__all__ = [
    "PROG",
    "HelpFormatter",
    "add_data_options",
    "add_device_option",
    "add_memmap_option",
    "add_file_options",
    "fraction",
    "hidden_sizes",
    "positive_float",
    "positive_int",
]

PROG = "pyro-flows"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, or a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


# -- argument types: each raises ArgumentTypeError, which argparse reports with the option --


def hidden_sizes(text: str) -> list[int]:
    """``"64,64"`` as ``[64, 64]``: positive integers separated by commas."""
    try:
        dims = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, e.g. 64,64; got {text!r}"
        ) from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive integers, e.g. 64,64; got {text!r}")
    return dims


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


# -- options shared by sub-commands, declared once -------------------------------------------


def add_file_options(parser: argparse.ArgumentParser, what: str = "DATA") -> None:
    """``--key``, ``--header`` and ``--delimiter``: how to read the data file ``what``."""
    parser.add_argument("--key", help=f"the array to read from an .npz {what} file")
    parser.add_argument(
        "--header",
        choices=("auto", "yes", "no"),
        default="auto",
        help=f"whether the first line of a CSV {what} file names the columns (auto: when a "
        "field of it is not a number)",
    )
    parser.add_argument("--delimiter", default=",", help="the CSV field separator")


def add_data_options(parser: argparse.ArgumentParser, columns_help: str) -> None:
    """The file options, and ``--columns``/``--context`` to choose the data and context."""
    add_file_options(parser)
    parser.add_argument("--columns", metavar="COLS", help=columns_help)
    parser.add_argument(
        "--context",
        metavar="COLS",
        help="the context columns of a conditional density q(x | c) (names or 0-based "
        "positions, comma-separated)",
    )


def add_device_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--device``: where ``what`` runs (auto: CUDA when present, else the CPU)."""
    parser.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help=f"where {what} runs: auto (CUDA when present, else the CPU), cpu, cuda or cuda:N",
    )


def add_memmap_option(parser: argparse.ArgumentParser) -> None:
    """``--memmap``: read a ``.npy`` DATA file memory-mapped, a minibatch or chunk at a time."""
    parser.add_argument(
        "--memmap",
        choices=("auto", "yes", "no"),
        default="auto",
        help="open a .npy DATA file memory-mapped and read it a minibatch (or a chunk) at a "
        "time, for data larger than the memory (auto: for files over 1 GiB)",
    )
