"""Tests for bayesdl.metrics: closed forms vs torch/Pyro, Monte Carlo calibration, bad inputs."""

from __future__ import annotations

import math

import pyro.distributions as pdist
import pytest
import torch

from bayesdl import metrics as M


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _regression_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A well-specified Gaussian predictive: y ~ N(mean, std^2) exactly (float64)."""
    g = _gen(seed)
    mean = torch.randn(n, generator=g, dtype=torch.float64) * 3.0
    std = torch.rand(n, generator=g, dtype=torch.float64) * 2.0 + 0.1
    y = mean + std * torch.randn(n, generator=g, dtype=torch.float64)
    return mean, std, y


def _calibrated_classification(
    n: int, num_classes: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities from a Dirichlet and labels drawn from exactly those probabilities."""
    g = _gen(seed)
    logits = 2.0 * torch.randn(n, num_classes, generator=g, dtype=torch.float64)
    probs = logits.softmax(dim=1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return probs, labels


# --------------------------------------------------------------------------------------------
# Regression likelihoods
# --------------------------------------------------------------------------------------------


def test_gaussian_nll_matches_torch_normal_and_formula():
    mean, std, y = _regression_data(1000)
    nll = M.gaussian_nll(mean, std, y)
    ref = -torch.distributions.Normal(mean, std).log_prob(y).mean()
    torch.testing.assert_close(nll, ref, atol=1e-6, rtol=0)
    lecture = (y - mean) ** 2 / (2 * std**2) + std.log() + 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(nll, lecture.mean(), atol=1e-6, rtol=0)
    torch.testing.assert_close(M.gaussian_nll(mean, std, y, reduction="none"), lecture)
    torch.testing.assert_close(M.gaussian_nll(mean, std, y, reduction="sum"), lecture.sum())


def test_gaussian_nll_float32_and_scalar_std():
    mean, _, y = _regression_data(200)
    mean, y = mean.float(), y.float()
    ref = -torch.distributions.Normal(mean, 0.7).log_prob(y).mean()
    torch.testing.assert_close(M.gaussian_nll(mean, 0.7, y), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(M.gaussian_nll(mean, torch.tensor(0.7), y), ref, atol=1e-6, rtol=0)


def test_sample_nll_identical_samples_equals_gaussian_nll():
    mean, std, y = _regression_data(500)
    s = 7
    got = M.sample_nll(mean.expand(s, -1), std.expand(s, -1), y)
    torch.testing.assert_close(got, M.gaussian_nll(mean, std, y), atol=1e-10, rtol=0)


def test_sample_nll_is_log_of_mixture_density():
    g = _gen(1)
    mu = torch.randn(5, 50, generator=g, dtype=torch.float64)
    sigma = torch.rand(5, 50, generator=g, dtype=torch.float64) + 0.2
    y = torch.randn(50, generator=g, dtype=torch.float64)
    density = torch.distributions.Normal(mu, sigma).log_prob(y).exp().mean(0)
    torch.testing.assert_close(
        M.sample_nll(mu, sigma, y, reduction="none"), -density.log(), atol=1e-10, rtol=0
    )
    # Per-sample homoscedastic scales of shape (S,) broadcast over points.
    scales = torch.rand(5, generator=g, dtype=torch.float64) + 0.2
    torch.testing.assert_close(
        M.sample_nll(mu, scales, y), M.sample_nll(mu, scales[:, None].expand(5, 50), y)
    )


def test_sample_nll_is_stable_far_in_the_tail():
    # Every component density underflows to 0 in float64; logsumexp keeps the NLL finite.
    mu = torch.zeros(3, 2, dtype=torch.float64)
    sigma = torch.full((3, 2), 0.01, dtype=torch.float64)
    y = torch.tensor([50.0, -50.0], dtype=torch.float64)
    got = M.sample_nll(mu, sigma, y)
    torch.testing.assert_close(got, M.gaussian_nll(mu[0], sigma[0], y))
    assert torch.isfinite(got)


def test_nll_from_distribution_mixture_matches_sample_nll():
    g = _gen(2)
    s, n = 6, 40
    mu = torch.randn(s, n, generator=g, dtype=torch.float64)
    sigma = torch.rand(s, n, generator=g, dtype=torch.float64) + 0.3
    y = torch.randn(n, generator=g, dtype=torch.float64)
    mixture = pdist.MixtureSameFamily(
        pdist.Categorical(logits=torch.zeros(n, s, dtype=torch.float64)),
        pdist.Normal(mu.T, sigma.T),
    )
    torch.testing.assert_close(
        M.nll_from_distribution(mixture, y), M.sample_nll(mu, sigma, y), atol=1e-10, rtol=0
    )
    normal = torch.distributions.Normal(mu[0], sigma[0])
    torch.testing.assert_close(
        M.nll_from_distribution(normal, y), M.gaussian_nll(mu[0], sigma[0], y)
    )


def test_rmse_hand_example():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0])
    y = torch.tensor([1.0, 0.0, 3.0, 8.0])
    assert M.rmse(pred, y).item() == pytest.approx(math.sqrt((4 + 16) / 4))


