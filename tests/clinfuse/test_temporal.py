"""Performance over time: the drift model against statsmodels, periods against
scikit-learn and by hand, dates read or refused by case."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from clinfuse.errors import CohortError, ConfigError
from clinfuse.evaluation.temporal import (
    auroc_trend,
    calibration_drift,
    parse_dates,
    performance_over_time,
    period_labels,
)


def _drifting(rng: np.random.Generator, n: int, per_year: float):
    """Cases over two years whose outcome log odds rise ``per_year`` beyond the model's."""
    days = rng.integers(0, 730, n)
    dates = np.datetime64("2023-01-01") + days.astype("timedelta64[D]")
    lp = rng.normal(-1.2, 1.2, n)
    p = 1 / (1 + np.exp(-lp))
    years = days / 365.25
    y = (rng.random(n) < 1 / (1 + np.exp(-(lp + per_year * years)))).astype(float)
    return y, p, dates.astype("datetime64[ns]"), years


def test_drift_equals_statsmodels_glm_with_offset():
    sm = importlib.import_module("statsmodels.api")
    rng = np.random.default_rng(4)
    y, p, _, years = _drifting(rng, 1500, 0.5)
    fit = sm.GLM(
        y,
        sm.add_constant(years),
        family=sm.families.Binomial(),
        offset=np.log(p / (1 - p)),
    ).fit()
    drift = calibration_drift(y, p, years)
    assert drift["intercept"]["value"] == pytest.approx(fit.params[0], abs=1e-6)
    assert drift["per_year"]["value"] == pytest.approx(fit.params[1], abs=1e-6)
    low, high = fit.conf_int()[1]
    assert drift["per_year"]["ci_low"] == pytest.approx(low, abs=1e-5)
    assert drift["per_year"]["ci_high"] == pytest.approx(high, abs=1e-5)
    assert drift["per_year"]["p_value"] == pytest.approx(fit.pvalues[1], rel=1e-4)


def test_drift_is_found_where_it_is_and_not_where_it_is_not():
    rng = np.random.default_rng(8)
    y, p, _, years = _drifting(rng, 4000, 0.6)
    drift = calibration_drift(y, p, years)["per_year"]
    assert drift["ci_low"] < 0.6 < drift["ci_high"] and drift["p_value"] < 1e-6
    # no drift: over 200 cohorts the test rejects at about its level
    rejected = []
    for _ in range(200):
        y0, p0, _, years0 = _drifting(rng, 400, 0.0)
        rejected.append(calibration_drift(y0, p0, years0)["per_year"]["p_value"] < 0.05)
    assert 0.01 <= np.mean(rejected) <= 0.10


def test_slope_drift_equals_statsmodels_glm_with_an_interaction():
    sm = importlib.import_module("statsmodels.api")
    rng = np.random.default_rng(7)
    n = 3000
    years = rng.uniform(0, 3, n)
    lp = rng.normal(-1.0, 1.3, n)
    p = 1 / (1 + np.exp(-lp))
    y = (rng.random(n) < 1 / (1 + np.exp(-(lp * (1 - 0.25 * years))))).astype(float)
    x = np.column_stack([np.ones(n), years, lp, years * lp])
    fit = sm.GLM(y, x, family=sm.families.Binomial()).fit()
    drift = calibration_drift(y, p, years)
    assert drift["slope"]["value"] == pytest.approx(fit.params[2], abs=1e-6)
    assert drift["slope_per_year"]["value"] == pytest.approx(fit.params[3], abs=1e-6)
    low, high = fit.conf_int()[3]
    assert drift["slope_per_year"]["ci_low"] == pytest.approx(low, abs=1e-5)
    assert drift["slope_per_year"]["ci_high"] == pytest.approx(high, abs=1e-5)
    assert drift["slope_per_year"]["p_value"] == pytest.approx(fit.pvalues[3], rel=1e-4)
    assert drift["slope_per_year"]["ci_high"] < 0  # risks grow too extreme: found
    y0, p0, _, years0 = _drifting(rng, 3000, 0.0)
    assert calibration_drift(y0, p0, years0)["slope_per_year"]["p_value"] > 0.001


