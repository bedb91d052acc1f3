"""Networks for flows: MADE and dense conditioners, time-dependent vector fields, divergences and ODE regularisers."""

from .dense import ConditionalDenseNN, DenseNN
from .divergence import NOISES, divergence, divergence_and_frobenius, hutchinson_noise
from .fields import ACTIVATIONS, ConcatSquashLinear, VectorField
from .lipschitz import (
    LIPSCHITZ_ACTIVATIONS,
    Linearization,
    LipschitzConv2d,
    LipschitzConvNet,
    LipschitzELU,
    LipschitzLinear,
    LipschitzMLP,
    LipschitzNetwork,
    LipschitzNorm,
    LipSwish,
    lipschitz_norm,
)
from .made import MADE, ConditionalMADE, HiddenWidthWarning, widen_hidden_dims
from .regularization import jacobian_frobenius, kinetic_energy, ode_regularization

__all__ = [
    "ACTIVATIONS",
    "LIPSCHITZ_ACTIVATIONS",
    "NOISES",
    "ConcatSquashLinear",
    "ConditionalDenseNN",
    "ConditionalMADE",
    "DenseNN",
    "HiddenWidthWarning",
    "Linearization",
    "MADE",
    "LipschitzConv2d",
    "LipschitzConvNet",
    "LipschitzELU",
    "LipschitzLinear",
    "LipschitzMLP",
    "LipschitzNetwork",
    "LipschitzNorm",
    "LipSwish",
    "VectorField",
    "divergence",
    "divergence_and_frobenius",
    "hutchinson_noise",
    "jacobian_frobenius",
    "kinetic_energy",
    "lipschitz_norm",
    "ode_regularization",
    "widen_hidden_dims",
]