# --------------------------------------------------------------------------------------------
# CRPS
# --------------------------------------------------------------------------------------------


def test_crps_gaussian_at_the_mean_is_closed_form_constant():
    # z = 0: CRPS = sigma * (2 phi(0) - 1/sqrt(pi)) = sigma * (sqrt(2) - 1) / sqrt(pi).
    std = torch.tensor([1.0, 2.5], dtype=torch.float64)
    got = M.crps_gaussian(torch.zeros(2, dtype=torch.float64), std, torch.zeros(2).double(), "none")
    torch.testing.assert_close(got, std * (math.sqrt(2) - 1) / math.sqrt(math.pi))


def test_crps_gaussian_matches_numerical_integral():
    # CRPS = int_{-inf}^{y} F(t)^2 dt + int_{y}^{inf} (1 - F(t))^2 dt; splitting at y keeps
    # both integrands smooth, so the trapezoid rule is accurate to O(h^2).
    mean = torch.tensor([0.0, 1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    std = torch.tensor([1.0, 0.5, 2.0, 3.0, 0.1], dtype=torch.float64)
    y = torch.tensor([0.3, 2.9, -2.5, -6.0, 3.0], dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 200_001, dtype=torch.float64)
    lo, hi = (mean - 15 * std)[:, None], (mean + 15 * std)[:, None]
    left = lo + (y[:, None] - lo) * t
    right = y[:, None] + (hi - y[:, None]) * t
    cdf = torch.distributions.Normal(mean[:, None], std[:, None]).cdf
    integral = torch.trapezoid(cdf(left) ** 2, left, dim=1) + torch.trapezoid(
        (1 - cdf(right)) ** 2, right, dim=1
    )
    got = M.crps_gaussian(mean, std, y, reduction="none")
    torch.testing.assert_close(got, integral, atol=1e-9, rtol=1e-9)


def test_crps_gaussian_matches_crps_samples_monte_carlo():
    mean = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    std = torch.tensor([1.0, 0.5, 2.0, 3.0], dtype=torch.float64)
    y = torch.tensor([0.3, 2.9, -2.5, -6.0], dtype=torch.float64)
    samples = mean + std * torch.randn(200_000, 4, generator=_gen(3), dtype=torch.float64)
    torch.testing.assert_close(
        M.crps_samples(samples, y, reduction="none"),
        M.crps_gaussian(mean, std, y, reduction="none"),
        rtol=1e-2,
        atol=0,
    )


def test_crps_samples_single_sample_is_absolute_error():
    y = torch.tensor([1.0, -2.0])
    samples = torch.tensor([[0.0, 1.0]])
    assert M.crps_samples(samples, y).item() == pytest.approx(2.0)


# --------------------------------------------------------------------------------------------
# Coverage and calibration
# --------------------------------------------------------------------------------------------


def test_gaussian_interval_and_interval_coverage():
    mean = torch.tensor([0.0, 10.0])
    std = torch.tensor([1.0, 2.0])
    lower, upper = M.gaussian_interval(mean, std, 0.95)
    torch.testing.assert_close(lower, mean - 1.959964 * std)
    torch.testing.assert_close(upper, mean + 1.959964 * std)
    y = torch.tensor([1.5, 14.0])  # inside; outside (z = 2 > 1.96)
    assert M.interval_coverage(lower, upper, y).item() == pytest.approx(0.5)
    # Closed interval: a target on the boundary counts as covered.
    assert M.interval_coverage(lower, upper, upper.clone()).item() == 1.0


def test_coverage_well_specified_gaussian():
    mean, std, y = _regression_data(100_000, seed=4)
    cov = M.coverage(mean, std, y, levels=(0.5, 0.9, 0.95))
    assert set(cov) == {0.5, 0.9, 0.95}
    for level, observed in cov.items():
        assert isinstance(observed, float)
        assert abs(observed - level) < 0.005, (level, observed)
    # Same answer as building the intervals explicitly.
    lower, upper = M.gaussian_interval(mean, std, 0.9)
    assert M.interval_coverage(lower, upper, y).item() == pytest.approx(cov[0.9], abs=1e-12)


def test_calibration_curve_well_specified_is_diagonal():
    mean, std, y = _regression_data(100_000, seed=5)
    expected, observed = M.calibration_curve(mean, std, y)
    assert expected.shape == observed.shape == (19,)
    torch.testing.assert_close(expected, torch.arange(1, 20, dtype=torch.float64) / 20)
    assert (observed - expected).abs().max().item() < 0.01
    assert M.calibration_error(expected, observed).item() < 0.01


def test_too_narrow_std_is_overconfident():
    mean, std, y = _regression_data(100_000, seed=6)
    cov90 = M.coverage(mean, std / 2, y, levels=(0.9,))[0.9]
    # Half the true std: the 90% interval is |z_true| < 1.6449 / 2 = 0.8224, P = 0.5889.
    assert abs(cov90 - 0.5889) < 0.01
    expected, observed = M.calibration_curve(mean, std / 2, y)
    assert bool((observed < expected).all())
    assert M.calibration_error(expected, observed).item() > 0.15


def test_sample_coverage_and_curve_well_specified():
    mean, std, y = _regression_data(10_000, seed=7)
    samples = mean + std * torch.randn(500, 10_000, generator=_gen(8), dtype=torch.float64)
    cov = M.sample_coverage(samples, y, levels=(0.5, 0.9))
    for level, observed in cov.items():
        assert abs(observed - level) < 0.02, (level, observed)
    expected, observed = M.calibration_curve_samples(samples, y, num_levels=9)
    torch.testing.assert_close(expected, torch.arange(1, 10, dtype=torch.float64) / 10)
    assert (observed - expected).abs().max().item() < 0.03
    # Too-narrow samples under-cover.
    narrow = mean + 0.5 * (samples - mean)
    assert M.sample_coverage(narrow, y, levels=(0.9,))[0.9] < 0.65


def test_sample_coverage_empirical_quantiles_match_torch_quantile():
    g = _gen(9)
    samples = torch.randn(37, 5000, generator=g, dtype=torch.float64)
    y = torch.randn(5000, generator=g, dtype=torch.float64)
    got = M.sample_coverage(samples, y, levels=(0.5, 0.8))
    for level in (0.5, 0.8):
        lower = torch.quantile(samples, (1 - level) / 2, dim=0)
        upper = torch.quantile(samples, (1 + level) / 2, dim=0)
        expected = M.interval_coverage(lower, upper, y).item()
        assert got[level] == pytest.approx(expected, abs=1e-12)


def test_calibration_error_hand_example():
    expected = torch.tensor([0.25, 0.5, 0.75])
    observed = torch.tensor([0.2, 0.5, 0.95])
    assert M.calibration_error(expected, observed).item() == pytest.approx(0.25 / 3)


def test_regression_report_keys_and_values():
    mean, std, y = _regression_data(1000, seed=10)
    report = M.regression_report(mean, std, y)
    assert set(report) == {"nll", "rmse", "crps", "coverage_90"}
    assert all(isinstance(v, float) for v in report.values())
    assert report["nll"] == pytest.approx(M.gaussian_nll(mean, std, y).item())
    assert report["crps"] == pytest.approx(M.crps_gaussian(mean, std, y).item())
    assert report["coverage_90"] == pytest.approx(M.coverage(mean, std, y, (0.9,))[0.9])


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def test_accuracy_hand_example():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.4, 0.4, 0.2]])
    labels = torch.tensor([0, 2, 0, 1])
    # Argmax: 0, 2, 1, 0 (ties go to the first class) -> 2 of 4 correct.
    assert M.accuracy(probs, labels).item() == pytest.approx(0.5)


