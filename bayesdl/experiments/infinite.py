"""``bayesdl run infinite``: Neal's Figure 2.2 and the convergence of wide networks to a GP.

Writes ``figure-2-2.png`` (prior functions of 10,000 tanh units at sigma_u = 5 and 20),
``convergence.png`` (prior kurtosis and kernel error against the width), ``bnn-vs-gp.png``
(NUTS posteriors of finite BNNs over the GP's) and ``results.json``, and prints the tables.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bayesdl import data as datasets
from bayesdl.experiments._common import check_run, format_rows, pick_settings
from bayesdl.experiments.aleatoric import single_thread
from bayesdl.infinite import bnn_vs_gp, kernel_convergence, neal_figure_2_2, prior_kurtosis

__all__ = ["QUICK", "SETTINGS", "Settings", "run_infinite"]


@dataclass(frozen=True)
class Settings:
    """Sizes of ``bayesdl run infinite``.

    Attributes:
        figure_width: Hidden units of the Figure 2.2 networks (Neal: 10,000).
        kurtosis_widths: Widths of the prior-kurtosis study.
        kurtosis_draws: Networks drawn per width.
        kurtosis_activation: Activation of that study.
        kurtosis_sigma_b: Output-bias scale of that study: a small bias leaves the hidden units'
            non-Gaussianity visible.
        kernel_widths: Widths of the kernel-convergence study.
        kernel_points: Inputs (on ``[-3, 3]``) where the kernels are compared.
        bnn_widths: Hidden widths of the BNNs sampled with NUTS.
        bnn_points: Training points of the 1-D toy data (with an input gap).
        num_samples: NUTS draws per chain.
        warmup_steps: NUTS warm-up steps per chain.
        num_chains: NUTS chains per width.
        max_tree_depth: NUTS tree-depth limit.
    """

    figure_width: int = 10_000
    kurtosis_widths: tuple[int, ...] = (1, 3, 10, 30, 100, 300)
    kurtosis_draws: int = 400_000
    kurtosis_activation: str = "tanh"
    kurtosis_sigma_b: float = 0.1
    kernel_widths: tuple[int, ...] = (10, 100, 1_000, 10_000, 100_000)
    kernel_points: int = 50
    bnn_widths: tuple[int, ...] = (10, 50, 200)
    bnn_points: int = 40
    num_samples: int = 200
    warmup_steps: int = 200
    num_chains: int = 4
    max_tree_depth: int = 8


#: The full run (a few minutes, most of it NUTS on the widest BNN).
SETTINGS = Settings()

#: Smoke runs and CI (seconds).
QUICK = replace(
    SETTINGS,
    figure_width=500,
    kurtosis_widths=(1, 10),
    kurtosis_draws=4_000,
    kernel_widths=(10, 1_000),
    kernel_points=10,
    bnn_widths=(3, 10),
    bnn_points=20,
    num_samples=20,
    warmup_steps=20,
    num_chains=2,
    max_tree_depth=4,
)


def toy_data(settings: Settings, seed: int) -> datasets.RegressionData:
    """The lecture's 1-D toy regression (noise 0.2) with a gap in the inputs."""
    return datasets.homoscedastic(
        int(settings.bnn_points / 0.8), gap=(-1.0, 1.0), noise_std=0.2, seed=seed
    )


