"""End-to-end test of ``bayesdl aleatoric --quick``: the table printed and the files written."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

from bayesdl.cli import main

EXPECTED_FIGURES = {
    "homoscedastic_vs_heteroscedastic.png",
    "flipped_point_vs_mdn.png",
    "flipped_slices.png",
    "mixture_weights.png",
    "calibration.png",
    "loss.png",
}


def test_cli_aleatoric_quick(tmp_path, capsys):
    out = tmp_path / "aleatoric"
    assert main(["aleatoric", "--quick", "--no-progress", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].split() == ["data", "model", "NLL", "RMSE", "CRPS", "cover90"]
    assert set(lines[1]) == {"-", " "}
    table = lines[2:10]
    # Aligned columns: every row of the table has the header's width.
    assert {len(line) for line in table} == {len(lines[0])}
    for label in (
        "homoscedastic Gaussian",
        "heteroscedastic Gaussian",
        "point estimate (sigma=1)",
        "MDN (K=5)",
        "true p(y|x)",
    ):
        assert label in printed
    assert sum("bishop-flipped" in line for line in table) == 4
    assert "homoscedastic sigma: learned" in printed
    assert "flipped problem at x = 0.25" in printed

    written = {p.name for p in out.iterdir()}
    assert written == EXPECTED_FIGURES | {"results.json"}
    for name in EXPECTED_FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and results["seed"] == 0
    assert set(results["figures"]) == EXPECTED_FIGURES
    assert len(results["rows"]) == 8
    for row in results["rows"]:
        assert set(row) == {"data", "model", "nll", "rmse", "crps", "coverage90"}
        assert 0.0 <= row["coverage90"] <= 1.0
    assert set(results["flipped_slices"]) == {"branch_input", "average_input"}


def test_cli_aleatoric_seed_changes_the_data(tmp_path, capsys):
    main(["aleatoric", "--quick", "--no-progress", "--seed", "3", "--output", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["seed"] == 3
    capsys.readouterr()
