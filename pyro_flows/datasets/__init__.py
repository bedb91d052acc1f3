"""Toy densities with exact log-densities, for tests and examples."""

from .evaluation import fit_metrics, grid_log_density
from .toy2d import TOY_DATASETS, Checkerboard, EightGaussians, toy_distribution

__all__ = [
    "TOY_DATASETS",
    "Checkerboard",
    "EightGaussians",
    "fit_metrics",
    "grid_log_density",
    "toy_distribution",
]
