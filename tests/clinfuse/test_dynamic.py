"""Dynamic logistic recalibration: the filter against statsmodels and hand-computed steps,
prequential risks that never see their own outcome, a drift followed, and
``clinfuse recalibrate --method dynamic`` end to end (run folder, predictions, app band)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from clinfuse.errors import CohortError, ConfigError
from clinfuse.evaluation.dynamic import dynamic_recalibration

DAY0 = np.datetime64("2022-01-01")


def _cohort(n: int, days: int, intercept, slope: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 1.2, n)
    day = rng.integers(0, days, n)
    a = intercept(day) if callable(intercept) else np.full(n, intercept)
    y = (rng.random(n) < expit(a + slope * z)).astype(float)
    return z, y, DAY0 + day


def test_without_forgetting_the_final_state_is_the_maximum_likelihood_fit() -> None:
    import statsmodels.api as sm

    z, y, dates = _cohort(30_000, 300, 0.4, slope=0.7)
    replay = dynamic_recalibration(z, y, dates, half_life_days=None, prior_sd=100.0)
    fit = sm.Logit(y, sm.add_constant(z)).fit(disp=0)
    assert replay.intercept == pytest.approx(fit.params[0], abs=0.005)
    assert replay.slope == pytest.approx(fit.params[1], abs=0.005)
    se = np.sqrt(np.diag(replay.covariance))
    np.testing.assert_allclose(se, fit.bse, rtol=0.03)
    assert len(replay.days) == 300 and replay.n_cases.sum() == 30_000
    assert replay.n_events.sum() == y.sum()


def test_one_day_is_one_newton_step_of_the_posterior_and_forgetting_inflates_it() -> None:
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(0, 1, 40), rng.normal(0, 1, 30)
    y1, y2 = (rng.random(40) < 0.3).astype(float), (rng.random(30) < 0.5).astype(float)
    dates = np.concatenate([np.full(40, DAY0), np.full(30, DAY0 + 90)])
    replay = dynamic_recalibration(
        np.concatenate([z1, z2]), np.concatenate([y1, y2]), dates, half_life_days=45, prior_sd=0.5
    )

    def step(theta, cov, z, y):
        x = np.column_stack([np.ones(len(z)), z])
        p = expit(x @ theta)
        new_cov = np.linalg.inv(np.linalg.inv(cov) + x.T @ np.diag(p * (1 - p)) @ x)
        return theta + new_cov @ x.T @ (y - p), new_cov, p

    theta1, cov1, p1 = step(np.array([0.0, 1.0]), np.eye(2) * 0.25, z1, y1)
    # 90 days are two half-lives: a quarter of day 1's information is left, the rest of the
    # way back to the prior's
    decayed = np.linalg.inv(0.25 * np.linalg.inv(cov1) + 0.75 * np.eye(2) / 0.25)
    theta2, cov2, p2 = step(theta1, decayed, z2, y2)
    np.testing.assert_allclose(replay.states, [theta1, theta2], atol=1e-12)
    np.testing.assert_allclose(replay.covariances, [cov1, cov2], atol=1e-12)
    np.testing.assert_allclose(replay.prequential, np.concatenate([p1, p2]), atol=1e-12)
    assert p1 == pytest.approx(expit(z1))  # before any outcome: the model as it is
    table = replay.table()
    assert table["date"].tolist() == ["2022-01-01", "2022-04-01"]
    assert table["n_cases"].tolist() == [40, 30]


def test_a_long_gap_leaves_the_state_as_uncertain_as_the_prior_never_more() -> None:
    z, y, _ = _cohort(200, 1, 0.5, seed=6)
    dates = np.concatenate([np.full(199, DAY0), [DAY0 + 10_000]])
    replay = dynamic_recalibration(z, y, dates, half_life_days=30, prior_sd=0.8)
    before_last = replay.covariances[0]
    assert np.all(np.diag(before_last) < 0.8**2 / 4)  # 199 cases taught it something
    # after 333 half-lives only the prior's information is left, plus one case's
    x = np.array([1.0, z[-1]])
    p = expit(replay.states[0] @ x)
    expected = np.linalg.inv(np.eye(2) / 0.64 + p * (1 - p) * np.outer(x, x))
    np.testing.assert_allclose(replay.covariances[1], expected, rtol=1e-9)
    assert np.all(np.diag(replay.covariances[1]) <= 0.8**2 + 1e-12)


def test_a_case_is_scored_before_its_outcome_is_seen() -> None:
    z, y, dates = _cohort(2_000, 100, 0.3, seed=2)
    replay = dynamic_recalibration(z, y, dates, half_life_days=30)
    last = dates == dates.max()
    flipped = dynamic_recalibration(z, np.where(last, 1 - y, y), dates, half_life_days=30)
    # the last day's outcomes change the final state, and nobody's prequential risk
    np.testing.assert_array_equal(flipped.prequential, replay.prequential)
    assert flipped.intercept != replay.intercept
    # input order does not matter: shuffled cases give the same replay
    perm = np.random.default_rng(3).permutation(len(z))
    shuffled = dynamic_recalibration(z[perm], y[perm], dates[perm], half_life_days=30)
    np.testing.assert_allclose(shuffled.states, replay.states, atol=1e-10)
    np.testing.assert_allclose(shuffled.prequential, replay.prequential[perm], atol=1e-12)


def test_a_drift_is_followed_and_the_prequential_risks_beat_the_static_ones() -> None:
    def step(day):
        return np.where(day < 200, 0.0, 1.0)  # the site's odds × e from day 200

    z, y, dates = _cohort(20_000, 400, step, seed=4)

    def log_loss(p):
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))

    forgetting = dynamic_recalibration(z, y, dates, half_life_days=30)
    remembering = dynamic_recalibration(z, y, dates, half_life_days=None)
    assert forgetting.intercept == pytest.approx(1.0, abs=0.2)
    assert 0.3 < remembering.intercept < 0.7  # the average of before and after
    assert log_loss(forgetting.prequential) < log_loss(remembering.prequential) < log_loss(expit(z))


def test_the_half_life_with_the_best_prequential_log_loss_is_chosen() -> None:
    from sklearn.metrics import log_loss

    from clinfuse.evaluation.dynamic import HALF_LIVES, choose_half_life

    def step(day):
        return np.where(day < 200, 0.0, 1.0)

    z, y, dates = _cohort(20_000, 400, step, seed=4)
    chosen, table = choose_half_life(z, y, dates)
    assert [row["half_life_days"] for row in table] == list(HALF_LIVES)
    for row in table:
        replay = dynamic_recalibration(z, y, dates, half_life_days=row["half_life_days"])
        assert row["log_loss"] == pytest.approx(log_loss(y, replay.prequential), abs=1e-12)
    best = min(table, key=lambda row: row["log_loss"])
    assert chosen.half_life_days == best["half_life_days"]
    assert best["half_life_days"] is not None  # a step change asks for forgetting
    z, y, dates = _cohort(20_000, 400, 0.3, seed=7)  # a stable site
    chosen, table = choose_half_life(z, y, dates)
    assert chosen.half_life_days in (730.0, None)  # remembering long pays


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"half_life_days": 0}, "half_life_days"),
        ({"prior_sd": -1}, "prior_sd"),
    ],
)
def test_bad_settings_and_inputs_are_refused(kwargs, words) -> None:
    z, y, dates = _cohort(10, 5, 0.0)
    with pytest.raises(ValueError, match=words):
        dynamic_recalibration(z, y, dates, **kwargs)
    with pytest.raises(ValueError, match="no date"):
        dynamic_recalibration(z, y, np.where(np.arange(10) == 3, np.datetime64("NaT"), dates))
    with pytest.raises(ValueError, match="0 or 1"):
        dynamic_recalibration(z, y * 2, dates)


# -- clinfuse recalibrate --method dynamic ----------------------------------------------


@pytest.fixture(scope="module")
def dated(tiny_cohort: Path, tmp_path_factory) -> Path:
    """The tiny cohort over two years, one case undated."""
    frame = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False).drop(
        columns=["split"], errors="ignore"
    )
    days = np.random.default_rng(5).integers(0, 730, len(frame))
    frame["encounter_date"] = [str(DAY0 + int(d)) for d in days]
    frame.loc[0, "encounter_date"] = ""
    path = tiny_cohort.with_name("dated_dynamic.csv")
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def dynamic_run(tiny_run: Path, dated: Path, tmp_path_factory):
    from clinfuse.evaluation.recalibrate import recalibrate_run

    out = tmp_path_factory.mktemp("dyn") / "run"
    result = recalibrate_run(
        tiny_run, dated, out, method="dynamic", time_column="encounter_date", half_life_days=90
    )
    return result


def test_recalibrate_dynamic_stores_the_last_days_state(dynamic_run, tiny_run, dated) -> None:
    from clinfuse.calibration import Dynamic, Updated
    from clinfuse.model import load_run

    out, report = dynamic_run.out, dynamic_run.report
    source = load_run(tiny_run).predict(dated)
    frame = pd.read_csv(dated, dtype=str, keep_default_na=False)
    when = dict(zip(frame["case_id"], frame["encounter_date"], strict=True))
    has_date = source["case_id"].map(when) != ""
    assert report["dated"] == {
        "column": "encounter_date",
        "n_dated": int(has_date.sum()),
        "n_undated": int((~has_date).sum()),
    }
    assert report["dated"]["n_undated"] == 1
    src = source[has_date]
    z = logit(np.clip(src["p_fusion"].to_numpy(float), 1e-6, 1 - 1e-6))
    y = src["label"].to_numpy(float)
    dates = src["case_id"].map(when).to_numpy("datetime64[D]")
    expected = dynamic_recalibration(z, y, dates, half_life_days=90, prior_sd=1.0)

    model = load_run(out)
    cal = model.calibrators["fusion"]
    assert isinstance(cal, Updated) and isinstance(cal.update, Dynamic)
    assert cal.update.intercept_ == pytest.approx(expected.intercept, abs=1e-9)
    assert cal.update.slope_ == pytest.approx(expected.slope, abs=1e-9)
    np.testing.assert_allclose(cal.update.covariance_, expected.covariance, atol=1e-12)
    entry = report["outputs"]["fusion"]
    assert entry["method"] == "dynamic" and entry["dynamic"]["half_life_days"] == 90
    assert entry["dynamic"]["last_day"] == str(dates.max())
    assert entry["log_loss"]["prequential"] == pytest.approx(
        -np.mean(y * np.log(expected.prequential) + (1 - y) * np.log(1 - expected.prequential)),
        abs=1e-9,
    )
    # new cases get the last day's update on the source's risk
    new = model.predict(dated)
    np.testing.assert_allclose(
        new["p_fusion"].to_numpy(float),
        expit(
            expected.intercept + expected.slope * logit(np.clip(source["p_fusion"], 1e-6, 1 - 1e-6))
        ),
        atol=1e-6,
    )
    days = pd.read_csv(out / "recalibration_dynamic.csv")
    fused = days[days["output"] == "fusion"]
    assert fused["date"].is_monotonic_increasing and len(fused) == len(expected.days)
    assert fused["intercept"].iloc[-1] == pytest.approx(expected.intercept, abs=1e-9)
    assert set(days["output"]) <= {"fusion", *model.modalities}
    assert not (out / "recalibration_cases.csv").exists()  # the band comes from the state
    cases = pd.read_csv(out / "recalibration_prequential.csv", dtype={"case_id": str})
    order = cases["case_id"].map(dict(zip(src["case_id"], range(len(src)), strict=True)))
    np.testing.assert_allclose(
        cases["p_prequential"], expected.prequential[order.to_numpy()], atol=1e-9
    )
    np.testing.assert_allclose(cases["p_before"], src["p_fusion"].to_numpy()[order], atol=1e-9)
    saved = json.loads((out / "recalibration.json").read_text())
    assert "replay" not in saved["outputs"]["fusion"]


def test_the_app_draws_the_band_of_a_dynamic_update_from_its_posterior(dynamic_run) -> None:
    from clinfuse.model import load_run
    from clinfuse.review.runview import open_run_view

    view = open_run_view(dynamic_run.out, n_boot=400)
    f = view.predictions
    assert (
        (f["risk_low"] <= f["p_fusion"] + 1e-9) & (f["p_fusion"] <= f["risk_high"] + 1e-9)
    ).all()
    assert (f["risk_high"] - f["risk_low"]).median() > 0
    update = load_run(dynamic_run.out).calibrators["fusion"]
    z = update.base_logit(f["logit_fusion"].to_numpy(float))
    low, high = np.percentile(update.update.draws(z, 400), [2.5, 97.5], axis=0)
    np.testing.assert_allclose(f["risk_low"], low, atol=1e-12)
    np.testing.assert_allclose(f["risk_high"], high, atol=1e-12)
    assert "dynamic update (replayed day by day to" in view.recalibration
    assert "half-life 90 days" in view.recalibration


def test_recalibrate_dynamic_on_the_command_line(tiny_run, dated, tmp_path, capsys) -> None:
    from clinfuse.cli import main
    from clinfuse.evaluation.recalibrate import recalibrate_run

    out = tmp_path / "dyn"
    args = ["recalibrate", str(tiny_run), str(dated), "--out", str(out), "--method", "dynamic"]
    assert main([*args, "--time-column", "encounter_date", "--half-life", "inf"]) == 0
    printed = capsys.readouterr().out
    assert "dynamic update replayed over" in printed and "prequential" in printed
    report = json.loads((out / "recalibration.json").read_text())
    assert report["outputs"]["fusion"]["dynamic"]["half_life_days"] is None
    auto = tmp_path / "auto"
    args[4] = str(auto)
    assert main([*args, "--time-column", "encounter_date", "--half-life", "auto"]) == 0
    assert "half-life chosen by prequential log loss" in capsys.readouterr().out
    fused = json.loads((auto / "recalibration.json").read_text())["outputs"]["fusion"]
    best = min(fused["half_life_choice"], key=lambda row: row["log_loss"])
    assert fused["dynamic"]["half_life_days"] == best["half_life_days"]
    assert fused["log_loss"]["prequential"] == pytest.approx(best["log_loss"], abs=1e-9)
    assert main([*args, "--time-column", "encounter_date", "--half-life", "soon"]) != 0
    with pytest.raises(ConfigError, match="needs --time-column") as err:
        recalibrate_run(tiny_run, dated, tmp_path / "x", method="dynamic")
    assert err.value.field == "time_column"
    with pytest.raises(ConfigError, match="positive number of days"):
        recalibrate_run(
            tiny_run,
            dated,
            tmp_path / "x",
            method="dynamic",
            time_column="encounter_date",
            half_life_days=-3,
        )
    undated = pd.read_csv(dated, dtype=str, keep_default_na=False).assign(encounter_date="")
    undated.to_csv(dated.with_name("undated_dynamic.csv"), index=False)
    with pytest.raises(CohortError, match="has a date in 'encounter_date'") as err:
        recalibrate_run(
            tiny_run,
            dated.with_name("undated_dynamic.csv"),
            tmp_path / "x",
            method="dynamic",
            time_column="encounter_date",
        )
    assert err.value.field == "encounter_date"
    assert not (tmp_path / "x").exists()
