"""Every flow of pyro_flows as a Pyro ``TransformModule`` (or ``ConditionalTransformModule``).

Each class has a snake_case helper that builds it with correctly sized networks, in the style
of :mod:`pyro.distributions.transforms`: ``maf(input_dim)``, ``conditional_maf(input_dim,
context_dim)``, and so on.
"""

from .actnorm import ActNorm, actnorm
from .autoregressive import (
    ConditionalInverseAutoregressive,
    ConditionalMaskedAutoregressive,
    InverseAutoregressive,
    MaskedAutoregressive,
    autoregressive_order,
    conditional_iaf,
    conditional_maf,
    iaf,
    maf,
)
from .base import (
    Compose,
    ConditionalCompose,
    ConditionalFlowTransform,
    FlowTransform,
    HypernetConditional,
    InverseFlowTransform,
    broadcast_context,
    dense_hypernet,
    precise_softplus,
)
from .continuous import FFJORD, ConditionalFFJORD, conditional_ffjord, ffjord
from .conv1x1 import InvertibleConv1x1, invertible_conv1x1
from .coupling import (
    AffineCoupling,
    ConditionalAffineCoupling,
    affine_coupling,
    bounded_log_scale,
    conditional_affine_coupling,
    coupling_mask,
)
from .external import (
    ConditionalPyroTransform,
    PyroTransform,
    conditional_masked_spline_autoregressive,
    elementwise_spline,
    masked_spline_autoregressive,
)
from .glow import glow_step
from .image_coupling import (
    ConditionalImageAffineCoupling,
    ImageAffineCoupling,
    conditional_image_affine_coupling,
    conv_net,
    image_affine_coupling,
)
from .iresnet import (
    LOGDET_ESTIMATORS,
    ConditionalInvertibleResNet,
    ConvInvertibleResNet,
    FixedPointInfo,
    InvertibleResNet,
    conditional_iresnet,
    conditional_residual_flow,
    conv_iresnet,
    iresnet,
    residual_flow,
)
from .permutation import Permutation, permutation, reverse
from .planar import ConditionalPlanar, ConditionedPlanar, Planar, conditional_planar, planar
from .radial import ConditionalRadial, ConditionedRadial, Radial, conditional_radial, radial
from .squeeze import Squeeze, squeeze, squeeze_image, unsqueeze_image
from .standardization import Standardization, robust_loc_scale

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "Compose",
    "ConditionalAffineCoupling",
    "ConditionalCompose",
    "ConditionalFFJORD",
    "ConditionalFlowTransform",
    "ConditionalImageAffineCoupling",
    "ConditionalInverseAutoregressive",
    "ConditionalInvertibleResNet",
    "ConditionalMaskedAutoregressive",
    "ConditionalPlanar",
    "ConditionalPyroTransform",
    "ConditionalRadial",
    "ConditionedPlanar",
    "ConditionedRadial",
    "ConvInvertibleResNet",
    "FFJORD",
    "FixedPointInfo",
    "FlowTransform",
    "HypernetConditional",
    "ImageAffineCoupling",
    "InverseAutoregressive",
    "InverseFlowTransform",
    "InvertibleConv1x1",
    "InvertibleResNet",
    "LOGDET_ESTIMATORS",
    "MaskedAutoregressive",
    "Permutation",
    "Planar",
    "PyroTransform",
    "Radial",
    "Squeeze",
    "Standardization",
    "actnorm",
    "affine_coupling",
    "autoregressive_order",
    "bounded_log_scale",
    "broadcast_context",
    "conditional_affine_coupling",
    "conditional_ffjord",
    "conditional_iaf",
    "conditional_image_affine_coupling",
    "conditional_iresnet",
    "conditional_maf",
    "conditional_masked_spline_autoregressive",
    "conditional_planar",
    "conditional_radial",
    "conditional_residual_flow",
    "conv_iresnet",
    "conv_net",
    "coupling_mask",
    "dense_hypernet",
    "elementwise_spline",
    "ffjord",
    "glow_step",
    "iaf",
    "image_affine_coupling",
    "invertible_conv1x1",
    "iresnet",
    "maf",
    "masked_spline_autoregressive",
    "permutation",
    "planar",
    "precise_softplus",
    "radial",
    "residual_flow",
    "reverse",
    "robust_loc_scale",
    "squeeze",
    "squeeze_image",
    "unsqueeze_image",
]
