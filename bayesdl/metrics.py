"""Predictive-quality metrics for regression and classification: NLL, CRPS, coverage, ECE."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pyro.ops.stats import crps_empirical
from torch import Tensor
from torch.distributions import Distribution

from bayesdl._validation import check_choice, check_finite, check_positive, check_tensor

__all__ = [
    "ReliabilityDiagram",
    "accuracy",
    "brier_score",
    "calibration_curve",
    "calibration_curve_samples",
    "calibration_error",
    "categorical_nll",
    "classification_report",
    "coverage",
    "crps_gaussian",
    "crps_samples",
    "expected_calibration_error",
    "gaussian_interval",
    "gaussian_nll",
    "interval_coverage",
    "nll_from_distribution",
    "regression_report",
    "reliability_diagram",
    "rmse",
    "sample_coverage",
    "sample_nll",
]

_REDUCTIONS = ("mean", "sum", "none")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_PROB_SUM_TOL = 1e-4


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_float(name: str, value: object, *, ndim: int | tuple[int, ...] | None = None) -> Tensor:
    """A finite floating-point tensor with the allowed number of dimensions."""
    t = check_tensor(name, value, ndim=ndim)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return check_finite(name, t)


def _check_targets(y: object) -> Tensor:
    """Regression targets: a non-empty, finite, floating 1-D tensor of shape ``(N,)``."""
    y = _check_float("y", y, ndim=1)
    if y.shape[0] == 0:
        raise ValueError("y must hold at least one point, got shape (0,)")
    return y


def _check_like(name: str, value: object, y: Tensor, y_name: str = "y") -> Tensor:
    """A finite floating tensor with exactly the shape of ``y``."""
    t = _check_float(name, value)
    if t.shape != y.shape:
        raise ValueError(
            f"{name} must have the same shape as {y_name}, got {tuple(t.shape)} "
            f"and {tuple(y.shape)}"
        )
    return t


def _check_std(std: object, like: Tensor, like_name: str = "y") -> Tensor:
    """Predictive standard deviations, strictly positive, broadcast to ``like``.

    A Python number or a 0-d tensor (a homoscedastic model) is broadcast; any other tensor must
    have the shape of ``like``.
    """
    if isinstance(std, (int, float)) and not isinstance(std, bool):
        check_positive("std", std)
        return torch.full_like(like, float(std))
    t = _check_float("std", std)
    if t.ndim == 0:
        t = t.expand_as(like)
    elif t.shape != like.shape:
        raise ValueError(
            f"std must be a positive number, a 0-d tensor or have the same shape as {like_name}, "
            f"got {tuple(t.shape)} and {tuple(like.shape)}"
        )
    if not bool((t > 0).all()):
        raise ValueError(f"std must be > 0 everywhere, got min {float(t.min()):.3g}")
    return t


def _check_samples(name: str, samples: object, y: Tensor) -> Tensor:
    """Predictive samples of shape ``(S, N)`` matching targets of shape ``(N,)``."""
    s = _check_float(name, samples, ndim=2)
    if s.shape[1] != y.shape[0] or s.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (S, N) with S >= 1 and N = len(y) = {y.shape[0]}, "
            f"got {tuple(s.shape)}"
        )
    return s


def _check_level(name: str, value: object) -> float:
    """A nominal interval level strictly inside ``(0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in (0, 1), got {type(value).__name__}")
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {value}")
    return float(value)


def _check_levels(levels: object) -> list[float]:
    """A non-empty sequence of nominal levels, each in ``(0, 1)``."""
    if isinstance(levels, (int, float)) and not isinstance(levels, bool):
        levels = (levels,)
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence):
        raise TypeError(
            f"levels must be a sequence of numbers in (0, 1), got {type(levels).__name__}"
        )
    if len(levels) == 0:
        raise ValueError("levels must hold at least one level in (0, 1), got an empty sequence")
    return [_check_level(f"levels[{i}]", lvl) for i, lvl in enumerate(levels)]


def _check_num(name: str, value: object) -> int:
    """A positive integer count (bins, levels)."""
    return check_positive(name, value, integer=True)


