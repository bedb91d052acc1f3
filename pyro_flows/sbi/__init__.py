r"""Amortised simulation-based inference: a posterior :math:`q(\theta \mid x)` for Pyro models.

Write the model once, simulate from it, fit a posterior once, condition on any observation:

.. code-block:: python

    from pyro_flows.sbi import NPE, ModelPrior, ModelSimulator, simulate

    prior = ModelPrior(model)                  # the latent sites, packed into one vector
    theta, x = simulate(ModelSimulator(prior), prior, 10_000)
    npe = NPE(prior).fit(theta, x)             # or FMPE(prior): flow matching
    posterior = npe.posterior(x_o)             # a Pyro distribution over theta
    posterior.sample((1000,)), posterior.log_prob(theta[:5])

* :func:`simulate`, :func:`simulate_model`, :class:`ModelPrior`, :class:`ModelSimulator`:
  pairs :math:`(\theta, x)` from a Pyro model's prior predictive or a torch simulator.
* :class:`NPE` (a conditional normalizing flow) and :class:`FMPE` (conditional flow
  matching): ``fit``, ``posterior``, ``sample``, ``log_prob``, ``save``, ``load``.
* :func:`sbc`, :func:`expected_coverage`, :func:`c2st`, :func:`importance_sample_posterior`,
  :func:`plot_sbc_ranks`, :func:`plot_coverage`: is the posterior calibrated, how far from a
  reference, and its exact correction when the likelihood is tractable.
* :func:`tsnpe`, :class:`TruncatedPrior`: sequential rounds for one observation.

See the tutorial ``docs/tutorials/sbi.md``.
"""

from ._base import PosteriorEstimator, mlp_embedding
from .diagnostics import (
    CoverageResult,
    SBCResult,
    c2st,
    expected_coverage,
    importance_sample_posterior,
    plot_coverage,
    plot_sbc_ranks,
    sbc,
)
from .fmpe import FMPE, PosteriorField
from .npe import NPE, EmbeddedConditional
from .sequential import SequentialResult, TruncatedPrior, tsnpe
from .simulate import ModelPrior, ModelSimulator, Simulations, SiteLayout, simulate, simulate_model

__all__ = [
    "FMPE",
    "NPE",
    "CoverageResult",
    "EmbeddedConditional",
    "ModelPrior",
    "ModelSimulator",
    "PosteriorEstimator",
    "PosteriorField",
    "SBCResult",
    "SequentialResult",
    "Simulations",
    "SiteLayout",
    "TruncatedPrior",
    "c2st",
    "expected_coverage",
    "importance_sample_posterior",
    "mlp_embedding",
    "plot_coverage",
    "plot_sbc_ranks",
    "sbc",
    "simulate",
    "simulate_model",
    "tsnpe",
]
