"""Normalizing flows for Pyro: every flow a ``TransformModule``, correct to float64 precision."""

__version__ = "0.1.0"

from . import datasets, distributions, flows, training, transforms  # noqa: E402

__all__ = ["__version__", "datasets", "distributions", "flows", "training", "transforms"]
