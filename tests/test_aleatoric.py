"""Tests of the aleatoric experiment: the fitted models recover what generated the data.

The slow tests fit the experiment's own models with its default settings (``SETTINGS``) and fixed
seeds, once per module, so they check exactly what ``bayesdl aleatoric`` reports.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import pytest
import torch

from bayesdl import data as datasets
from bayesdl import metrics
from bayesdl.distributions import MixtureDensityNetwork
from bayesdl.experiments.aleatoric import (
    QUICK,
    SETTINGS,
    evaluate,
    fit_heteroscedastic,
    fit_homoscedastic,
    fit_mdn,
    fit_point_estimate,
    flipped_bishop_log_prob,
    format_table,
    load_data,
    point_at,
    reference_scores,
    run_aleatoric,
    single_thread,
)
from bayesdl.likelihoods import Heteroscedastic, Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP
from tests.common import assert_close

SEED = 0


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks: on a busy two-core machine a second torch thread only adds waiting."""
    with single_thread():
        yield


@pytest.fixture(scope="module")
def data():
    return load_data(SETTINGS, SEED)


@pytest.fixture(scope="module")
def toy_models(data):
    homo, _ = fit_homoscedastic(data["homoscedastic"], seed=SEED)
    hetero, _ = fit_heteroscedastic(data["heteroscedastic"], seed=SEED)
    return {"homoscedastic": homo, "heteroscedastic": hetero}


@pytest.fixture(scope="module")
def flipped_models(data):
    flipped = data["bishop-flipped"]
    point, _ = fit_point_estimate(flipped, seed=SEED)
    gaussian, _ = fit_heteroscedastic(flipped, num_steps=SETTINGS.steps_flipped_gaussian, seed=SEED)
    mdn, _ = fit_mdn(flipped, seed=SEED)
    return {"point": point, "gaussian": gaussian, "mdn": mdn}


def true_modes(x0: float) -> torch.Tensor:
    from bayesdl.distributions import find_modes

    y = torch.linspace(-0.2, 1.2, 1401)
    log_p = flipped_bishop_log_prob(torch.full((len(y),), x0), y, SETTINGS.bishop_noise)
    return find_modes(y, log_p, threshold=SETTINGS.mode_threshold)


# --- homoscedastic and heteroscedastic noise ----------------------------------------------------


@pytest.mark.slow
def test_homoscedastic_fit_recovers_sigma(toy_models):
    sigma = toy_models["homoscedastic"].likelihood.sigma.item()
    print(f"learned sigma {sigma:.4f}, true {SETTINGS.toy_noise}")
    assert abs(sigma - SETTINGS.toy_noise) / SETTINGS.toy_noise < 0.1


@pytest.mark.slow
def test_heteroscedastic_fit_recovers_sigma_of_x(data, toy_models):
    d = data["heteroscedastic"]
    grid = torch.linspace(-2.8, 2.8, 201).unsqueeze(-1)  # inside the data range [-3, 3]
    with torch.no_grad():
        learned = toy_models["heteroscedastic"].conditional(grid).scale
    true = d.noise_fn(grid[:, 0])
    mae = (learned - true).abs().mean().item()
    print(f"sigma(x): MAE {mae:.4f}, mean true sigma {true.mean().item():.4f}")
    assert mae < 0.2 * true.mean().item()
    # The noise is smallest at x = 0 and grows towards both edges, as in the data.
    assert learned[100] < learned[0] / 3 and learned[100] < learned[-1] / 3


@pytest.mark.slow
def test_heteroscedastic_intervals_are_calibrated_on_held_out_data(data, toy_models):
    d = data["heteroscedastic"]
    scores = evaluate(toy_models["heteroscedastic"], d.x_test, d.y_test)
    print(f"90% interval coverage on {len(d.y_test)} test points: {scores['coverage90']:.3f}")
    assert 0.85 <= scores["coverage90"] <= 0.95
    # The homoscedastic model's constant band fits the heteroscedastic data worse.
    homo, _ = fit_homoscedastic(d, replace(SETTINGS, steps_homoscedastic=400), seed=SEED)
    assert evaluate(homo, d.x_test, d.y_test)["nll"] > scores["nll"] + 0.1


# --- Bishop's flipped problem ---------------------------------------------------------------------


@pytest.mark.slow
def test_mdn_beats_the_gaussian_on_the_flipped_problem(data, flipped_models):
    d = data["bishop-flipped"]
    nll_mdn = evaluate(flipped_models["mdn"], d.x_test, d.y_test)["nll"]
    nll_gauss = evaluate(flipped_models["gaussian"], d.x_test, d.y_test)["nll"]
    nll_true = reference_scores(d, SETTINGS.bishop_noise)["nll"]
    print(f"test NLL: MDN {nll_mdn:.3f}, Gaussian {nll_gauss:.3f}, true p(y|x) {nll_true:.3f}")
    assert nll_mdn <= nll_gauss - 0.3
    assert nll_mdn < nll_true + 0.15  # close to the best possible


