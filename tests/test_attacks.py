"""Adversarial attacks, the linearity demonstration and detection by uncertainty."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from torch import nn

from bayesdl.adversarial import (
    ModelAverage,
    bim,
    detection_scores,
    fgsm,
    input_gradient,
    linear_score_change,
    linearity_demo,
    pgd,
    roc_auc,
    roc_curve,
)
from bayesdl.likelihoods import Categorical
from bayesdl.models import BNN
from bayesdl.nn import MLP
from tests.common import assert_close


def _net(in_dim: int = 64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_dim, 32), nn.Tanh(), nn.Linear(32, 10))


def _batch(shape=(16, 1, 8, 8), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen), torch.randint(0, 10, (shape[0],), generator=gen)


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_perturbation_is_eps_times_the_gradient_sign(targeted):
    net = _net()
    x, y = _batch()
    target = (y + 1) % 10 if targeted else None
    eps = 0.1
    _, grad = input_gradient(net, x, target if targeted else y)
    expected = (-1 if targeted else 1) * eps * grad.sign()
    unclamped = fgsm(net, x, y, eps, target=target, domain=None)
    assert_close(unclamped.perturbation, expected, atol=1e-7, rtol=0)
    # With the [0, 1] clamp: equal wherever the step stays in the domain, clamped elsewhere.
    res = fgsm(net, x, y, eps, target=target)
    inside = ((x + expected) >= 0) & ((x + expected) <= 1)
    assert_close(res.perturbation[inside], expected[inside], atol=1e-7, rtol=0)
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert_close(res.x_adv[~inside], (x + expected).clamp(0, 1)[~inside], atol=1e-7, rtol=0)


def test_gradient_matches_autograd_of_the_per_example_loss():
    net = _net()
    x, y = _batch(shape=(4, 64))
    _, grad = input_gradient(net, x, y)
    for i in range(4):
        xi = x[i : i + 1].clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(net(xi), y[i : i + 1])
        (g,) = torch.autograd.grad(loss, xi)
        assert_close(grad[i], g[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("shape", [(12, 64), (12, 1, 8, 8)])
def test_pgd_iterates_stay_in_the_ball_and_the_domain(norm, shape):
    net = _net()
    x, y = _batch(shape)
    eps = 0.3 if norm == "linf" else 1.5
    res = pgd(net, x, y, eps, norm=norm, num_steps=15, step_size=eps / 3, seed=0)
    delta = res.perturbation.flatten(1)
    if norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert delta.norm(dim=1).max() <= eps + 1e-5
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.x_adv.shape == x.shape and res.success.shape == (shape[0],)


def test_pgd_with_one_step_no_random_start_and_step_eps_is_fgsm():
    net = _net()
    x, y = _batch()
    one = pgd(net, x, y, 0.07, num_steps=1, step_size=0.07, random_start=False)
    ref = fgsm(net, x, y, 0.07)
    assert_close(one.x_adv, ref.x_adv, atol=1e-7, rtol=0)
    target = (y + 3) % 10
    one_t = pgd(net, x, y, 0.07, num_steps=1, step_size=0.07, random_start=False, target=target)
    assert_close(one_t.x_adv, fgsm(net, x, y, 0.07, target=target).x_adv, atol=1e-7, rtol=0)


def test_pgd_is_stronger_than_fgsm_and_targeted_pgd_hits_its_target():
    # A trained linear classifier on two well separated classes of "images".
    torch.manual_seed(0)
    n = 200
    y = torch.arange(n) % 10
    centres = torch.rand(10, 64, generator=torch.Generator().manual_seed(1))
    x = (centres[y] + 0.05 * torch.randn(n, 64)).clamp(0, 1)
    net = nn.Linear(64, 10)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert (net(x).argmax(-1) == y).float().mean() > 0.95
    eps = 0.05
    fg = fgsm(net, x, y, eps)
    pg = pgd(net, x, y, eps, num_steps=20, seed=0)
    assert pg.success_rate >= fg.success_rate
    target = (y + 1) % 10
    hit = pgd(net, x, y, 0.3, num_steps=40, target=target, seed=0)
    assert hit.success_rate > 0.9 and hit.targeted
    assert torch.equal(hit.success, hit.pred == target)
    # BIM is PGD without the random start.
    assert_close(
        bim(net, x, y, eps, num_steps=5).x_adv,
        pgd(net, x, y, eps, num_steps=5, step_size=1.25 * eps / 5, random_start=False).x_adv,
        atol=0,
        rtol=0,
    )


def test_eps_zero_changes_nothing():
    net = _net()
    x, y = _batch()
    assert torch.equal(pgd(net, x, y, 0.0, num_steps=3).x_adv, x)
    assert torch.equal(fgsm(net, x, y, 0.0).x_adv, x)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": -0.1}, ValueError, "eps"),
        ({"eps": float("nan")}, ValueError, "eps"),
        ({"x": torch.full((4, 64), 1.5)}, ValueError, "domain"),
        ({"x": torch.full((4, 64), -0.1)}, ValueError, "domain"),
        ({"y": torch.zeros(5, dtype=torch.long)}, ValueError, "shape"),
        ({"y": torch.zeros(4, 1, dtype=torch.long)}, ValueError, "shape"),
        ({"y": torch.zeros(4)}, TypeError, "integer"),
        ({"target": torch.zeros(3, dtype=torch.long)}, ValueError, "target"),
        ({"x": torch.zeros(4, 64, dtype=torch.long)}, TypeError, "floating"),
        ({"x": [[0.5] * 64]}, TypeError, "x"),
        ({"norm": "l1"}, ValueError, "norm"),
        ({"num_steps": 0}, ValueError, "num_steps"),
        ({"domain": (1.0, 0.0)}, ValueError, "domain"),
    ],
)
def test_bad_attack_input_is_refused(kwargs, error, match):
    args = {"x": torch.rand(4, 64), "y": torch.zeros(4, dtype=torch.long), "eps": 0.1, **kwargs}
    with pytest.raises(error, match=match):
        pgd(_net(), **args)


def test_a_model_that_does_not_return_logits_is_refused():
    with pytest.raises(ValueError, match="logits"):
        fgsm(lambda x: x.sum(-1), torch.rand(4, 64), torch.zeros(4, dtype=torch.long), 0.1)


# -- the Bayesian model average --------------------------------------------------------------


def _bnn_and_samples(num_samples: int = 8):
    model = BNN(MLP(64, 10, hidden=(16,)), Categorical(10), "normal")
    pyro.set_rng_seed(0)
    samples = {name: p.sample((num_samples,)) for name, p in model.priors().items()}
    return model, samples


def test_model_average_is_the_log_of_the_mean_probability():
    model, samples = _bnn_and_samples()
    avg = ModelAverage(model, samples, num_samples=8, resample=False)
    x = torch.rand(5, 64)
    weights = {s: samples[s] for s in model.weight_sites}
    probs = model.network_output(x, weights).softmax(-1)  # (S, N, C)
    assert_close(avg(x).exp(), probs.mean(0), atol=1e-6, rtol=1e-5)
    assert_close(avg(x).exp().sum(-1), torch.ones(5), atol=1e-6, rtol=0)


def test_attacking_the_model_average_follows_fresh_samples_each_step():
    model, samples = _bnn_and_samples(num_samples=64)
    x, y = _batch(shape=(8, 64))
    avg = ModelAverage(model, samples, num_samples=4, resample=True)
    pyro.set_rng_seed(1)
    a = avg(x)
    b = avg(x)
    assert not torch.allclose(a, b)  # new posterior samples at every call
    res = pgd(avg, x, y, 0.1, num_steps=3, seed=0)
    assert res.x_adv.shape == x.shape and (res.perturbation.abs() <= 0.1 + 1e-6).all()


def test_model_average_refuses_a_regression_model():
    from bayesdl.likelihoods import Homoscedastic

    with pytest.raises(ValueError, match="classification"):
        ModelAverage(BNN(MLP(2, 1), Homoscedastic(0.1)), None)
    with pytest.raises(TypeError, match="BNN"):
        ModelAverage(nn.Linear(2, 2), None)


# -- linearity ---------------------------------------------------------------------------------


def test_linear_score_change_is_eps_times_the_l1_norm_and_grows_with_dimension():
    w = torch.tensor([0.5, -2.0, 0.0, 1.5], dtype=torch.float64)
    r, change = linear_score_change(w, 0.1)
    assert_close(r, torch.tensor([0.1, -0.1, 0.0, 0.1], dtype=torch.float64))
    assert change == pytest.approx(0.1 * 4.0)
    rows = linearity_demo((10, 100, 1000, 10_000), eps=0.01)
    for row in rows:
        assert row["change"] == pytest.approx(row["eps_l1"], rel=1e-9)
        assert row["change"] == pytest.approx(row["eps_m_n"], rel=1e-9)
        assert row["max_abs_r"] == pytest.approx(0.01)
    # m -> E|w| = sqrt(2 / pi): the change grows like eps * 0.80 * n.
    big = rows[-1]
    assert big["change"] == pytest.approx(0.01 * math.sqrt(2 / math.pi) * 10_000, rel=0.03)
    assert [r["change"] for r in rows] == sorted(r["change"] for r in rows)


# -- detection ---------------------------------------------------------------------------------


def test_roc_auc_is_one_when_separable_and_one_half_when_identical():
    assert roc_auc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.9])) == 1.0
    assert roc_auc(torch.tensor([0.5, 0.9]), torch.tensor([0.1, 0.2, 0.3])) == 0.0
    same = torch.rand(500, generator=torch.Generator().manual_seed(0))
    assert roc_auc(same, same) == pytest.approx(0.5)
    assert roc_auc(torch.zeros(10), torch.zeros(7)) == pytest.approx(0.5)  # all tied
    # Two identical distributions, independent draws: 0.5 within its standard error.
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(2000, generator=gen), torch.randn(2000, generator=gen)
    assert abs(roc_auc(a, b) - 0.5) < 4 * math.sqrt((2 * 2000 + 1) / (12 * 2000 * 2000))


def test_roc_auc_matches_the_pairwise_definition_and_the_curve():
    gen = torch.Generator().manual_seed(2)
    neg = torch.randint(0, 6, (40,), generator=gen).double()  # many ties
    pos = torch.randint(2, 9, (30,), generator=gen).double()
    pairs = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    assert roc_auc(neg, pos) == pytest.approx(float(pairs.mean()), abs=1e-12)
    fpr, tpr = roc_curve(neg, pos)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    area = torch.trapezoid(tpr, fpr)
    assert float(area) == pytest.approx(float(pairs.mean()), abs=1e-12)


def test_detection_scores_split_the_entropy():
    # Two samples that disagree with confidence: low expected entropy, high mutual information.
    probs = torch.tensor([[[0.99, 0.01]], [[0.01, 0.99]]])
    s = detection_scores(probs)
    assert_close(s["entropy"], torch.tensor([math.log(2)]), atol=1e-6, rtol=0)
    assert s["mutual_information"][0] > 0.6 and s["expected_entropy"][0] < 0.06
    assert_close(s["mutual_information"] + s["expected_entropy"], s["entropy"], atol=1e-6, rtol=0)
    one = detection_scores(probs[:1])
    assert_close(one["mutual_information"], torch.zeros(1), atol=1e-7, rtol=0)


@pytest.mark.parametrize(
    ("neg", "pos", "match"),
    [
        (torch.zeros(0), torch.ones(3), "negatives"),
        (torch.zeros(3), torch.tensor([float("nan")]), "positives"),
        (torch.zeros(3, 2), torch.ones(3), "negatives"),
    ],
)
def test_roc_auc_refuses_bad_scores(neg, pos, match):
    with pytest.raises(ValueError, match=match):
        roc_auc(neg, pos)


def test_a_module_is_attacked_in_eval_mode_and_its_mode_restored():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
    net.train()
    x, y = _batch(shape=(8, 64))
    a = pgd(net, x, y, 0.1, num_steps=3, seed=0)
    b = pgd(net, x, y, 0.1, num_steps=3, seed=0)
    assert torch.equal(a.x_adv, b.x_adv)  # no dropout noise: deterministic
    assert net.training


def test_pgd_without_a_seed_leaves_the_global_generator_alone():
    net = _net()
    x, y = _batch()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    pgd(net, x, y, 0.1, num_steps=2)
    assert torch.equal(torch.rand(3), expected)


def test_a_custom_objective_drives_the_attack():
    net = _net()
    x, y = _batch()

    def objective(x_, labels):  # push every pixel up: the gradient is all ones
        return x_.sum()

    res = fgsm(net, x, y, 0.05, loss=objective, domain=None)
    assert_close(res.perturbation, torch.full_like(x, 0.05), atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="scalar"):
        pgd(net, x, y, 0.1, loss=lambda x_, labels: x_)


def test_detector_aware_loss_switches_from_cross_entropy_to_the_score_once_flipped():
    from bayesdl.adversarial import detector_aware_loss

    model, samples = _bnn_and_samples(num_samples=6)
    avg = ModelAverage(model, samples, num_samples=6, resample=False)
    x = torch.rand(10, 64, generator=torch.Generator().manual_seed(3))
    log_probs = avg.sample_log_probs(x)
    log_mean = torch.logsumexp(log_probs, 0) - math.log(6)
    pred = log_mean.argmax(-1)
    labels = pred.clone()
    labels[:5] = (pred[:5] + 1) % 10  # the first five are already misclassified
    scores = detection_scores(log_probs.exp())["mutual_information"]
    true = log_mean.gather(-1, labels[:, None])[:, 0]
    others = log_mean.scatter(-1, labels[:, None], float("-inf")).max(-1).values
    hidden = -2.0 * (scores + torch.relu(true - others + 0.5))
    expected = torch.where(others > true, hidden, -true).sum()
    loss = detector_aware_loss(avg, weight=2.0, margin=0.5)(x, labels)
    assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="ModelAverage"):
        detector_aware_loss(_net())


def test_detector_aware_loss_has_finite_gradients_where_probabilities_underflow():
    from bayesdl.adversarial import detector_aware_loss

    model, samples = _bnn_and_samples(num_samples=4)
    big = {k: 100 * v for k, v in samples.items()}  # logit gaps of hundreds
    avg = ModelAverage(model, big, num_samples=4, resample=False)
    x = torch.rand(6, 64, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(6, dtype=torch.long)
    assert (avg.sample_log_probs(x).exp() == 0).any()  # some probabilities underflow to 0
    _, grad = input_gradient(avg, x, y, detector_aware_loss(avg))
    assert torch.isfinite(grad).all()


def test_untargeted_only_objectives_and_trivial_targets_are_refused():
    from bayesdl.adversarial import detector_aware_loss

    model, samples = _bnn_and_samples(num_samples=4)
    avg = ModelAverage(model, samples, num_samples=4)
    x, y = _batch(shape=(4, 64))
    with pytest.raises(ValueError, match="untargeted"):
        pgd(avg, x, y, 0.1, target=(y + 1) % 10, loss=detector_aware_loss(avg))
    with pytest.raises(ValueError, match="target equals"):
        fgsm(_net(), x, y, 0.1, target=y)
    with pytest.raises(FloatingPointError, match="not finite"):
        fgsm(_net(), x, y, 0.1, loss=lambda x_, labels: (x_ - x_.detach()).sum() * float("nan"))


def test_a_fixed_model_average_leaves_the_callers_random_state_alone():
    from bayesdl.guides import MeanFieldNormal

    model = BNN(MLP(64, 10, hidden=(8,)), Categorical(10), "normal")
    guide = MeanFieldNormal(model)
    x, y = _batch(shape=(4, 64))
    guide(x, y)
    avg = ModelAverage(model, guide, num_samples=3, resample=False, seed=5)
    torch.manual_seed(11)
    expected = torch.rand(2)
    torch.manual_seed(11)
    avg(x)
    assert torch.equal(torch.rand(2), expected)