def test_auroc_trend_equals_statsmodels_wls_with_the_scale_fixed():
    sm = importlib.import_module("statsmodels.api")
    aurocs = np.array([0.82, 0.80, 0.79, 0.75, 0.74, 0.70])
    ses = np.array([0.020, 0.025, 0.018, 0.030, 0.022, 0.027])
    years = np.array([0.1, 0.35, 0.6, 0.85, 1.1, 1.4])
    fit = sm.WLS(aurocs, sm.add_constant(years), weights=1 / ses**2).fit(cov_type="fixed scale")
    trend = auroc_trend(aurocs, ses, years)
    assert trend["value"] == pytest.approx(fit.params[1], abs=1e-10)
    low, high = fit.conf_int()[1]
    assert trend["ci_low"] == pytest.approx(low, abs=1e-8)
    assert trend["ci_high"] == pytest.approx(high, abs=1e-8)
    assert trend["p_value"] == pytest.approx(fit.pvalues[1], rel=1e-6)
    assert trend["k"] == 6
    assert auroc_trend(aurocs[:2], ses[:2], years[:2])["value"] is None
    assert "no time" in auroc_trend(aurocs, ses, np.zeros(6))["reason"]


def test_periods_by_hand_and_against_scikit_learn():
    rng = np.random.default_rng(1)
    y, p, dates, _ = _drifting(rng, 900, 0.3)
    dates[:5] = np.datetime64("NaT")
    res = performance_over_time(y, p, dates, period="quarter", min_size=30)
    assert res["n_dated"] == 895 and res["n_undated"] == 5
    labels = [r["period"] for r in res["periods"]]
    assert labels == [f"{yr}Q{q}" for yr in (2023, 2024) for q in (1, 2, 3, 4)]
    quarters = pd.DatetimeIndex(dates[5:]).to_period("Q")
    for row in res["periods"]:
        sel = np.asarray(quarters == pd.Period(row["period"]))
        ys, ps = y[5:][sel], p[5:][sel]
        assert row["n"] == len(ys) and not row["suppressed"]
        assert row["oe"]["value"] == pytest.approx(ys.sum() / ps.sum())
        assert row["auroc"]["value"] == pytest.approx(roc_auc_score(ys, ps))
        assert row["brier"] == pytest.approx(np.mean((ps - ys) ** 2))
    assert res["first"] >= "2023-01-01" and res["last"] <= "2024-12-31"


def test_small_and_empty_periods_are_kept_in_order_but_suppressed():
    y = np.array([0, 1, 0, 1, 0, 0], float)
    p = np.full(6, 0.3)
    dates = pd.to_datetime(
        ["2024-01-03", "2024-01-20", "2024-01-31", "2024-03-02", "2024-03-05", "2024-03-09"]
    ).to_numpy()
    res = performance_over_time(y, p, dates, period="month", min_size=3, min_events=1)
    assert [(r["period"], r["n"], r["suppressed"]) for r in res["periods"]] == [
        ("2024-01", 3, False),
        ("2024-02", 0, True),
        ("2024-03", 3, False),
    ]
    with pytest.raises(ConfigError, match="unknown period 'week'"):
        performance_over_time(y, p, dates, period="week")
    one_day = performance_over_time(y, p, np.repeat(dates[:1], 6), min_size=1, min_events=1)
    assert (
        one_day["drift"]["per_year"]["value"] is None
        and "span no time" in one_day["drift"]["reason"]
    )


def test_period_labels_name_periods_as_the_table_does():
    dates = pd.to_datetime(["2024-02-29", None, "2023-12-31 23:59"], format="ISO8601").to_numpy()
    assert period_labels(dates, "quarter") == ["2024Q1", None, "2023Q4"]
    assert period_labels(dates, "month") == ["2024-02", None, "2023-12"]
    assert period_labels(dates, "year") == ["2024", None, "2023"]