def _reduce(values: Tensor, reduction: str) -> Tensor:
    check_choice("reduction", reduction, _REDUCTIONS)
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def _check_classification(probs: object, labels: object) -> tuple[Tensor, Tensor]:
    """Class probabilities ``(N, C)`` (rows in [0, 1] summing to 1) and integer labels ``(N,)``."""
    p = _check_float("probs", probs, ndim=2)
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must have shape (N, C) with N, C >= 1, got {tuple(p.shape)}")
    if bool((p < 0).any()) or bool((p > 1).any()):
        raise ValueError(
            f"probs must lie in [0, 1], got values in [{float(p.min()):.3g}, {float(p.max()):.3g}]"
        )
    worst = float((p.sum(dim=1) - 1).abs().max())
    if worst > _PROB_SUM_TOL:
        raise ValueError(
            f"probs rows must sum to 1 (within {_PROB_SUM_TOL:g}), got a row off by {worst:.3g}"
        )
    lab = check_tensor("labels", labels, ndim=1)
    if lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
        raise TypeError(f"labels must be an integer (long) tensor, got dtype {lab.dtype}")
    if lab.shape[0] != p.shape[0]:
        raise ValueError(
            f"labels must have one entry per row of probs, got {lab.shape[0]} labels "
            f"and {p.shape[0]} rows"
        )
    num_classes = p.shape[1]
    if bool((lab < 0).any()) or bool((lab >= num_classes).any()):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}] for {num_classes} classes, "
            f"got values in [{int(lab.min())}, {int(lab.max())}]"
        )
    return p, lab.long()


# --------------------------------------------------------------------------------------------
# Regression: likelihood and error
# --------------------------------------------------------------------------------------------


def gaussian_nll(mean: Tensor, std: Tensor | float, y: Tensor, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of ``y`` under the Gaussian predictive ``N(mean, std^2)``.

    Per point, ``(y - mean)^2 / (2 std^2) + log std + 0.5 log(2 pi)``.

    Arguments:
        mean: Predictive means, shape ``(N,)``.
        std: Predictive standard deviations, ``> 0``: shape ``(N,)``, a 0-d tensor or a number
            (homoscedastic noise).
        y: Observed targets, shape ``(N,)``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-point values).

    Returns:
        A 0-d tensor, or a tensor of shape ``(N,)`` with ``reduction="none"``.
    """
    y = _check_targets(y)
    mean = _check_like("mean", mean, y)
    std = _check_std(std, y)
    check_choice("reduction", reduction, _REDUCTIONS)
    z = (y - mean) / std
    return _reduce(0.5 * z.square() + std.log() + _HALF_LOG_2PI, reduction)


def nll_from_distribution(dist: Distribution, y: Tensor, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood ``-dist.log_prob(y)`` for any predictive distribution.

    Works for every torch or Pyro distribution with batch shape ``(N,)``, e.g. a
    ``MixtureSameFamily`` from a mixture density network or a transformed distribution from a
    normalizing flow.

    Arguments:
        dist: Predictive distribution with ``batch_shape == (N,)``.
        y: Observed targets of shape ``batch_shape + event_shape`` (``(N,)`` for scalar targets).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Returns:
        A 0-d tensor, or a tensor of shape ``(N,)`` with ``reduction="none"``.
    """
    if not isinstance(dist, Distribution):
        raise TypeError(
            f"dist must be a torch.distributions.Distribution, got {type(dist).__name__}"
        )
    if len(dist.batch_shape) != 1 or dist.batch_shape[0] == 0:
        raise ValueError(
            f"dist must have batch shape (N,) with N >= 1, got {tuple(dist.batch_shape)}"
        )
    y = _check_float("y", y)
    expected = tuple(dist.batch_shape + dist.event_shape)
    if tuple(y.shape) != expected:
        raise ValueError(
            f"y must have shape dist.batch_shape + dist.event_shape = {expected}, "
            f"got {tuple(y.shape)}"
        )
    check_choice("reduction", reduction, _REDUCTIONS)
    return _reduce(-dist.log_prob(y), reduction)


