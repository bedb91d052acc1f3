"""Every flow of pyro_flows as a Pyro ``TransformModule`` (or ``ConditionalTransformModule``).

Each class has a snake_case helper that builds it with correctly sized networks, in the style
of :mod:`pyro.distributions.transforms`: ``maf(input_dim)``, ``conditional_maf(input_dim,
context_dim)``, and so on.
"""

import sys

# Each module's __all__ is its public list; this package exports their union, so a new name
# is listed once, in its own module.
from .actnorm import *  # noqa: F403
from .autoregressive import *  # noqa: F403
from .base import *  # noqa: F403
from .cache import *  # noqa: F403
from .continuous import *  # noqa: F403
from .conv1x1 import *  # noqa: F403
from .coupling import *  # noqa: F403
from .external import *  # noqa: F403
from .glow import *  # noqa: F403
from .image_coupling import *  # noqa: F403
from .iresnet import *  # noqa: F403
from .permutation import *  # noqa: F403
from .planar import *  # noqa: F403
from .radial import *  # noqa: F403
from .squeeze import *  # noqa: F403
from .standardization import *  # noqa: F403

_MODULES = (
    "actnorm",
    "autoregressive",
    "base",
    "cache",
    "continuous",
    "conv1x1",
    "coupling",
    "external",
    "glow",
    "image_coupling",
    "iresnet",
    "permutation",
    "planar",
    "radial",
    "squeeze",
    "standardization",
)
__all__ = sorted(name for m in _MODULES for name in sys.modules[f"{__name__}.{m}"].__all__)
