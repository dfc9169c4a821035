"""Test helpers shared across the test modules (Pyro style: ``from tests.common import ...``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import bayesdl.priors as priors
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN


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


def conjugate_problem():
    """Bayesian linear regression with known noise on correlated inputs.

    ``y = x w + b + eps``, ``eps ~ N(0, s^2)``, ``[w, b] ~ N(0, tau^2 I)``; the posterior over
    ``theta = [w_1, w_2, b]`` is ``N(m, S)`` with ``S = (Phi^T Phi / s^2 + I / tau^2)^-1`` and
    ``m = S Phi^T y / s^2``, ``Phi = [x, 1]``. The two inputs are strongly correlated
    (posterior correlation of the weights ~ -0.90), so a mean-field approximation is visibly too
    narrow (its optimal variances ``1 / A_ii`` are ~0.10 of the exact marginal variances).
    """
    n, s, tau = 50, 0.5, 1.0
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(n, generator=gen)
    x = torch.stack([z, z + 0.5 * torch.randn(n, generator=gen)], dim=-1) + 1.0
    y = x @ torch.tensor([0.7, -0.4]) + 0.3 + s * torch.randn(n, generator=gen)
    phi = torch.cat([x, torch.ones(n, 1)], dim=-1).double()
    precision = phi.T @ phi / s**2 + torch.eye(3, dtype=torch.float64) / tau**2
    cov = torch.linalg.inv(precision)
    mean = cov @ phi.T @ y.double() / s**2
    torch.manual_seed(0)
    model = BNN(nn.Linear(2, 1), Homoscedastic(sigma=s, learn=False), prior=priors.normal(tau))
    return model, x, y, mean, cov, precision
