"""Risk-adjusted CUSUM: the weights against the Bernoulli likelihood ratio, the chart against
its recursion, the limits' false-alarm rate by simulation, and a shift found where it is."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clinfuse.evaluation.cusum import (
    MAX_SIGNALS,
    _running,
    control_limit,
    cusum_path,
    cusum_weights,
    risk_adjusted_cusum,
)


def _cases(rng: np.random.Generator, n: int, shift_at: int | None = None, odds: float = 2.0):
    """Daily cases over ``n`` days (one per day), risks from a logit-normal; from day
    ``shift_at`` on the true odds are ``odds`` times the model's."""
    dates = (np.datetime64("2022-01-01") + np.arange(n)).astype("datetime64[ns]")
    p = 1 / (1 + np.exp(-rng.normal(-1.2, 1.0, n)))
    true_odds = (
        p / (1 - p) * np.where(np.arange(n) >= (n if shift_at is None else shift_at), odds, 1.0)
    )
    y = (rng.random(n) < true_odds / (1 + true_odds)).astype(float)
    return y, p, dates


def test_weights_are_the_log_likelihood_ratio_of_a_shift_in_the_odds():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, 200)
    y = (rng.random(200) < 0.4).astype(float)
    for ratio in (2.0, 0.5, 3.7):
        shifted = ratio * p / (1 - p + ratio * p)  # the risk whose odds are ratio × p's
        brute = np.log(np.where(y == 1, shifted / p, (1 - shifted) / (1 - p)))
        assert cusum_weights(y, p, ratio) == pytest.approx(brute, abs=1e-12)
    with pytest.raises(ValueError, match="not 1"):
        cusum_weights(y, p, 1.0)


def test_the_chart_follows_its_recursion_and_restarts_after_a_signal():
    rng = np.random.default_rng(1)
    w = rng.normal(-0.05, 0.6, 500)
    x, expected = 0.0, []
    for wt in w:
        x = max(0.0, x + wt)
        expected.append(x)
    assert _running(w) == pytest.approx(expected, abs=1e-9)
    path, signals = cusum_path(w, np.inf)
    assert path == pytest.approx(expected, abs=1e-9) and signals == []
    path, signals = cusum_path(w, 2.0)
    assert signals, "this walk reaches 2"
    x, start, found = 0.0, 0, []
    for t, wt in enumerate(w):  # the same by hand, restarts included
        x = max(0.0, x + wt)
        if x == 0.0:
            start = t + 1
        elif x >= 2.0:
            found.append((start, t))
            x, start = 0.0, t + 1
    assert signals == found
    for start, end in signals:  # a climb never touches 0 and ends at the limit
        assert path[end] >= 2.0 and np.all(path[start:end] > 0) and np.all(path[start:end] < 2)


def test_the_limits_keep_their_false_alarm_rate_on_fresh_in_control_cohorts():
    rng = np.random.default_rng(2)
    p = 1 / (1 + np.exp(-rng.normal(-1.5, 1.0, 300)))
    for ratio in (2.0, 0.5):
        limit = control_limit(p, ratio, false_alarm=0.1, n_sim=2000, rng=rng)
        fresh = rng.random((4000, len(p))) < p  # outcomes drawn from the model's own risks
        alarms = (_running(cusum_weights(fresh, p, ratio)).max(axis=1) >= limit).mean()
        # 0.1 ± Monte-Carlo error of the limit (2000 draws) and of this check (4000 draws)
        assert 0.075 <= alarms <= 0.125, (ratio, alarms)


def test_a_shift_is_signalled_after_it_began_and_dated_near_it():
    y, p, dates = _cases(np.random.default_rng(3), 1600, shift_at=800, odds=2.5)
    res = risk_adjusted_cusum(y, p, dates, n_sim=1000).to_dict()
    up, down = res["charts"]
    assert up["odds_ratio"] == 2.0 and down["odds_ratio"] == 0.5
    assert up["n_signals"] >= 1 and down["n_signals"] == 0
    first = up["signals"][0]
    assert first["date"] > "2024-03-10"  # day 800 is 2024-03-11
    assert abs(np.datetime64(first["since"]) - np.datetime64("2024-03-11")) < np.timedelta64(
        150, "D"
    )
    start, end = first["index"] - first["n_cases"], first["index"]
    assert first["observed"] == int(y[start:end].sum())
    assert first["expected"] == pytest.approx(p[start:end].sum())
    assert first["observed"] > first["expected"]
    json.dumps(res)  # metrics.json-ready


