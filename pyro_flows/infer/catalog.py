"""Guides by label, and a comparison run from a script's command-line options.

:func:`standard_guides` and :func:`guides_from_labels` build the guide factories that
:func:`~pyro_flows.infer.compare_guides` fits; :func:`add_comparison_arguments` and
:func:`compare_from_args` give a script their options. This module sits above both
:mod:`~pyro_flows.infer.guides` (which fits its warm start with
:func:`~pyro_flows.infer.fit_svi`) and :mod:`~pyro_flows.infer.compare`, so that neither of
those imports the other's importer.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormal

from .._validation import check_positive_int
from .compare import GuideFactory, GuideReport, compare_guides
from .guides import AutoFlowGuide

__all__ = [
    "WARM_START_STEPS",
    "add_comparison_arguments",
    "compare_from_args",
    "guides_from_labels",
    "standard_guides",
]

#: MAP steps of the Laplace warm start of a ``"flow:NAME+laplace"`` guide.
WARM_START_STEPS = 1500


def standard_guides(
    flows: Sequence[str] = ("iaf", "maf"),
    num_layers: int = 3,
    hidden_dims: Sequence[int] | None = None,
    baselines: bool = True,
    **flow_kwargs: Any,
) -> dict[str, GuideFactory]:
    """Guide factories for a comparison: Pyro's baselines and flow guides of the given families.

    Pyro's :class:`~pyro.infer.autoguide.AutoIAFNormal` gets the same number of layers and
    hidden sizes as the flow guides.

    Arguments:
        flows: Families for :class:`~pyro_flows.infer.AutoFlowGuide`, labelled ``"flow:NAME"``;
            ``"NAME+laplace"`` starts the guide from a Laplace approximation fitted with
            ``WARM_START_STEPS`` MAP steps (``affine="full", warm_start=...``).
        num_layers: Layers of each flow (and of AutoIAFNormal).
        hidden_dims: Hidden sizes of each layer's network (and of AutoIAFNormal).
        baselines: Whether to include ``AutoNormal``, ``AutoMultivariateNormal`` and
            ``AutoIAFNormal``.
        flow_kwargs: Passed to :class:`~pyro_flows.infer.AutoFlowGuide`.
    """
    guides: dict[str, GuideFactory] = {}
    if baselines:
        guides["AutoNormal"] = AutoNormal
        guides["AutoMultivariateNormal"] = AutoMultivariateNormal
        hidden = None if hidden_dims is None else list(hidden_dims)
        guides["AutoIAFNormal"] = lambda m: AutoIAFNormal(
            m, hidden_dim=hidden, num_transforms=num_layers
        )
    for label in flows:
        # "NAME+laplace": warm-started from a Laplace approximation (AutoFlowGuide.warm_start)
        name, _, start = label.partition("+")
        kwargs = dict(flow_kwargs)
        if start == "laplace":
            kwargs.update(affine="full", warm_start=WARM_START_STEPS)
        elif start:
            raise ValueError(f"unknown start {start!r} in flow:{label}; expected NAME+laplace")
        guides[f"flow:{label}"] = lambda m, name=name, kwargs=kwargs: AutoFlowGuide(
            m, name, num_layers=num_layers, hidden_dims=hidden_dims, **kwargs
        )
    return guides


def guides_from_labels(
    labels: str | Sequence[str],
    num_layers: int = 3,
    hidden_dims: Sequence[int] | None = None,
    **flow_kwargs: Any,
) -> dict[str, GuideFactory]:
    """Guide factories from labels, as the examples take them on the command line.

    A label is ``"AutoNormal"``, ``"AutoMultivariateNormal"``, ``"AutoIAFNormal"`` or
    ``"flow:NAME"`` for any family name (see :func:`standard_guides`).

    Arguments:
        labels: A comma-separated string or a sequence of labels.
        num_layers: Layers of each flow.
        hidden_dims: Hidden sizes of each layer's network.
        flow_kwargs: Passed to :class:`~pyro_flows.infer.AutoFlowGuide`.

    Example:
        >>> list(guides_from_labels("AutoNormal,flow:maf"))
        ['AutoNormal', 'flow:maf']
    """
    if isinstance(labels, str):
        labels = labels.split(",")
    wanted = [s.strip() for s in labels if s.strip()]
    flows = [s.split(":", 1)[1] for s in wanted if s.startswith("flow:")]
    every = standard_guides(flows, num_layers, hidden_dims, **flow_kwargs)
    unknown = [s for s in wanted if s not in every]
    if unknown:
        raise ValueError(f"unknown guides {unknown}; expected {sorted(every)} or flow:NAME")
    return {s: every[s] for s in wanted}


def add_comparison_arguments(
    parser: argparse.ArgumentParser,
    *,
    guides: str,
    out: str,
    num_layers: int = 3,
    hidden: str = "40,40",
    num_steps: int = 2000,
    lr: float = 5e-3,
    num_particles: int = 8,
    num_samples: int = 10_000,
) -> argparse.ArgumentParser:
    """Adds the command-line options of a guide comparison (read by :func:`compare_from_args`).

    The options are ``--guides`` (comma-separated labels of :func:`guides_from_labels`),
    ``--num-layers``, ``--hidden``, ``--init-scale``, ``--num-steps``, ``--lr``,
    ``--num-particles``, ``--num-samples``, ``--seed``, ``--threads``, ``--out`` and
    ``--no-progress``; the keyword arguments set their defaults.

    Example:
        >>> import argparse
        >>> parser = add_comparison_arguments(
        ...     argparse.ArgumentParser(), guides="AutoNormal,flow:iaf", out="out.png"
        ... )
        >>> parser.parse_args(["--num-steps", "10"]).num_steps
        10
    """
    add = parser.add_argument
    add("--guides", default=guides, help="comma-separated guide labels, e.g. AutoNormal,flow:maf")
    add("--num-layers", type=int, default=num_layers, help="layers of each flow guide")
    add("--hidden", default=hidden, help="hidden sizes of the flow networks, comma-separated")
    add("--init-scale", type=float, default=1.0, help="initial scale of the flow guides")
    add("--num-steps", type=int, default=num_steps, help="SVI steps per guide")
    add("--lr", type=float, default=lr)
    add("--num-particles", type=int, default=num_particles, help="draws per ELBO estimate")
    add("--num-samples", type=int, default=num_samples, help="draws for the scores")
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=1, help="torch CPU threads")
    add("--out", default=out, help="PNG path")
    add("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def compare_from_args(
    model: Callable[..., Any], args: argparse.Namespace, *model_args: Any, **model_kwargs: Any
) -> dict[str, GuideReport]:
    """Runs :func:`compare_guides` with the options of :func:`add_comparison_arguments`.

    Arguments:
        model: A Pyro model.
        args: The parsed options.
        model_args: The arguments of the model.
        model_kwargs: The keyword arguments of the model.
    """
    torch.set_num_threads(check_positive_int(args.threads, "threads"))
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    guides = guides_from_labels(args.guides, args.num_layers, hidden, init_scale=args.init_scale)
    return compare_guides(
        model,
        guides,
        *model_args,
        num_steps=args.num_steps,
        lr=args.lr,
        num_particles=args.num_particles,
        num_samples=args.num_samples,
        seed=args.seed,
        progress=not args.no_progress,
        **model_kwargs,
    )
