"""The ``pyro-flows`` parser, assembled from the sub-command modules, and :func:`main`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import fit, plot, sample, score
from .options import PROG, HelpFormatter
from .table_io import CLIError

__all__ = ["build_parser", "main"]

#: The sub-command modules, in the order of ``--help``: each has ``register_subcommand``.
COMMANDS = (fit, score, sample, plot)


def build_parser() -> argparse.ArgumentParser:
    """Returns the ``pyro-flows`` argument parser with its sub-commands."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fit normalizing flows to data files; score, sample and plot them.",
        epilog=f"Run '{PROG} COMMAND --help' for each command's options. Exit status: 0 on "
        "success, 1 for an error in the data, files or option values (one line on stderr), "
        "2 for a command line argparse cannot parse (usage on stderr), 130 when interrupted.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register_subcommand(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``pyro-flows`` command line; returns the exit status.

    0 on success; 1 for a user error: the message, one line on stderr, names the file,
    column or option; 2 when argparse cannot parse the command line (an unknown option, a
    missing argument, a value of the wrong type or outside its choices: argparse prints the
    usage and the message); 130 when interrupted.

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
        if os.environ.get("RANK", "0") != "0":
            return 1  # under torchrun every rank meets the same error: rank 0 alone prints it
        message = (
            str(e)
            if not isinstance(e, OSError) or not e.filename
            else (f"{e.filename}: {e.strerror}")
        )
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 1