def test_dates_are_read_or_refused_by_case():
    got = parse_dates(
        ["2024-03-15", "2024-03-15 08:30", None, "", "2024-03-15T08:30:00+01:00"],
        ["a", "b", "c", "d", "e"],
        column="admitted",
    )
    assert str(got[0])[:10] == "2024-03-15" and np.isnat(got[2]) and np.isnat(got[3])
    assert str(got[1]).startswith("2024-03-15T08:30")
    with pytest.raises(CohortError, match=r"case 'b', field 'admitted'.*'soon' is not a date"):
        parse_dates(["2024-01-01", "soon"], ["a", "b"], column="admitted")


def test_synth_drift_moves_the_event_rate_with_the_date_and_zero_changes_nothing():
    from clinfuse.synth.generator import DRIFT_CENTRE, simulate_latents

    base = simulate_latents(3000, seed=4)
    pd.testing.assert_frame_equal(base, simulate_latents(3000, seed=4, drift=0.0))
    drifting = simulate_latents(20000, seed=4, drift=0.8)
    years = (
        pd.to_datetime(drifting["encounter_date"]) - pd.Timestamp(DRIFT_CENTRE)
    ).dt.days.to_numpy() / 365.25
    sites = pd.get_dummies(drifting["site"]).to_numpy(float)
    from clinfuse.calibration import fit_logistic

    coef, cov = fit_logistic(np.column_stack([sites, years]), drifting["label"].to_numpy(float))
    assert abs(coef[-1] - 0.8) < 3 * np.sqrt(cov[-1, -1])


def test_synth_shift_changes_the_odds_from_its_date_on(tmp_path, capsys):
    from clinfuse.calibration import fit_logistic
    from clinfuse.cli import main
    from clinfuse.synth.generator import simulate_latents

    base = simulate_latents(3000, seed=4)
    shifted = simulate_latents(20000, seed=4, shift=("2021-07-01", 2.5))
    before = simulate_latents(20000, seed=4)
    # the same draws before the date; after it, the odds × 2.5 (site-adjusted)
    early = pd.to_datetime(shifted["encounter_date"]) < pd.Timestamp("2021-07-01")
    assert shifted["label"][early].equals(before["label"][early])
    sites = pd.get_dummies(shifted["site"]).to_numpy(float)
    coef, cov = fit_logistic(
        np.column_stack([sites, (~early).to_numpy(float)]), shifted["label"].to_numpy(float)
    )
    assert abs(coef[-1] - np.log(2.5)) < 3 * np.sqrt(cov[-1, -1])
    pd.testing.assert_frame_equal(base, simulate_latents(3000, seed=4, shift=None))
    with pytest.raises(ConfigError, match="not a date"):
        simulate_latents(10, shift=("July 2021", 2.0))
    with pytest.raises(ConfigError, match="must be positive"):
        simulate_latents(10, shift=("2021-07-01", 0.0))
    out = tmp_path / "c"
    assert main(["synth", "--out", str(out), "--n-cases", "10", "--shift-odds", "3"]) == 1
    assert "--shift-odds sizes the change at --shift-date" in capsys.readouterr().err


def _dated_manifest(tiny_cohort, dates) -> Path:
    """The tiny cohort's manifest with an ``encounter_date`` column, beside the original."""
    frame = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    frame.insert(3, "encounter_date", dates(len(frame)))
    digest = hashlib.sha256("|".join(frame["encounter_date"]).encode()).hexdigest()[:12]
    path = tiny_cohort.with_name(f"dated_{digest}.csv")
    frame.to_csv(path, index=False)
    return path


