"""Calibration segments: the dynamic programme against exhaustive search, a change that
reverts found, no change in calibrated data, pooled days, and the evaluation report."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.special import expit

from clinfuse.calibration import fit_logistic
from clinfuse.evaluation.segments import segment_calibration

DAY0 = np.datetime64("2022-01-01")


def _cohort(n, days, beta_of_day, seed):
    rng = np.random.default_rng(seed)
    day = np.sort(rng.integers(0, days, n))
    z = rng.normal(-1.0, 1.0, n)
    y = (rng.random(n) < expit(z + beta_of_day(day))).astype(float)
    return y, expit(z), DAY0 + day


def test_the_dynamic_programme_finds_the_exhaustive_searchs_best_cuts() -> None:
    y, p, dates = _cohort(
        360, 15, lambda d: np.where((d >= 5) & (d < 10), math.log(3.0), 0.0), seed=1
    )
    res = segment_calibration(y, p, dates, max_changes=2, min_cases=30, min_events=3)
    days = np.unique(dates)
    offset = np.log(p) - np.log1p(-p)

    def deviance(lo, hi):  # −2 log L of days lo..hi−1 as one segment, exact
        idx = (dates >= days[lo]) & (dates < (days[hi] if hi < len(days) else dates.max() + 1))
        ys = y[idx]
        if len(ys) < 30 or min(ys.sum(), len(ys) - ys.sum()) < 3:
            return math.inf
        beta = fit_logistic(np.ones((len(ys), 1)), ys, offset=offset[idx])[0][0]
        eta = offset[idx] + beta
        return float(-2 * np.sum(ys * eta - np.logaddexp(0.0, eta)))

    best = {}
    for k in range(3):
        for cuts in itertools.combinations(range(1, len(days)), k):
            bounds = [0, *cuts, len(days)]
            dev = sum(deviance(a, b) for a, b in itertools.pairwise(bounds))
            if dev < best.get(k, (math.inf,))[0]:
                best[k] = (dev, cuts)
    bic = {k: dev + (2 * k + 1) * math.log(len(y)) for k, (dev, _) in best.items()}
    for row in res["by_changes"]:
        # the grid of β (step 0.01) costs at most a few thousandths of the deviance
        assert row["bic"] == pytest.approx(bic[row["n_changes"]], abs=0.01)
    k = min(bic, key=bic.get)
    assert res["n_changes"] == k == 2
    assert res["changes"] == [str(days[c]) for c in best[k][1]]
    for seg in res["segments"]:  # each segment's odds ratio refitted exactly
        idx = (dates >= np.datetime64(seg["start"])) & (dates <= np.datetime64(seg["end"]))
        beta = fit_logistic(np.ones((idx.sum(), 1)), y[idx], offset=offset[idx])[0][0]
        assert seg["log_odds_ratio"] == pytest.approx(beta, abs=1e-9)
        assert seg["n_cases"] == idx.sum() and seg["n_events"] == y[idx].sum()
        assert seg["expected"] == pytest.approx(p[idx].sum())


def test_a_change_that_reverts_is_found_with_both_dates() -> None:
    def step(day):
        return np.where((day >= 200) & (day < 400), math.log(2.5), 0.0)

    y, p, dates = _cohort(3000, 700, step, seed=0)
    res = segment_calibration(y, p, dates)
    assert res["n_changes"] == 2
    first, second = (np.datetime64(c) for c in res["changes"])
    assert abs((first - (DAY0 + 200)).astype(int)) <= 30
    assert abs((second - (DAY0 + 400)).astype(int)) <= 30
    for span, truth in zip(res["change_spans"], (200, 400), strict=True):
        assert np.datetime64(span["low"]) <= DAY0 + truth <= np.datetime64(span["high"])
        assert span["low"] <= span["date"] <= span["high"]
    before, during, after = res["segments"]
    assert during["ci_low"] < 2.5 < during["ci_high"]
    # the sentence the model card and the review app's cohort page show
    from clinfuse.evaluation.evaluate import _time_limitations
    from clinfuse.evaluation.segments import describe_segments
    from clinfuse.review.cohort import _over_time_table

    sentence = describe_segments(res, "encounter_date")
    assert sentence.startswith("The odds of the outcome against the model's risks changed 2 times")
    assert f"from {during['start']} × {during['odds_ratio']:.2f}" in sentence
    over = {"column": "encounter_date", "period": "quarter", "periods": [], "drift": {}}
    assert sentence in _time_limitations(over | {"segments": res})
    assert sentence in _over_time_table({"over_time": over | {"segments": res}})[1]
    assert describe_segments({"n_changes": 0}, "d") is None
    assert before["ci_low"] < 1.0 < before["ci_high"] and after["ci_low"] < 1.0 < after["ci_high"]
    assert sum(s["n_cases"] for s in res["segments"]) == 3000 == res["n_cases"]


def test_calibrated_data_rarely_show_a_change() -> None:
    changes = [
        segment_calibration(*_cohort(1500, 500, lambda d: np.zeros(len(d)), seed=s))["n_changes"]
        for s in range(20)
    ]
    assert sum(k > 0 for k in changes) <= 2


def test_many_days_are_pooled_into_blocks_and_tiny_cohorts_get_a_note() -> None:
    y, p, dates = _cohort(4000, 2000, lambda d: np.where(d >= 1000, math.log(3.0), 0.0), seed=3)
    dates = dates.copy()
    dates[:5] = np.datetime64("NaT")
    res = segment_calibration(y, p, dates, max_days=100)
    assert res["granularity"] == "100 blocks of days" and res["n_undated"] == 5
    assert res["n_changes"] >= 1
    assert any(abs((np.datetime64(c) - (DAY0 + 1000)).astype(int)) <= 60 for c in res["changes"])
    tiny = segment_calibration(y[:20], p[:20], dates[5:25])
    assert tiny["n_changes"] is None and "too few cases" in tiny["note"]


def test_the_evaluation_reports_the_segments(tiny_run, tiny_cohort, tmp_path) -> None:
    import json

    from clinfuse.evaluation.evaluate import evaluate_run
    from tests.clinfuse.test_temporal import _dated_manifest

    days = np.random.default_rng(8).integers(0, 700, 64)
    manifest = _dated_manifest(tiny_cohort, lambda n: [str(DAY0 + int(d)) for d in days[:n]])
    res = evaluate_run(
        tiny_run,
        manifest,
        tmp_path / "eval",
        n_boot=0,
        time_column="encounter_date",
        min_group_size=10,
    )
    seg = res.metrics["over_time"]["segments"]
    assert seg["n_cases"] == res.metrics["n_cases"] and seg["min_cases"] == 10
    assert seg["n_changes"] is not None
    assert sum(s["n_cases"] for s in seg["segments"]) == seg["n_cases"]
    report = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    assert "Changes of calibration over time (segments)" in report
    assert "cuts between days;" in report
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["over_time"]["segments"]["by_changes"][0]["n_changes"] == 0
    by_site = saved["over_time"]["segments_by_site"]  # the tiny cohort's sites, 20+ cases each
    assert len(by_site["groups"]) >= 2
    assert "The same segmentation at each site" in report


def test_a_change_at_one_site_is_found_at_that_site() -> None:
    from clinfuse.evaluation.evaluate import _time_limitations
    from clinfuse.evaluation.segments import segments_by_group

    rng = np.random.default_rng(9)
    n = 3000
    site = rng.choice(["a", "b", "c"], n)
    day = rng.integers(0, 700, n)
    z = rng.normal(-1.0, 1.0, n)
    beta = np.where((site == "c") & (day >= 350), math.log(3.0), 0.0)  # site c only
    y = (rng.random(n) < expit(z + beta)).astype(float)
    dates = DAY0 + day
    res = segments_by_group(y, expit(z), dates, site, min_cases=30, min_events=5)
    assert set(res["groups"]) == {"a", "b", "c"} and res["left_out"] == {}
    for name, seg in res["groups"].items():
        alone = segment_calibration(y[site == name], expit(z)[site == name], dates[site == name])
        assert seg == alone  # each site's own cases, nothing else
    assert res["groups"]["a"]["n_changes"] == 0 and res["groups"]["b"]["n_changes"] == 0
    c = res["groups"]["c"]
    assert c["n_changes"] == 1
    span = c["change_spans"][0]
    assert np.datetime64(span["low"]) <= DAY0 + 350 <= np.datetime64(span["high"])
    over = {"column": "encounter_date", "drift": {}, "segments_by_site": res}
    assert any(line.startswith("At site c: the odds") for line in _time_limitations(over))
    # a site too small to cut is named, and one site alone is no comparison
    small = segments_by_group(y[:200], expit(z)[:200], dates[:200], ["a"] * 150 + ["b"] * 50)
    assert small is None
    two = segments_by_group(
        y, expit(z), dates, np.where(site == "c", "c", np.where(day < 5, "d", "a"))
    )
    assert "d" in two["left_out"] and set(two["groups"]) == {"a", "c"}
