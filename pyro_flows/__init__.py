"""Normalizing flows for Pyro: every flow a ``TransformModule``, correct to float64 precision."""

__version__ = "0.1.0"

from . import datasets, distributions, flows, transforms, training  # noqa: E402

__all__ = ["datasets", "distributions", "flows", "training", "transforms", "__version__"]