def test_evaluate_reports_performance_over_time(tiny_run, tiny_cohort, tmp_path, capsys):
    import json

    from clinfuse.cli import main

    days = np.random.default_rng(0).integers(0, 700, 200)
    manifest = _dated_manifest(
        tiny_cohort,
        lambda n: [*(str(np.datetime64("2023-01-01") + int(d)) for d in days[: n - 2]), "", ""],
    )
    calib = tmp_path / "ev_test"
    assert (
        main(["evaluate", str(tiny_run), str(tiny_cohort), "--out", str(calib), "--split", "test"])
        == 0
    )
    out = tmp_path / "ev"
    args = ["evaluate", str(tiny_run), str(manifest), "--out", str(out), "--n-boot", "0"]
    args += ["--min-group-size", "4", "--time-column", "encounter_date", "--period", "year"]
    args += ["--cusum-false-alarm", "0.1"]
    assert main([*args, "--conformal", str(calib), "--alpha", "0.2"]) == 0
    assert "calibration drift:" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    over = metrics["over_time"]
    assert over["column"] == "encounter_date" and over["n_undated"] == 2
    assert [r["period"] for r in over["periods"]] == ["2023", "2024"]
    frame = pd.read_csv(out / "predictions.csv", dtype={"case_id": str})
    dated = pd.read_csv(manifest, dtype=str, keep_default_na=False).set_index("case_id")
    stamps = pd.to_datetime(dated.loc[frame["case_id"], "encounter_date"].replace("", None))
    expected = performance_over_time(
        frame["label"].to_numpy(float),
        frame["p_fusion"].to_numpy(float),
        stamps.to_numpy(),
        period="year",
        min_size=4,
    )
    assert over["drift"]["per_year"]["value"] == pytest.approx(
        expected["drift"]["per_year"]["value"]
    )
    assert (out / "figures" / "over_time.png").exists()
    # the CUSUM charts: the evaluated cases in date order, the undated left out
    from clinfuse.evaluation.cusum import risk_adjusted_cusum

    chart = risk_adjusted_cusum(
        frame["label"].to_numpy(float),
        frame["p_fusion"].to_numpy(float),
        stamps.to_numpy(),
        case_ids=frame["case_id"].tolist(),
        false_alarm=0.1,
    ).to_dict()
    assert over["cusum"] == json.loads(json.dumps(chart)) and chart["false_alarm"] == 0.1
    assert over["cusum"]["n_undated"] == 2 and len(over["cusum"]["charts"]) == 2
    assert (out / "figures" / "cusum.png").exists()
    # and each site's own charts
    from clinfuse.evaluation.cusum import cusum_by_group

    by_site = cusum_by_group(
        frame["label"].to_numpy(float),
        frame["p_fusion"].to_numpy(float),
        stamps.to_numpy(),
        frame["site"].tolist(),
        false_alarm=0.1,
        case_ids=frame["case_id"].tolist(),
        min_size=4,
    )
    assert by_site is not None and over["cusum_by_site"] == json.loads(json.dumps(by_site))
    # the conformal sets' coverage per year too
    per_year = metrics["conformal"]["by_group"]["year of encounter_date"]
    assert {r["group"] for r in per_year} == {"2023", "2024", "(missing)"}
    sets = frame["conformal_set"].to_numpy(object)
    in_2023 = (stamps.dt.year == 2023).to_numpy()
    row = next(r for r in per_year if r["group"] == "2023")
    if not row["suppressed"]:
        events = frame["label"].to_numpy() == 1
        covered = np.isin(sets[in_2023 & events], ["positive", "uncertain"]).mean()
        assert row["events"]["value"] == pytest.approx(covered)
    # the adaptive sets, replayed over the dated cases in date order
    from clinfuse.evaluation.conformal import ConformalSets, adaptive_replay

    adaptive = metrics["conformal"]["adaptive"]
    has_date = stamps.notna().to_numpy()
    assert adaptive["n"] == int(has_date.sum()) and adaptive["n_undated"] == 2
    cal = pd.read_csv(calib / "predictions.csv")
    by_date = pd.DataFrame({"d": stamps.to_numpy(), "c": frame["case_id"].to_numpy()})
    order = by_date[has_date].sort_values(["d", "c"]).index.to_numpy()
    replay = adaptive_replay(
        ConformalSets.from_dict(metrics["conformal"]["fitted"]),
        cal["label"].to_numpy(float),
        cal["p_fusion"].to_numpy(float),
        frame["label"].to_numpy(float)[order],
        frame["p_fusion"].to_numpy(float)[order],
    )
    assert list(frame["conformal_set_adaptive"][order]) == list(replay["sets"])
    assert frame["conformal_set_adaptive"][~has_date].isna().all()
    assert adaptive["final_levels"] == pytest.approx(replay["final"])
    report = (out / "report.html").read_text()
    assert "Adaptive sets (replayed in date order)" in report
    assert "Performance over time" in report and "Risk-adjusted CUSUM" in report
    assert "Risk-adjusted CUSUM by site" in report
    assert "Trend of the AUROC" in report