@pytest.mark.slow
def test_mdn_finds_the_three_branches(flipped_models):
    x0 = SETTINGS.branch_input
    branches = datasets.bishop_branches(x0)
    assert len(branches) == 3
    modes = flipped_models["mdn"].modes(
        x0, torch.linspace(-0.2, 1.2, 1401), threshold=SETTINGS.mode_threshold
    )
    print(f"x = {x0}: branches {branches.tolist()}, MDN modes {modes.tolist()}")
    assert len(modes) == 3
    assert torch.all((modes - branches).abs() < 0.05)
    assert torch.all(modes[1:] - modes[:-1] > 0.1)  # separated


@pytest.mark.slow
def test_point_estimate_predicts_an_average(data, flipped_models):
    point = flipped_models["point"]
    # Where three branches exist, least squares sits at their mean, away from the outer two.
    x0 = SETTINGS.branch_input
    branches = datasets.bishop_branches(x0)
    p = point_at(point, x0)
    print(f"x = {x0}: point estimate {p:.3f}, branches {branches.tolist()}")
    assert abs(p - branches.mean().item()) < 0.05
    assert abs(p - branches[0].item()) > 0.15 and abs(p - branches[2].item()) > 0.15
    # Where the conditional is bimodal, the average lies far from every mode.
    x1 = SETTINGS.average_input
    modes = true_modes(x1)
    p1 = point_at(point, x1)
    print(f"x = {x1}: point estimate {p1:.3f}, true modes {modes.tolist()}")
    assert torch.all((modes - p1).abs() > 0.1)
    # Everywhere, it approximates the conditional mean E[y | x], the minimiser of squared error.
    x = torch.linspace(0.0, 1.0, 101)
    t = torch.linspace(0.0, 1.0, 2001)
    log_p = flipped_bishop_log_prob(
        x.repeat_interleave(len(t)), t.repeat(len(x)), SETTINGS.bishop_noise
    )
    density = log_p.reshape(len(x), len(t)).exp()
    cond_mean = torch.trapezoid(density * t, t, dim=-1)
    with torch.no_grad():
        pred = point.net(x.unsqueeze(-1))[:, 0]
    rms = (pred - cond_mean).square().mean().sqrt().item()
    print(f"RMS distance of the point estimate to E[y | x] on [0, 1]: {rms:.4f}")
    assert rms < 0.05


@pytest.mark.slow
def test_unimodal_models_have_similar_rmse_to_the_mdn(data, flipped_models):
    """RMSE only scores the mean, so it cannot tell the models apart; NLL and CRPS can."""
    d = data["bishop-flipped"]
    scores = {k: evaluate(m, d.x_test, d.y_test) for k, m in flipped_models.items()}
    rmses = [s["rmse"] for s in scores.values()]
    assert max(rmses) - min(rmses) < 0.02
    assert scores["mdn"]["crps"] < scores["gaussian"]["crps"] < scores["point"]["crps"]


# --- closed forms ---------------------------------------------------------------------------------


def test_evaluate_uses_the_gaussian_closed_forms():
    d = datasets.homoscedastic(200, seed=3)
    model = BNN(MLP(1, 1, hidden=(8,)), Homoscedastic(sigma=0.3), prior=None)
    scores = evaluate(model, d.x_test, d.y_test)
    with torch.no_grad():
        mu = model.net(d.x_test)[:, 0]
    sigma = model.likelihood.sigma.detach()
    y = d.y_test
    assert scores["nll"] == pytest.approx(metrics.gaussian_nll(mu, sigma, y).item(), rel=1e-5)
    assert scores["crps"] == pytest.approx(metrics.crps_gaussian(mu, sigma, y).item(), rel=1e-5)
    assert scores["rmse"] == pytest.approx(metrics.rmse(mu, y).item(), rel=1e-5)
    assert scores["coverage90"] == metrics.coverage(mu, sigma, y, (0.9,))[0.9]