def test_too_high_risks_signal_on_the_lower_chart_only():
    from clinfuse.evaluation.cusum import describe_change

    y, p, dates = _cases(np.random.default_rng(4), 1500, shift_at=0, odds=0.4)
    up, down = risk_adjusted_cusum(y, p, dates, n_sim=500).to_dict()["charts"]
    assert up["n_signals"] == 0 and down["n_signals"] >= 1
    assert down["direction"] == "fewer events than predicted"
    # risks too high from the first case on: a standing difference, said as such
    first = down["signals"][0]
    assert first["change"]["open_start"] and not first["change"]["after_restart"]
    assert first["change"]["odds_ratio_high"] < 1
    assert "may have been there from the start" in describe_change(first)
    if down["n_signals"] > 1:
        assert down["signals"][1]["change"]["after_restart"]


def test_cases_are_put_in_date_order_ties_by_case_id_and_undated_left_out():
    rng = np.random.default_rng(5)
    y, p, dates = _cases(rng, 300)
    dates[[3, 7]] = np.datetime64("NaT")
    dates[10:20] = dates[10]  # ten cases on one day
    ids = [f"c{k:03d}" for k in range(300)]
    order = rng.permutation(300)
    shuffled = risk_adjusted_cusum(
        y[order], p[order], dates[order], case_ids=[ids[k] for k in order], n_sim=200
    )
    ordered = risk_adjusted_cusum(y, p, dates, case_ids=ids, n_sim=200)
    assert shuffled.n_undated == 2 and len(shuffled.y) == 298
    assert shuffled.y == pytest.approx(ordered.y) and shuffled.p == pytest.approx(ordered.p)
    assert shuffled.to_dict() == ordered.to_dict()
    # the variable life-adjusted display: observed minus expected events, case by case
    kept = ~np.isnat(dates)
    assert ordered.excess == pytest.approx(np.cumsum(y[kept] - p[kept]))
    assert ordered.to_dict()["observed"] == int(y[kept].sum())
    assert ordered.to_dict()["expected"] == pytest.approx(p[kept].sum())


def test_many_signals_are_counted_but_only_the_first_listed():
    y, p, dates = _cases(np.random.default_rng(6), 6000, shift_at=0, odds=6.0)
    up = risk_adjusted_cusum(y, p, dates, odds_ratios=(2.0,), n_sim=200).to_dict()["charts"][0]
    assert up["n_signals"] > MAX_SIGNALS and len(up["signals"]) == MAX_SIGNALS


def test_the_model_card_and_the_app_name_the_first_signal():
    from clinfuse.evaluation.evaluate import _time_limitations
    from clinfuse.evaluation.temporal import performance_over_time
    from clinfuse.review.cohort import _over_time_table

    y, p, dates = _cases(np.random.default_rng(3), 1600, shift_at=800, odds=2.5)
    over = {"column": "encounter_date"} | performance_over_time(y, p, dates, period="quarter")
    over["cusum"] = risk_adjusted_cusum(y, p, dates, n_sim=500).to_dict()
    first = over["cusum"]["charts"][0]["signals"][0]
    lines = [line for line in _time_limitations(over) if "CUSUM" in line]
    assert len(lines) == 1
    assert first["since"] in lines[0] and first["date"] in lines[0]
    assert "more events than predicted" in lines[0]
    change = first["change"]
    said = f"the change is estimated at {change['date']} (95 % CI {change['low']} to "
    assert said in lines[0] and f"the odds × {change['odds_ratio']:.2f} since" in lines[0]
    _, text = _over_time_table({"over_time": over})
    assert f"first on {first['date']}" in text and "fewer events than predicted: no signal" in text
    assert said in text
    del first["change"]  # an evaluation from before changes were estimated still reads
    assert "the change is estimated" not in _over_time_table({"over_time": over})[1]


