r"""The linearity explanation of adversarial examples (Goodfellow et al., 2015).

For a linear score ``w^T x``, the perturbation ``r = eps sign(w)`` (each coordinate changed by at
most ``eps``, invisible when ``eps`` is below the input's precision) changes the score by

.. math::

    w^T (x + r) - w^T x = \epsilon\, w^T \mathrm{sign}(w) = \epsilon \|w\|_1 = \epsilon m n,

with ``m`` the mean absolute weight and ``n`` the input dimension. The change grows linearly with
``n`` while the max-norm of ``r`` does not: in high dimension many infinitesimal changes add up to
one large change of the output. Networks built from nearly linear pieces (ReLU, the linear part
of sigmoids) inherit this.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from bayesdl._validation import check_positive, check_tensor

__all__ = ["linear_score_change", "linearity_demo"]


def linear_score_change(w: Tensor, eps: float) -> tuple[Tensor, float]:
    """The perturbation ``r = eps sign(w)`` and the score change ``w^T r`` it causes.

    Returns:
        ``(r, change)`` with ``change = eps * ||w||_1``.
    """
    w = check_tensor("w", w, ndim=1)
    check_positive("eps", eps, strict=False)
    r = eps * w.sign()
    return r, float(w @ r)


def linearity_demo(
    dims: Sequence[int] = (10, 100, 1_000, 10_000),
    eps: float = 0.01,
    *,
    seed: int = 0,
) -> list[dict[str, float]]:
    """The score change of ``r = eps sign(w)`` for random linear models of growing dimension.

    Weights are ``w ~ N(0, 1)`` (mean absolute value ``m = sqrt(2/pi)``) and the input ``x`` is
    uniform on ``[0, 1]^n``.

    Returns:
        One row per dimension: ``dim``, ``change`` (the measured ``w^T(x + r) - w^T x``),
        ``eps_l1`` (``eps ||w||_1``), ``eps_m_n`` (``eps m n`` with the sample's ``m``) and
        ``max_abs_r`` (always ``eps``).
    """
    check_positive("eps", eps)
    gen = torch.Generator().manual_seed(int(seed))
    rows = []
    for n in dims:
        check_positive("dims", n, integer=True)
        w = torch.randn(int(n), generator=gen, dtype=torch.float64)
        x = torch.rand(int(n), generator=gen, dtype=torch.float64)
        r, _ = linear_score_change(w, eps)
        rows.append(
            {
                "dim": int(n),
                "change": float(w @ (x + r) - w @ x),
                "eps_l1": float(eps * w.abs().sum()),
                "eps_m_n": float(eps * w.abs().mean() * n),
                "max_abs_r": float(r.abs().max()),
            }
        )
    return rows
