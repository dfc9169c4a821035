"""Argument checks shared by the package: every bad input gets a clear error naming the argument."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_choice",
    "check_finite",
    "check_positive",
    "check_probability",
    "check_same_length",
    "check_tensor",
]


def check_choice(name: str, value: Any, options: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``options``, else raise a ValueError listing them."""
    options = list(options)
    if value not in options:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {options}")
    return value


def check_positive(name: str, value: Any, *, strict: bool = True, integer: bool = False) -> Any:
    """Check that ``value`` is a (strictly) positive number, optionally an integer."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if value != value or (value <= 0 if strict else value < 0):
        bound = "> 0" if strict else ">= 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_probability(name: str, value: float, *, allow_one: bool = False) -> float:
    """Check ``0 <= value < 1`` (or ``<= 1`` with ``allow_one``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    upper_ok = value <= 1 if allow_one else value < 1
    if not (value >= 0 and upper_ok):
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return float(value)


def check_tensor(name: str, value: Any, *, ndim: int | tuple[int, ...] | None = None) -> Tensor:
    """Check that ``value`` is a tensor with the allowed number of dimensions."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if value.ndim not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimensions, "
                f"got shape {tuple(value.shape)}"
            )
    return value


def check_finite(name: str, value: Tensor) -> Tensor:
    """Raise a ValueError if a floating tensor holds NaN or infinity."""
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
    return value


def check_same_length(**tensors: Tensor) -> int:
    """Check that the tensors share their first dimension and that it is not empty."""
    lengths = {name: t.shape[0] if t.ndim > 0 else None for name, t in tensors.items()}
    if any(n is None for n in lengths.values()):
        raise ValueError(f"expected tensors with a leading data dimension, got {lengths}")
    if len(set(lengths.values())) > 1:
        raise ValueError(f"length mismatch along the first dimension: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"empty data: {', '.join(lengths)} have no rows")
    return n