def test_a_bad_date_or_column_fails_before_scoring(tiny_run, tiny_cohort, tmp_path, capsys):
    from clinfuse.cli import main

    manifest = _dated_manifest(tiny_cohort, lambda n: ["2024-02-30"] + ["2024-01-01"] * (n - 1))
    out = tmp_path / "ev"
    base = ["evaluate", str(tiny_run), str(manifest), "--out", str(out)]
    assert main([*base, "--time-column", "encounter_date"]) == 1
    err = capsys.readouterr().err
    assert "'2024-02-30' is not a date" in err and "field 'encounter_date'" in err
    assert main([*base, "--time-column", "admitted"]) == 1
    assert "'admitted' is not in the manifest" in capsys.readouterr().err
    assert main([*base, "--time-column", "encounter_date", "--period", "week"]) == 1
    assert "unknown period 'week'" in capsys.readouterr().err
    assert main([*base, "--cusum-false-alarm", "0.1"]) == 1
    assert "--cusum-false-alarm sets the CUSUM charts of --time-column" in capsys.readouterr().err
    assert main([*base, "--time-column", "encounter_date", "--cusum-false-alarm", "0.7"]) == 1
    assert "cusum_false_alarm is 0.7" in capsys.readouterr().err
    assert not out.exists()


def test_temporal_split_orders_patients_by_their_first_date():
    from clinfuse.cohort.split import assign_splits_by_date

    patients = ["p1", "p2", "p2", "p3", "p4", "p5"]
    dates = np.array(
        ["2024-05-01", "2024-06-01", "2023-01-01", "2024-02-01", "2023-06-01", "2024-07-01"],
        "datetime64[D]",
    )
    got = assign_splits_by_date(patients, dates, fractions=(0.6, 0.2, 0.2))
    # first dates: p2 2023-01, p4 2023-06, p3 2024-02, p1 2024-05, p5 2024-07
    assert got == ["val", "train", "train", "train", "train", "test"]
    with pytest.raises(ConfigError, match="summing to 1"):
        assign_splits_by_date(patients, dates, fractions=(0.6, 0.2, 0.3))


def test_train_with_a_temporal_split_and_its_refusals(tiny_cohort, tmp_path):
    import json

    from clinfuse.cohort.manifest import Cohort
    from clinfuse.cohort.split import split_cohort
    from clinfuse.evaluation.crossval import cross_validate
    from clinfuse.training import train_run
    from tests.conftest import tiny_config

    days = np.random.default_rng(3).permutation(64) * 9
    manifest = _dated_manifest(
        tiny_cohort, lambda n: [str(np.datetime64("2022-01-01") + int(d)) for d in days[:n]]
    )
    cfg = tiny_config(epochs=1)
    cfg = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"split_by_date": "encounter_date"})}
    )
    run = train_run(manifest, tmp_path / "run", cfg)
    report = json.loads((run / "data_report.json").read_text())
    ranges = report["split_by_date"]
    assert ranges["column"] == "encounter_date"
    assert ranges["train"]["first"] <= ranges["val"]["first"] <= ranges["test"]["first"]
    # patients are in time order of their first case (their later cases follow them)
    preds = pd.read_csv(run / "predictions.csv", dtype={"case_id": str})
    rows = pd.read_csv(manifest, dtype=str).set_index("case_id").loc[preds["case_id"]]
    first = (
        rows.assign(split=preds["split"].to_numpy())
        .groupby("patient_id")
        .agg(split=("split", "first"), date=("encounter_date", "min"))
    )
    by = first.groupby("split")["date"]
    assert by.max()["train"] <= by.min()["val"] and by.max()["val"] <= by.min()["test"]
    # evaluate --split test finds the same test cases (the split is recomputed the same way)
    again = split_cohort(
        Cohort.from_manifest(manifest), fractions=cfg.data.split_fractions, by_date="encounter_date"
    )
    assert set(preds.loc[preds["split"] == "test", "case_id"]) <= {
        r.case_id for r in again.rows if r.split == "test"
    }
    # a case without a date, an unknown column, and cross-validation are refused by name
    gap = _dated_manifest(tiny_cohort, lambda n: ["", *["2022-03-01"] * (n - 1)])
    with pytest.raises(CohortError, match="1 cases have no date for the temporal split"):
        split_cohort(Cohort.from_manifest(gap), by_date="encounter_date")
    with pytest.raises(CohortError, match="'admitted', which is not a column"):
        split_cohort(Cohort.from_manifest(gap), by_date="admitted")
    with pytest.raises(ConfigError, match="asks for one temporal split"):
        cross_validate(manifest, tmp_path / "cv", cfg, folds=2)
    assert not (tmp_path / "cv").exists() and not (tmp_path / "cv.partial").exists()


