"""Toy densities with exact log-densities, for tests and examples."""

from .toy2d import TOY_DATASETS, Checkerboard, EightGaussians, toy_distribution

__all__ = [
    "TOY_DATASETS",
    "Checkerboard",
    "EightGaussians",
    "toy_distribution",
]
