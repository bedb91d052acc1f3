"""Normalizing flows for Pyro: every flow a ``TransformModule``, correct to float64 precision."""

__version__ = "0.1.0"

from . import (  # noqa: E402
    bases,
    datasets,
    density,
    dequantization,
    distributions,
    flows,
    glow,
    infer,
    matching,
    models,
    nn,
    sbi,
    training,
    transforms,
)

__all__ = [
    "__version__",
    "bases",
    "datasets",
    "density",
    "dequantization",
    "distributions",
    "flows",
    "glow",
    "infer",
    "matching",
    "models",
    "nn",
    "sbi",
    "training",
    "transforms",
]
