"""Argument checks shared by every public entry point, with messages that name the argument."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_rows",
    "check_choice",
    "check_finite",
    "check_hidden_dims",
    "check_positive_int",
    "check_last_dim",
]


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """Returns ``value`` if it is an integer ``>= minimum``, else raises a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_hidden_dims(hidden_dims: Sequence[int], name: str = "hidden_dims") -> list[int]:
    """Returns ``hidden_dims`` as a list of positive integers, else raises naming the argument."""
    if isinstance(hidden_dims, int) or not isinstance(hidden_dims, Sequence):
        raise TypeError(f"{name} must be a sequence of positive integers, got {hidden_dims!r}")
    for h in hidden_dims:
        check_positive_int(h, f"every entry of {name}")
    return list(hidden_dims)


def check_choice(value: str, choices: Sequence[str], name: str) -> str:
    """Returns ``value`` if it is one of ``choices``, else raises a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(choices)}")
    return value


def check_last_dim(x: Tensor, size: int, name: str) -> None:
    """Raises if ``x`` is not a tensor whose last dimension has ``size`` entries."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != size:
        raise ValueError(
            f"{name} must have shape (..., {size}) (event shape ({size},)), "
            f"got shape {tuple(x.shape)}"
        )


def check_finite(x: Tensor, name: str) -> None:
    """Raises if ``x`` holds NaN or infinite values (one host sync; used at entry points only)."""
    # A finite sum proves every entry finite at the cost of one reduction; only a non-finite
    # sum (a bad value, or an overflow of huge ones) needs the element-wise check.
    if torch.isfinite(x.sum()) or not x.is_floating_point():
        return
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); clean or drop them")


def as_rows(x: Any, name: str) -> Tensor:
    """Converts ``x`` to a finite 2-D floating tensor (detached), else raises naming it."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must hold floating-point values, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (num_rows, num_features), got shape {tuple(x.shape)}"
        )
    check_finite(x, name)
    return x.detach()
