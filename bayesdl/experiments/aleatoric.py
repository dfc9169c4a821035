"""The lecture's aleatoric-uncertainty demos: homoscedastic vs heteroscedastic noise, and an MDN.

Three problems, all on seeded synthetic data from :mod:`bayesdl.data`, all fitted by maximum
likelihood with :func:`bayesdl.fit` (``prior=None``, no guide):

1. :func:`~bayesdl.data.homoscedastic` data with a homoscedastic Gaussian network
   ``N(mu(x), sigma^2)``;
2. :func:`~bayesdl.data.heteroscedastic` data with a heteroscedastic network
   ``N(mu(x), sigma^2(x))`` (Nix & Weigend, 1994);
3. Bishop's flipped sinusoid, where ``p(y | x)`` has up to three branches, with a point estimate
   trained on the squared error, a heteroscedastic Gaussian and a mixture density network
   (Bishop, 1994).

:func:`run_aleatoric` prints a table of test NLL, RMSE, CRPS and 90% coverage (with the scores of
the true ``p(y | x)`` as a reference), writes figures and a ``results.json``. The ``fit_*`` and
:func:`evaluate` functions are its building blocks; the tests use them to check what the command
reports.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import Tensor

from bayesdl import data as datasets
from bayesdl import metrics
from bayesdl._validation import check_positive
from bayesdl.data import RegressionData
from bayesdl.distributions.mdn import MixtureDensityNetwork, find_modes, gaussian_mixture_crps
from bayesdl.experiments._common import check_run, pick_settings
from bayesdl.inference import History, fit, predict
from bayesdl.likelihoods import Heteroscedastic, Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP

__all__ = [
    "QUICK",
    "SETTINGS",
    "Settings",
    "evaluate",
    "fit_heteroscedastic",
    "fit_homoscedastic",
    "fit_mdn",
    "fit_point_estimate",
    "flipped_bishop_log_prob",
    "format_table",
    "load_data",
    "point_at",
    "reference_scores",
    "run_aleatoric",
    "single_thread",
]


@dataclass(frozen=True)
class Settings:
    """Sizes, widths and step counts of the aleatoric experiment.

    Attributes:
        n_toy: Points (train + test) of the homoscedastic and heteroscedastic sets.
        toy_noise: Noise scale ``s`` of those sets.
        n_bishop: Points of Bishop's flipped problem.
        bishop_noise: Noise scale of Bishop's problem (on the flipped problem's *input*);
            ``0.05`` is about the standard deviation of Bishop's uniform noise on ``(-0.1, 0.1)``.
        hidden: Hidden widths of every network.
        num_components: Components of the mixture density network. The flipped curve has five
            monotone pieces, so five components can each follow one piece smoothly; with three,
            a component must jump between pieces and training often merged two branches.
        lr: Initial learning rate of Adam; it decays tenfold over each fit and gradient entries
            are clamped to +/-10 (``pyro.optim.ClippedAdam``), which keeps the mixture's fit
            stable.
        steps_homoscedastic: Full-batch steps of the homoscedastic network.
        steps_heteroscedastic: Steps of the heteroscedastic network on its own data.
        steps_point: Steps of the squared-error point estimate on the flipped problem.
        steps_flipped_gaussian: Steps of the heteroscedastic Gaussian on the flipped problem.
        steps_mdn: Steps of the mixture density network.
        branch_input: Input of the flipped problem where the noise-free conditional has three
            branches (the mode check and the first slice figure).
        average_input: Input where the conditional is bimodal and its mean, which a point
            estimate learns, lies far from both modes (the second slice figure).
        mode_threshold: Modes of the MDN below this fraction of its highest density at an input
            are ignored (see :meth:`MixtureDensityNetwork.modes`).
    """

    n_toy: int = 1000
    toy_noise: float = 0.2
    n_bishop: int = 1000
    bishop_noise: float = 0.05
    hidden: tuple[int, ...] = (50, 50)
    num_components: int = 5
    lr: float = 1e-2
    steps_homoscedastic: int = 800
    steps_heteroscedastic: int = 1500
    steps_point: int = 800
    steps_flipped_gaussian: int = 1500
    steps_mdn: int = 1500
    branch_input: float = 0.25
    average_input: float = 0.46
    mode_threshold: float = 0.05


#: The settings of a full run (about half a minute on two CPU cores).
SETTINGS = Settings()

#: Tiny step counts and data for smoke runs and CI (a few seconds).
QUICK = replace(
    SETTINGS,
    n_toy=200,
    n_bishop=200,
    hidden=(16, 16),
    steps_homoscedastic=20,
    steps_heteroscedastic=20,
    steps_point=20,
    steps_flipped_gaussian=20,
    steps_mdn=20,
)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, then restore the previous count.

    The networks here are tiny: on a busy two-core machine a second thread made each step
    several times slower (threads spin waiting for each other), never faster.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_data(settings: Settings = SETTINGS, seed: int = 0) -> dict[str, RegressionData]:
    """The three data sets of the experiment, keyed ``"homoscedastic"``, ``"heteroscedastic"``
    and ``"bishop-flipped"``."""
    return {
        "homoscedastic": datasets.homoscedastic(
            settings.n_toy, noise_std=settings.toy_noise, seed=seed
        ),
        "heteroscedastic": datasets.heteroscedastic(
            settings.n_toy, noise_std=settings.toy_noise, seed=seed
        ),
        "bishop-flipped": datasets.bishop(
            settings.n_bishop, noise_std=settings.bishop_noise, flipped=True, seed=seed
        ),
    }


# -- fitting --------------------------------------------------------------------------------------


def _fit(
    model: BNN, data: RegressionData, num_steps: int, lr: float, seed: int, progress: bool
) -> History:
    # Each model has its own name in the param store; clearing it too keeps a re-run from
    # picking up the parameters of an earlier run (an existing entry would win).
    pyro.clear_param_store()
    # A decaying step with clamped gradients: a mixture's likelihood has sharp ridges where a
    # component narrows onto a branch, and a constant Adam step of 1e-2 kept jumping off them.
    optim = pyro.optim.ClippedAdam({"lr": lr, "clip_norm": 10.0, "lrd": 0.1 ** (1 / num_steps)})
    return fit(
        model,
        None,
        data.x_train,
        data.y_train,
        num_steps=num_steps,
        optim=optim,
        seed=seed,
        progress=progress,
    )


def _check_args(data: RegressionData, settings: Settings, seed: int) -> None:
    if not isinstance(data, RegressionData):
        raise TypeError(f"data must be a bayesdl.data.RegressionData, got {type(data).__name__}")
    if data.x_train.ndim != 2:
        raise ValueError(f"data.x_train must have shape (N, D), got {tuple(data.x_train.shape)}")
    if not isinstance(settings, Settings):
        raise TypeError(f"settings must be a Settings, got {type(settings).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def fit_homoscedastic(
    data: RegressionData,
    settings: Settings = SETTINGS,
    *,
    seed: int = 0,
    progress: bool = False,
) -> tuple[BNN, History]:
    """Fit ``N(y; mu(x), sigma^2)`` by maximum likelihood: the network and one ``sigma``.

    The loss is the lecture's ``sum_i (y_i - mu(x_i))^2 / (2 sigma^2) + log sigma + C``.

    Arguments:
        data: Training data (``data.x_train`` of shape ``(N, D)``).
        settings: Widths, learning rate and ``steps_homoscedastic``.
        seed: Seed of the initialisation and the fit.
        progress: Show a progress bar.

    Returns:
        The fitted model (``model.likelihood.sigma`` is the estimate of the noise) and its
        training history.
    """
    _check_args(data, settings, seed)
    pyro.set_rng_seed(seed)
    net = MLP(data.x_train.shape[1], 1, hidden=settings.hidden)
    model = BNN(net, Homoscedastic(sigma=1.0), prior=None, name="homoscedastic")
    history = _fit(model, data, settings.steps_homoscedastic, settings.lr, seed, progress)
    return model, history


def fit_heteroscedastic(
    data: RegressionData,
    settings: Settings = SETTINGS,
    *,
    num_steps: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[BNN, History]:
    """Fit ``N(y; mu(x), sigma^2(x))``: one network with two outputs, ``mu`` and ``sigma``.

    Arguments:
        data: Training data.
        settings: Widths and learning rate.
        num_steps: Steps (default ``settings.steps_heteroscedastic``).
        seed: Seed of the initialisation and the fit.
        progress: Show a progress bar.

    Returns:
        The fitted model and its training history.

    References:
        Nix, D. A., & Weigend, A. S. (1994). Estimating the mean and variance of the target
        probability distribution. ICNN.

        Kendall, A., & Gal, Y. (2017). What uncertainties do we need in Bayesian deep learning for
        computer vision? NeurIPS.
    """
    _check_args(data, settings, seed)
    if num_steps is None:
        num_steps = settings.steps_heteroscedastic
    check_positive("num_steps", num_steps, integer=True)
    pyro.set_rng_seed(seed)
    net = MLP(data.x_train.shape[1], 2, hidden=settings.hidden)
    model = BNN(net, Heteroscedastic(), prior=None, name="heteroscedastic")
    history = _fit(model, data, num_steps, settings.lr, seed, progress)
    return model, history


def fit_point_estimate(
    data: RegressionData,
    settings: Settings = SETTINGS,
    *,
    seed: int = 0,
    progress: bool = False,
) -> tuple[BNN, History]:
    """Fit a point estimate ``y_hat = f(x)`` by least squares.

    This is the homoscedastic model with ``sigma = 1`` fixed (the lecture's exercise): its
    negative log-likelihood is ``sum_i (y_i - f(x_i))^2 / 2 + C``, the squared error, whose
    minimiser is the conditional mean ``E[y | x]``.

    Arguments:
        data: Training data.
        settings: Widths, learning rate and ``steps_point``.
        seed: Seed of the initialisation and the fit.
        progress: Show a progress bar.

    Returns:
        The fitted model (``model.net(x)`` is the point estimate) and its training history.
    """
    _check_args(data, settings, seed)
    pyro.set_rng_seed(seed)
    net = MLP(data.x_train.shape[1], 1, hidden=settings.hidden)
    model = BNN(net, Homoscedastic(sigma=1.0, learn=False), prior=None, name="point")
    history = _fit(model, data, settings.steps_point, settings.lr, seed, progress)
    return model, history


def fit_mdn(
    data: RegressionData,
    settings: Settings = SETTINGS,
    *,
    seed: int = 0,
    progress: bool = False,
) -> tuple[MixtureDensityNetwork, History]:
    """Fit a mixture density network by maximum likelihood.

    The network starts from :meth:`MixtureDensityNetwork.initialize`: components spread over the
    quantiles of the targets, first-layer units that bend inside the data.

    Arguments:
        data: Training data.
        settings: Widths, ``num_components``, learning rate and ``steps_mdn``.
        seed: Seed of the initialisation and the fit.
        progress: Show a progress bar.

    Returns:
        The fitted network and its training history.

    References:
        Bishop, C. M. (1994). Mixture density networks. Technical Report NCRG/4288, Aston
        University.
    """
    _check_args(data, settings, seed)
    pyro.set_rng_seed(seed)
    mdn = MixtureDensityNetwork(
        data.x_train.shape[1], num_components=settings.num_components, hidden=settings.hidden
    ).initialize(data.y_train, data.x_train)
    history = _fit(mdn.model(name="mdn"), data, settings.steps_mdn, settings.lr, seed, progress)
    return mdn, history


def point_at(model: BNN, x0: float) -> float:
    """The network output of a 1-D point-estimate model at the input ``x0``."""
    with torch.no_grad():
        return float(model.net(torch.tensor([[float(x0)]]))[0, 0])


# -- evaluation -----------------------------------------------------------------------------------


def _as_bnn(model: BNN | MixtureDensityNetwork) -> BNN:
    if isinstance(model, MixtureDensityNetwork):
        return model.model()
    if not isinstance(model, BNN):
        raise TypeError(
            f"model must be a BNN or a MixtureDensityNetwork, got {type(model).__name__}"
        )
    return model


def _levels(num_levels: int, like: Tensor) -> Tensor:
    check_positive("num_levels", num_levels, integer=True)
    return torch.arange(1, num_levels + 1, dtype=like.dtype) / (num_levels + 1)


def _pit_scores(cdf: Tensor, levels: Tensor) -> tuple[float, Tensor]:
    """90% coverage and calibration curve from the PIT values ``F(y)``: ``y`` lies in the central
    ``level`` interval iff ``|2 F(y) - 1| <= level``."""
    central = (2 * cdf - 1).abs()
    observed = (central.unsqueeze(0) <= levels.unsqueeze(-1)).to(cdf.dtype).mean(-1)
    return float((central <= 0.9).to(cdf.dtype).mean()), observed


def _scores(
    nll: Any, rmse: Any, crps: Any, cov: float, expected: Tensor, observed: Tensor
) -> dict[str, Any]:
    return {
        "nll": float(nll),
        "rmse": float(rmse),
        "crps": float(crps),
        "coverage90": float(cov),
        "calibration": {"expected": expected.tolist(), "observed": observed.tolist()},
    }


def evaluate(
    model: BNN | MixtureDensityNetwork, x: Tensor, y: Tensor, *, num_levels: int = 19
) -> dict[str, Any]:
    """Test scores of a fitted point-estimate model.

    Gaussian predictives use the closed forms of :mod:`bayesdl.metrics`; a mixture uses its
    exact log-density, :func:`~bayesdl.distributions.mdn.gaussian_mixture_crps`, and central
    intervals from its CDF.

    Arguments:
        model: A fitted :class:`~bayesdl.models.BNN` without latent sites, or a
            :class:`~bayesdl.distributions.mdn.MixtureDensityNetwork`.
        x: Test inputs ``(N, D)``.
        y: Test targets ``(N,)``.
        num_levels: Levels of the calibration curve.

    Returns:
        ``{"nll", "rmse", "crps", "coverage90"}`` (floats; NLL and CRPS averaged over points) and
        ``"calibration": {"expected": [...], "observed": [...]}``.

    References:
        Gneiting, T., & Raftery, A. E. (2007). Strictly proper scoring rules, prediction, and
        estimation. JASA, 102(477), 359-378.
    """
    bnn = _as_bnn(model)
    if bnn.latent_sites:
        raise ValueError("model must be a point-estimate model (prior=None)")
    pred = predict(bnn, None, x)
    nll = -pred.log_prob(y).mean()
    rmse = metrics.rmse(pred.mean, y)
    with torch.no_grad():
        d = bnn.conditional(x)
    if isinstance(d, torch.distributions.Normal):
        crps = metrics.crps_gaussian(d.loc, d.scale, y)
        cov = metrics.coverage(d.loc, d.scale, y, levels=(0.9,))[0.9]
        expected, observed = metrics.calibration_curve(d.loc, d.scale, y, num_levels=num_levels)
    elif isinstance(d, torch.distributions.MixtureSameFamily):
        crps = gaussian_mixture_crps(d, y).mean()
        expected = _levels(num_levels, y)
        cov, observed = _pit_scores(d.cdf(y), expected)
    else:  # pragma: no cover - every likelihood of this experiment is handled above
        raise TypeError(f"unsupported predictive {type(d).__name__}")
    return _scores(nll, rmse, crps, cov, expected, observed)


def flipped_bishop_log_prob(x: Tensor, y: Tensor, noise_std: float) -> Tensor:
    """The true ``log p(y | x)`` of Bishop's flipped problem, per point.

    The data are ``t ~ U(0, 1)``, ``s = t + 0.3 sin(2 pi t) + eps`` with ``eps ~ N(0, noise^2)``,
    and the flipped problem predicts ``y = t`` from ``x = s``. By Bayes' rule
    ``p(t | s) = N(s; f(t), noise^2) / Z(s)`` on ``[0, 1]``, with ``Z(s)`` the integral of the
    numerator over ``t`` (computed on a grid of 4,001 points). Its local maxima sit on the
    branches ``f(t) = s``.

    Arguments:
        x: Inputs ``s``, shape ``(N,)`` or ``(N, 1)``.
        y: Targets ``t``, shape ``(N,)``.
        noise_std: The noise scale of the data.

    Returns:
        ``log p(y | x)`` of shape ``(N,)`` (``-inf`` outside ``[0, 1]``).
    """
    check_positive("noise_std", noise_std)
    x = x.reshape(-1).to(torch.float64)
    y = y.to(torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and y must hold the same number of points, got {x.shape}, {y.shape}")
    grid = torch.linspace(0.0, 1.0, 4001, dtype=torch.float64)

    def log_lik(s: Tensor, t: Tensor) -> Tensor:
        z = (s - datasets.bishop_mean(t)) / noise_std
        return -0.5 * z.square() - math.log(noise_std) - 0.5 * math.log(2 * math.pi)

    # Z(s) once per distinct input: slices and reference grids repeat the same s many times.
    unique, inverse = torch.unique(x, return_inverse=True)
    table = log_lik(unique.unsqueeze(-1), grid)
    peak = table.max(-1, keepdim=True).values  # shift before exp: the table spans many nats
    log_z = (peak[:, 0] + torch.trapezoid((table - peak).exp(), grid, dim=-1).log())[inverse]
    inside = (y >= 0) & (y <= 1)
    log_p = torch.where(inside, log_lik(x, y) - log_z, torch.full_like(y, -math.inf))
    return log_p.to(torch.get_default_dtype())


def reference_scores(
    data: RegressionData, noise_std: float | None = None, *, num_levels: int = 19
) -> dict[str, Any]:
    """Test scores of the true ``p(y | x)``: the best that any model can do in expectation.

    Gaussian sets (with ``data.mean_fn`` and ``data.noise_fn``) use the closed forms; Bishop's
    flipped problem uses :func:`flipped_bishop_log_prob` on a grid of ``y`` in ``[0, 1]`` (CRPS as
    the integral of ``(F(t) - 1[t >= y])^2``, the mean as the integral of ``t p(t | x)``).

    Arguments:
        data: A data set of :func:`load_data`.
        noise_std: Noise scale of the flipped problem (required for it).
        num_levels: Levels of the calibration curve.

    Returns:
        The same keys as :func:`evaluate`.
    """
    x, y = data.x_test, data.y_test
    if data.mean_fn is not None and data.noise_fn is not None:
        mean, std = data.mean_fn(x[:, 0]), data.noise_fn(x[:, 0])
        expected, observed = metrics.calibration_curve(mean, std, y, num_levels=num_levels)
        return _scores(
            metrics.gaussian_nll(mean, std, y),
            metrics.rmse(mean, y),
            metrics.crps_gaussian(mean, std, y),
            metrics.coverage(mean, std, y, levels=(0.9,))[0.9],
            expected,
            observed,
        )
    if not data.name.startswith("bishop-flipped") or noise_std is None:
        raise ValueError("reference_scores needs a Gaussian toy set or the flipped Bishop set")
    grid = torch.linspace(0.0, 1.0, 2001, dtype=torch.float64)
    n, g = len(y), grid.numel()
    log_p = flipped_bishop_log_prob(x[:, :1].repeat_interleave(g, 0), grid.repeat(n), noise_std)
    dens = log_p.reshape(n, g).to(torch.float64).exp()
    cdf = torch.cumulative_trapezoid(dens, grid, dim=-1)
    cdf = torch.cat([cdf.new_zeros(n, 1), cdf / cdf[:, -1:]], -1)  # F(0) = 0, F(1) = 1
    mean = torch.trapezoid(1 - cdf, grid, dim=-1)  # E[t] = integral of (1 - F) on [0, 1]
    t = y.to(torch.float64)
    above = (grid.unsqueeze(0) >= t.unsqueeze(-1)).to(torch.float64)
    crps = torch.trapezoid((cdf - above).square(), grid, dim=-1)
    # PIT F(y) by linear interpolation of the tabulated CDF.
    hi = torch.searchsorted(grid, t).clamp(1, g - 1)
    w = ((t - grid[hi - 1]) / (grid[hi] - grid[hi - 1])).clamp(0, 1)
    rows = torch.arange(n)
    pit = (1 - w) * cdf[rows, hi - 1] + w * cdf[rows, hi]
    expected = _levels(num_levels, y)
    cov, observed = _pit_scores(pit.to(y.dtype), expected)
    nll = -flipped_bishop_log_prob(x, y, noise_std).mean()
    return _scores(nll, metrics.rmse(mean.to(y.dtype), y), crps.mean(), cov, expected, observed)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table with aligned columns: data, model, NLL, RMSE, CRPS, 90% coverage."""
    header = ("data", "model", "NLL", "RMSE", "CRPS", "cover90")
    body = [
        (
            r["data"],
            r["model"],
            f"{r['nll']:.3f}",
            f"{r['rmse']:.3f}",
            f"{r['crps']:.3f}",
            f"{100 * r['coverage90']:.1f}%",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        left = [c.ljust(w) for c, w in zip(cells[:2], widths[:2], strict=True)]
        right = [c.rjust(w) for c, w in zip(cells[2:], widths[2:], strict=True)]
        return "  ".join(left + right).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)])


