r"""Flow matching: simulation-free training of continuous flows, and the priors they make.

A vector field :math:`v_\theta(t, x)` is regressed on the velocity of a probability path
between a source (noise) and the data (:mod:`~pyro_flows.matching.paths`), with source and
data rows paired independently, by minibatch optimal transport, or as given
(:mod:`~pyro_flows.matching.couplings`); :func:`cfm_loss` is the loss,
:func:`fit_flow_matching` the trainer. The trained field becomes a Pyro distribution,
:class:`FlowMatchingPrior` (samples by the ODE, differentiable densities by the
instantaneous change of variables), usable as ``pyro.sample("z", prior)`` under SVI and NUTS.

.. code-block:: python

    from pyro_flows.matching import FlowMatchingPrior, fit_flow_matching
    from pyro_flows.nn import VectorField

    field = VectorField(2, [64, 64])
    fit_flow_matching(field, data, coupling="ot", num_steps=2000)
    prior = FlowMatchingPrior(field, method="rk4", num_steps=10)   # or dopri5 with rtol/atol
    z = prior.rsample((100,)); prior.log_prob(z)

A conditional prior :math:`p(z \mid y)`, e.g. the prior of a conditional VAE, with a context
``y`` of shape ``(batch, C)`` and latents ``z`` of shape ``(batch, D)``:

.. code-block:: python

    field = VectorField(D, [64, 64], context_dim=C)
    fit_flow_matching(field, z_data, context=y_data)             # or train it inside the ELBO
    prior = FlowMatchingPrior(field, method="rk4", num_steps=8)
    p_z = prior.condition(y)              # batch_shape (batch,), event_shape (D,)
    z = p_z.rsample()                     # (batch, D), differentiable in y and the field
    p_z.log_prob(z)                       # (batch,), differentiable in z, y and the field
    # in a model:  with pyro.plate("data", batch): pyro.sample("z", p_z)

With classifier-free guidance, train with ``guidance=True`` (the field's ``context_dim`` is
``C + 1``) and condition with a weight: ``prior.condition(y, guidance=2.0)``.
"""

from .couplings import (
    COUPLINGS,
    Coupling,
    IndependentCoupling,
    OTCoupling,
    PairedCoupling,
    get_coupling,
    transport_cost,
)
from .guidance import GuidedField, drop_context, flag_context
from .losses import cfm_loss
from .paths import (
    PATHS,
    LinearPath,
    ProbabilityPath,
    RectifiedFlowPath,
    VariancePreservingPath,
    get_path,
)
from .prior import FlowMatchingPrior, cnf_distribution
from .sampling import SOLVERS, make_solver, reflow_pairs, solve_field, trajectory
from .training import FlowMatchingHistory, fit_flow_matching

__all__ = [
    "COUPLINGS",
    "PATHS",
    "SOLVERS",
    "Coupling",
    "FlowMatchingHistory",
    "FlowMatchingPrior",
    "GuidedField",
    "IndependentCoupling",
    "LinearPath",
    "OTCoupling",
    "PairedCoupling",
    "ProbabilityPath",
    "RectifiedFlowPath",
    "VariancePreservingPath",
    "cfm_loss",
    "cnf_distribution",
    "drop_context",
    "fit_flow_matching",
    "flag_context",
    "get_coupling",
    "get_path",
    "make_solver",
    "reflow_pairs",
    "solve_field",
    "trajectory",
    "transport_cost",
]