def test_categorical_nll_equals_torch_cross_entropy():
    g = _gen(11)
    logits = torch.randn(300, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (300,), generator=g)
    ref = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(M.categorical_nll(logits.softmax(1), labels), ref)
    # A confident mistake is floored at -log(eps), not infinity.
    probs = torch.tensor([[1.0, 0.0]])
    got = M.categorical_nll(probs, torch.tensor([1]), eps=1e-6)
    assert got.item() == pytest.approx(-math.log(1e-6), rel=1e-5)


def test_brier_score():
    labels = torch.tensor([2, 0, 1])
    onehot = torch.nn.functional.one_hot(labels, 3).float()
    assert M.brier_score(onehot, labels).item() == 0.0
    # Confident and wrong everywhere: 2 per point.
    assert M.brier_score(onehot, torch.tensor([0, 1, 2])).item() == pytest.approx(2.0)
    probs = torch.tensor([[0.5, 0.5]])
    assert M.brier_score(probs, torch.tensor([0])).item() == pytest.approx(0.5)


def test_ece_near_zero_for_calibrated_probabilities():
    probs, labels = _calibrated_classification(200_000, seed=12)
    assert M.expected_calibration_error(probs, labels).item() < 0.01


def test_ece_large_for_overconfident_predictor():
    probs, labels = _calibrated_classification(200_000, seed=13)
    sharpened = (probs.log() / 0.25).softmax(dim=1)  # temperature 0.25: over-confident
    ece = M.expected_calibration_error(sharpened, labels).item()
    assert ece > 0.1
    diagram = M.reliability_diagram(sharpened, labels)
    filled = diagram.counts > 0
    # Over-confidence: accuracy below confidence in the populated high-confidence bins.
    high = filled & (diagram.bin_edges[:-1] >= 0.5) & (diagram.counts > 1000)
    assert bool((diagram.accuracy[high] < diagram.confidence[high]).all())


