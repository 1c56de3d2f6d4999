"""Rolling-origin backtest: each origin trains on the past only and is tested on its period;
bad settings are refused before any training and leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinfuse.errors import CohortError, ConfigError
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def dated(tiny_cohort: Path) -> Path:
    """The tiny cohort with encounter dates over three years, beside the original."""
    frame = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    days = np.random.default_rng(2).permutation(len(frame)) * 1095 // len(frame)
    frame.insert(3, "encounter_date", [str(np.datetime64("2021-01-01") + int(d)) for d in days])
    path = tiny_cohort.with_name("dated_backtest.csv")
    frame.to_csv(path, index=False)
    return path


def test_each_origin_trains_on_the_past_and_tests_its_period(dated: Path, tmp_path: Path):
    from clinfuse.cli import main

    out = tmp_path / "bt"
    args = ["backtest", str(dated), "--out", str(out), "--time-column", "encounter_date"]
    assert main([*args, "--epochs", "1", "--n-boot", "0"]) == 0
    summary = json.loads((out / "backtest.json").read_text())
    assert summary["periods"] == ["2021", "2022", "2023"]
    assert [o["period"] for o in summary["origins"]] == ["2022", "2023"]
    manifest = pd.read_csv(dated, dtype={"case_id": str}).set_index("case_id")
    year = manifest["encounter_date"].str[:4]
    for origin in summary["origins"]:
        preds = pd.read_csv(out / origin["run"] / "predictions.csv", dtype={"case_id": str})
        used = year.loc[preds["case_id"]]
        # trained and validated on earlier years only; tested on its own year
        assert (used[preds["split"].isin(["train", "val"]).to_numpy()] < origin["period"]).all()
        tested = set(preds.loc[preds["split"] == "test", "case_id"])
        past = set(manifest.loc[year < origin["period"], "patient_id"])
        in_period = manifest[year == origin["period"]]
        new = in_period[~in_period["patient_id"].isin(past)]
        assert tested == set(new.index)  # a returning patient's later case is left out
        assert origin["n_returning_left_out"] == len(in_period) - len(new)
        # the validation split is the most recent past
        train_last = manifest.loc[preds.loc[preds["split"] == "train", "case_id"], "encounter_date"]
        val_first = manifest.loc[preds.loc[preds["split"] == "val", "case_id"], "encounter_date"]
        assert (
            origin["n_val"] > 0
            and sorted(val_first)[len(val_first) // 2] >= sorted(train_last)[len(train_last) // 2]
        )
        metrics = json.loads((out / origin["evaluation"] / "metrics.json").read_text())
        assert metrics["n_cases"] == origin["n_test"] == len(tested)
        assert origin["auroc"]["value"] == pytest.approx(
            metrics["discrimination"]["models"]["fusion"]["auroc_delong"]["value"]
        )
    table = pd.read_csv(out / "backtest.csv")
    assert list(table["period"].astype(str)) == ["2022", "2023"]
    assert (out / "figures" / "backtest.png").exists()


def test_bad_settings_are_refused_before_training(dated: Path, tiny_cohort: Path, tmp_path: Path):
    from clinfuse.evaluation.backtest import backtest_run

    cfg = tiny_config(epochs=1)
    out = tmp_path / "bt"
    with pytest.raises(CohortError, match=r"no period can be tested: 2023: .*its test part"):
        few = pd.read_csv(dated, dtype=str, keep_default_na=False)
        late = few["encounter_date"] >= "2022"
        few.loc[late, "label"] = "1"  # the later periods hold events only
        path = dated.with_name("dated_events_later.csv")
        few.to_csv(path, index=False)
        backtest_run(path, out, cfg, time_column="encounter_date", min_train_periods=2)
    with pytest.raises(CohortError, match="span 3 period"):
        backtest_run(dated, out, cfg, time_column="encounter_date", min_train_periods=3)
    with pytest.raises(ConfigError, match="min_train_periods is 0"):
        backtest_run(dated, out, cfg, time_column="encounter_date", min_train_periods=0)
    with pytest.raises(ConfigError, match="window is 0"):
        backtest_run(dated, out, cfg, time_column="encounter_date", window=0)
    with pytest.raises(ConfigError, match="unknown period 'week'"):
        backtest_run(dated, out, cfg, time_column="encounter_date", period="week")
    with pytest.raises(CohortError, match="'encounter_date' is not in the manifest"):
        backtest_run(tiny_cohort, out, cfg, time_column="encounter_date")
    assert not out.exists() and not list(tmp_path.iterdir())
    (out / "x").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not empty"):
        backtest_run(dated, out, cfg, time_column="encounter_date")


def test_a_period_without_both_outcomes_is_skipped_and_said(dated: Path, tmp_path: Path):
    from clinfuse.evaluation.backtest import backtest_run

    frame = pd.read_csv(dated, dtype=str, keep_default_na=False)
    frame.loc[frame["encounter_date"] >= "2023", "label"] = "1"
    path = dated.with_name("dated_2023_events.csv")
    frame.to_csv(path, index=False)
    said: list[str] = []
    res = backtest_run(
        path,
        tmp_path / "bt",
        tiny_config(epochs=1),
        time_column="encounter_date",
        n_boot=0,
        window=1,  # 2022 trains on 2021 alone either way
        log=said.append,
    )
    assert res.summary["window"] == 1
    assert list(res.rows["period"]) == ["2022"]
    assert [s["period"] for s in res.summary["skipped"]] == ["2023"]
    assert "its test part" in res.summary["skipped"][0]["reason"]
    assert any(m.startswith("origin 2023 skipped") for m in said)


def test_a_sliding_window_trains_on_its_periods_and_tests_the_same_cases(dated: Path):
    from clinfuse.evaluation.backtest import _plan
    from clinfuse.evaluation.temporal import cohort_dates, period_labels
    from clinfuse.training.run import load_labelled_cohort

    cohort = load_labelled_cohort(dated, tiny_config(epochs=1).data)
    dates = cohort_dates(cohort, "encounter_date")
    labels = period_labels(dates, "year")
    by_case = dict(zip((r.case_id for r in cohort.rows), labels, strict=True))
    common = {"period": "year", "val_share": 0.5}  # the tiny cohort needs events in both parts
    sliding, skipped = _plan(cohort, dates, labels, ["2022", "2023"], window=1, **common)
    expanding, _ = _plan(cohort, dates, labels, ["2022", "2023"], window=None, **common)
    assert not skipped and len(sliding) == len(expanding) == 2
    for plan, full in zip(sliding, expanding, strict=True):
        trained = {by_case[c] for c, s in plan["splits"].items() if s != "test"}
        assert trained == {str(int(plan["period"]) - 1)}  # the one year before only
        assert plan["test_ids"] == full["test_ids"]  # the same new patients either way
    assert sliding[0]["splits"] == expanding[0]["splits"]  # 2022: one earlier year either way
    assert set(sliding[1]["splits"]) < set(expanding[1]["splits"])
    assert sliding[1]["train_first"] >= "2022-01-01" > expanding[1]["train_first"]