# -- figures --------------------------------------------------------------------------------------


def _grid(data: RegressionData, n: int = 300) -> Tensor:
    x = torch.cat([data.x_train[:, 0], data.x_test[:, 0]])
    return torch.linspace(float(x.min()), float(x.max()), n).unsqueeze(-1)


def _mean_std(model: BNN, x: Tensor) -> tuple[Tensor, Tensor]:
    pred = predict(model, None, x)
    return pred.mean, pred.aleatoric.sqrt()


def _figures(
    output: Path,
    data: dict[str, RegressionData],
    models: dict[str, Any],
    histories: dict[str, History],
    scores: dict[str, dict[str, Any]],
    settings: Settings,
    dpi: int,
) -> list[str]:
    import matplotlib.pyplot as plt

    from bayesdl import plots

    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.savefig(output / name, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        written.append(name)

    # 1. Homoscedastic vs heteroscedastic: predictive bands and the learned noise scale.
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True, height_ratios=(2, 1))
    for col, key in enumerate(("homoscedastic", "heteroscedastic")):
        d, model = data[key], models[key]
        grid = _grid(d)
        mean, std = _mean_std(model, grid)
        plots.plot_predictive_band(
            grid,
            mean,
            std,
            ax=axes[0, col],
            x_train=d.x_train,
            y_train=d.y_train,
            true_mean=d.mean_fn,
            label=f"{key} model",
        )
        axes[0, col].set_title(f"{key} data, {key} model")
        plots.plot_uncertainty_split(grid, std, None, ax=axes[1, col], true_noise=d.noise_fn)
        axes[1, col].set_ylabel(r"$\sigma(x)$")
    save(fig, "homoscedastic_vs_heteroscedastic.png")

    # 2. The flipped problem: unimodal models average the branches, the MDN does not.
    d = data["bishop-flipped"]
    grid = _grid(d)
    t = torch.linspace(0, 1, 400)
    branches = (datasets.bishop_mean(t), t)
    point, gaussian, mdn = (models[f"bishop-flipped/{k}"] for k in ("point", "gaussian", "mdn"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    mean, std = _mean_std(gaussian, grid)
    plots.plot_predictive_band(
        grid,
        mean,
        std,
        ax=axes[0],
        x_train=d.x_train,
        y_train=d.y_train,
        label="heteroscedastic Gaussian",
        color="tab:orange",
    )
    with torch.no_grad():
        axes[0].plot(
            grid[:, 0], point.net(grid)[:, 0], color="tab:red", lw=2, label="point estimate"
        )
    axes[0].plot(*branches, color="k", lw=1, ls="--", label="noise-free branches")
    axes[0].legend(loc="upper left", fontsize=8)
    axes[0].set_title("point estimate and Gaussian average the branches")
    plots.plot_conditional_density(
        lambda x, y: mdn(x).log_prob(y),
        (float(grid.min()), float(grid.max())),
        (-0.1, 1.1),
        ax=axes[1],
        data=(d.x_train, d.y_train),
    )
    for x0 in (settings.branch_input, settings.average_input):
        axes[1].axvline(x0, color="w", lw=0.8, ls=":")
    axes[1].set_title("mixture density network p(y | x)")
    save(fig, "flipped_point_vs_mdn.png")

    # 3. Slices of p(y | x) at an input with three branches and at one where the mean misleads.
    y = torch.linspace(-0.2, 1.2, 701)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, x0 in zip(axes, (settings.branch_input, settings.average_input), strict=True):
        xs = torch.full((len(y), 1), x0)
        with torch.no_grad():
            true = flipped_bishop_log_prob(xs, y, settings.bishop_noise).exp()
            ax.fill_between(y, true, color="0.85", label="true p(y | x)")
            ax.plot(y, mdn(xs).log_prob(y).exp(), color="tab:blue", label="MDN")
            ax.plot(
                y,
                gaussian.conditional(xs).log_prob(y).exp(),
                color="tab:orange",
                label="heteroscedastic Gaussian",
            )
        ax.axvline(point_at(point, x0), color="tab:red", lw=2, label="point estimate")
        ax.set_xlabel("y")
        ax.set_ylabel(f"p(y | x = {x0})")
        ax.legend(fontsize=8)
    save(fig, "flipped_slices.png")

    # 4. Mixture weights over the input.
    with torch.no_grad():
        weights = mdn.mixture_weights(grid)
    ax = plots.plot_mixture_weights(grid, weights)
    ax.set_title(r"MDN mixing coefficients $\pi_k(x)$")
    save(ax.figure, "mixture_weights.png")

    # 5. Calibration curves of every model.
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    for key, s in scores.items():
        cal = s["calibration"]
        plots.plot_calibration(cal["expected"], cal["observed"], ax=ax, label=key)
    ax.legend(fontsize=6.5, loc="lower right")
    save(fig, "calibration.png")

    # 6. Training losses.
    fig, axes = plt.subplots(1, len(histories), figsize=(3 * len(histories), 2.8))
    for ax, (key, history) in zip(axes, histories.items(), strict=True):
        plots.plot_loss(history, ax=ax)
        ax.set_title(key, fontsize=9)
    fig.tight_layout()
    save(fig, "loss.png")
    return written


# -- the command ----------------------------------------------------------------------------------


def _modes(mdn: MixtureDensityNetwork, x0: float, settings: Settings) -> list[float]:
    return mdn.modes(
        x0, torch.linspace(-0.2, 1.2, 1401), threshold=settings.mode_threshold
    ).tolist()


def _true_modes(x0: float, settings: Settings) -> list[float]:
    y = torch.linspace(-0.2, 1.2, 1401)
    log_p = flipped_bishop_log_prob(torch.full((len(y),), x0), y, settings.bishop_noise)
    return find_modes(y, log_p, threshold=settings.mode_threshold).tolist()


def run_aleatoric(
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
    """Fit the lecture's aleatoric models, print the results table and write figures.

    Arguments:
        output: Folder for the PNG figures and ``results.json`` (created if missing).
        seed: Seed of the data and of every fit.
        quick: Tiny step counts (:data:`QUICK`), for smoke runs and CI.
        progress: Show progress bars.
        settings: Override the settings (default :data:`SETTINGS`, or :data:`QUICK`).
        figures: Write the figures.
        dpi: Resolution of the figures.
        echo: Where the table goes (``print`` by default).

    Returns:
        The content of ``results.json``: the settings, one row of scores per model and data set
        (and one for the true ``p(y | x)`` of each set), the learned homoscedastic ``sigma``, at
        two inputs of the flipped problem the modes of the true conditional and of the MDN and
        the point estimate, and the names of the figures.

    Raises:
        ValueError: A negative or non-integer ``seed``, ``dpi <= 0``, or an ``output`` that is
            an existing file.
    """
    output = check_run(output, seed, dpi)
    settings = pick_settings(settings, quick, SETTINGS, QUICK)
    output.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    with single_thread():
        data = load_data(settings, seed)
        flipped = data["bishop-flipped"]
        kw: dict[str, Any] = {"seed": seed, "progress": progress}
        models: dict[str, Any] = {}
        histories: dict[str, History] = {}
        models["homoscedastic"], histories["homoscedastic"] = fit_homoscedastic(
            data["homoscedastic"], settings, **kw
        )
        models["heteroscedastic"], histories["heteroscedastic"] = fit_heteroscedastic(
            data["heteroscedastic"], settings, **kw
        )
        models["bishop-flipped/point"], histories["flipped: point"] = fit_point_estimate(
            flipped, settings, **kw
        )
        models["bishop-flipped/gaussian"], histories["flipped: Gaussian"] = fit_heteroscedastic(
            flipped, settings, num_steps=settings.steps_flipped_gaussian, **kw
        )
        models["bishop-flipped/mdn"], histories["flipped: MDN"] = fit_mdn(flipped, settings, **kw)
        fit_time = time.perf_counter() - start

        pairs = [
            ("homoscedastic", "homoscedastic", "homoscedastic Gaussian"),
            ("homoscedastic", None, "true p(y|x)"),
            ("heteroscedastic", "heteroscedastic", "heteroscedastic Gaussian"),
            ("heteroscedastic", None, "true p(y|x)"),
            ("bishop-flipped", "bishop-flipped/point", "point estimate (sigma=1)"),
            ("bishop-flipped", "bishop-flipped/gaussian", "heteroscedastic Gaussian"),
            ("bishop-flipped", "bishop-flipped/mdn", f"MDN (K={settings.num_components})"),
            ("bishop-flipped", None, "true p(y|x)"),
        ]
        rows, scores = [], {}
        for data_key, model_key, label in pairs:
            d = data[data_key]
            if model_key is None:
                s = reference_scores(d, settings.bishop_noise)
            else:
                s = evaluate(models[model_key], d.x_test, d.y_test)
                scores[f"{data_key}: {label}"] = s
            rows.append({"data": data_key, "model": label, **s})

        mdn, point = models["bishop-flipped/mdn"], models["bishop-flipped/point"]
        slices = {
            name: {
                "input": x0,
                "true_modes": _true_modes(x0, settings),
                "noise_free_branches": datasets.bishop_branches(x0).tolist(),
                "mdn_modes": _modes(mdn, x0, settings),
                "point_estimate": point_at(point, x0),
            }
            for name, x0 in (
                ("branch_input", settings.branch_input),
                ("average_input", settings.average_input),
            )
        }
        written = (
            _figures(output, data, models, histories, scores, settings, dpi) if figures else []
        )

    def fmt(values: list[float]) -> str:
        return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"

    echo(format_table(rows))
    homo = models["homoscedastic"].likelihood.sigma.item()
    echo(f"\nhomoscedastic sigma: learned {homo:.4f}, true {settings.toy_noise:.4f}")
    for sl in slices.values():
        echo(
            f"flipped problem at x = {sl['input']}: modes of the true p(y|x) "
            f"{fmt(sl['true_modes'])}, of the MDN {fmt(sl['mdn_modes'])}; "
            f"point estimate {sl['point_estimate']:.3f}"
        )
    echo(f"fitting took {fit_time:.1f} s; figures and results.json in {output}")

    results = {
        "settings": asdict(settings),
        "seed": seed,
        "quick": quick,
        "rows": [{k: v for k, v in r.items() if k != "calibration"} for r in rows],
        "calibration": {k: v["calibration"] for k, v in scores.items()},
        "homoscedastic_sigma": {"learned": homo, "true": settings.toy_noise},
        "flipped_slices": slices,
        "fit_seconds": fit_time,
        "figures": written,
    }
    (output / "results.json").write_text(json.dumps(results, indent=2))
    return results
