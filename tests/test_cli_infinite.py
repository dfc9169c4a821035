"""End-to-end test of ``bayesdl run infinite --quick``: the tables printed and the files written."""

from __future__ import annotations

import json

import matplotlib
import pytest

matplotlib.use("Agg")

from bayesdl.cli import main
from bayesdl.experiments.infinite import QUICK


def test_cli_run_infinite_quick(tmp_path, capsys):
    out = tmp_path / "infinite"
    assert main(["run", "infinite", "--quick", "--no-progress", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Prior excess kurtosis" in text and "Finite BNNs (NUTS)" in text
    assert {p.name for p in out.iterdir()} == {
        "figure-2-2.png",
        "convergence.png",
        "bnn-vs-gp.png",
        "results.json",
    }
    for name in ("figure-2-2.png", "convergence.png", "bnn-vs-gp.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and results["seed"] == 0
    assert [r["width"] for r in results["kurtosis"]] == list(QUICK.kurtosis_widths)
    for row in results["kurtosis"]:
        assert row["theory"] > 0 and row["standard_error"] > 0
    assert set(results["kernel_convergence"]) == {"erf", "relu", "step"}
    assert [r["width"] for r in results["bnn_vs_gp"]] == list(QUICK.bnn_widths)
    for row in results["bnn_vs_gp"]:
        assert row["mean_distance"] >= 0 and row["sd_ratio"] > 0


def test_run_infinite_checks_its_arguments(tmp_path):
    from bayesdl.experiments.infinite import run_infinite

    with pytest.raises(ValueError, match="seed"):
        run_infinite(tmp_path, seed=-1)
    with pytest.raises(TypeError, match="settings"):
        run_infinite(tmp_path, settings={"figure_width": 10})
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="folder"):
        run_infinite(tmp_path / "file", quick=True)
