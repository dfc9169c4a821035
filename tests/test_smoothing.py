"""Tests of randomised smoothing (:mod:`bayesdl.adversarial.smoothing`)."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
from torch import nn

from bayesdl.adversarial.defenses import accuracy, train_classifier
from bayesdl.adversarial.smoothing import (
    SmoothedClassifier,
    binomial_test_two_sided,
    certified_accuracy,
    clopper_pearson_lower,
)
from bayesdl.data import digits
from bayesdl.nn import MLP
from tests.common import assert_close


def _constant(label: int, num_classes: int = 10):
    def base(x):
        logits = torch.zeros(x.shape[0], num_classes)
        logits[:, label] = 1.0
        return logits

    return base


def _coin_flip(x):
    """Class 0 or 1 by the sign of the first coordinate: a fair coin on x = 0 under noise."""
    first = x.flatten(1)[:, 0]
    return torch.stack([-first, first, torch.full_like(first, -10.0)], dim=-1)


@pytest.mark.parametrize(
    "k, n, alpha",
    [
        (0, 10, 0.05),
        (10, 10, 0.05),
        (3, 10, 0.05),
        (500, 1000, 0.001),
        (999, 1000, 0.01),
        (1, 1, 0.5),
        (7, 20, 0.2),
    ],
)
def test_clopper_pearson_matches_scipy(k, n, alpha):
    expected = 0.0 if k == 0 else scipy.stats.beta.ppf(alpha, k, n - k + 1)
    assert_close(clopper_pearson_lower(k, n, alpha), torch.tensor(expected), atol=1e-12)
    if k == n:
        assert_close(clopper_pearson_lower(k, n, alpha), torch.tensor(alpha ** (1 / n)))


def test_clopper_pearson_is_vectorised():
    k = torch.tensor([[0, 1, 5], [9, 10, 2]])
    bound = clopper_pearson_lower(k, 10, 0.05)
    assert bound.shape == (2, 3) and bound.dtype == torch.float64
    for i in range(2):
        for j in range(3):
            assert_close(bound[i, j], clopper_pearson_lower(int(k[i, j]), 10, 0.05))
    assert bound[0, 0] == 0
    # Increasing in k.
    assert (clopper_pearson_lower(torch.arange(11), 10, 0.05).diff() > 0).all()


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.99])
def test_clopper_pearson_coverage(p):
    """P(p_lower <= p) >= 1 - alpha; MC std of the frequency is ~0.0015 at 20,000 draws."""
    alpha, n = 0.05, 50
    gen = torch.Generator().manual_seed(0)
    k = (torch.rand(20_000, n, generator=gen) < p).sum(1)
    covered = (clopper_pearson_lower(k, n, alpha) <= p).double().mean()
    assert covered >= 1 - alpha - 0.006


def test_binomial_test_matches_scipy():
    for k, n in [(0, 5), (5, 5), (3, 6), (60, 100), (40, 100), (520, 1000), (7, 9)]:
        expected = scipy.stats.binomtest(k, n, 0.5).pvalue
        assert_close(
            binomial_test_two_sided(torch.tensor(k), torch.tensor(n)), torch.tensor(expected)
        )


def test_counts_sum_and_reproducibility():
    x = torch.rand(7, 1, 8, 8)
    smooth = SmoothedClassifier(_coin_flip, 0.5, 3)
    counts = smooth.counts(x, 33, batch_size=20, seed=4)
    assert counts.shape == (7, 3) and counts.dtype == torch.long
    assert (counts.sum(1) == 33).all()
    assert (counts[:, 2] == 0).all()
    assert torch.equal(counts, smooth.counts(x, 33, batch_size=20, seed=4))
    state = torch.get_rng_state()
    smooth.counts(x, 5)  # seed=None leaves the global generator alone
    assert torch.equal(state, torch.get_rng_state())


def test_counts_with_tiny_noise_follow_the_base_classifier():
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    x = torch.randn(50, 4)
    counts = SmoothedClassifier(net, 1e-6, 3).counts(x, 10, batch_size=64, seed=0)
    assert torch.equal(counts.argmax(1), net(x).argmax(1))
    assert (counts.max(1).values == 10).all()


def test_constant_classifier_closed_form():
    sigma, n, alpha = 0.5, 1000, 0.001
    smooth = SmoothedClassifier(_constant(3), sigma, 10)
    x = torch.rand(4, 64)
    labels, radii = smooth.certify(x, n0=10, n=n, alpha=alpha, seed=0)
    p_lower = alpha ** (1 / n)
    expected = sigma * scipy.stats.norm.ppf(p_lower)
    assert torch.equal(labels, torch.full((4,), 3))
    assert_close(radii, torch.full((4,), expected, dtype=torch.float64), rtol=1e-9)
    assert math.isclose(expected, 0.5 * 2.4633, rel_tol=1e-3)  # Phi^-1(0.99312)
    assert torch.equal(smooth.predict(x, num_draws=20, seed=0), torch.full((4,), 3))


def test_coin_flip_abstains():
    smooth = SmoothedClassifier(_coin_flip, 1.0, 3)
    x = torch.zeros(40, 5)
    labels, radii = smooth.certify(x, n0=50, n=1000, alpha=0.001, seed=0)
    assert (labels == -1).all() and (radii == 0).all()
    assert (smooth.predict(x, num_draws=1000, alpha=0.001, seed=0) == -1).all()
    # A clear majority is not abstained on: shift the coin to P(class 1) = Phi(1) = 0.84.
    labels, radii = smooth.certify(x + 1.0, n0=50, n=1000, alpha=0.001, seed=0)
    assert (labels == 1).all() and (radii > 0).all()
    assert (radii < 1.0).all()  # the true radius is sigma * Phi^-1(0.84) = 1


def test_certified_accuracy_by_hand():
    labels = torch.tensor([0, 1, -1, 2, 2])
    radii = torch.tensor([0.5, 0.1, 0.0, 1.0, 0.3], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 2, 0])
    acc = certified_accuracy(labels, radii, y, [0.0, 0.1, 0.2, 0.5, 1.0, 2.0])
    assert_close(acc, torch.tensor([0.6, 0.6, 0.4, 0.4, 0.2, 0.0]))


@pytest.fixture(scope="module")
def noisy_digits_net():
    data = digits(seed=0, flatten=True)
    torch.manual_seed(0)
    net = MLP(64, 10, hidden=(64,), activation="relu")
    # Unclamped noise (domain=None): the smoothed classifier adds noise over all of R^d.
    train_classifier(
        net,
        data.x_train,
        data.y_train,
        num_epochs=30,
        lr=3e-3,
        noise_std=0.25,
        domain=None,
        progress=False,
    )
    return data, net


def test_certify_on_digits(noisy_digits_net):
    data, net = noisy_digits_net
    x, y = data.x_test[:200], data.y_test[:200]
    sigma, n, alpha = 0.25, 1000, 0.001
    smooth = SmoothedClassifier(net, sigma, 10)
    labels, radii = smooth.certify(x, n0=100, n=n, alpha=alpha, batch_size=4096, seed=0)
    predicted = smooth.predict(x, num_draws=n, alpha=alpha, batch_size=4096, seed=1)
    grid = torch.tensor([0.0, 0.25, 0.5, 1.0])
    cert = certified_accuracy(labels, radii, y, grid)
    predict_acc = float((predicted == y).double().mean())
    print(
        f"\nbase clean acc {accuracy(net, x, y):.3f}; smoothed PREDICT acc {predict_acc:.3f} "
        f"(abstain {float((predicted == -1).double().mean()):.3f}); certified acc at "
        f"{grid.tolist()}: {cert.tolist()} (abstain {float((labels == -1).double().mean()):.3f})"
    )
    assert (radii >= 0).all()
    assert (radii[labels == -1] == 0).all()
    max_radius = sigma * scipy.stats.norm.ppf(alpha ** (1 / n))
    assert radii.max() <= max_radius + 1e-9
    assert_close(cert[0], (labels == y).double().mean())
    assert abs(float(cert[0]) - predict_acc) <= 0.05  # measured 0.930 vs 0.955
    assert float(cert[0]) >= 0.85
    assert (cert.diff() <= 0).all()
    assert cert[-1] == 0  # 1.0 > the largest radius n = 1000 draws can certify (0.62)


def test_bad_inputs_name_the_argument():
    base = _constant(0)
    for sigma in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="sigma"):
            SmoothedClassifier(base, sigma, 10)
    with pytest.raises(TypeError, match="base"):
        SmoothedClassifier("net", 0.5, 10)
    with pytest.raises(ValueError, match="num_classes"):
        SmoothedClassifier(base, 0.5, 0)
    smooth = SmoothedClassifier(base, 0.5, 10)
    x = torch.rand(3, 64)
    with pytest.raises(ValueError, match="n0"):
        smooth.certify(x, n0=0)
    with pytest.raises(ValueError, match="n must"):
        smooth.certify(x, n=0)
    for alpha in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="alpha"):
            smooth.certify(x, alpha=alpha)
        with pytest.raises(ValueError, match="alpha"):
            smooth.predict(x, alpha=alpha)
        with pytest.raises(ValueError, match="alpha"):
            clopper_pearson_lower(3, 10, alpha)
    with pytest.raises(ValueError, match="num_draws"):
        smooth.counts(x, 0)
    with pytest.raises(TypeError, match="x must be a floating"):
        smooth.counts(torch.ones(3, 4, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="base must return logits"):
        SmoothedClassifier(base, 0.5, 7).counts(x, 5)
    with pytest.raises(ValueError, match="k must lie"):
        clopper_pearson_lower(11, 10, 0.05)
    with pytest.raises(ValueError, match="n must"):
        clopper_pearson_lower(0, 0, 0.05)
    with pytest.raises(TypeError, match="k must hold integer"):
        clopper_pearson_lower(torch.tensor([1.5]), 10, 0.05)
    labels, radii, y = torch.tensor([0, 1]), torch.tensor([0.1, 0.2]), torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="labels, radii and y"):
        certified_accuracy(labels, radii, y, [0.0])
    with pytest.raises(TypeError, match="labels"):
        certified_accuracy(labels.float(), radii, y[:2], [0.0])
    with pytest.raises(ValueError, match="radii"):
        certified_accuracy(labels, -radii, y[:2], [0.0])
