"""``pyro-flows score MODEL DATA``: the log-density of each row of a data file."""

from __future__ import annotations

import argparse
import math

from .models import load_model, read_model_data
from .options import HelpFormatter, add_data_options
from .table_io import check_out, write_array, write_table

__all__ = ["register_subcommand", "run"]


def register_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``score`` and its options to the ``pyro-flows`` parser."""
    p = subparsers.add_parser(
        "score",
        help="log-density of each row of a data file",
        description="Write log q(x) of each row of DATA, in nats in the data's units, and "
        "print the mean negative log-likelihood with its standard error.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="a model written by 'fit'")
    p.add_argument("data", metavar="DATA", help="a .csv, .npy or .npz file")
    p.add_argument(
        "--out", help="where to write the log-densities (.csv with a header, or a 1-D .npy)"
    )
    add_data_options(p, "the data columns (default: the model's, found by name)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Scores the rows of ``args.data`` under the model ``args.model``; returns 0."""
    out = None
    if args.out is not None:
        out = check_out(
            args.out,
            suffixes=(".csv", ".npy"),
            inputs=[(args.model, "MODEL"), (args.data, "DATA")],
        )
    est = load_model(args.model)
    table, x, c = read_model_data(args, est)
    logp = est.score_samples(x, c)
    if out is not None and out.suffix.lower() == ".npy":
        write_array(out, logp)
    elif out is not None:
        write_table(out, logp[:, None], ["log_prob"])
    n = len(logp)
    nll = -logp.mean()
    se = logp.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    print(f"{table.path}: {n} rows, mean NLL {nll:.4f} ± {se:.4f} nats (± one standard error)")
    if out is not None:
        print(f"wrote {out}")
    return 0
