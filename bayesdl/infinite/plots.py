"""Figures of the infinite-network studies: prior functions, convergence in width, BNN vs GP.

Like :mod:`bayesdl.plots`, every function takes an optional ``ax`` and returns the Axes it drew
on; ``matplotlib.pyplot`` is imported only when a new figure is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from bayesdl.plots import ArrayLike, _array, _axes, _vector, plot_predictive_band

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from bayesdl.infinite.convergence import BNNvsGP
    from bayesdl.infinite.prior import NealFigure

__all__ = ["plot_bnn_vs_gp", "plot_neal_figure", "plot_prior_functions", "plot_width_convergence"]


def plot_prior_functions(
    x: ArrayLike, functions: ArrayLike, *, ax: Axes | None = None, title: str | None = None
) -> Axes:
    """Functions drawn from a prior, one line each.

    Arguments:
        x: Inputs ``(N,)``.
        functions: Values ``(F, N)``.
        ax: Axes to draw on.
        title: Panel title.
    """
    xs = _vector("x", x)
    fs = _array("functions", functions)
    if fs.ndim != 2 or fs.shape[1] != xs.shape[0]:
        raise ValueError(f"functions must have shape (F, {xs.shape[0]}), got {fs.shape}")
    ax = _axes(ax)
    for f in fs:
        ax.plot(xs, f, lw=1)
    ax.set_xlabel("x")
    ax.set_ylabel("f(x)")
    if title:
        ax.set_title(title)
    return ax


def plot_neal_figure(figure: NealFigure, axes: Sequence[Axes] | None = None) -> list[Axes]:
    """Neal's Figure 2.2 from :func:`~bayesdl.infinite.neal_figure_2_2`: one panel per ``sigma_u``."""
    settings = list(figure.functions)
    if axes is None:
        import matplotlib.pyplot as plt

        _, axs = plt.subplots(1, len(settings), figsize=(4.5 * len(settings), 3.5), sharey=True)
        axes = list(np.atleast_1d(axs))
    if len(axes) != len(settings):
        raise ValueError(f"axes must hold {len(settings)} Axes, got {len(axes)}")
    for ax, s in zip(axes, settings, strict=True):
        plot_prior_functions(
            figure.x,
            figure.functions[s],
            ax=ax,
            title=rf"$\sigma_u = \sigma_a = {s:g}$, {figure.width:,} {figure.activation} units",
        )
    return list(axes)


def plot_width_convergence(
    rows: Sequence[Mapping[str, float]],
    value: str,
    *,
    error: str | None = None,
    theory: str | None = None,
    slope: float | None = None,
    ax: Axes | None = None,
    label: str | None = None,
) -> Axes:
    """A study's ``value`` against the width on log-log axes, with the expected power law.

    Arguments:
        rows: Rows of a study (each with ``"width"`` and ``value``).
        value: The column to plot (its absolute value, for log axes).
        error: A column of standard errors, drawn as error bars.
        theory: A column of exact values, drawn as a line.
        slope: Draw ``c * width**slope`` through the first row (e.g. ``-0.5``).
        ax: Axes to draw on.
        label: Legend label of the points.
    """
    if not rows:
        raise ValueError("rows must not be empty")
    for name in ("width", value, error, theory):
        if name is not None and name not in rows[0]:
            raise ValueError(f"rows have no column {name!r}; they have {list(rows[0])}")
    q = np.array([r["width"] for r in rows], dtype=float)
    y = np.abs(np.array([r[value] for r in rows], dtype=float))
    ax = _axes(ax)
    yerr = None if error is None else np.array([r[error] for r in rows], dtype=float)
    ax.errorbar(q, y, yerr=yerr, fmt="o-", capsize=3, label=label or value)
    if theory is not None:
        ax.plot(q, [r[theory] for r in rows], "k-", lw=1, label="exact")
    if slope is not None:
        ax.plot(q, y[0] * (q / q[0]) ** slope, "k--", lw=1, label=rf"$\propto q^{{{slope:g}}}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("hidden units q")
    ax.set_ylabel(value.replace("_", " "))
    ax.legend(fontsize=8)
    return ax


def plot_bnn_vs_gp(result: BNNvsGP, axes: Sequence[Axes] | None = None) -> list[Axes]:
    """One panel per width: the BNN's posterior of ``f`` (band) over the GP's (dashed lines)."""
    widths = [int(r["width"]) for r in result.rows]
    if axes is None:
        import matplotlib.pyplot as plt

        _, axs = plt.subplots(1, len(widths), figsize=(4.5 * len(widths), 3.5), sharey=True)
        axes = list(np.atleast_1d(axs))
    if len(axes) != len(widths):
        raise ValueError(f"axes must hold {len(widths)} Axes, got {len(axes)}")
    x = result.x.numpy()
    gp_mean, gp_sd = result.gp_mean.numpy(), result.gp_sd.numpy()
    for ax, row in zip(axes, result.rows, strict=True):
        q = int(row["width"])
        plot_predictive_band(
            x,
            result.bnn_mean[q],
            result.bnn_sd[q],
            ax=ax,
            x_train=result.data.x_train,
            y_train=result.data.y_train,
            label=f"BNN, q = {q} (NUTS)",
        )
        ax.plot(x, gp_mean, "k--", lw=1, label="GP mean")
        ax.plot(x, gp_mean - 2 * gp_sd, "k:", lw=1, label=r"GP $\pm 2\sigma$")
        ax.plot(x, gp_mean + 2 * gp_sd, "k:", lw=1)
        ax.set_title(
            f"q = {q}: |dmu|/sd = {row['mean_distance']:.2f}, sd ratio {row['sd_ratio']:.2f}"
        )
        ax.set_ylabel("f(x)")
        ax.legend(fontsize=7, loc="lower left")
    return list(axes)
