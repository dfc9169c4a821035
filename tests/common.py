"""Test helpers shared across the test modules (Pyro style: ``from tests.common import ...``)."""

from __future__ import annotations

from typing import Any

import torch


def _as_float_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.to(torch.float64) if value.is_floating_point() else value.double()
    return torch.as_tensor(value, dtype=torch.float64)


def assert_close(
    actual: Any, expected: Any, atol: float = 1e-6, rtol: float = 1e-5, msg: str = ""
) -> None:
    """``torch.testing.assert_close`` on float64 copies of tensors, floats or lists.

    Both sides are converted to float64 first, so that a float32 result can be compared with a
    Python float or an int tensor; shapes must still match exactly (a scalar only matches a
    0-dimensional tensor).
    """
    actual_t = _as_float_tensor(actual)
    expected_t = _as_float_tensor(expected)

    def message(default: str) -> str:
        return f"{msg}\n{default}" if msg else default

    torch.testing.assert_close(actual_t, expected_t, atol=atol, rtol=rtol, msg=message)
