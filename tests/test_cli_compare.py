"""End-to-end test of ``bayesdl compare --quick``, and the command line's --version and help."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import bayesdl
from bayesdl.cli import main
from bayesdl.experiments.compare import CompareConfig, _build_model
from bayesdl.inference import predict
from bayesdl.inference.mcmc import MCMCResult
from bayesdl.io import load_posterior

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

METHODS = ("svi-meanfield", "svi-lowrank", "svi-dropout", "nuts")


def test_cli_compare_quick(tmp_path, capsys):
    out = tmp_path / "compare"
    assert main(["compare", "--quick", "--no-progress", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()

    # The table: a header, a rule, and one row per method in order.
    start = next(i for i, line in enumerate(lines) if line.startswith("method"))
    header = lines[start].split()
    assert set(lines[start + 1]) == {"-"}
    rows = [line.split() for line in lines[start + 2 : start + 2 + len(METHODS)]]
    assert [r[0] for r in rows] == list(METHODS)
    assert all(len(r) == len(header) for r in rows)
    for column in (
        "nll",
        "rmse",
        "crps",
        "coverage_90",
        "fit_time_s",
        "max_rhat",
        "ess_per_s",
        "mean_dist",
        "sd_ratio",
        "epistemic_ratio",
    ):
        assert column in header
    nuts = dict(zip(header, rows[METHODS.index("nuts")], strict=True))
    assert nuts["mean_dist"] == "0.00" and nuts["sd_ratio"] == "1.00"
    assert dict(zip(header, rows[0], strict=True))["max_rhat"] == "-"
    assert "data: homoscedastic-gap" in printed

    written = {p.name for p in out.iterdir()}
    assert written == {
        "results.json",
        "comparison.png",
        *(f"idata_{m}.nc" for m in METHODS),
        *(f"posterior_{m}.pt" for m in METHODS),
    }
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results = json.loads((out / "results.json").read_text())
    assert results["data"] == "homoscedastic-gap"
    assert results["config"]["svi_steps"] == CompareConfig.quick().svi_steps
    assert [r["method"] for r in results["rows"]] == list(METHODS)
    for row in results["rows"]:
        assert math.isfinite(row["nll"]) and row["rmse"] > 0
        assert 0 <= row["coverage_90"] <= 1
    assert results["rows"][METHODS.index("nuts")]["mean_dist"] == 0.0

    # The InferenceData files read back with the same variables for every method.
    variables = None
    for method in METHODS:
        idata = az.from_netcdf(out / f"idata_{method}.nc")
        assert {"posterior", "posterior_predictive", "observed_data"} <= set(idata.groups())
        names = set(idata.posterior.data_vars)
        assert "f" in names and "sigma" in names
        variables = variables or names
        assert names == variables
    nuts_idata = az.from_netcdf(out / "idata_nuts.nc")
    assert nuts_idata.posterior.sizes["chain"] == CompareConfig.quick().num_chains
    assert "diverging" in nuts_idata.sample_stats

    # The saved posteriors reload into a freshly built model.
    cfg = CompareConfig.quick()
    model = _build_model(1, cfg.hidden)
    result = load_posterior(out / "posterior_nuts.pt", model)
    assert isinstance(result, MCMCResult)
    assert result.samples["sigma"].shape == (cfg.num_chains, cfg.num_samples)
    pred = predict(model, result.flat(), torch.zeros(3, 1), num_samples=None)
    assert pred.num_samples == cfg.num_chains * cfg.num_samples


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"bayesdl {bayesdl.__version__}"


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: bayesdl")
    assert "compare" in printed and "aleatoric" in printed


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--data", "mnist"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'mnist'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["fly"])
    assert exit_info.value.code == 2


def test_console_script_version():
    done = subprocess.run(
        [sys.executable, "-m", "bayesdl.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"bayesdl {bayesdl.__version__}"