def _brute_change(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The profile log-likelihood ratio of a shift from each case on, and its odds ratio,
    by a bounded scalar search per position (R ≥ 1)."""
    from scipy.optimize import minimize_scalar

    profile, betas = [], []
    for tau in range(len(y)):
        yy, pp = y[tau:], p[tau:]
        res = minimize_scalar(
            lambda b, yy=yy, pp=pp: -np.sum(yy * b - np.log1p(np.expm1(b) * pp)),
            bounds=(0.0, np.log(100.0)),
            method="bounded",
            options={"xatol": 1e-9},
        )
        profile.append(max(-res.fun, 0.0))
        betas.append(res.x)
    return np.array(profile), np.array(betas)


def test_the_change_point_is_the_profile_likelihood_maximum():
    import statsmodels.api as sm

    from clinfuse.evaluation.cusum import change_cut_off, change_point

    y, p, _ = _cases(np.random.default_rng(7), 120, shift_at=60, odds=3.0)
    profile, betas = _brute_change(y, p)
    change = change_point(y, p, increase=True)
    assert change.index == int(np.argmax(profile))
    assert change.statistic == pytest.approx(2 * profile.max(), abs=1e-6)
    inside = np.flatnonzero(2 * (profile.max() - profile) <= change_cut_off(0.95))
    assert (change.low, change.high) == (inside[0], inside[-1])
    assert change.low <= change.index <= change.high
    # the odds ratio from the change on: a logistic regression with the model's logit as offset
    tail = slice(change.index, None)
    offset = np.log(p[tail] / (1 - p[tail]))
    glm = sm.GLM(y[tail], np.ones((len(offset), 1)), family=sm.families.Binomial(), offset=offset)
    fit = glm.fit()
    assert change.log_odds_ratio == pytest.approx(fit.params[0], abs=1e-6)
    assert change.log_odds_ratio == pytest.approx(betas[change.index], abs=1e-4)
    assert change.se == pytest.approx(fit.bse[0], rel=1e-6)
    assert change_cut_off(0.95) == pytest.approx(7.352, abs=1e-3)
    with pytest.raises(ValueError, match="level"):
        change_point(y, p, increase=True, level=1.0)
    # a change no later than case 40: the best of those positions, the later cases still
    # counting towards its odds ratio
    early = change_point(y, p, increase=True, latest=40)
    assert early.index == int(np.argmax(profile[:41])) and early.high <= 40
    assert early.log_odds_ratio == pytest.approx(betas[early.index], abs=1e-4)
    with pytest.raises(ValueError, match="latest"):
        change_point(y, p, increase=True, latest=len(y))


def test_the_change_points_confidence_set_covers_the_true_change():
    """Simulated cohorts with a known change: the dates reported for the set at 95 % (its
    first to last case) cover it in at least 95 % of them; with the χ²₁ cut-off (3.84, the
    set at level 0.727 here) in far fewer."""
    from clinfuse.evaluation.cusum import change_point

    rng = np.random.default_rng(8)
    n, shift_at, covered, naive, errors = 300, 150, 0, 0, []
    for _ in range(200):
        y, p, _ = _cases(rng, n, shift_at=shift_at, odds=2.5)
        change = change_point(y, p, increase=True)
        covered += change.low <= shift_at <= change.high
        loose = change_point(y, p, increase=True, level=(1 - np.exp(-3.84 / 2)) ** 2)
        naive += loose.low <= shift_at <= loose.high
        errors.append(change.index - shift_at)
    assert covered / 200 >= 0.93, covered  # 0.95 less two Monte-Carlo standard errors
    assert naive / 200 <= 0.92 and naive < covered, (naive, covered)
    assert abs(np.median(errors)) < 15  # the estimate sits around the change


def test_a_lower_change_is_found_on_the_lower_chart():
    from clinfuse.evaluation.cusum import change_point

    y, p, _ = _cases(np.random.default_rng(9), 600, shift_at=200, odds=0.3)
    change = change_point(y, p, increase=False)
    assert change.log_odds_ratio < 0 and change.low <= 200 <= change.high


def test_each_signal_names_its_estimated_change():
    y, p, dates = _cases(np.random.default_rng(3), 1600, shift_at=800, odds=2.5)
    res = risk_adjusted_cusum(y, p, dates, n_sim=1000).to_dict()
    first = res["charts"][0]["signals"][0]
    change = first["change"]
    assert not change["open_start"] and not change["after_restart"]
    assert change["low"] <= change["date"] <= change["high"] <= first["date"]
    assert change["low"] <= "2024-03-11" <= change["high"]  # the true change, day 800
    assert change["odds_ratio_low"] < 2.5 < change["odds_ratio_high"]
    at = change["index"] - 1  # the odds ratio: every case from the change on
    assert change["n_cases"] == len(y) - at
    assert change["observed"] == int(y[at:].sum())
    assert change["expected"] == pytest.approx(p[at:].sum())
    later = res["charts"][0]["signals"][1:]
    for prev, sig in zip(res["charts"][0]["signals"], later, strict=False):
        assert sig["change"]["index"] > prev["index"]  # looked for since the chart restarted


def test_a_shift_at_one_site_is_charted_at_that_site():
    from clinfuse.evaluation.cusum import cusum_by_group

    rng = np.random.default_rng(10)
    parts = [_cases(rng, 900), _cases(rng, 900, shift_at=450, odds=3.0), _cases(rng, 900)]
    y = np.concatenate([part[0] for part in parts])
    p = np.concatenate([part[1] for part in parts])
    dates = np.concatenate([part[2] for part in parts])
    sites = np.repeat(["A", "B", "C"], 900)
    by = cusum_by_group(y, p, dates, sites, n_sim=1000)
    assert by is not None and by["false_alarm_each"] == pytest.approx(0.05 / 3)
    assert by["left_out"] == {}
    signals = {site: [c["n_signals"] for c in res["charts"]] for site, res in by["groups"].items()}
    assert signals["B"][0] >= 1 and signals["A"] == [0, 0] and signals["C"] == [0, 0]
    change = by["groups"]["B"]["charts"][0]["signals"][0]["change"]
    day_450 = str(np.datetime64("2022-01-01") + 450)
    assert change["low"] <= day_450 <= change["high"]
    # the model card and the app name the site
    from clinfuse.evaluation.evaluate import _time_limitations
    from clinfuse.evaluation.temporal import performance_over_time
    from clinfuse.review.cohort import _over_time_table

    over = {"column": "encounter_date"} | performance_over_time(y, p, dates, period="quarter")
    over["cusum_by_site"] = by
    lines = [line for line in _time_limitations(over) if line.startswith("At site")]
    assert len(lines) == 1 and lines[0].startswith("At site B, the risk-adjusted CUSUM signalled")
    assert f"the change is estimated at {change['date']}" in lines[0]
    assert "At site B, more events than predicted" in _over_time_table({"over_time": over})[1]
    # each site's charts are that site's cases alone, limits at the Bonferroni rate
    sel = sites == "B"
    alone = risk_adjusted_cusum(
        y[sel], p[sel], dates[sel], false_alarm=0.05 / 3, n_sim=1000, seed=1
    )
    assert by["groups"]["B"] == alone.to_dict()


def test_small_sites_are_left_out_and_one_site_is_no_breakdown():
    from clinfuse.evaluation.cusum import cusum_by_group

    rng = np.random.default_rng(11)
    y, p, dates = _cases(rng, 400)
    sites = np.array(["A"] * 190 + ["B"] * 190 + ["tiny"] * 20)
    by = cusum_by_group(y, p, dates, sites, n_sim=200)
    assert set(by["groups"]) == {"A", "B"} and set(by["left_out"]) == {"tiny"}
    assert by["false_alarm_each"] == pytest.approx(0.025)
    assert cusum_by_group(y, p, dates, ["A"] * 400, n_sim=200) is None