def sample_nll(
    samples_mu: Tensor, samples_sigma: Tensor, y: Tensor, reduction: str = "mean"
) -> Tensor:
    """NLL of the Gaussian-mixture predictive built from posterior samples.

    The posterior predictive is ``p(y | x) = 1/S sum_s N(y; mu_s(x), sigma_s(x)^2)``, so
    ``-log p = -logsumexp_s log N(y; mu_s, sigma_s^2) + log S``, evaluated stably in log space.

    Arguments:
        samples_mu: Predictive means for each of ``S`` posterior samples, shape ``(S, N)``.
        samples_sigma: Matching standard deviations ``> 0``: shape ``(S, N)``, or ``(S,)`` for a
            homoscedastic noise scale per sample.
        y: Observed targets, shape ``(N,)``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Returns:
        A 0-d tensor, or a tensor of shape ``(N,)`` with ``reduction="none"``.
    """
    y = _check_targets(y)
    mu = _check_samples("samples_mu", samples_mu, y)
    sigma = _check_float("samples_sigma", samples_sigma, ndim=(1, 2))
    if sigma.ndim == 1 and sigma.shape[0] == mu.shape[0]:
        sigma = sigma.unsqueeze(-1).expand_as(mu)
    elif sigma.shape != mu.shape:
        raise ValueError(
            f"samples_sigma must have shape (S, N) = {tuple(mu.shape)} or (S,) = "
            f"({mu.shape[0]},), got {tuple(sigma.shape)}"
        )
    if not bool((sigma > 0).all()):
        raise ValueError(f"samples_sigma must be > 0 everywhere, got min {float(sigma.min()):.3g}")
    check_choice("reduction", reduction, _REDUCTIONS)
    z = (y - mu) / sigma
    log_pdf = -0.5 * z.square() - sigma.log() - _HALF_LOG_2PI
    log_pred = torch.logsumexp(log_pdf, dim=0) - math.log(mu.shape[0])
    return _reduce(-log_pred, reduction)


def rmse(pred_mean: Tensor, y: Tensor) -> Tensor:
    """Root mean squared error ``sqrt(mean((pred_mean - y)^2))``.

    Arguments:
        pred_mean: Point predictions (predictive means), shape ``(N,)``.
        y: Observed targets, shape ``(N,)``.

    Returns:
        A 0-d tensor.
    """
    y = _check_targets(y)
    pred_mean = _check_like("pred_mean", pred_mean, y)
    return (pred_mean - y).square().mean().sqrt()


# --------------------------------------------------------------------------------------------
# Regression: CRPS
# --------------------------------------------------------------------------------------------


def crps_gaussian(mean: Tensor, std: Tensor | float, y: Tensor, reduction: str = "mean") -> Tensor:
    """Continuous ranked probability score of a Gaussian predictive, in closed form.

    ``CRPS(N(mu, sigma^2), y) = sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)]`` with
    ``z = (y - mu) / sigma``; it equals ``int (F(t) - 1[t >= y])^2 dt``. Lower is better and it
    has the units of ``y``.

    Arguments:
        mean: Predictive means, shape ``(N,)``.
        std: Predictive standard deviations ``> 0``: shape ``(N,)``, a 0-d tensor or a number.
        y: Observed targets, shape ``(N,)``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Returns:
        A 0-d tensor, or a tensor of shape ``(N,)`` with ``reduction="none"``.

    References:
        Gneiting, T. and Raftery, A. E. (2007). Strictly proper scoring rules, prediction, and
        estimation. Journal of the American Statistical Association, 102(477), 359-378.
    """
    y = _check_targets(y)
    mean = _check_like("mean", mean, y)
    std = _check_std(std, y)
    check_choice("reduction", reduction, _REDUCTIONS)
    z = (y - mean) / std
    cdf = torch.special.ndtr(z)
    pdf = torch.exp(-0.5 * z.square() - _HALF_LOG_2PI)
    crps = std * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))
    return _reduce(crps, reduction)


