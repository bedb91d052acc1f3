"""Argument checks shared by every public entry point, with messages that name the argument.

Each check raises a **TypeError** when the argument is of the wrong kind (a string or a bool
where a number is due, a float where an integer is, a list where a tensor is) and a
**ValueError** when it is of the right kind but its value is not allowed (out of range, NaN or
infinite, the wrong shape, an unknown choice). Never clamp or round a bad value instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_rows",
    "check_choice",
    "check_finite",
    "check_hidden_dims",
    "check_last_dim",
    "check_positive_float",
    "check_positive_int",
]


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """Returns ``value`` if it is an integer ``>= minimum``.

    Raises a TypeError naming it for a non-integer (a bool, a float), a ValueError for a
    smaller integer.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_positive_float(value: object, name: str) -> float:
    """Returns ``value`` as a float if it is a finite real number ``> 0``.

    Raises a TypeError naming it for a value that is not a real number (a bool, a string, a
    tensor), a ValueError for zero, a negative number, NaN or infinity.

    Example:
        >>> check_positive_float(2, "rtol")
        2.0
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_hidden_dims(hidden_dims: Sequence[int], name: str = "hidden_dims") -> list[int]:
    """Returns ``hidden_dims`` as a list of positive integers.

    Raises a TypeError naming it for a non-sequence or non-integer entries, a ValueError for
    entries below 1.
    """
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
    """Raises a TypeError if ``x`` is no tensor, a ValueError if its last size isn't ``size``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != size:
        raise ValueError(
            f"{name} must have shape (..., {size}) (event shape ({size},)), "
            f"got shape {tuple(x.shape)}"
        )


def check_finite(x: Tensor, name: str) -> None:
    """Raises a ValueError if ``x`` holds NaN or infinite values (one host sync: entry points)."""
    # A finite sum proves every entry finite at the cost of one reduction; only a non-finite
    # sum (a bad value, or an overflow of huge ones) needs the element-wise check.
    if torch.isfinite(x.sum()) or not x.is_floating_point():
        return
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); clean or drop them")


def as_rows(x: Any, name: str) -> Tensor:
    """Converts ``x`` to a finite 2-D floating tensor (detached).

    Raises a TypeError naming it for anything but a tensor or numpy array, a ValueError for
    non-floating values, another number of dimensions, NaN or infinity.
    """
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