def test_reliability_diagram_hand_example():
    # Confidences 0.9, 0.9, 0.6, 0.6 with 5 bins: 0.6 lies in (0.4, 0.6] (bin 2), 0.9 in bin 4.
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1])  # correct, wrong, correct, correct
    diagram = M.reliability_diagram(probs, labels, num_bins=5)
    torch.testing.assert_close(
        diagram.bin_edges, torch.linspace(0, 1, 6, dtype=torch.float64), atol=1e-12, rtol=0
    )
    assert diagram.counts.tolist() == [0, 0, 2, 0, 2]
    assert diagram.counts.dtype == torch.long
    assert torch.isnan(diagram.confidence[[0, 1, 3]]).all()
    assert torch.isnan(diagram.accuracy[[0, 1, 3]]).all()
    torch.testing.assert_close(diagram.confidence[[2, 4]], torch.tensor([0.6, 0.9]).double())
    torch.testing.assert_close(diagram.accuracy[[2, 4]], torch.tensor([1.0, 0.5]).double())
    # ECE = 0.5 * |1 - 0.6| + 0.5 * |0.5 - 0.9| = 0.4; MCE = 0.4.
    assert diagram.ece.item() == pytest.approx(0.4)
    assert diagram.mce.item() == pytest.approx(0.4)
    assert M.expected_calibration_error(probs, labels, num_bins=5).item() == pytest.approx(0.4)


def test_classification_report():
    probs, labels = _calibrated_classification(2000, seed=14)
    report = M.classification_report(probs, labels)
    assert set(report) == {"accuracy", "nll", "brier", "ece"}
    assert all(isinstance(v, float) for v in report.values())
    assert report["brier"] == pytest.approx(M.brier_score(probs, labels).item())


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------