def test_recalibrate_on_recent_cases_only(tiny_run, tiny_cohort, tmp_path, capsys):
    import json

    from clinfuse.cli import main
    from clinfuse.evaluation.recalibrate import recalibrate_run

    days = np.random.default_rng(4).integers(0, 730, 64)
    manifest = _dated_manifest(
        tiny_cohort,
        lambda n: [*(str(np.datetime64("2023-01-01") + int(d)) for d in days[: n - 1]), ""],
    )
    dated = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    recent = (dated["encounter_date"] >= "2023-07-01") & (dated["encounter_date"] != "")
    out = tmp_path / "recent"
    args = ["recalibrate", str(tiny_run), str(manifest), "--out", str(out), "--method"]
    args += ["intercept", "--time-column", "encounter_date", "--since", "2023-07-01"]
    assert main(args) == 0
    assert "dated from 2023-07-01 on" in capsys.readouterr().out
    report = json.loads((out / "recalibration.json").read_text())
    assert report["since"] == {
        "column": "encounter_date",
        "since": "2023-07-01",
        "n_kept": int(recent.sum()),
        "n_earlier": int((~recent).sum()) - 1,
        "n_undated": 1,
    }
    assert report["n_cases"] + report["n_excluded"] <= int(recent.sum())
    with pytest.raises(ConfigError, match="go together"):
        recalibrate_run(tiny_run, manifest, tmp_path / "x", since="2023-07-01")
    with pytest.raises(ConfigError, match="'soon' is not a date"):
        recalibrate_run(
            tiny_run, manifest, tmp_path / "x", time_column="encounter_date", since="soon"
        )
    with pytest.raises(CohortError, match="no case is dated on or after 2030-01-01"):
        recalibrate_run(
            tiny_run, manifest, tmp_path / "x", time_column="encounter_date", since="2030-01-01"
        )
    assert not (tmp_path / "x").exists()


def test_crossval_pools_the_folds_per_period_and_checks_dates_first(tiny_cohort, tmp_path):
    import json

    from clinfuse.evaluation.crossval import cross_validate
    from tests.conftest import tiny_config

    days = np.random.default_rng(6).integers(0, 700, 64)
    manifest = _dated_manifest(
        tiny_cohort, lambda n: [str(np.datetime64("2022-01-01") + int(d)) for d in days[:n]]
    )
    bad = _dated_manifest(tiny_cohort, lambda n: ["2022-01-01"] * (n - 1) + ["not a date"])
    cfg = tiny_config(epochs=1)
    with pytest.raises(CohortError, match="'not a date' is not a date"):
        cross_validate(bad, tmp_path / "bad", cfg, folds=2, time_column="encounter_date")
    with pytest.raises(CohortError, match="'admitted' is not in the manifest"):
        cross_validate(manifest, tmp_path / "bad", cfg, folds=2, time_column="admitted")
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written
    res = cross_validate(
        manifest,
        tmp_path / "cv",
        cfg,
        folds=2,
        n_boot=0,
        min_group_size=4,
        time_column="encounter_date",
        period="year",
    )
    over = json.loads((res.out / "evaluation" / "metrics.json").read_text())["over_time"]
    pooled = pd.read_csv(res.out / "evaluation" / "predictions.csv")
    assert over["column"] == "encounter_date" and over["n_dated"] == len(pooled)
    assert [r["period"] for r in over["periods"]] == ["2022", "2023"]


