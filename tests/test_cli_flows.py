"""End-to-end test of ``bayesdl run flows --quick``: the table printed and the files written."""

from __future__ import annotations

import json

import matplotlib
import pytest

matplotlib.use("Agg")

from bayesdl.cli import main
from bayesdl.experiments.flows import DATASETS, DEFAULT_FAMILIES


def test_cli_run_flows_quick(tmp_path, capsys):
    out = tmp_path / "flows"
    assert main(["run", "flows", "--quick", "--no-progress", "--output", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["data", "family", "NLL", "entropy", "gap"]
    assert set(lines[1]) == {"-", " "}
    families = DEFAULT_FAMILIES
    table = lines[2 : 2 + len(DATASETS) * len(families)]
    assert {len(line) for line in table} == {len(lines[0])}
    for name in DATASETS:
        rows = [line.split() for line in table if line.split()[0] == name]
        assert [r[1] for r in rows] == list(families)
        for r in rows:
            float(r[2])  # a number
            if name in ("8gaussians", "checkerboard"):
                # gap = NLL - entropy, printed with its sign
                assert abs(float(r[2]) - float(r[3]) - float(r[4])) < 2e-4
            else:
                assert r[3] == r[4] == "-"
    assert any(line.startswith("best family:") for line in lines)
    assert any(line.startswith("Bishop's flipped problem, test NLL:") for line in lines)

    assert {p.name for p in out.iterdir()} == {"flows.png", "conditional.png", "results.json"}
    for figure in ("flows.png", "conditional.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and results["seed"] == 0
    assert results["figures"] == ["flows.png", "conditional.png"]
    scores = results["conditional"]
    assert set(scores) == {"flow_nll", "mdn_nll", "true_nll"}
    # No model beats the true conditional density by more than sampling noise on the test set.
    assert scores["true_nll"] < min(scores["flow_nll"], scores["mdn_nll"]) + 0.1
    assert len(results["rows"]) == len(DATASETS) * len(families)
    for row in results["rows"]:
        assert set(row) == {"data", "family", "nll", "entropy", "gap", "fit_seconds"}
        assert (row["entropy"] is None) == (row["data"] in ("moons", "rings"))
    assert set(results["best"]) == set(DATASETS)


def test_cli_run_rejects_unknown_experiments(capsys):
    with pytest.raises(SystemExit):
        main(["run", "nope"])
    assert "invalid choice" in capsys.readouterr().err


def test_run_flows_checks_its_arguments(tmp_path):
    from bayesdl.experiments.flows import run_flows

    with pytest.raises(ValueError, match="seed"):
        run_flows(tmp_path, seed=-1)
    with pytest.raises(ValueError, match="datasets_2d"):
        run_flows(tmp_path, quick=True, datasets_2d=("spiral",))
    with pytest.raises(ValueError, match="families"):
        run_flows(tmp_path, quick=True, families=("glow",))