def run_infinite(
    output: Path | str,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    *,
    settings: Settings | None = None,
    figures: bool = True,
    dpi: int = 100,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Reproduce Neal's Figure 2.2 and run the three convergence studies.

    Arguments:
        output: Folder for the figures and ``results.json`` (created if missing).
        seed: Seed of every draw and chain.
        quick: Tiny sizes (:data:`QUICK`).
        progress: Show NUTS progress bars.
        settings: Override the settings.
        figures: Write the figures.
        dpi: Figure resolution.
        echo: Where the tables go.

    Returns:
        The content of ``results.json``: the settings and the rows of each study.
    """
    output = check_run(output, seed, dpi)
    settings = pick_settings(settings, quick, SETTINGS, QUICK)
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    with single_thread():
        figure = neal_figure_2_2(width=settings.figure_width, seed=seed + 1995)
        kurtosis = prior_kurtosis(
            torch.tensor([1.0]),
            settings.kurtosis_widths,
            activation=settings.kurtosis_activation,
            sigma_b=settings.kurtosis_sigma_b,
            num_draws=settings.kurtosis_draws,
            seed=seed,
        )
        x_kernel = torch.linspace(-3.0, 3.0, settings.kernel_points).unsqueeze(-1)
        kernels = {
            act: kernel_convergence(x_kernel, settings.kernel_widths, activation=act, seed=seed)
            for act in ("erf", "relu", "step")
        }
        toy = toy_data(settings, seed)
        comparison = bnn_vs_gp(
            toy,
            settings.bnn_widths,
            num_samples=settings.num_samples,
            warmup_steps=settings.warmup_steps,
            num_chains=settings.num_chains,
            max_tree_depth=settings.max_tree_depth,
            seed=seed,
            progress=progress,
            warn_tree_depth=1.0,  # the table reports what matters: R-hat and ESS of f
        )

    written = []
    if figures:
        written = _figures(output, figure, kurtosis, kernels, comparison, dpi)
    elapsed = time.perf_counter() - start

    echo(f"Prior excess kurtosis of f(1) ({settings.kurtosis_activation}; exact = 'theory'):")
    echo(format_rows(kurtosis, ("width", "kurtosis", "standard_error", "theory")))
    echo("\nRelative error of one width-q network's kernel against the infinite-width kernel:")
    echo(
        format_rows(
            [
                {"width": r["width"], **{a: kernels[a][i]["relative_error"] for a in kernels}}
                for i, r in enumerate(kernels["erf"])
            ],
            ("width", *kernels),
        )
    )
    echo("\nFinite BNNs (NUTS) against the erf NNGP posterior on the 1-D toy data:")
    echo(
        format_rows(
            comparison.rows,
            ("width", "mean_distance", "sd_ratio", "max_rhat", "min_ess", "seconds"),
        )
    )
    echo(f"\ntook {elapsed:.1f} s; figures and results.json in {output}")
    results = {
        "settings": asdict(settings),
        "seed": seed,
        "quick": quick,
        "kurtosis": kurtosis,
        "kernel_convergence": kernels,
        "bnn_vs_gp": comparison.rows,
        "seconds": elapsed,
        "figures": written,
    }
    (output / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _figures(output: Path, figure, kurtosis, kernels, comparison, dpi: int) -> list[str]:
    # The object-oriented API: no pyplot, so a caller's backend (e.g. a notebook's) is untouched.
    from matplotlib.figure import Figure

    from bayesdl.infinite.plots import plot_bnn_vs_gp, plot_neal_figure, plot_width_convergence

    panels = len(figure.functions)
    fig = Figure(figsize=(4.5 * panels, 3.5), layout="tight")
    plot_neal_figure(figure, fig.subplots(1, panels, sharey=True).ravel().tolist())
    fig.savefig(output / "figure-2-2.png", dpi=dpi)

    fig = Figure(figsize=(10, 4), layout="tight")
    ax1, ax2 = fig.subplots(1, 2)
    plot_width_convergence(
        kurtosis, "kurtosis", error="standard_error", theory="theory", ax=ax1, label="sampled"
    )
    ax1.set_title("prior excess kurtosis of f(x): exactly ~ 1/q")
    for act, rows in kernels.items():
        plot_width_convergence(
            rows, "relative_error", slope=-0.5 if act == "erf" else None, ax=ax2, label=act
        )
    ax2.set_title("error of one network's kernel: ~ q^(-1/2)")
    fig.savefig(output / "convergence.png", dpi=dpi)

    panels = len(comparison.rows)
    fig = Figure(figsize=(4.5 * panels, 3.5), layout="tight")
    plot_bnn_vs_gp(comparison, fig.subplots(1, panels, sharey=True).ravel().tolist())
    fig.savefig(output / "bnn-vs-gp.png", dpi=dpi)
    return ["figure-2-2.png", "convergence.png", "bnn-vs-gp.png"]
