"""``pyro-flows fit DATA --out MODEL``: fit a flow to the rows of a data file and save it.

The rules a fit must meet (enough rows, no constant column, a family that takes the data's
width or a context, ...) are :class:`~pyro_flows.density.DensityEstimator`'s: this command
reads the file, passes the columns on, and rewrites the estimator's messages in the command
line's words (``val_fraction=0.1`` becomes ``--val-fraction 0.1``, ``X column 'b'`` becomes
``data.csv: column 'b'``) instead of restating its rules.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .options import (
    PROG,
    HelpFormatter,
    add_data_options,
    add_device_option,
    add_memmap_option,
    fraction,
    hidden_sizes,
    positive_float,
    positive_int,
)
from .table_io import (
    CLIError,
    check_out,
    data_columns,
    numeric,
    open_npy,
    read_table,
    use_memmap,
)

if TYPE_CHECKING:
    from ..density import DensityEstimator

__all__ = ["default_flow", "register_subcommand", "run", "translate"]

#: The estimator's argument names and the options that set them.
_OPTIONS = {
    "val_fraction": "--val-fraction",
    "patience": "--patience",
    "base_components": "--base-components",
    "base_covariance": "--base-covariance",
    "base": "--base",
    "hidden_dims": "--hidden",
    "num_layers": "--layers",
    "num_steps": "--steps",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "eval_every": "--eval-every",
    "dtype": "--dtype",
    "seed": "--seed",
}
# Names that are also plain words are translated only as ``name=value``.
_IDENTIFIERS = [k for k in _OPTIONS if "_" in k]
_NAMES = "|".join(_OPTIONS)
_ASSIGNED = re.compile(rf"\b({_NAMES})=(?:'([^']*)'|([^\s,;:)]+))")
_BARE = re.compile(r"\b({})\b".format("|".join(_IDENTIFIERS)))


def translate(message: str, data: str) -> str:
    """Rewrites a :class:`~pyro_flows.density.DensityEstimator` message for the command line.

    Argument names become options (``base_components=3`` is ``--base-components 3``), ``X``
    is the data file ``data``, and a message about rows or columns starts with the file.

    Example:
        >>> translate("X column 'k' is constant (every value is 7)", "t.csv")
        "t.csv: column 'k' is constant (every value is 7)"
        >>> translate("base_components=2 needs base='gmm'", "t.csv")
        '--base-components 2 needs --base gmm'
    """
    m = re.sub(r"\b(?:X|val_X) column ", "column ", message)
    m = re.sub(r"\bX\b", "the data", m)
    m = re.sub(r"\bflow[= ]'([^']+)'", r"--flow \1", m)
    m = re.sub(r"\bresidual=True\b", "--residual", m)
    m = m.replace("leave hidden_dims=None", "leave out --hidden")
    m = m.replace("take a context", "take --context").replace(" or val_X", "")
    m = m.replace("drop the column", "leave it out (choose the columns with --columns)")
    m = re.sub(r"^patience\b", "--patience", m)
    m = _ASSIGNED.sub(lambda g: f"{_OPTIONS[g[1]]} {g[2] if g[2] is not None else g[3]}", m)
    m = _BARE.sub(lambda g: _OPTIONS[g[1]], m)
    if re.search(r"\b(?:rows?|row\(s\)|columns?)\b", m) and not m.startswith("--"):
        m = f"{data}: {m}"
    return m


def default_flow(num_columns: int, conditional: bool = False) -> str:
    """The family of ``fit`` without ``--flow``: MAF, or a spline for one column and no context.

    Given a context, one column gets MAF too: an affine map whose shift and scale come from
    the context (a conditional spline of one column overfits).
    """
    return "maf" if num_columns >= 2 or conditional else "spline"


def register_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``fit`` and its options to the ``pyro-flows`` parser."""
    from ..flows import _ALIASES, FAMILIES

    flows = sorted(
        [k for k, f in FAMILIES.items() if f.invertible]
        + [a for a, k in _ALIASES.items() if FAMILIES[k].invertible]
    )
    p = subparsers.add_parser(
        "fit",
        help="fit a flow to a data file and save the model",
        description="Fit a flow by maximum likelihood to the rows of DATA and save it. "
        "Columns are standardised inside the model, so scores are in the data's units.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("data", metavar="DATA", help="a .csv, .npy or .npz file, one row per point")
    p.add_argument("--out", required=True, help="where to write the model (e.g. model.pt)")
    add_data_options(
        p, "the data columns (names or 0-based positions; default: all but --context)"
    )
    p.add_argument(
        "--flow",
        choices=flows,
        metavar="FAMILY",
        help=f"the flow family, one of: {', '.join(flows)} (default: maf, or spline for one "
        "data column without --context)",
    )
    p.add_argument("--layers", type=positive_int, default=5, help="number of flow layers")
    p.add_argument(
        "--hidden",
        type=hidden_sizes,
        help="hidden sizes of each layer's network, e.g. 64,64 (default: 64,64 for the "
        "families with networks; spline, planar and radial have none, unless conditional)",
    )
    p.add_argument(
        "--residual",
        action="store_true",
        help="residual conditioner networks (maf, iaf, affine_coupling; hidden layers of one "
        "width, e.g. --hidden 64,64,64,64,64): each layer after the first adds to its input",
    )
    p.add_argument("--steps", type=positive_int, default=1000, help="number of Adam steps")
    p.add_argument("--batch-size", type=positive_int, default=512, help="minibatch size")
    p.add_argument(
        "--lr", type=positive_float, default=1e-3, help="peak learning rate (cosine decay)"
    )
    p.add_argument("--weight-decay", type=float, default=0.0, help="Adam's L2 penalty")
    p.add_argument(
        "--val-fraction",
        type=fraction,
        default=0.1,
        help="fraction of rows held out for validation; the best validation model is kept "
        "(0 for none)",
    )
    p.add_argument(
        "--patience",
        type=positive_int,
        help="stop after this many validation checks without improvement (early stopping)",
    )
    p.add_argument(
        "--eval-every", type=positive_int, default=50, help="steps between validation checks"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of init, split and batches")
    p.add_argument("--no-standardize", action="store_true", help="do not standardise the columns")
    p.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32", help="model precision"
    )
    p.add_argument(
        "--base",
        choices=("normal", "gmm"),
        default="normal",
        help="the base distribution: normal, N(0, I), or gmm, a learnable Gaussian mixture "
        "initialised by EM and trained with the flow",
    )
    p.add_argument(
        "--base-components",
        type=positive_int,
        metavar="K",
        help="number of mixture components of --base gmm (default 1)",
    )
    p.add_argument(
        "--base-covariance",
        choices=("full", "diag"),
        default="full",
        help="the mixture's covariances (--base gmm)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (shown on a terminal; in a log, a line every 30 s)",
    )
    add_device_option(p, "the fit")
    add_memmap_option(p)
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="write a checkpoint of the training run here (atomically), to resume it later",
    )
    p.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=100,
        metavar="N",
        help="steps between checkpoints",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint when it exists (else start afresh): the same "
        "command serves the first run and every restart of a pre-empted job",
    )
    p.set_defaults(run=run)


