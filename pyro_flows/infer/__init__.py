r"""Variational inference with flows: guides, amortised guides, flow priors and diagnostics.

* :class:`AutoFlowGuide`: any Pyro model, any flow family, constrained sites, Monte Carlo
  median and quantiles; :func:`guide_direction` picks each family's one-pass direction.
* :class:`AmortizedFlowGuide`: a conditional flow over a local latent, fed by an encoder.
* :func:`flow_prior`, :func:`fit_flow_prior`: a fitted flow as ``pyro.sample(name, prior)``.
* :func:`importance_sample`, :func:`psis_diagnostic`, :func:`to_inference_data`, :func:`loo`:
  importance weights, PSIS :math:`\hat k` (ArviZ), ELBO and IW-ELBO, ESS, resampling,
  ``arviz.InferenceData``, PSIS-LOO from guide draws.
* :class:`TraceSTL_ELBO`, :class:`TraceIW_ELBO`, :func:`make_elbo`: lower-variance gradients,
  as Pyro ELBOs: sticking the landing for the ELBO, DReG for the importance-weighted bound.
* :func:`fit_guide`: one call that fits a flow guide by a tested recipe (RealNVP, STL gradient,
  step-size search, importance-weighted report).
* :func:`compare_guides`, :func:`fit_svi`: fit several guides on one budget and tabulate them;
  :func:`add_comparison_arguments` and :func:`compare_from_args` give a script their options.

See the tutorial ``docs/tutorials/variational_inference.md``.
"""

from .amortized import AmortizedFlowGuide
from .catalog import (
    add_comparison_arguments,
    compare_from_args,
    guides_from_labels,
    standard_guides,
)
from .compare import (
    GuideReport,
    SkippedStepsWarning,
    compare_guides,
    fit_svi,
    format_table,
    pair_plot,
)
from .diagnostics import (
    ImportanceSamples,
    LooResult,
    effective_sample_size,
    importance_resample,
    importance_sample,
    importance_weighted_elbo,
    loo,
    pareto_k,
    pareto_k_reading,
    psis_diagnostic,
    to_inference_data,
)
from .elbo import ELBO_ESTIMATORS, TraceIW_ELBO, TraceSTL_ELBO, make_elbo
from .guides import (
    AutoFlowGuide,
    LaplaceFallbackWarning,
    SlowGuideWarning,
    guide_direction,
    init_to_centre,
)
from .priors import fit_flow_prior, flow_prior
from .recipe import GuideFit, fit_guide, recipe_flow_size

__all__ = [
    "AmortizedFlowGuide",
    "AutoFlowGuide",
    "ELBO_ESTIMATORS",
    "GuideFit",
    "GuideReport",
    "ImportanceSamples",
    "LaplaceFallbackWarning",
    "LooResult",
    "SkippedStepsWarning",
    "SlowGuideWarning",
    "TraceIW_ELBO",
    "TraceSTL_ELBO",
    "add_comparison_arguments",
    "compare_from_args",
    "compare_guides",
    "effective_sample_size",
    "fit_flow_prior",
    "fit_guide",
    "fit_svi",
    "flow_prior",
    "format_table",
    "guide_direction",
    "guides_from_labels",
    "importance_resample",
    "importance_sample",
    "importance_weighted_elbo",
    "init_to_centre",
    "loo",
    "make_elbo",
    "pair_plot",
    "pareto_k",
    "pareto_k_reading",
    "psis_diagnostic",
    "recipe_flow_size",
    "standard_guides",
    "to_inference_data",
]
