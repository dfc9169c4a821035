"""Tests of :mod:`bayesdl.comparison`: the rows of compare_posteriors against direct computations,
the reference row, and the plain-text table."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch

from bayesdl.comparison import Fitted, compare_posteriors, format_table
from bayesdl.guides import MeanFieldNormal
from bayesdl.inference import predict
from bayesdl.inference.mcmc import MCMCResult
from bayesdl.likelihoods import Categorical, Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP
from bayesdl.priors import normal

BASE_KEYS = {"method", "nll", "rmse", "crps", "coverage_90", "fit_time_s"}
MCMC_KEYS = {"max_rhat", "min_ess_bulk", "ess_per_s", "divergences"}
REF_KEYS = {"mean_dist", "sd_ratio", "epistemic_ratio"}


def setup():
    torch.manual_seed(0)
    model = BNN(
        MLP(1, 1, hidden=(4,)), Homoscedastic(prior=dist.LogNormal(-1.0, 0.5)), prior=normal(1.0)
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.linspace(-2, 2, 25).unsqueeze(-1)
    y = torch.sin(x.squeeze(-1)) + 0.2 * torch.randn(25, generator=gen)
    x_eval = torch.linspace(-4, 4, 9).unsqueeze(-1)

    samples = {
        site: 0.7 * torch.randn(2, 40, *prior.event_shape, generator=gen)
        for site, prior in model.priors().items()
    }
    samples["sigma"] = 0.2 + 0.1 * torch.rand(2, 40, generator=gen)
    divergences = torch.zeros(2, 40, dtype=torch.bool)
    divergences[1, :3] = True
    result = MCMCResult(samples, divergences, [0.1, 0.1], [0.9, 0.9], [500, 600], 4.0)

    guide = MeanFieldNormal(model, init_scale=0.2)
    guide(x, y)
    fits = {
        "nuts": Fitted(result, 4.0),
        "svi": Fitted(guide, 1.5, extra={"final_loss": 12.5}),
        "draws": Fitted(result.flat(), 0.5),
    }
    return model, fits, x, y, x_eval


def test_rows_have_the_documented_keys():
    model, fits, x, y, x_eval = setup()
    rows = compare_posteriors(model, fits, x, y, x_eval=x_eval, num_samples=50, seed=0)
    assert [r["method"] for r in rows] == ["nuts", "svi", "draws"]
    assert set(rows[0]) == BASE_KEYS | MCMC_KEYS | REF_KEYS
    assert set(rows[1]) == BASE_KEYS | REF_KEYS | {"final_loss"}
    assert set(rows[2]) == BASE_KEYS | REF_KEYS
    assert fits["nuts"].kind == "mcmc"
    assert fits["svi"].kind == fits["draws"].kind == "svi"
    for row in rows:
        for key, value in row.items():
            if key != "method":
                assert isinstance(value, float), (key, value)
                assert math.isfinite(value), (key, value)
        assert 0.0 <= row["coverage_90"] <= 1.0
        assert row["crps"] > 0


def test_reference_row_and_values_against_direct_computation():
    model, fits, x, y, x_eval = setup()
    rows = compare_posteriors(model, fits, x, y, x_eval=x_eval, num_samples=50, seed=0)
    by_name = {r["method"]: r for r in rows}
    # The reference (the first MCMC fit by default) against itself.
    ref = by_name["nuts"]
    assert ref["mean_dist"] == 0.0
    assert ref["sd_ratio"] == 1.0
    assert ref["epistemic_ratio"] == 1.0

    # NLL and RMSE of the MCMC row from predict with all 80 draws.
    pred = predict(model, fits["nuts"].posterior.flat(), x, num_samples=None)
    assert ref["nll"] == pytest.approx(float(-pred.log_prob(y).mean()), rel=1e-6)
    assert ref["rmse"] == pytest.approx(float((pred.mean - y).square().mean().sqrt()), rel=1e-6)
    assert ref["fit_time_s"] == 4.0
    assert ref["divergences"] == 3.0
    assert ref["ess_per_s"] == pytest.approx(ref["min_ess_bulk"] / 4.0)
    assert ref["max_rhat"] >= 1.0 - 1e-6

    # The guide's distances to the reference on x_eval, by hand, with the same seed.
    ref_eval = predict(model, fits["nuts"].posterior.flat(), x_eval, num_samples=None)
    svi_eval = predict(model, fits["svi"].posterior, x_eval, num_samples=50, seed=0)
    ref_sd, ref_epi = ref_eval.total.sqrt(), ref_eval.epistemic.sqrt()
    svi = by_name["svi"]
    expected = ((svi_eval.mean - ref_eval.mean).abs() / ref_sd).mean()
    assert svi["mean_dist"] == pytest.approx(float(expected), rel=1e-5)
    # Ratios of the mean sds over x_eval (not means of pointwise ratios).
    sd_ratio = svi_eval.total.sqrt().mean() / ref_sd.mean()
    assert svi["sd_ratio"] == pytest.approx(float(sd_ratio), rel=1e-5)
    epistemic_ratio = svi_eval.epistemic.sqrt().mean() / ref_epi.mean()
    assert svi["epistemic_ratio"] == pytest.approx(float(epistemic_ratio), rel=1e-5)
    assert svi["final_loss"] == 12.5
    # The small guide (sd 0.2 per weight) is far narrower than the prior-like draws.
    assert svi["epistemic_ratio"] < 0.8

    # A sample dict labelled "svi" is thinned evenly to num_samples.
    thinned = predict(model, fits["draws"].posterior, x, num_samples=50)
    assert by_name["draws"]["nll"] == pytest.approx(float(-thinned.log_prob(y).mean()), rel=1e-6)


def test_explicit_reference_and_no_reference():
    model, fits, x, y, _ = setup()
    rows = compare_posteriors(model, fits, x, y, reference="svi", num_samples=30, seed=1)
    svi = next(r for r in rows if r["method"] == "svi")
    assert svi["mean_dist"] == 0.0
    assert svi["sd_ratio"] == svi["epistemic_ratio"] == 1.0
    nuts = next(r for r in rows if r["method"] == "nuts")
    assert nuts["epistemic_ratio"] > 1.0
    # Without an MCMC fit and no reference named, there is nothing to compare against.
    rows = compare_posteriors(model, {"svi": fits["svi"]}, x, y, num_samples=30)
    assert not REF_KEYS & set(rows[0])


def test_bad_arguments():
    model, fits, x, y, _ = setup()
    with pytest.raises(
        ValueError, match=r"reference='hmc' is not one of \['nuts', 'svi', 'draws'\]"
    ):
        compare_posteriors(model, fits, x, y, reference="hmc")
    with pytest.raises(ValueError, match="fits is empty"):
        compare_posteriors(model, {}, x, y)
    classifier = BNN(MLP(1, 3, hidden=(4,)), Categorical(3))
    with pytest.raises(ValueError, match="regression"):
        compare_posteriors(classifier, fits, x, y)


# --- the table --------------------------------------------------------------------------------


def test_format_table_by_hand():
    rows = [
        {"method": "a", "nll": 1.23456, "max_rhat": float("nan")},
        {"method": "bb", "nll": 2.0, "extra": 3.14159},
    ]
    assert format_table(rows).splitlines() == [
        "method    nll  max_rhat  extra",
        "------------------------------",
        "a       1.235         -      -",
        "bb      2.000         -  3.142",
    ]


def test_format_table_renders_every_row_of_a_comparison():
    model, fits, x, y, x_eval = setup()
    rows = compare_posteriors(model, fits, x, y, x_eval=x_eval, num_samples=30, seed=0)
    lines = format_table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    header = lines[0].split()
    assert header[0] == "method"
    assert set(header) == BASE_KEYS | MCMC_KEYS | REF_KEYS | {"final_loss"}
    assert set(lines[1]) == {"-"}
    for line, row in zip(lines[2:], rows, strict=True):
        cells = line.split()
        assert cells[0] == row["method"]
        assert len(cells) == len(header)
        assert cells[header.index("nll")] == f"{row['nll']:.3f}"
        assert cells[header.index("coverage_90")] == f"{row['coverage_90']:.2f}"
    # Columns a row lacks print as "-".
    svi = lines[2 + [r["method"] for r in rows].index("svi")].split()
    assert svi[header.index("max_rhat")] == "-"
    assert all(len(line) == len(lines[0]) for line in lines)