def _residual(args: argparse.Namespace, flow: str, conditional: bool) -> dict[str, Any] | None:
    """``flow_kwargs`` for ``--residual``, refused for a family whose layers lack the option."""
    from ..flows import FAMILIES, _accepts, lookup_family

    if not args.residual:
        return None
    _, family = lookup_family(flow)
    if not _accepts(family.make_conditional if conditional else family.make, "residual"):
        with_residual = sorted(n for n, f in FAMILIES.items() if _accepts(f.make, "residual"))
        raise CLIError(
            f"--residual is not an option of --flow {flow}; it is one of "
            f"{', '.join(with_residual)}"
        )
    return {"residual": True}


@contextmanager
def _warnings_as_lines(data: str, show_them: bool = True) -> Iterator[None]:
    """Prints each warning raised inside the block as one translated ``warning:`` line."""

    def show(message: Warning | str, *args: object, **kwargs: object) -> None:
        print(f"{PROG} fit: warning: {translate(str(message), data)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default" if show_them else "ignore")
        warnings.showwarning = show
        yield


def _hidden_text(est: DensityEstimator) -> str:
    """``", hidden 64,64"`` for a family with networks, nothing for one without."""
    from ..density import _DEFAULT_HIDDEN
    from ..flows import _accepts, lookup_family

    _, family = lookup_family(est.flow)
    make = family.make if est.context_dim_ is None else family.make_conditional
    if not _accepts(make, "hidden_dims"):
        return ""
    hidden = est.hidden_dims if est.hidden_dims is not None else _DEFAULT_HIDDEN
    return f", hidden {','.join(map(str, hidden))}"


def run(args: argparse.Namespace) -> int:
    """Fits a flow to ``args.data`` and saves it to ``args.out``; returns 0."""
    from ..data import MemmapTable
    from ..density import DensityEstimator
    from ..distributed import resolve_device, setup
    from ..flows import lookup_family

    if args.resume and args.checkpoint is None:
        raise CLIError("--resume continues from --checkpoint PATH: give it")
    # under torchrun every rank fits its share; rank 0 alone prints and writes the model
    rank0 = setup(resolve_device(args.device)).is_main
    out = check_out(args.out, inputs=[(args.data, "DATA")])
    if use_memmap(args.data, args.memmap, args.key):
        # a table larger than the memory: nothing is read until the fit asks for rows
        array, table = open_npy(args.data)
        cols, ctx = data_columns(table, args.columns, args.context)
        x, c = MemmapTable(array, cols, ctx), None
    else:
        table = read_table(args.data, key=args.key, header=args.header, delimiter=args.delimiter)
        cols, ctx = data_columns(table, args.columns, args.context)
        x = numeric(table, cols)
        c = None if ctx is None else numeric(table, ctx)
    flow = args.flow or default_flow(len(cols), conditional=ctx is not None)
    est = DensityEstimator(
        flow=flow,
        flow_kwargs=_residual(args, flow, ctx is not None),
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
        device=args.device,
    )
    t0 = time.perf_counter()
    with _warnings_as_lines(table.path, rank0):
        try:
            est.fit(
                x,
                c,
                feature_names=[table.names[j] for j in cols],
                context_names=None if ctx is None else [table.names[j] for j in ctx],
                checkpoint=args.checkpoint,
                checkpoint_every=args.checkpoint_every,
                resume=True if args.resume else None,
            )
        except ValueError as e:
            raise CLIError(translate(str(e), table.path)) from None
    seconds = time.perf_counter() - t0
    if not rank0:
        return 0
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
    name, _ = lookup_family(flow)
    what = f"{name} ({args.layers} layers{_hidden_text(est)})"
    if args.base == "gmm":
        what += f" on a {est.base_components}-component Gaussian-mixture base"
    rows = f"{est.info_['num_train']} training + {est.info_['num_val']} validation rows"
    given = "" if ctx is None else f" given {len(ctx)} context column(s)"
    print(
        f"fitted {what} to {rows} x {len(cols)} columns{given} of {table.path} in {seconds:.1f}s"
    )
    if est.info_.get("dequantized"):  # columns recorded on a grid: say how they were modelled
        print(est.summary().splitlines()[1])
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