def crps_samples(samples: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Empirical CRPS of a sample-based predictive, ``E|X - y| - 1/2 E|X - X'|``.

    Uses :func:`pyro.ops.stats.crps_empirical` (``O(S log S)`` per point).

    Arguments:
        samples: Predictive samples, shape ``(S, N)``.
        y: Observed targets, shape ``(N,)``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Returns:
        A 0-d tensor, or a tensor of shape ``(N,)`` with ``reduction="none"``.

    References:
        Gneiting, T. and Raftery, A. E. (2007). Strictly proper scoring rules, prediction, and
        estimation. Journal of the American Statistical Association, 102(477), 359-378.
    """
    y = _check_targets(y)
    samples = _check_samples("samples", samples, y)
    check_choice("reduction", reduction, _REDUCTIONS)
    return _reduce(crps_empirical(samples, y), reduction)


# --------------------------------------------------------------------------------------------
# Regression: intervals, coverage, calibration
# --------------------------------------------------------------------------------------------


def _central_pit(mean: Tensor, std: Tensor, y: Tensor) -> Tensor:
    """Smallest central-interval level containing ``y``: ``2 Phi(|z|) - 1 = erf(|z| / sqrt 2)``."""
    return torch.erf(((y - mean) / std).abs() / math.sqrt(2.0))


def _coverage_from_central_pit(u: Tensor, levels: Tensor) -> Tensor:
    """Fraction of points with ``u <= level`` for each level (one sort, no ``L x N`` mask)."""
    sorted_u = u.sort().values
    return torch.searchsorted(sorted_u, levels.to(u.dtype), right=True).to(u.dtype) / u.numel()


def _empirical_quantiles(samples: Tensor, q: Tensor) -> Tensor:
    """Quantiles ``q`` (shape ``(Q,)``) along dim 0 of ``samples`` ``(S, N)``, shape ``(Q, N)``.

    Linear interpolation between order statistics, as ``torch.quantile`` (which refuses large
    inputs); the samples are sorted once for all quantiles.
    """
    s = samples.shape[0]
    ordered = samples.sort(dim=0).values
    pos = q.to(samples.dtype) * (s - 1)
    lo = pos.floor().long().clamp(0, s - 1)
    hi = pos.ceil().long().clamp(0, s - 1)
    frac = (pos - lo.to(pos.dtype)).unsqueeze(-1)
    return ordered[lo] + frac * (ordered[hi] - ordered[lo])


def _sample_coverage_tensor(samples: Tensor, y: Tensor, levels: Tensor) -> Tensor:
    """Observed coverage of the central empirical-quantile intervals, one value per level."""
    tail = (1.0 - levels) / 2.0
    bounds = _empirical_quantiles(samples, torch.cat([tail, 1.0 - tail]))
    lower, upper = bounds[: levels.numel()], bounds[levels.numel() :]
    inside = (lower <= y) & (y <= upper)
    return inside.to(samples.dtype).mean(dim=1)


def _default_levels(num_levels: int, like: Tensor) -> Tensor:
    """``num_levels`` equally spaced levels strictly inside (0, 1): ``k / (num_levels + 1)``."""
    k = torch.arange(1, num_levels + 1, dtype=like.dtype, device=like.device)
    return k / (num_levels + 1)


def interval_coverage(lower: Tensor, upper: Tensor, y: Tensor) -> Tensor:
    """Fraction of targets inside their predictive interval, ``mean(lower <= y <= upper)``.

    Arguments:
        lower: Lower interval ends, shape ``(N,)`` (``-inf`` allowed).
        upper: Upper interval ends, shape ``(N,)``, ``>= lower`` (``+inf`` allowed).
        y: Observed targets, shape ``(N,)``.

    Returns:
        A 0-d tensor in ``[0, 1]``.
    """
    y = _check_targets(y)
    for name, bound in (("lower", lower), ("upper", upper)):
        check_tensor(name, bound)
        if not bound.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {bound.dtype}")
        if bound.shape != y.shape:
            raise ValueError(
                f"{name} must have the same shape as y, got {tuple(bound.shape)} "
                f"and {tuple(y.shape)}"
            )
        if bool(bound.isnan().any()):
            raise ValueError(f"{name} contains NaN values")
    if bool((lower > upper).any()):
        raise ValueError("lower must be <= upper everywhere, got lower > upper for some points")
    return ((lower <= y) & (y <= upper)).to(y.dtype).mean()


def gaussian_interval(mean: Tensor, std: Tensor | float, level: float) -> tuple[Tensor, Tensor]:
    """Central ``level`` interval of ``N(mean, std^2)``: ``mean -/+ Phi^{-1}((1 + level) / 2) std``.

    Arguments:
        mean: Predictive means, any shape.
        std: Predictive standard deviations ``> 0``: same shape as ``mean``, a 0-d tensor or a
            number.
        level: Nominal coverage in ``(0, 1)``, e.g. ``0.95``.

    Returns:
        ``(lower, upper)``, each of the shape of ``mean``.
    """
    mean = _check_float("mean", mean)
    std = _check_std(std, mean, like_name="mean")
    level = _check_level("level", level)
    half_width = torch.special.ndtri(torch.tensor(0.5 + level / 2.0, dtype=torch.float64))
    half_width = half_width.item() * std
    return mean - half_width, mean + half_width


def coverage(
    mean: Tensor,
    std: Tensor | float,
    y: Tensor,
    levels: Sequence[float] = (0.5, 0.9, 0.95),
) -> dict[float, float]:
    """Observed coverage of the central Gaussian predictive intervals at several levels.

    A calibrated predictive covers a fraction ``level`` of the targets; lower means
    over-confident (intervals too narrow), higher under-confident.

    Arguments:
        mean: Predictive means, shape ``(N,)``.
        std: Predictive standard deviations ``> 0``: shape ``(N,)``, a 0-d tensor or a number.
        y: Observed targets, shape ``(N,)``.
        levels: Nominal levels, each in ``(0, 1)``.

    Returns:
        ``{level: observed coverage}`` with float keys and values.
    """
    y = _check_targets(y)
    mean = _check_like("mean", mean, y)
    std = _check_std(std, y)
    levels = _check_levels(levels)
    level_t = torch.tensor(levels, dtype=y.dtype, device=y.device)
    observed = _coverage_from_central_pit(_central_pit(mean, std, y), level_t)
    return dict(zip(levels, observed.tolist(), strict=True))


def sample_coverage(
    samples: Tensor, y: Tensor, levels: Sequence[float] = (0.5, 0.9, 0.95)
) -> dict[float, float]:
    """Observed coverage of central intervals built from empirical quantiles of samples.

    The ``level`` interval of point ``n`` runs from the ``(1 - level) / 2`` to the
    ``(1 + level) / 2`` empirical quantile of ``samples[:, n]`` (linear interpolation).

    Arguments:
        samples: Predictive samples, shape ``(S, N)``.
        y: Observed targets, shape ``(N,)``.
        levels: Nominal levels, each in ``(0, 1)``.

    Returns:
        ``{level: observed coverage}`` with float keys and values.
    """
    y = _check_targets(y)
    samples = _check_samples("samples", samples, y)
    levels = _check_levels(levels)
    level_t = torch.tensor(levels, dtype=samples.dtype, device=samples.device)
    observed = _sample_coverage_tensor(samples, y, level_t)
    return dict(zip(levels, observed.tolist(), strict=True))


def calibration_curve(
    mean: Tensor, std: Tensor | float, y: Tensor, num_levels: int = 19
) -> tuple[Tensor, Tensor]:
    """Expected versus observed coverage of central Gaussian intervals (a calibration plot).

    The levels are ``k / (num_levels + 1)`` for ``k = 1..num_levels`` (``0.05, ..., 0.95`` by
    default). A calibrated predictive lies on the diagonal; below it is over-confident.

    Arguments:
        mean: Predictive means, shape ``(N,)``.
        std: Predictive standard deviations ``> 0``: shape ``(N,)``, a 0-d tensor or a number.
        y: Observed targets, shape ``(N,)``.
        num_levels: Number of levels, ``>= 1``.

    Returns:
        ``(expected, observed)``, two tensors of shape ``(num_levels,)``.

    References:
        Kuleshov, V., Fenner, N. and Ermon, S. (2018). Accurate uncertainties for deep learning
        using calibrated regression. ICML.
    """
    y = _check_targets(y)
    mean = _check_like("mean", mean, y)
    std = _check_std(std, y)
    expected = _default_levels(_check_num("num_levels", num_levels), y)
    observed = _coverage_from_central_pit(_central_pit(mean, std, y), expected)
    return expected, observed


def calibration_curve_samples(
    samples: Tensor, y: Tensor, num_levels: int = 19
) -> tuple[Tensor, Tensor]:
    """Calibration curve of a sample-based predictive (quantile-based).

    For each level ``k / (num_levels + 1)``, the observed coverage of the central interval
    between the empirical quantiles of the samples, exactly as :func:`sample_coverage`.

    Arguments:
        samples: Predictive samples, shape ``(S, N)``.
        y: Observed targets, shape ``(N,)``.
        num_levels: Number of levels, ``>= 1``.

    Returns:
        ``(expected, observed)``, two tensors of shape ``(num_levels,)``.

    References:
        Kuleshov, V., Fenner, N. and Ermon, S. (2018). Accurate uncertainties for deep learning
        using calibrated regression. ICML.
    """
    y = _check_targets(y)
    samples = _check_samples("samples", samples, y)
    expected = _default_levels(_check_num("num_levels", num_levels), samples)
    return expected, _sample_coverage_tensor(samples, y, expected)


def calibration_error(expected: Tensor, observed: Tensor) -> Tensor:
    """Mean absolute gap between expected and observed coverage of a calibration curve.

    Arguments:
        expected: Nominal levels, shape ``(L,)`` with ``L >= 1``.
        observed: Observed coverage at those levels, shape ``(L,)``.

    Returns:
        A 0-d tensor, ``0`` for a perfectly calibrated predictive.
    """
    expected = _check_float("expected", expected, ndim=1)
    if expected.shape[0] == 0:
        raise ValueError("expected must hold at least one level, got shape (0,)")
    observed = _check_like("observed", observed, expected, y_name="expected")
    return (expected - observed).abs().mean()


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def accuracy(probs: Tensor, labels: Tensor) -> Tensor:
    """Fraction of points whose most probable class is the label.

    Arguments:
        probs: Predictive class probabilities, shape ``(N, C)``, rows summing to 1.
        labels: True classes, integer tensor of shape ``(N,)`` with values in ``[0, C)``.

    Returns:
        A 0-d tensor in ``[0, 1]``.
    """
    probs, labels = _check_classification(probs, labels)
    return (probs.argmax(dim=1) == labels).to(probs.dtype).mean()


def categorical_nll(probs: Tensor, labels: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean negative log-likelihood (cross-entropy) ``-mean(log probs[n, labels[n]])``.

    Arguments:
        probs: Predictive class probabilities, shape ``(N, C)``, rows summing to 1.
        labels: True classes, integer tensor of shape ``(N,)`` with values in ``[0, C)``.
        eps: Floor on the probability of the true class, ``> 0``, so a confident mistake costs
            ``-log eps`` rather than infinity.

    Returns:
        A 0-d tensor.
    """
    probs, labels = _check_classification(probs, labels)
    check_positive("eps", eps)
    p_true = probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    return -p_true.clamp_min(eps).log().mean()


def brier_score(probs: Tensor, labels: Tensor) -> Tensor:
    """Multi-class Brier score ``mean_n sum_c (probs[n, c] - onehot(labels[n])_c)^2``.

    Ranges from 0 (confident and right) to 2 (confident and wrong).

    Arguments:
        probs: Predictive class probabilities, shape ``(N, C)``, rows summing to 1.
        labels: True classes, integer tensor of shape ``(N,)`` with values in ``[0, C)``.

    Returns:
        A 0-d tensor.

    References:
        Brier, G. W. (1950). Verification of forecasts expressed in terms of probability.
        Monthly Weather Review, 78(1), 1-3.
    """
    probs, labels = _check_classification(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return (probs - onehot).square().sum(dim=1).mean()


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Binned confidence versus accuracy of a classifier.

    Bin ``b`` holds the points whose confidence (max probability) lies in
    ``(bin_edges[b], bin_edges[b + 1]]`` (the first bin also takes confidence 0).

    Attributes:
        bin_edges: Equal-width edges on ``[0, 1]``, shape ``(B + 1,)``.
        confidence: Mean confidence per bin, shape ``(B,)``; NaN for an empty bin.
        accuracy: Accuracy per bin, shape ``(B,)``; NaN for an empty bin.
        counts: Number of points per bin, long tensor of shape ``(B,)``.
    """

    bin_edges: Tensor
    confidence: Tensor
    accuracy: Tensor
    counts: Tensor

    def _gaps(self) -> Tensor:
        gap = (self.accuracy - self.confidence).abs()
        return torch.where(self.counts > 0, gap, torch.zeros_like(gap))

    @property
    def ece(self) -> Tensor:
        """Expected calibration error ``sum_b (n_b / N) |acc_b - conf_b|`` (0-d tensor)."""
        weights = self.counts.to(self.confidence.dtype) / self.counts.sum()
        return (weights * self._gaps()).sum()

    @property
    def mce(self) -> Tensor:
        """Maximum calibration error ``max_b |acc_b - conf_b|`` over non-empty bins (0-d tensor)."""
        return self._gaps().max()


def reliability_diagram(probs: Tensor, labels: Tensor, num_bins: int = 15) -> ReliabilityDiagram:
    """Reliability diagram with equal-width confidence bins.

    Confidence is the maximum predicted probability and a point is correct when its argmax class
    is the label.

    Arguments:
        probs: Predictive class probabilities, shape ``(N, C)``, rows summing to 1.
        labels: True classes, integer tensor of shape ``(N,)`` with values in ``[0, C)``.
        num_bins: Number of equal-width bins on ``[0, 1]``, ``>= 1``.

    Returns:
        A :class:`ReliabilityDiagram`; its ``ece`` property is the expected calibration error.

    References:
        Guo, C., Pleiss, G., Sun, Y. and Weinberger, K. Q. (2017). On calibration of modern
        neural networks. ICML.
    """
    probs, labels = _check_classification(probs, labels)
    num_bins = _check_num("num_bins", num_bins)
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).to(probs.dtype)
    edges = torch.linspace(0.0, 1.0, num_bins + 1, dtype=probs.dtype, device=probs.device)
    # bucketize(right=False) puts x in bin b when edges[b] < x <= edges[b + 1].
    idx = torch.bucketize(conf, edges[1:-1].contiguous(), right=False)
    counts = torch.zeros(num_bins, dtype=torch.long, device=probs.device)
    counts.scatter_add_(0, idx, torch.ones_like(idx))
    conf_sum = torch.zeros(num_bins, dtype=probs.dtype, device=probs.device)
    conf_sum.scatter_add_(0, idx, conf)
    correct_sum = torch.zeros_like(conf_sum).scatter_add_(0, idx, correct)
    denom = counts.to(probs.dtype)
    nan = torch.full_like(conf_sum, float("nan"))
    filled = counts > 0
    return ReliabilityDiagram(
        bin_edges=edges,
        confidence=torch.where(filled, conf_sum / denom, nan),
        accuracy=torch.where(filled, correct_sum / denom, nan),
        counts=counts,
    )


def expected_calibration_error(probs: Tensor, labels: Tensor, num_bins: int = 15) -> Tensor:
    """Expected calibration error with equal-width confidence bins.

    ``ECE = sum_b (n_b / N) |acc_b - conf_b|`` where confidence is the maximum predicted
    probability; ``0`` for a calibrated classifier.

    Arguments:
        probs: Predictive class probabilities, shape ``(N, C)``, rows summing to 1.
        labels: True classes, integer tensor of shape ``(N,)`` with values in ``[0, C)``.
        num_bins: Number of equal-width bins on ``[0, 1]``, ``>= 1``.

    Returns:
        A 0-d tensor in ``[0, 1]``.

    References:
        Guo, C., Pleiss, G., Sun, Y. and Weinberger, K. Q. (2017). On calibration of modern
        neural networks. ICML.
    """
    return reliability_diagram(probs, labels, num_bins).ece


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def regression_report(mean: Tensor, std: Tensor | float, y: Tensor) -> dict[str, float]:
    """Summary metrics of a Gaussian predictive, as printed in CLI tables.

    Arguments:
        mean: Predictive means, shape ``(N,)``.
        std: Predictive standard deviations ``> 0``: shape ``(N,)``, a 0-d tensor or a number.
        y: Observed targets, shape ``(N,)``.

    Returns:
        ``{"nll", "rmse", "crps", "coverage_90"}`` as Python floats (mean NLL, RMSE, mean CRPS
        and observed coverage of the central 90% interval).
    """
    y = _check_targets(y)
    mean = _check_like("mean", mean, y)
    std = _check_std(std, y)
    return {
        "nll": float(gaussian_nll(mean, std, y)),
        "rmse": float(rmse(mean, y)),
        "crps": float(crps_gaussian(mean, std, y)),
        "coverage_90": coverage(mean, std, y, levels=(0.9,))[0.9],
    }


def classification_report(probs: Tensor, labels: Tensor, num_bins: int = 15) -> dict[str, float]:
    """Summary metrics of a probabilistic classifier, as printed in CLI tables.

    Arguments:
        probs: Predictive class probabilities, shape ``(N, C)``, rows summing to 1.
        labels: True classes, integer tensor of shape ``(N,)`` with values in ``[0, C)``.
        num_bins: Number of ECE bins, ``>= 1``.

    Returns:
        ``{"accuracy", "nll", "brier", "ece"}`` as Python floats.
    """
    probs, labels = _check_classification(probs, labels)
    return {
        "accuracy": float(accuracy(probs, labels)),
        "nll": float(categorical_nll(probs, labels)),
        "brier": float(brier_score(probs, labels)),
        "ece": float(expected_calibration_error(probs, labels, num_bins)),
    }
