"""Figures of the adversarial report: robustness curves and original / perturbation /
adversarial triples (the lecture's "pig -> airliner" slide, on digits).

Like :mod:`bayesdl.plots`, every function takes optional Axes and returns what it drew on;
``matplotlib.pyplot`` is imported only when a new figure is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bayesdl.plots import _array, _axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["plot_adversarial_triples", "plot_robustness"]


def plot_robustness(rows: Sequence[Mapping[str, Any]], *, ax: Axes | None = None) -> Axes:
    """Accuracy against the budget ``eps``: one colour per model, PGD solid, FGSM dashed.

    Arguments:
        rows: Rows with ``model``, ``attack`` (``"fgsm"``/``"pgd"``), ``eps`` and ``accuracy``
            (as in ``bayesdl run adversarial``'s ``results.json``).
        ax: Axes to draw on.
    """
    if not rows:
        raise ValueError("rows must not be empty")
    for key in ("model", "attack", "eps", "accuracy"):
        if key not in rows[0]:
            raise ValueError(f"rows must have a {key!r} column, got {list(rows[0])}")
    ax = _axes(ax, figsize=(6.0, 4.0))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for i, model in enumerate(models):
        color = f"C{i}"
        for attack, style in (("pgd", "-"), ("fgsm", "--")):
            pts = sorted(
                (r["eps"], r["accuracy"])
                for r in rows
                if r["model"] == model and r["attack"] == attack
            )
            if pts:
                eps, acc = zip(*pts, strict=True)
                label = model if attack == "pgd" else None
                ax.plot(eps, acc, style, marker="o", ms=3, color=color, label=label)
    ax.set_xlabel(r"$\epsilon$ (L-inf)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("PGD (solid) and FGSM (dashed)")
    ax.legend(fontsize=7)
    return ax


def plot_adversarial_triples(
    x: Any,
    x_adv: Any,
    y: Any,
    pred: Any,
    axes: Any | None = None,
    *,
    target: Any | None = None,
    image_shape: tuple[int, int] = (8, 8),
) -> np.ndarray:
    """Rows of (original, perturbation, adversarial) images with the labels in the titles.

    Arguments:
        x: Clean inputs ``(K, ...)`` with ``prod(image_shape)`` values each.
        x_adv: Adversarial inputs, the shape of ``x``.
        y: True labels ``(K,)``.
        pred: The classifier's labels on ``x_adv``, ``(K,)``.
        axes: A ``(K, 3)`` array of Axes; a new figure by default.
        target: Target labels ``(K,)`` of a targeted attack, shown in the titles.
        image_shape: Height and width of an image.

    Returns:
        The ``(K, 3)`` array of Axes.
    """
    clean = _array("x", x)
    adv = _array("x_adv", x_adv)
    if clean.shape != adv.shape:
        raise ValueError(f"x and x_adv must share a shape, got {clean.shape} and {adv.shape}")
    k = clean.shape[0]
    clean = clean.reshape(k, *image_shape)
    adv = adv.reshape(k, *image_shape)
    labels, preds = _array("y", y).astype(int), _array("pred", pred).astype(int)
    targets = None if target is None else _array("target", target).astype(int)
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(k, 3, figsize=(6, 2 * k))
    axes = np.asarray(axes).reshape(k, 3)
    delta = adv - clean
    bound = max(float(np.abs(delta).max()), 1e-12)
    for i in range(k):
        axes[i, 0].imshow(clean[i], cmap="gray_r", vmin=0, vmax=1)
        axes[i, 0].set_title(f"digit {labels[i]}", fontsize=9)
        axes[i, 1].imshow(delta[i], cmap="RdBu_r", vmin=-bound, vmax=bound)
        axes[i, 1].set_title(f"perturbation (max {np.abs(delta[i]).max():.2f})", fontsize=9)
        axes[i, 2].imshow(adv[i], cmap="gray_r", vmin=0, vmax=1)
        aim = "" if targets is None else f" (target {targets[i]})"
        axes[i, 2].set_title(f"classified as {preds[i]}{aim}", fontsize=9)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    return axes
