"""``pyro-flows score MODEL DATA``: the log-density of each row of a data file."""

from __future__ import annotations

import argparse
import math

import numpy as np

from .._progress import progress_bar
from .models import load_model, model_columns, read_model_data
from .options import HelpFormatter, add_data_options, add_device_option, add_memmap_option
from .table_io import check_out, open_npy, use_memmap, write_array, write_table

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
    add_device_option(p, "the scoring")
    add_memmap_option(p)
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar of a memory-mapped file's chunks",
    )
    p.set_defaults(run=run)


def _score_in_chunks(args: argparse.Namespace, est: object) -> tuple[np.ndarray, object]:
    """Scores a memory-mapped ``.npy`` file chunk by chunk (about 8 MB each), with a bar."""
    from ..data import MemmapTable

    array, table = open_npy(args.data)
    cols, ctx = model_columns(est, table, args.columns, args.context, args.model)
    rows = MemmapTable(array, cols, ctx)
    out = np.empty(len(rows))
    done = 0
    chunk = max(1024, 1_000_000 // array.shape[1])
    bar = progress_bar(-(-len(rows) // chunk), "score", not args.no_progress)
    with bar:
        for block in rows.blocks(chunk):
            x, c = (block, None) if ctx is None else block
            scores = est.score_samples(x.numpy(), None if c is None else c.numpy())
            out[done : done + len(scores)] = scores
            done += len(scores)
            bar.update(1)
    return out, table


def run(args: argparse.Namespace) -> int:
    """Scores the rows of ``args.data`` under the model ``args.model``; returns 0."""
    out = None
    if args.out is not None:
        out = check_out(
            args.out,
            suffixes=(".csv", ".npy"),
            inputs=[(args.model, "MODEL"), (args.data, "DATA")],
        )
    est = load_model(args.model, args.device)
    if use_memmap(args.data, args.memmap, args.key):
        logp, table = _score_in_chunks(args, est)
    else:
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
