"""``pyro-flows sample MODEL``: draw rows from a saved model into a data file."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .models import load_model, parse_values
from .options import PROG, HelpFormatter, add_device_option, add_file_options, positive_int
from .table_io import CLIError, check_out, numeric, read_table, select, write_table

__all__ = ["register_subcommand", "run"]


def register_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``sample`` and its options to the ``pyro-flows`` parser."""
    p = subparsers.add_parser(
        "sample",
        help="draw samples from a saved model",
        description="Draw rows from a saved model into a .csv (with a header) or .npy file. "
        "For a conditional model, the context columns are written after the data columns.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="a model written by 'fit'")
    p.add_argument(
        "-n",
        type=positive_int,
        help="how many samples (default 1000; with --context-data, per context row, default 1)",
    )
    p.add_argument("--out", required=True, help="where to write the samples (.csv or .npy)")
    p.add_argument("--context", metavar="VALUES", help="one context, as comma-separated numbers")
    p.add_argument(
        "--context-data",
        metavar="FILE",
        help="a data file holding the model's context columns: samples for each of its rows",
    )
    add_file_options(p, "--context-data")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw")
    add_device_option(p, "the sampling")
    p.set_defaults(run=run)


def _context_rows(args: argparse.Namespace, cnames: list[str], context_dim: int, header: object):
    """The context rows of the ``--context-data`` file, found by name (or position)."""
    table = read_table(
        args.context_data, key=args.key, header=args.header, delimiter=args.delimiter
    )
    option = "--context-data (the model's context columns)"
    if table.header:
        ctx = select(table, cnames, option)
    elif len(table.names) == context_dim:
        ctx = list(range(context_dim))  # a file of the context columns only
    elif header is False:
        ctx = select(table, cnames, option)  # positions in the training file's layout
    else:
        raise CLIError(
            f"{table.path}: has no header and {len(table.names)} columns, but the model "
            f"takes the context columns {', '.join(cnames)}: add a header line"
        )
    return numeric(table, ctx)


def run(args: argparse.Namespace) -> int:
    """Draws rows from the model ``args.model`` into ``args.out``; returns 0."""
    out = check_out(
        args.out,
        suffixes=(".csv", ".npy"),
        inputs=[(args.model, "MODEL"), (args.context_data, "--context-data")],
    )
    est = load_model(args.model, args.device)
    names = est.feature_names_in_ or [str(j) for j in range(est.n_features_in_)]
    cnames = est.context_names_in_ or [str(j) for j in range(est.context_dim_ or 0)]
    if est.context_dim_ is None:
        if args.context is not None or args.context_data is not None:
            option = "--context" if args.context is not None else "--context-data"
            raise CLIError(f"{args.model}: the model is not conditional; drop {option}")
        values = est.sample(args.n or 1000, seed=args.seed)
        header = names
    else:
        if (args.context is None) == (args.context_data is None):
            raise CLIError(
                f"{args.model}: the model is conditional on ({', '.join(cnames)}): give "
                "either --context VALUES or --context-data FILE"
            )
        if args.context is not None:
            c = parse_values(args.context, est.context_dim_, "--context")
            x = est.sample(args.n or 1000, c, seed=args.seed)
            c = np.broadcast_to(c, (x.shape[0], c.size))
        else:
            rows = _context_rows(args, cnames, est.context_dim_, est.info_.get("header"))
            n = args.n or 1
            x = est.sample(n, rows, seed=args.seed).reshape(-1, est.n_features_in_)
            c = np.tile(rows, (n, 1))
        values = np.concatenate([x, c], axis=1)
        header = names + cnames
    if not np.isfinite(values).all():
        print(
            f"{PROG} sample: warning: {int((~np.isfinite(values)).any(1).sum())} sampled "
            "row(s) are not finite",
            file=sys.stderr,
        )
    write_table(out, values, header)
    print(f"wrote {values.shape[0]} samples to {out}")
    return 0
