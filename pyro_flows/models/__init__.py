r"""Deep generative models as Pyro models: conditional VAEs and physics-informed VAEs.

* :class:`CVAE`, :func:`cvae`: :math:`p(x \mid z, y)\,p(z \mid y)` with a Gaussian or flow
  posterior :math:`q(z \mid x, y)` and a normal, flow or plug-in prior :math:`p(z \mid y)`.
* :class:`PIVAE`: a VAE whose objective adds physical-inconsistency penalties as
  ``pyro.factor`` terms; :class:`Poisson1D` is a worked physics (residual, solver, data).
* Networks (:class:`MLP`, :class:`ConvEncoder`, :class:`ConvDecoder`,
  :class:`CoordinateDecoder`) and likelihoods
  (:class:`Bernoulli`, :class:`Gaussian`, :class:`DequantizedLogistic`).
* :func:`elbo`, :func:`iwae_bound`, :func:`log_weights`: bounds of :math:`\log p(x \mid y)`
  in nats per data point.

See the tutorial ``docs/tutorials/vae.md``.
"""

from .cvae import CVAE, cvae
from .evaluation import elbo, iwae_bound, log_weights
from .likelihoods import (
    Bernoulli,
    DequantizedLogistic,
    DiscretizedLogistic,
    Gaussian,
    Likelihood,
    likelihood,
)
from .networks import MLP, ConvDecoder, ConvEncoder, CoordinateDecoder
from .physics import Poisson1D
from .pivae import PIVAE

__all__ = [
    "Bernoulli",
    "CVAE",
    "ConvDecoder",
    "ConvEncoder",
    "CoordinateDecoder",
    "DequantizedLogistic",
    "DiscretizedLogistic",
    "Gaussian",
    "Likelihood",
    "MLP",
    "PIVAE",
    "Poisson1D",
    "cvae",
    "elbo",
    "iwae_bound",
    "likelihood",
    "log_weights",
]
