"""Matplotlib figures for predictive uncertainty: bands, uncertainty splits, densities, calibration.

Every function takes an optional ``ax`` (a new figure is made without one) and returns the
``Axes`` it drew on, so panels compose with ``plt.subplots``. Inputs may be torch tensors, NumPy
arrays or lists. ``matplotlib.pyplot`` is imported inside the functions only: importing this
module never selects a backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from bayesdl._validation import check_positive

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from bayesdl.inference.svi import History

__all__ = [
    "plot_calibration",
    "plot_conditional_density",
    "plot_loss",
    "plot_mixture_weights",
    "plot_predictive_band",
    "plot_uncertainty_split",
]

ArrayLike = Tensor | np.ndarray | list[float] | tuple[float, ...]
#: A known curve: an array of values at ``x`` or a function of ``x`` (e.g. ``data.mean_fn``).
Curve = ArrayLike | Callable[[Tensor], Tensor]


def _axes(ax: Axes | None, figsize: tuple[float, float] = (6.0, 4.0)) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def _array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().to(torch.float64).numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a tensor or an array of numbers, got {value!r}") from err
    return arr


def _vector(name: str, value: Any) -> np.ndarray:
    """A 1-D array; inputs of shape ``(N, 1)`` are flattened."""
    arr = _array(name, value)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (or of shape (N, 1)), got shape {arr.shape}")
    return arr


def _like(name: str, value: Any, x: np.ndarray) -> np.ndarray:
    arr = _vector(name, value)
    if arr.shape != x.shape:
        raise ValueError(f"{name} must have the shape of x {x.shape}, got {arr.shape}")
    return arr


def _curve(name: str, value: Curve, x: np.ndarray) -> np.ndarray:
    if callable(value):
        value = value(torch.as_tensor(x, dtype=torch.get_default_dtype()))
    return _like(name, value, x)


def plot_predictive_band(
    x: ArrayLike,
    mean: ArrayLike,
    std: ArrayLike,
    *,
    ax: Axes | None = None,
    x_train: ArrayLike | None = None,
    y_train: ArrayLike | None = None,
    true_mean: Curve | None = None,
    label: str | None = None,
    color: str | None = None,
) -> Axes:
    """Predictive mean with 1- and 2-sigma bands, over the training data.

    Arguments:
        x: 1-D inputs (or shape ``(N, 1)``), in any order (sorted here).
        mean: Predictive means at ``x``.
        std: Predictive standard deviations at ``x`` (total, or any part of it).
        ax: Axes to draw on; a new figure by default.
        x_train: Training inputs to scatter (with ``y_train``).
        y_train: Training targets.
        true_mean: The true ``E[y | x]``, values at ``x`` or a function of ``x``.
        label: Legend label of the mean.
        color: Colour of the mean and bands.

    Returns:
        The Axes.
    """
    xs = _vector("x", x)
    mu = _like("mean", mean, xs)
    sd = _like("std", std, xs)
    if (sd < 0).any():
        raise ValueError("std must be >= 0 everywhere")
    order = np.argsort(xs)
    xs, mu, sd = xs[order], mu[order], sd[order]
    ax = _axes(ax)
    if (x_train is None) != (y_train is None):
        raise ValueError("x_train and y_train must be given together")
    if x_train is not None:
        xt = _vector("x_train", x_train)
        yt = _like("y_train", y_train, xt)
        ax.scatter(xt, yt, s=6, color="0.5", alpha=0.5, lw=0, label="data", zorder=1)
    (line,) = ax.plot(xs, mu, color=color, lw=2, label=label or "predictive mean", zorder=3)
    c = line.get_color()
    ax.fill_between(xs, mu - 2 * sd, mu + 2 * sd, color=c, alpha=0.15, lw=0, label=r"$\pm 2\sigma$")
    ax.fill_between(xs, mu - sd, mu + sd, color=c, alpha=0.3, lw=0, label=r"$\pm 1\sigma$")
    if true_mean is not None:
        ax.plot(xs, _curve("true_mean", true_mean, xs), "k--", lw=1, label="true mean")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8, loc="best")
    return ax


def plot_uncertainty_split(
    x: ArrayLike,
    aleatoric_std: ArrayLike | None,
    epistemic_std: ArrayLike | None,
    *,
    ax: Axes | None = None,
    true_noise: Curve | None = None,
) -> Axes:
    """Aleatoric and epistemic standard deviations over a 1-D input, with their total.

    The total is ``sqrt(aleatoric^2 + epistemic^2)``: variances add (Kendall & Gal, 2017).

    Arguments:
        x: 1-D inputs, in any order.
        aleatoric_std: ``sqrt(E[sigma^2])`` at ``x``, or ``None`` to leave it out.
        epistemic_std: ``sqrt(Var[mu])`` at ``x``, or ``None`` (e.g. for a point estimate).
        ax: Axes to draw on.
        true_noise: The true noise scale, values at ``x`` or a function of ``x``.

    Returns:
        The Axes.

    References:
        Kendall, A., & Gal, Y. (2017). What uncertainties do we need in Bayesian deep learning for
        computer vision? NeurIPS.
    """
    xs = _vector("x", x)
    if aleatoric_std is None and epistemic_std is None:
        raise ValueError("give aleatoric_std, epistemic_std or both")
    order = np.argsort(xs)
    ax = _axes(ax, (6.0, 3.0))
    parts = {}
    for name, value, color in (
        ("aleatoric", aleatoric_std, "tab:blue"),
        ("epistemic", epistemic_std, "tab:orange"),
    ):
        if value is None:
            continue
        arr = _like(f"{name}_std", value, xs)
        if (arr < 0).any():
            raise ValueError(f"{name}_std must be >= 0 everywhere")
        parts[name] = arr
        ax.plot(xs[order], arr[order], color=color, lw=2, label=name)
    if len(parts) == 2:
        total = np.sqrt(parts["aleatoric"] ** 2 + parts["epistemic"] ** 2)
        ax.plot(xs[order], total[order], color="k", lw=1, label="total")
    if true_noise is not None:
        ax.plot(
            xs[order], _curve("true_noise", true_noise, xs)[order], "k--", lw=1, label="true noise"
        )
    ax.set_xlabel("x")
    ax.set_ylabel("standard deviation")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return ax


def _range(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}") from err
    if not lo < hi:
        raise ValueError(f"{name} must satisfy low < high, got {value!r}")
    return lo, hi


def plot_conditional_density(
    log_prob_fn: Callable[[Tensor, Tensor], Tensor],
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    *,
    ax: Axes | None = None,
    data: tuple[ArrayLike, ArrayLike] | None = None,
    resolution: int = 200,
    cmap: str = "viridis",
    vmax: float | None = None,
) -> Axes:
    """Heat map of a conditional density ``p(y | x)`` over a rectangle, with data on top.

    Each column of the image is the density at one input, so a multimodal conditional (a mixture
    density network on an inverse problem) shows as several bright branches.

    Arguments:
        log_prob_fn: ``log_prob_fn(x, y)`` with inputs of shape ``(M, 1)`` and targets ``(M,)``,
            returning ``log p(y | x)`` of shape ``(M,)``; e.g. ``lambda x, y: mdn(x).log_prob(y)``.
        x_range: ``(low, high)`` of the inputs.
        y_range: ``(low, high)`` of the targets.
        ax: Axes to draw on.
        data: ``(x, y)`` points to scatter on top.
        resolution: Grid points per axis.
        cmap: Matplotlib colour map.
        vmax: Density at the top of the colour scale; by default the 99th percentile of the
            density on the grid, so that a few very sharp peaks do not wash out the rest.

    Returns:
        The Axes.
    """
    if not callable(log_prob_fn):
        raise TypeError("log_prob_fn must be callable as log_prob_fn(x, y)")
    x_lo, x_hi = _range("x_range", x_range)
    y_lo, y_hi = _range("y_range", y_range)
    check_positive("resolution", resolution, integer=True)
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    xs = torch.linspace(x_lo, x_hi, resolution)
    ys = torch.linspace(y_lo, y_hi, resolution)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    with torch.no_grad():
        log_p = log_prob_fn(gx.reshape(-1, 1), gy.reshape(-1))
    log_p = _array("log_prob_fn(x, y)", log_p)
    if log_p.shape != (resolution * resolution,):
        raise ValueError(
            f"log_prob_fn must return one value per point, shape ({resolution * resolution},), "
            f"got {log_p.shape}"
        )
    density = np.exp(log_p).reshape(resolution, resolution)
    if vmax is None:
        vmax = float(np.quantile(density, 0.99)) or None
    ax = _axes(ax)
    image = ax.imshow(
        density,
        origin="lower",
        extent=(x_lo, x_hi, y_lo, y_hi),
        aspect="auto",
        cmap=cmap,
        vmin=0.0,
        vmax=vmax,
        interpolation="nearest",
    )
    clipped = vmax is not None and float(density.max()) > vmax
    ax.figure.colorbar(image, ax=ax, label="p(y | x)", extend="max" if clipped else "neither")
    if data is not None:
        xd = _vector("data[0]", data[0])
        yd = _like("data[1]", data[1], xd)
        ax.scatter(xd, yd, s=3, color="w", alpha=0.5, lw=0)
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    return ax


def plot_mixture_weights(x: ArrayLike, weights: ArrayLike, ax: Axes | None = None) -> Axes:
    """Mixing coefficients ``pi_k(x)`` of a mixture density network, stacked over ``x``.

    Arguments:
        x: 1-D inputs, in any order.
        weights: Weights of shape ``(N, K)``, rows summing to one.
        ax: Axes to draw on.

    Returns:
        The Axes.

    References:
        Bishop, C. M. (1994). Mixture density networks. Technical Report NCRG/4288, Aston
        University.
    """
    xs = _vector("x", x)
    w = _array("weights", weights)
    if w.ndim != 2 or w.shape[0] != xs.shape[0]:
        raise ValueError(
            f"weights must have shape (N, K) with N = len(x) = {len(xs)}, got {w.shape}"
        )
    if (w < 0).any() or not np.allclose(w.sum(1), 1.0, atol=1e-4):
        raise ValueError("weights must be non-negative with rows summing to 1")
    order = np.argsort(xs)
    ax = _axes(ax, (6.0, 3.0))
    ax.stackplot(
        xs[order], w[order].T, labels=[rf"$\pi_{k + 1}$" for k in range(w.shape[1])], alpha=0.8
    )
    ax.set_xlim(xs.min(), xs.max())
    ax.set_ylim(0, 1)
    ax.set_xlabel("x")
    ax.set_ylabel("mixing coefficient")
    ax.legend(fontsize=8, loc="upper right")
    return ax


def plot_calibration(
    expected: ArrayLike, observed: ArrayLike, ax: Axes | None = None, label: str | None = None
) -> Axes:
    """Calibration curve: observed against expected coverage of central intervals.

    A calibrated predictive lies on the diagonal, an over-confident one below it. Call it once per
    model on one ``ax`` to compare models.

    Arguments:
        expected: Nominal levels in ``[0, 1]`` (e.g. from
            :func:`bayesdl.metrics.calibration_curve`).
        observed: Observed coverage at those levels.
        ax: Axes to draw on (the diagonal is drawn once per Axes).
        label: Legend label.

    Returns:
        The Axes.

    References:
        Kuleshov, V., Fenner, N., & Ermon, S. (2018). Accurate uncertainties for deep learning
        using calibrated regression. ICML.
    """
    e = _vector("expected", expected)
    o = _like("observed", observed, e)
    for name, arr in (("expected", e), ("observed", o)):
        if (arr < 0).any() or (arr > 1).any():
            raise ValueError(f"{name} must lie in [0, 1]")
    ax = _axes(ax, (4.5, 4.5))
    if not getattr(ax, "_bayesdl_diagonal", False):
        ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
        ax._bayesdl_diagonal = True  # type: ignore[attr-defined]
    ax.plot(e, o, marker="o", ms=3, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("expected coverage")
    ax.set_ylabel("observed coverage")
    if label is not None:
        ax.legend(fontsize=8)
    return ax


def plot_loss(history: History, ax: Axes | None = None, window: int = 50) -> Axes:
    """Training loss per step with its running mean.

    Arguments:
        history: A :class:`~bayesdl.inference.svi.History` from :func:`bayesdl.fit`.
        ax: Axes to draw on.
        window: Window of the running mean (:meth:`~bayesdl.inference.svi.History.smoothed`).

    Returns:
        The Axes.
    """
    if not hasattr(history, "loss") or not hasattr(history, "smoothed"):
        raise TypeError(f"history must be a bayesdl History, got {type(history).__name__}")
    if len(history.loss) == 0:
        raise ValueError("history holds no steps")
    check_positive("window", window, integer=True)
    ax = _axes(ax, (6.0, 3.0))
    steps = np.arange(1, len(history.loss) + 1)
    ax.plot(steps, history.loss, color="0.7", lw=0.8, label="loss")
    smooth = history.smoothed(window).numpy()
    # The running mean over a full window starts at step `window`; shorter runs use a cumulative mean.
    ax.plot(
        steps[len(steps) - len(smooth) :],
        smooth,
        color="tab:blue",
        lw=1.5,
        label=f"running mean ({min(window, len(steps))})",
    )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    # Early losses can dwarf the rest: zoom on the range of the running mean.
    lo, hi = float(smooth.min()), float(smooth.max())
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    ax.set_ylim(lo - pad, hi + pad)
    ax.legend(fontsize=8)
    return ax
