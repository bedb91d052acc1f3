"""Toy densities with exact log-densities, for tests and examples."""

from .digits import ImageSplit, load_digits, load_mnist
from .evaluation import fit_metrics, grid_log_density
from .toy2d import TOY_DATASETS, Checkerboard, EightGaussians, toy_distribution

__all__ = [
    "TOY_DATASETS",
    "Checkerboard",
    "EightGaussians",
    "ImageSplit",
    "fit_metrics",
    "grid_log_density",
    "load_digits",
    "load_mnist",
    "toy_distribution",
]