def test_mixture_scores_reduce_to_the_gaussian_ones_for_one_component():
    """NLL, CRPS, coverage and calibration of a K = 1 mixture equal the Gaussian closed forms."""
    d = datasets.heteroscedastic(300, seed=4)
    mdn = MixtureDensityNetwork(1, num_components=1, hidden=(8,))
    # A heteroscedastic network with the same mean and scale outputs.
    net = MLP(1, 2, hidden=(8,))
    with torch.no_grad():
        for src, dst in zip(mdn.net.parameters(), net.parameters(), strict=True):
            dst.copy_(src[1:] if src.shape[0] == 3 else src)
    gaussian = BNN(net, Heteroscedastic(min_scale=mdn.likelihood.min_scale), prior=None)
    a = evaluate(mdn, d.x_test, d.y_test)
    b = evaluate(gaussian, d.x_test, d.y_test)
    for key in ("nll", "crps", "rmse", "coverage90"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert_close(a["calibration"]["observed"], b["calibration"]["observed"])
    assert_close(a["calibration"]["expected"], b["calibration"]["expected"])


def test_true_flipped_conditional_is_normalised_and_peaks_on_the_branches():
    t = torch.linspace(0.0, 1.0, 20001)
    for x0 in (0.0, 0.25, 0.46, 1.05):
        log_p = flipped_bishop_log_prob(torch.full_like(t, x0), t, 0.05)
        assert torch.trapezoid(log_p.exp(), t).item() == pytest.approx(1.0, abs=1e-4)
    assert_close(true_modes(0.25), datasets.bishop_branches(0.25), atol=2e-3, rtol=0)
    outside = flipped_bishop_log_prob(torch.tensor([0.5, 0.5]), torch.tensor([-0.1, 1.1]), 0.05)
    assert torch.all(outside == -math.inf)


def test_reference_scores_of_a_gaussian_set_are_the_closed_forms():
    d = datasets.heteroscedastic(300, seed=5)
    ref = reference_scores(d)
    x, y = d.x_test[:, 0], d.y_test
    nll = metrics.gaussian_nll(d.mean_fn(x), d.noise_fn(x), y).item()
    crps = metrics.crps_gaussian(d.mean_fn(x), d.noise_fn(x), y).item()
    assert ref["nll"] == pytest.approx(nll) and ref["crps"] == pytest.approx(crps)


def test_reference_scores_of_the_flipped_problem_match_sampling():
    d = datasets.bishop(400, noise_std=0.05, flipped=True, seed=6)
    ref = reference_scores(d, 0.05)
    # CRPS from draws of the true conditional (inverse-CDF sampling on a grid).
    t = torch.linspace(0.0, 1.0, 4001)
    n = len(d.y_test)
    dens = flipped_bishop_log_prob(d.x_test[:, 0].repeat_interleave(len(t)), t.repeat(n), 0.05)
    cdf = torch.cumsum(dens.reshape(n, len(t)).exp(), -1)
    cdf = cdf / cdf[:, -1:]
    u = torch.rand(4000, n, generator=torch.Generator().manual_seed(0))
    idx = torch.searchsorted(cdf, u.T.contiguous()).clamp(max=len(t) - 1)
    draws = t[idx].T
    crps = metrics.crps_samples(draws, d.y_test).item()
    assert ref["crps"] == pytest.approx(crps, abs=2e-3)
    assert 0.8 < ref["coverage90"] <= 1.0


# --- the command's building blocks -----------------------------------------------------------------


def test_format_table_aligns_columns():
    rows = [
        {"data": "a", "model": "m", "nll": -1.0, "rmse": 0.1, "crps": 0.05, "coverage90": 0.9},
        {"data": "bbb", "model": "long model", "nll": 12.5, "rmse": 1, "crps": 2, "coverage90": 1},
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["data", "model", "NLL", "RMSE", "CRPS", "cover90"]
    assert len({len(line) for line in lines}) == 1
    assert lines[2].endswith("90.0%") and lines[3].endswith("100.0%")
    assert lines[0].index("model") == lines[3].index("long model")


def test_quick_run_is_reproducible(tmp_path):
    a = run_aleatoric(tmp_path / "a", seed=1, quick=True, progress=False, figures=False, echo=str)
    b = run_aleatoric(tmp_path / "b", seed=1, quick=True, progress=False, figures=False, echo=str)
    assert a["rows"] == b["rows"]
    assert a["settings"] == asdict(QUICK)
    assert len(a["rows"]) == 8
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["rows"] == a["rows"]
    assert saved["figures"] == []


def test_single_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


# --- bad inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"dpi": 0}, "dpi")],
)
def test_run_rejects_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        run_aleatoric(tmp_path, quick=True, progress=False, **kwargs)


def test_run_rejects_an_output_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("")
    with pytest.raises(ValueError, match="output"):
        run_aleatoric(path, quick=True, progress=False)
    with pytest.raises(TypeError, match="settings"):
        run_aleatoric(tmp_path / "x", settings={"steps_mdn": 1}, progress=False)


def test_fit_functions_reject_bad_inputs():
    d = datasets.bishop(100, flipped=True, seed=0)
    flat = replace(d, x_train=d.x_train[:, 0])
    for fit_fn in (fit_homoscedastic, fit_heteroscedastic, fit_point_estimate, fit_mdn):
        with pytest.raises(ValueError, match="x_train"):
            fit_fn(flat, QUICK)
        with pytest.raises(ValueError, match="seed"):
            fit_fn(d, QUICK, seed=-3)
        with pytest.raises(TypeError, match="data"):
            fit_fn((d.x_train, d.y_train), QUICK)
    with pytest.raises(ValueError, match="num_steps"):
        fit_heteroscedastic(d, QUICK, num_steps=0)
    with pytest.raises(ValueError, match="noise_std"):
        flipped_bishop_log_prob(torch.zeros(3), torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="prior=None"):
        evaluate(BNN(MLP(1, 1, hidden=(4,)), Homoscedastic()), d.x_test, d.y_test)
    with pytest.raises(ValueError, match="Gaussian toy set"):
        reference_scores(d)  # the flipped problem needs its noise scale
