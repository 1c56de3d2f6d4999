"""Repeated cross-validation: each repeat a complete cross-validation with its own folds,
the summary equal to the repeats' own figures, a resume that keeps finished repeats, and
refusals that leave nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinfuse.errors import CohortError, ConfigError
from tests.clinfuse.test_crossval import MODALITIES, _config


@pytest.fixture(scope="module")
def repeated(tiny_cohort: Path, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from clinfuse.cli import app

    root = tmp_path_factory.mktemp("rcv")
    _config().save(root / "config.yaml")
    res = CliRunner().invoke(
        app,
        [
            "crossval",
            str(tiny_cohort),
            "--out",
            str(root / "rcv"),
            "--folds",
            "2",
            "--repeats",
            "2",
            "--fold-seed",
            "7",
            "--config",
            str(root / "config.yaml"),
            "--modalities",
            ",".join(MODALITIES),
            "--n-boot",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "mean pooled AUROC over 2 repeats" in res.output
    return root / "rcv"


def test_each_repeat_is_a_cross_validation_with_its_own_folds(repeated: Path) -> None:
    assert sorted(p.name for p in repeated.iterdir()) == [
        "config.yaml",
        "figures",
        "repeat_1",
        "repeat_2",
        "repeats.csv",
        "repeats.json",
    ]
    assert not list(repeated.parent.glob("*.partial"))
    plans = [json.loads((repeated / f"repeat_{r}" / "crossval.json").read_text()) for r in (1, 2)]
    assert [p["fold_seed"] for p in plans] == [7, 8] and {p["folds"] for p in plans} == {2}
    first, second = (
        pd.read_csv(repeated / f"repeat_{r}" / "assignment.csv", dtype={"case_id": str})
        for r in (1, 2)
    )
    assert list(first["case_id"]) == list(second["case_id"])
    assert (first["fold"] != second["fold"]).any()  # the patients were dealt anew
    assert (repeated / "figures" / "repeats.png").exists()
    from clinfuse.model import load_run

    with pytest.raises(ConfigError, match="repeated cross-validation: give one of its"):
        load_run(repeated)  # what predict, evaluate and explain would be given


def test_the_summary_is_the_repeats_own_figures(repeated: Path) -> None:
    summary = json.loads((repeated / "repeats.json").read_text())
    assert summary["schema"] == "clinfuse.repeated_crossval.v1"
    assert summary["repeats"] == 2 and summary["fold_seed"] == 7
    aurocs, slopes = [], []
    for r in (1, 2):
        cv = json.loads((repeated / f"repeat_{r}" / "crossval.json").read_text())
        metrics = json.loads((repeated / f"repeat_{r}" / "evaluation" / "metrics.json").read_text())
        aurocs.append(cv["pooled"]["auroc"]["value"])
        slopes.append(metrics["calibration"]["fusion"]["slope"]["value"])
    spread = summary["across_repeats"]
    assert spread["auroc"]["mean"] == pytest.approx(np.mean(aurocs))
    assert spread["auroc"]["sd"] == pytest.approx(np.std(aurocs, ddof=1))
    assert spread["calibration_slope"]["min"] == pytest.approx(min(slopes))
    table = pd.read_csv(repeated / "repeats.csv")
    assert list(table["auroc"]) == pytest.approx(aurocs)
    assert list(table["folder"]) == ["repeat_1", "repeat_2"]


def test_a_resumed_run_keeps_its_finished_repeats(
    repeated: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    from clinfuse.evaluation.repeated import repeated_cross_validate

    out = tmp_path / "again"
    partial = tmp_path / "again.partial"
    partial.mkdir()
    shutil.copytree(repeated / "repeat_1", partial / "repeat_1")  # repeat 1 finished earlier
    shutil.copy(repeated / "config.yaml", partial / "config.yaml")
    (partial / "plan.json").write_text(json.dumps({"repeats": 2, "folds": 2, "fold_seed": 7}))
    said: list[str] = []
    with pytest.raises(ConfigError, match=r"used \{'repeats': 2"):
        repeated_cross_validate(tiny_cohort, out, repeats=3, folds=2, fold_seed=7, resume=True)
    res = repeated_cross_validate(
        tiny_cohort, out, repeats=2, folds=2, fold_seed=7, resume=True, n_boot=0, log=said.append
    )
    assert "repeat 1/2: finished earlier, kept" in said
    assert any(m.startswith("repeat 2/2: fold seed 8") for m in said)
    assert not partial.exists() and (out / "repeats.json").exists()
    before = pd.read_csv(repeated / "repeats.csv")
    assert res.rows["auroc"].iloc[0] == pytest.approx(before["auroc"].iloc[0])
    assert res.rows["fold_seed"].tolist() == [7, 8]


def test_refusals_leave_nothing_behind(tiny_cohort: Path, tmp_path: Path) -> None:
    from clinfuse.evaluation.repeated import repeated_cross_validate

    out = tmp_path / "r"
    with pytest.raises(ConfigError, match="repeats is 1"):
        repeated_cross_validate(tiny_cohort, out, _config(), repeats=1)
    with pytest.raises(ConfigError, match="the folds are the groups"):
        repeated_cross_validate(tiny_cohort, out, _config(), repeats=2, group_by="site")
    with pytest.raises(CohortError, match="subgroup column 'ward'"):
        repeated_cross_validate(tiny_cohort, out, _config(), repeats=2, subgroups=["ward"])
    assert not list(tmp_path.iterdir())


def test_a_repeat_is_a_cross_validation_that_predict_and_monitor_take(
    repeated: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    from clinfuse.cli import main
    from clinfuse.evaluation.monitor import monitor_predictions
    from tests.clinfuse.test_monitor import _dated

    manifest = _dated(tiny_cohort, pending=0)
    preds = tmp_path / "p.csv"
    assert main(["predict", str(repeated / "repeat_2"), str(manifest), "--out", str(preds)]) == 0
    res = monitor_predictions(
        repeated / "repeat_2",
        preds,
        tmp_path / "mon",
        time_column="encounter_date",
        period="quarter",
        min_size=5,
    )
    pooled = pd.read_csv(repeated / "repeat_2" / "evaluation" / "predictions.csv")
    assert res.summary["development"]["n"] == len(pooled)  # out-of-fold: every case once
    assert res.summary["outcomes"]["n_dated"] == 64
    with pytest.raises(ConfigError, match="made by model version"):
        monitor_predictions(
            repeated / "repeat_1", preds, tmp_path / "m1", time_column="encounter_date"
        )
