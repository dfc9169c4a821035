r"""How a finite network's prior and posterior approach the Gaussian process as it widens.

Three studies, each a function returning one row per width:

- :func:`prior_kurtosis`: the excess kurtosis of ``f(x)`` under the prior, a measure of how far
  the prior is from Gaussian. It is exactly ``3 omega_v^4 Var[h^2] / (q (sigma_b^2 +
  omega_v^2 E[h^2])^2)`` (see :func:`kurtosis_theory`): it shrinks like ``1/q``.
- :func:`kernel_convergence`: the covariance ``sigma_b^2 + omega_v^2 (1/q) sum_j h_j(x) h_j(x')``
  of one network given its hidden layer, against the infinite-width kernel; its error shrinks
  like ``q^{-1/2}`` (law of large numbers over units).
- :func:`bnn_vs_gp`: the posterior predictive of finite BNNs sampled with NUTS against the GP's
  exact posterior under the same prior and noise.

References:
    Neal, R. M. (1995). Bayesian learning for neural networks. PhD thesis, University of Toronto,
    chapter 2.

    Matthews, A. G. de G., Rowland, M., Hron, J., Turner, R. E., & Ghahramani, Z. (2018). Gaussian
    process behaviour in wide deep neural networks. ICLR.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bayesdl._validation import check_choice, check_positive
from bayesdl.data import RegressionData
from bayesdl.infinite.kernels import kernel_for
from bayesdl.infinite.prior import _activation, _check_hyper, _inputs, hidden_moments
from bayesdl.infinite.regression import gp_predict, gp_regression
from bayesdl.nn import ACTIVATIONS

__all__ = [
    "BNNvsGP",
    "bnn_vs_gp",
    "empirical_kernel",
    "kernel_convergence",
    "kurtosis_theory",
    "prior_kurtosis",
]

_BLOCK = 2**23  # elements of one (draws x units) or (inputs x units) block


def _widths(widths: Sequence[int]) -> list[int]:
    widths = list(widths)
    if not widths:
        raise ValueError("widths must name at least one width")
    for q in widths:
        check_positive("widths", q, integer=True)
    return [int(q) for q in widths]


def kurtosis_theory(
    x: Tensor,
    width: int,
    *,
    activation: str = "tanh",
    sigma_u: float = 1.0,
    sigma_a: float = 1.0,
    omega_v: float = 1.0,
    sigma_b: float = 1.0,
) -> float:
    r"""The exact excess kurtosis of ``f(x)`` under the prior of a width-``q`` network.

    The ``q`` terms ``v_j h_j(x)`` are independent with zero mean, so the fourth cumulant of
    ``f(x)`` is ``q (E[(v h)^4] - 3 E[(v h)^2]^2) = 3 omega_v^4 Var[h^2] / q``, and

    .. math::

        \kappa(q) = \frac{3 \omega_v^4 (E[h^4] - E[h^2]^2)}{q (\sigma_b^2 + \omega_v^2 E[h^2])^2},

    with ``h = act(z)``, ``z ~ N(0, sigma_a^2 + sigma_u^2 |x|^2)``. The Gaussian limit has 0.
    """
    x = _inputs(x)
    if x.shape[0] != 1:
        raise ValueError(f"x must be one input, shape (1, p) or (1,), got {tuple(x.shape)}")
    check_positive("width", width, integer=True)
    _check_hyper(sigma_u, sigma_a, omega_v, sigma_b)
    check_choice("activation", activation, ACTIVATIONS)
    s = sigma_a**2 + sigma_u**2 * x.double().square().sum()
    m2, m4 = hidden_moments(activation, s)
    variance = sigma_b**2 + omega_v**2 * m2
    return float(3 * omega_v**4 * (m4 - m2.square()) / (width * variance.square()))


def _excess_kurtosis(f: Tensor) -> Tensor:
    c = f - f.mean(-1, keepdim=True)
    m2 = c.square().mean(-1)
    return c.pow(4).mean(-1) / m2.square() - 3


def prior_kurtosis(
    x: Tensor,
    widths: Sequence[int] = (1, 3, 10, 30, 100, 300, 1000),
    *,
    activation: str = "tanh",
    sigma_u: float = 1.0,
    sigma_a: float = 1.0,
    omega_v: float = 1.0,
    sigma_b: float = 1.0,
    num_draws: int = 100_000,
    num_batches: int = 20,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Excess kurtosis of ``f(x)`` under the prior, per width: sampled against the exact value.

    Each draw is a whole network evaluated at the one input ``x``: its pre-activations
    ``a_j + u_j . x`` are drawn from their exact law ``N(0, sigma_a^2 + sigma_u^2 |x|^2)`` (one
    input needs no more), then ``v`` and ``b``. The standard error comes from ``num_batches``
    independent batches of draws.

    Returns:
        Rows ``{"width", "kurtosis", "standard_error", "theory"}``.
    """
    x = _inputs(x)
    widths = _widths(widths)
    check_positive("num_draws", num_draws, integer=True)
    check_positive("num_batches", num_batches, integer=True)
    if num_draws < 10 * num_batches:
        raise ValueError(
            f"num_draws must be at least 10 * num_batches = {10 * num_batches}, got {num_draws}"
        )
    hyper = {"sigma_u": sigma_u, "sigma_a": sigma_a, "omega_v": omega_v, "sigma_b": sigma_b}
    act = _activation(activation)
    scale = math.sqrt(sigma_a**2 + sigma_u**2 * float(x.double().square().sum()))
    gen = torch.Generator().manual_seed(int(seed))
    per_batch = num_draws // num_batches
    rows = []
    for q in widths:
        f = torch.empty(num_batches * per_batch, dtype=torch.float64)
        step = max(1, _BLOCK // q)
        for start in range(0, f.numel(), step):
            n = min(step, f.numel() - start)
            z = scale * torch.randn(n, q, generator=gen, dtype=torch.float64)
            v = torch.randn(n, q, generator=gen, dtype=torch.float64) * (omega_v / math.sqrt(q))
            b = torch.randn(n, generator=gen, dtype=torch.float64) * sigma_b
            f[start : start + n] = b + (act(z) * v).sum(-1)
        batches = _excess_kurtosis(f.reshape(num_batches, per_batch))
        rows.append(
            {
                "width": q,
                "kurtosis": float(_excess_kurtosis(f)),
                "standard_error": float(batches.std() / math.sqrt(num_batches)),
                "theory": kurtosis_theory(x[:1], q, activation=activation, **hyper),
            }
        )
    return rows


def empirical_kernel(
    x: Tensor,
    width: int,
    *,
    activation: str | Callable[[Tensor], Tensor] = "tanh",
    sigma_u: float = 1.0,
    sigma_a: float = 1.0,
    omega_v: float = 1.0,
    sigma_b: float = 1.0,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """The prior covariance of ``f`` given one draw of a width-``q`` hidden layer, with its error.

    ``K_q(x, x') = sigma_b^2 + omega_v^2 (1/q) sum_j h_j(x) h_j(x')`` is an average over ``q``
    independent units, so it tends to the infinite-width kernel with Monte Carlo standard error
    ``omega_v^2 sd_j(h_j(x) h_j(x')) / sqrt(q)``, returned alongside. Memory is bounded at any
    width (units are summed block by block).

    Returns:
        ``(K_q, standard_error)``, each ``(N, N)`` in float64.
    """
    x = _inputs(x).double()
    check_positive("width", width, integer=True)
    _check_hyper(sigma_u, sigma_a, omega_v, sigma_b)
    act = _activation(activation)
    gen = torch.Generator().manual_seed(int(seed))
    n, p = x.shape
    first = torch.zeros(n, n, dtype=torch.float64)
    second = torch.zeros(n, n, dtype=torch.float64)
    step = max(1, _BLOCK // n)
    for start in range(0, width, step):
        m = min(step, width - start)
        u = torch.randn(p, m, generator=gen, dtype=torch.float64) * sigma_u
        a = torch.randn(m, generator=gen, dtype=torch.float64) * sigma_a
        h = act(a + x @ u)
        first += h @ h.T
        second += h.square() @ h.square().T
    mean = first / width
    var = (second / width - mean.square()).clamp_min(0)
    se = omega_v**2 * torch.sqrt(var / width)
    return sigma_b**2 + omega_v**2 * mean, se


def kernel_convergence(
    x: Tensor,
    widths: Sequence[int] = (10, 100, 1_000, 10_000, 100_000),
    *,
    activation: str = "erf",
    sigma_u: float = 1.0,
    sigma_a: float = 1.0,
    omega_v: float = 1.0,
    sigma_b: float = 1.0,
    reference_features: int = 2**18,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Relative Frobenius error ``|K_q - K| / |K|`` of one width-``q`` network's kernel, per width.

    ``K`` is closed-form for erf, step and ReLU (:func:`~bayesdl.infinite.kernel_for`); for other
    activations it is a Monte Carlo kernel with ``reference_features`` units, so widths near that
    number reach its own error floor.

    Returns:
        Rows ``{"width", "relative_error", "max_z"}``; ``max_z`` is the largest
        ``|K_q - K| / standard_error`` over the entries whose standard error could be estimated
        (about 4 or less when ``K`` is right; at widths of a few units the estimate itself is
        rough).
    """
    x = _inputs(x).double()
    widths = _widths(widths)
    hyper = {"sigma_u": sigma_u, "sigma_a": sigma_a, "omega_v": omega_v, "sigma_b": sigma_b}
    kernel = kernel_for(
        activation, x.shape[1], num_features=reference_features, seed=seed + 1, **hyper
    ).double()
    with torch.no_grad():
        k = kernel(x)
    rows = []
    for i, q in enumerate(widths):
        k_q, se = empirical_kernel(x, q, activation=activation, seed=seed + 100 + i, **hyper)
        # Entries whose units are all zero at one input (few ReLU/step units) have a zero
        # standard-error estimate; max_z is taken over the entries with an estimate.
        known = se > 0
        z = (k_q - k).abs()[known] / se[known]
        rows.append(
            {
                "width": q,
                "relative_error": float(torch.linalg.norm(k_q - k) / torch.linalg.norm(k)),
                "max_z": float(z.max()) if z.numel() else float("nan"),
            }
        )
    return rows


@dataclass(frozen=True)
class BNNvsGP:
    """The result of :func:`bnn_vs_gp`.

    Attributes:
        rows: One per width: ``width``, ``mean_distance`` (mean over the grid of
            ``|mu_bnn - mu_gp| / sd_gp``), ``sd_ratio`` (mean of ``sd_bnn / sd_gp``),
            ``sd_log_ratio`` (mean ``|log(sd_bnn / sd_gp)|``), ``max_rhat``, ``min_ess``,
            ``divergences`` and ``seconds``. ``sd`` is the latent ``f``'s posterior standard
            deviation (the epistemic part; both models share the same fixed noise).
        x: The grid, ``(G,)``.
        gp_mean: GP posterior mean of ``f`` on the grid.
        gp_sd: GP posterior standard deviation of ``f``.
        bnn_mean: Per width, the BNN's posterior mean of ``f``.
        bnn_sd: Per width, the BNN's posterior standard deviation of ``f``.
        data: The training data.
    """

    rows: list[dict[str, float]]
    x: Tensor
    gp_mean: Tensor
    gp_sd: Tensor
    bnn_mean: dict[int, Tensor] = field(repr=False)
    bnn_sd: dict[int, Tensor] = field(repr=False)
    data: RegressionData = field(repr=False)


def bnn_vs_gp(
    data: RegressionData,
    widths: Sequence[int] = (10, 50, 200),
    *,
    activation: str = "erf",
    sigma_u: float = 1.0,
    sigma_a: float = 1.0,
    omega_v: float = 1.0,
    sigma_b: float = 1.0,
    noise: float = 0.2,
    grid: Tensor | None = None,
    num_samples: int = 200,
    warmup_steps: int = 200,
    num_chains: int = 4,
    max_tree_depth: int = 8,
    seed: int = 0,
    progress: bool = True,
    **mcmc: Any,
) -> BNNvsGP:
    """Finite BNNs sampled with NUTS against the GP they tend to, on one 1-D data set.

    Every BNN has one hidden layer of ``width`` units and Neal's prior
    (:class:`~bayesdl.priors.NealPrior`, output weights scaled by ``1/sqrt(width)``); the GP has
    the same prior's infinite-width kernel. Both use the known, fixed noise ``noise``, so the
    posteriors differ only through the width. The GP's kernel must have a closed form
    (``erf``, ``step`` or ``relu``); ``erf`` is the smooth, bounded one.

    Arguments:
        data: One-dimensional regression data (e.g. :func:`bayesdl.data.homoscedastic`).
        widths: Hidden widths of the BNNs.
        activation: ``"erf"``, ``"relu"`` or ``"step"``.
        sigma_u: Prior scale of the input weights.
        sigma_a: Prior scale of the hidden biases.
        omega_v: Output scale.
        sigma_b: Prior scale of the output bias.
        noise: The observation noise standard deviation (fixed in both models).
        grid: Inputs where the predictives are compared; default 200 points spanning the data
            and 20% beyond.
        num_samples: NUTS draws kept per chain.
        warmup_steps: NUTS warm-up steps per chain.
        num_chains: Chains per width.
        max_tree_depth: NUTS tree-depth limit.
        seed: Seed of the chains.
        progress: Show progress bars.
        **mcmc: Other arguments of :func:`bayesdl.inference.run_mcmc`.
    """
    from bayesdl.diagnostics import convergence_summary, to_inference_data
    from bayesdl.inference import predict, run_mcmc
    from bayesdl.likelihoods import Homoscedastic
    from bayesdl.models import BNN
    from bayesdl.nn import MLP
    from bayesdl.priors import NealPrior

    if not isinstance(data, RegressionData):
        raise TypeError(f"data must be a bayesdl.data.RegressionData, got {type(data).__name__}")
    if data.x_train.shape[1] != 1:
        raise ValueError(f"data must have one input feature, got {data.x_train.shape[1]}")
    widths = _widths(widths)
    check_choice("activation", activation, ("erf", "relu", "step"))
    check_positive("noise", noise)
    hyper = {"sigma_u": sigma_u, "sigma_a": sigma_a, "omega_v": omega_v, "sigma_b": sigma_b}
    x, y = data.x_train, data.y_train
    if grid is None:
        lo, hi = float(x.min()), float(x.max())
        pad = 0.2 * (hi - lo)
        grid = torch.linspace(lo - pad, hi + pad, 200, dtype=x.dtype, device=x.device)
    grid_col = grid.reshape(-1, 1).to(x.dtype)

    gp = gp_regression(
        x.double(), y.double(), kernel_for(activation, 1, **hyper), noise, learn_noise=False
    )
    gp.double()
    gp_pred = gp_predict(gp, grid_col.double())
    gp_mean, gp_sd = gp_pred.mean, gp_pred.epistemic.sqrt()

    rows, bnn_mean, bnn_sd = [], {}, {}
    for q in widths:
        torch.manual_seed(seed)
        model = BNN(
            MLP(1, 1, hidden=(q,), activation=activation),
            Homoscedastic(noise, learn=False),
            NealPrior(**hyper),
        )
        start = time.perf_counter()
        result = run_mcmc(
            model,
            x,
            y,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            num_chains=num_chains,
            max_tree_depth=max_tree_depth,
            seed=seed,
            progress=progress,
            **mcmc,
        )
        seconds = time.perf_counter() - start
        pred = predict(model, result.flat(), grid_col, num_samples=None)
        mean = pred.mean.double()
        sd = pred.epistemic.double().sqrt()
        # R-hat and ESS of f on every tenth grid point (ArviZ's cost grows with the points).
        idata = to_inference_data(model, result, grid_col[::10])
        summary = convergence_summary(idata, var_names=["f"])
        bnn_mean[q], bnn_sd[q] = mean, sd
        rows.append(
            {
                "width": q,
                "mean_distance": float(((mean - gp_mean).abs() / gp_sd).mean()),
                "sd_ratio": float((sd / gp_sd).mean()),
                "sd_log_ratio": float((sd / gp_sd).log().abs().mean()),
                "max_rhat": summary["max_rhat"],
                "min_ess": summary["min_ess_bulk"],
                "divergences": int(result.divergences.sum()),
                "seconds": seconds,
            }
        )
    return BNNvsGP(
        rows=rows,
        x=grid.detach().double(),
        gp_mean=gp_mean,
        gp_sd=gp_sd,
        bnn_mean=bnn_mean,
        bnn_sd=bnn_sd,
        data=data,
    )
