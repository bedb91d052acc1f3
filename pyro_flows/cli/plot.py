"""``pyro-flows plot MODEL DATA --out FIG``: a corner plot of data against the model."""

from __future__ import annotations

import argparse
import math

import numpy as np

from .models import load_model, model_columns
from .options import HelpFormatter, add_file_options, positive_int
from .table_io import CLIError, check_out, numeric, read_table, split_list

__all__ = ["register_subcommand", "run"]

#: The fewest model samples drawn, whatever the number of data rows.
MIN_SAMPLES = 2000


def register_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``plot`` and its options to the ``pyro-flows`` parser."""
    from .figures import MAX_COLUMNS

    p = subparsers.add_parser(
        "plot",
        help="corner plot of data against model samples, and the training curve",
        description="Draw a corner plot of DATA against samples of the model (drawn at the "
        "data rows' contexts for a conditional model): marginal densities on the diagonal, "
        "points below it, 2-D density contours above it; and the whole training curve.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="a model written by 'fit'")
    p.add_argument("data", metavar="DATA", help="a .csv, .npy or .npz file")
    p.add_argument("--out", required=True, help="the figure (.png, .pdf, .svg, ...)")
    add_file_options(p)
    p.add_argument(
        "--columns",
        metavar="COLS",
        help=f"the model's columns to draw, data then context (names or 0-based positions "
        f"among them; default: all, up to {MAX_COLUMNS})",
    )
    p.add_argument("-n", type=positive_int, default=2000, help="at most this many data rows")
    p.add_argument(
        "--samples",
        type=positive_int,
        default=MIN_SAMPLES,
        help="at least this many model samples (more when there are more data rows)",
    )
    p.add_argument("--dpi", type=positive_int, default=100, help="resolution of a bitmap")
    p.add_argument("--seed", type=int, default=0, help="seed of the row subset and the draw")
    p.set_defaults(run=run)


def _shown(names: list[str], spec: str | None) -> tuple[list[int], str]:
    """The model columns to draw, and a note when they are a subset."""
    from .figures import MAX_COLUMNS

    if spec is None:
        if len(names) <= MAX_COLUMNS:
            return list(range(len(names))), ""
        return list(range(MAX_COLUMNS)), (
            f"; the model has {len(names)} columns: drew the first {MAX_COLUMNS}, choose "
            "others with --columns"
        )
    chosen = []
    for item in split_list(spec):
        if item in names:
            j = names.index(item)
        else:
            try:
                j = int(item)
            except ValueError:
                raise CLIError(
                    f"--columns: the model has no column {item!r}; its columns are: "
                    f"{', '.join(names)}"
                ) from None
            if not 0 <= j < len(names):
                raise CLIError(
                    f"--columns: the model has {len(names)} columns; index {j} is out of range"
                )
        if j in chosen:
            raise CLIError(f"--columns: column {names[j]!r} is listed twice")
        chosen.append(j)
    if not chosen:
        raise CLIError("--columns: no columns given")
    if len(chosen) > MAX_COLUMNS:
        raise CLIError(
            f"--columns: a corner plot draws at most {MAX_COLUMNS} columns, got {len(chosen)}"
        )
    note = "" if len(chosen) == len(names) else f" ({len(chosen)} of {len(names)} columns)"
    return chosen, note


def run(args: argparse.Namespace) -> int:
    """Draws the figure of the model ``args.model`` on ``args.data``; returns 0."""
    from matplotlib.figure import Figure

    from ..density import _atomic_write
    from .figures import corner_figure

    formats = tuple(f".{k}" for k in Figure().canvas.get_supported_filetypes())
    out = check_out(
        args.out, suffixes=formats, inputs=[(args.model, "MODEL"), (args.data, "DATA")]
    )
    est = load_model(args.model)
    names = est.feature_names_in_ or [str(j) for j in range(est.n_features_in_)]
    cnames = est.context_names_in_ or [str(j) for j in range(est.context_dim_ or 0)]
    # a conditional model is drawn with its context columns: the model's rows are its
    # samples next to the contexts they were drawn at
    shown, note = _shown(names + cnames, args.columns)
    table = read_table(args.data, key=args.key, header=args.header, delimiter=args.delimiter)
    cols, ctx = model_columns(est, table, None, None, args.model)
    x = numeric(table, cols)
    c = None if ctx is None else numeric(table, ctx)
    rng = np.random.default_rng(args.seed)
    if x.shape[0] > args.n:
        keep = rng.choice(x.shape[0], args.n, replace=False)
        x = x[keep]
        c = None if c is None else c[keep]
    num_samples = max(args.samples, x.shape[0])
    if c is None:
        s = est.sample(num_samples, seed=args.seed)
    else:  # draws at every data row's context, as many at each
        per_row = math.ceil(num_samples / x.shape[0])
        s = est.sample(per_row, c, seed=args.seed).reshape(-1, est.n_features_in_)
        s = np.concatenate([s, np.tile(c, (per_row, 1))], axis=1)
        x = np.concatenate([x, c], axis=1)
    s = s[np.isfinite(s).all(1)]
    if s.shape[0] == 0:
        raise CLIError(f"{args.model}: no model sample is finite; nothing to plot")
    labels = names + [f"{n} (context)" for n in cnames]
    fig = corner_figure(
        x[:, shown], s[:, shown], [labels[j] for j in shown], est.history_, table.path
    )
    fmt = out.suffix.lower()[1:]
    _atomic_write(out, lambda f: fig.savefig(f, format=fmt, dpi=args.dpi))
    print(
        f"wrote {out}: corner plot of {x.shape[0]} data rows against {s.shape[0]} model "
        f"samples{note}"
    )
    return 0