def test_options_that_would_be_ignored_are_refused(tiny_run, tiny_cohort, tmp_path, capsys):
    from clinfuse.cli import main

    base = ["evaluate", str(tiny_run), str(tiny_cohort), "--out", str(tmp_path / "ev")]
    assert main([*base, "--period", "month"]) == 1
    assert "--period groups the dates of --time-column, which is missing" in (
        capsys.readouterr().err
    )
    pred = ["predict", str(tiny_run), str(tiny_cohort), "--out", str(tmp_path / "p.csv")]
    for extra in (["--alpha", "0.2"], ["--alpha-events", "0.05"], ["--marginal"]):
        assert main([*pred, *extra]) == 1
        assert "need --conformal" in capsys.readouterr().err
    assert main([*base, "--time-column", "admitted"]) == 1
    assert "time column 'admitted' is not in the manifest" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists() and not (tmp_path / "p.csv").exists()


def test_temporal_split_keeps_the_manifests_own_splits_and_undated_cohorts_report_nothing(
    tmp_path,
):
    from clinfuse.cohort.manifest import Cohort
    from clinfuse.cohort.split import split_cohort

    rows = [
        {
            "case_id": f"c{i}",
            "patient_id": f"p{i}",
            "label": i % 2,
            "split": "test" if i == 0 else "",
            "note_text": "a note",
            "when": f"2024-01-{i + 1:02d}",
        }
        for i in range(10)
    ]
    path = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    got = {
        r.case_id: r.split for r in split_cohort(Cohort.from_manifest(path), by_date="when").rows
    }
    assert got["c0"] == "test"  # the manifest's own split stays, although c0 is the earliest
    # the nine others in date order, 0.7/0.15/0.15 of 9 patients: 7 train, 1 val, 1 test
    assert [got[f"c{i}"] for i in range(1, 10)] == ["train"] * 7 + ["val", "test"]
    none = performance_over_time(np.ones(3), np.full(3, 0.5), np.full(3, np.datetime64("NaT")))
    assert none["n_dated"] == 0 and none["periods"] == [] and "first" not in none
    assert none["drift"]["per_year"]["value"] is None


def test_validate_checks_a_date_column_case_by_case(tiny_cohort, tmp_path, capsys):
    from clinfuse.cli import main
    from clinfuse.cohort.validate import validate_cohort

    manifest = _dated_manifest(
        tiny_cohort,
        lambda n: ["2023-02-30", "", "2099-01-01", "2999-01-01", *["2023-05-01"] * (n - 4)],
    )
    report = validate_cohort(manifest, read_files=False, time_column="encounter_date")
    dated = [i for i in report.issues if i.field == "encounter_date"]
    ids = list(pd.read_csv(manifest, dtype=str)["case_id"][:4])
    assert [(i.case_id, i.severity) for i in dated] == [
        (ids[0], "error"),
        (ids[2], "warning"),
        (ids[3], "error"),
        (None, "warning"),
    ]
    assert "'2023-02-30' is not a date" in dated[0].message
    assert "after today" in dated[1].message
    assert "outside the dates clinfuse can hold" in dated[2].message  # no silent wrap-around
    assert "1 case(s) have no" in dated[3].message
    missing = validate_cohort(manifest, read_files=False, time_column="admitted")
    assert any("'admitted' is not in the manifest" in i.message for i in missing.issues)
    args = ["validate", str(manifest), "--no-read", "--time-column", "encounter_date"]
    assert main(args) == 1  # errors in two cases
    assert main(["validate", str(manifest), "--no-read"]) == 0  # dates not asked for
    capsys.readouterr()
