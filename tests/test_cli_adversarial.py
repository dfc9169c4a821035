"""End-to-end test of ``bayesdl run adversarial --quick``: the tables printed and the files written."""

from __future__ import annotations

import json

import matplotlib
import pytest

matplotlib.use("Agg")

from bayesdl.cli import main
from bayesdl.experiments.adversarial import MODELS, QUICK


def test_cli_run_adversarial_quick(tmp_path, capsys):
    out = tmp_path / "adversarial"
    assert main(["run", "adversarial", "--quick", "--no-progress", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    for heading in ("Accuracy under attack", "Randomized smoothing", "Detection ROC AUC"):
        assert heading in text
    assert {p.name for p in out.iterdir()} == {"robustness.png", "triples.png", "results.json"}
    for name in ("robustness.png", "triples.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert list(results["clean_accuracy"]) == list(MODELS)
    rows = results["robustness"]
    assert len(rows) == len(MODELS) * len(QUICK.eps_grid) * 2
    for row in rows:
        assert 0 <= row["accuracy"] <= 1
        if row["eps"] == 0:  # no budget, no change
            assert row["accuracy"] == pytest.approx(
                results["clean_accuracy"][row["model"]], abs=0.05
            )
    curve = results["certified"]["certified_accuracy"]
    assert curve == sorted(curve, reverse=True) and 0 <= curve[-1] <= curve[0] <= 1
    assert {(r["model"], r["attack_on"]) for r in results["detection"]} == {
        ("undefended", "itself"),
        ("mc-dropout", "transfer"),
        ("mc-dropout", "itself"),
        ("mc-dropout", "detector-aware"),
        ("mean-field", "transfer"),
        ("mean-field", "itself"),
        ("mean-field", "detector-aware"),
    }
    for row in results["detection"]:
        assert 0 <= row["auc"] <= 1 and 0 <= row["success_rate"] <= 1


def test_run_adversarial_checks_its_arguments(tmp_path):
    from bayesdl.experiments.adversarial import run_adversarial

    with pytest.raises(ValueError, match="seed"):
        run_adversarial(tmp_path, seed=-1)
    with pytest.raises(TypeError, match="settings"):
        run_adversarial(tmp_path, settings={"num_epochs": 1})