_Y = torch.zeros(4)
_MEAN = torch.zeros(4)
_STD = torch.ones(4)
_NORMAL = torch.distributions.Normal(_MEAN, _STD)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: M.gaussian_nll(_MEAN, torch.tensor([1.0, 0.0, 1.0, 1.0]), _Y), "std"),
        (lambda: M.gaussian_nll(_MEAN, -_STD, _Y), "std"),
        (lambda: M.gaussian_nll(_MEAN, 0.0, _Y), "std"),
        (lambda: M.gaussian_nll(_MEAN, torch.ones(3), _Y), "std"),
        (lambda: M.gaussian_nll(torch.zeros(4, 1), _STD, _Y), "mean"),
        (lambda: M.gaussian_nll(_MEAN, _STD, torch.zeros(4, 1)), "y"),
        (lambda: M.gaussian_nll(_MEAN, _STD, torch.zeros(0)), "y"),
        (lambda: M.gaussian_nll(torch.tensor([0.0, math.nan, 0, 0]), _STD, _Y), "mean"),
        (lambda: M.gaussian_nll(_MEAN, _STD, _Y, reduction="max"), "reduction"),
        (lambda: M.crps_gaussian(_MEAN, _STD * 0, _Y), "std"),
        (lambda: M.sample_nll(torch.zeros(3, 4), torch.ones(3, 5), _Y), "samples_sigma"),
        (lambda: M.sample_nll(torch.zeros(3, 4), torch.zeros(3, 4), _Y), "samples_sigma"),
        (lambda: M.sample_nll(torch.zeros(3, 5), torch.ones(3, 5), _Y), "samples_mu"),
        (lambda: M.crps_samples(torch.zeros(10, 3), _Y), "samples"),
        (lambda: M.rmse(torch.zeros(5), _Y), "pred_mean"),
        (lambda: M.nll_from_distribution(torch.distributions.Normal(0.0, 1.0), _Y), "dist"),
        (lambda: M.nll_from_distribution(_NORMAL, torch.zeros(3)), "y"),
        (lambda: M.interval_coverage(_Y + 1, _Y - 1, _Y), "lower"),
        (lambda: M.interval_coverage(torch.zeros(3), _Y, _Y), "lower"),
        (lambda: M.gaussian_interval(_MEAN, _STD, 1.0), "level"),
        (lambda: M.gaussian_interval(_MEAN, _STD, 0.0), "level"),
        (lambda: M.coverage(_MEAN, _STD, _Y, levels=(0.5, 1.2)), "levels"),
        (lambda: M.coverage(_MEAN, _STD, _Y, levels=()), "levels"),
        (lambda: M.sample_coverage(torch.zeros(5, 4), _Y, levels=(-0.1,)), "levels"),
        (lambda: M.calibration_curve(_MEAN, _STD, _Y, num_levels=0), "num_levels"),
        (lambda: M.calibration_curve_samples(torch.zeros(5, 4), _Y, num_levels=0), "num_levels"),
        (lambda: M.calibration_error(torch.zeros(3), torch.zeros(4)), "observed"),
    ],
)
def test_bad_regression_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


_PROBS = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
_LABELS = torch.tensor([0, 1])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: M.accuracy(torch.tensor([[0.7, 0.4], [0.2, 0.8]]), _LABELS), "probs"),
        (lambda: M.brier_score(torch.tensor([[1.2, -0.2], [0.2, 0.8]]), _LABELS), "probs"),
        (lambda: M.categorical_nll(torch.tensor([0.5, 0.5]), _LABELS), "probs"),
        (lambda: M.accuracy(_PROBS, torch.tensor([0, 2])), "labels"),
        (lambda: M.accuracy(_PROBS, torch.tensor([-1, 0])), "labels"),
        (lambda: M.accuracy(_PROBS, torch.tensor([0, 1, 1])), "labels"),
        (lambda: M.expected_calibration_error(_PROBS, _LABELS, num_bins=0), "num_bins"),
        (lambda: M.reliability_diagram(_PROBS, _LABELS, num_bins=-3), "num_bins"),
        (lambda: M.categorical_nll(_PROBS, _LABELS, eps=0.0), "eps"),
    ],
)
def test_bad_classification_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: M.accuracy(_PROBS, torch.tensor([0.0, 1.0])), "labels"),
        (lambda: M.accuracy(_PROBS.tolist(), _LABELS), "probs"),
        (lambda: M.gaussian_nll(_MEAN.numpy(), _STD, _Y), "mean"),
        (lambda: M.rmse(_MEAN, torch.zeros(4, dtype=torch.long)), "y"),
        (lambda: M.expected_calibration_error(_PROBS, _LABELS, num_bins=2.5), "num_bins"),
        (lambda: M.coverage(_MEAN, _STD, _Y, levels="0.9"), "levels"),
        (lambda: M.nll_from_distribution("normal", _Y), "dist"),
    ],
)
def test_bad_input_types_raise_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()
