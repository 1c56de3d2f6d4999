"""Adaptive conformal sets: the replay by hand, the static sets at step 0, the long-run
guarantee on drifting and adversarial sequences, and its place in a dated evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from clinfuse.errors import ConfigError
from clinfuse.evaluation.conformal import (
    ConformalSets,
    _cutoff,
    _moving_cutoff,
    adaptive_replay,
    coverage_table,
)


def _draw(rng: np.random.Generator, n: int, separation: float):
    y = (rng.random(n) < 0.3).astype(float)
    p = 1 / (1 + np.exp(-(rng.normal(-1.5, 1, n) + y * separation)))
    return y, p


def test_the_moving_cutoff_is_the_static_one_at_the_target_level():
    rng = np.random.default_rng(0)
    risks = np.sort(rng.random(57))
    for level in (0.01, 0.05, 0.1, 0.2, 0.4):
        for upper in (False, True):
            static = _cutoff(risks, level, upper=upper)
            moving = _moving_cutoff(risks, level, upper=upper)
            assert moving == (static if static is not None else (np.inf if upper else -np.inf))
    assert _moving_cutoff(risks, 1.5, upper=False) == np.inf  # events never in the set
    assert _moving_cutoff(risks, 1.5, upper=True) == -np.inf  # non-events never
    assert _moving_cutoff(risks, -0.2, upper=False) == -np.inf  # always


def test_a_short_replay_by_hand():
    # calibration: events at 0.5..0.9, non-events at 0.1..0.5 (9 each)
    y_cal = np.r_[np.ones(9), np.zeros(9)]
    p_cal = np.r_[np.linspace(0.5, 0.9, 9), np.linspace(0.1, 0.5, 9)]
    sets = ConformalSets.fit(y_cal, p_cal, alpha=0.1)  # ⌊10·0.1⌋ = 1: the extreme risk
    assert sets.positive_from == pytest.approx(0.5) and sets.negative_up_to == pytest.approx(0.5)
    y = np.array([1.0, 1.0, 0.0, 1.0])
    p = np.array([0.2, 0.6, 0.3, 0.55])
    res = adaptive_replay(sets, y_cal, p_cal, y, p, gamma=0.1)
    # case 1: event at 0.2 < 0.5 missed: events' level 0.1 + 0.1·(0.1 − 1) = 0.01
    # case 2: at level 0.01, ⌊10·0.01⌋ = 0 ⇒ events always in the set; 0.6 > 0.5 leaves
    #         non-events out: {1}; covered, so 0.01 + 0.1·0.1 = 0.02
    # case 3: non-event at 0.3 ≤ 0.5, events still always in: {0, 1}; covered: 0.1 + 0.01
    # case 4: non-events at 0.11, ⌊10·0.11⌋ = 1 ⇒ still up to 0.5; 0.55: {1}; covered
    assert list(res["sets"]) == ["negative", "positive", "uncertain", "positive"]
    assert res["levels"]["events"] == pytest.approx([0.1, 0.01, 0.02, 0.02])
    assert res["levels"]["non_events"] == pytest.approx([0.1, 0.1, 0.1, 0.11])
    assert res["final"] == pytest.approx({"events": 0.03, "non_events": 0.11})


def test_step_zero_gives_the_static_sets():
    rng = np.random.default_rng(1)
    y_cal, p_cal = _draw(rng, 300, 2.0)
    sets = ConformalSets.fit(y_cal, p_cal, alpha=0.1, alpha_events=0.05)
    y, p = _draw(rng, 800, 1.0)
    res = adaptive_replay(sets, y_cal, p_cal, y, p, gamma=0.0)
    assert (res["sets"] == sets.predict(p)).all()
    assert res["bound"] == {"events": None, "non_events": None}


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_the_long_run_guarantee_holds_under_drift_where_static_sets_fail(seed):
    rng = np.random.default_rng(seed)
    y_cal, p_cal = _draw(rng, 400, 2.0)
    sets = ConformalSets.fit(y_cal, p_cal, alpha=0.1)
    parts = [_draw(rng, 500, s) for s in np.linspace(2.0, 0.3, 8)]  # events fade into the rest
    y = np.concatenate([a for a, _ in parts])
    p = np.concatenate([b for _, b in parts])
    res = adaptive_replay(sets, y_cal, p_cal, y, p, gamma=0.005)
    for key, outcome in (("events", 1), ("non_events", 0)):
        sel = y == outcome
        has = np.isin(
            res["sets"][sel], ["positive", "uncertain"] if outcome else ["negative", "uncertain"]
        )
        assert abs((1 - has.mean()) - 0.1) <= res["bound"][key]  # Gibbs & Candès, Prop. 4.1
    static = coverage_table(y, sets.predict(p))["coverage"]["events"]["value"]
    adaptive = coverage_table(y, res["sets"])["coverage"]["events"]["value"]
    assert static < 0.8 and adaptive > 0.85


def test_the_guarantee_holds_for_an_adversarial_sequence():
    rng = np.random.default_rng(5)
    y_cal, p_cal = _draw(rng, 200, 2.0)
    sets = ConformalSets.fit(y_cal, p_cal, alpha=0.2)
    # events with the lowest risks and non-events with the highest, in blocks
    y = np.r_[np.ones(400), np.zeros(300), np.ones(300)]
    p = np.r_[np.full(400, 0.01), np.full(300, 0.99), rng.random(300)]
    res = adaptive_replay(sets, y_cal, p_cal, y, p, gamma=0.01)
    for key, outcome, keep in (
        ("events", 1, ["positive", "uncertain"]),
        ("non_events", 0, ["negative", "uncertain"]),
    ):
        sel = y == outcome
        miss = 1 - np.isin(res["sets"][sel], keep).mean()
        assert abs(miss - 0.2) <= res["bound"][key]


def test_marginal_sets_and_a_negative_step_are_refused():
    rng = np.random.default_rng(6)
    y_cal, p_cal = _draw(rng, 100, 2.0)
    with pytest.raises(ConfigError, match="class-conditional"):
        adaptive_replay(ConformalSets.fit(y_cal, p_cal, mondrian=False), y_cal, p_cal, y_cal, p_cal)
    with pytest.raises(ConfigError, match=r"gamma is -0\.1"):
        adaptive_replay(ConformalSets.fit(y_cal, p_cal), y_cal, p_cal, y_cal, p_cal, gamma=-0.1)


def test_predict_takes_the_levels_an_evaluations_replay_ended_at(
    tiny_run, tiny_cohort, tmp_path, capsys
):
    import json

    import pandas as pd

    from clinfuse.cli import main
    from tests.clinfuse.test_temporal import _dated_manifest

    calib = tmp_path / "calib"
    args = ["evaluate", str(tiny_run), str(tiny_cohort), "--out", str(calib), "--split", "test"]
    assert main([*args, "--n-boot", "0"]) == 0
    days = np.random.default_rng(1).integers(0, 700, 200)
    manifest = _dated_manifest(
        tiny_cohort, lambda n: [str(np.datetime64("2023-01-01") + int(d)) for d in days[:n]]
    )
    feedback = tmp_path / "feedback"
    args = ["evaluate", str(tiny_run), str(manifest), "--out", str(feedback), "--n-boot", "0"]
    args += ["--time-column", "encounter_date", "--conformal", str(calib), "--alpha", "0.2"]
    assert main(args) == 0
    replay = json.loads((feedback / "metrics.json").read_text())["conformal"]["adaptive"]
    out = tmp_path / "p.csv"
    base = ["predict", str(tiny_run), str(tiny_cohort), "--out", str(out)]
    assert (
        main([*base, "--conformal", str(calib), "--alpha", "0.2", "--adaptive", str(feedback)]) == 0
    )
    assert "adapted to the outcomes of" in capsys.readouterr().out
    fitted = json.loads(out.with_name("p.provenance.json").read_text())["conformal"]
    assert fitted["adapted"]["levels"] == pytest.approx(replay["final_levels"])
    cal = pd.read_csv(calib / "predictions.csv")
    y, p = cal["label"].to_numpy(float), cal["p_fusion"].to_numpy(float)
    events = _moving_cutoff(np.sort(p[y == 1]), replay["final_levels"]["events"], upper=False)
    expected = None if events == -np.inf else (1.0 + 2**-52 if events == np.inf else events)
    assert fitted["positive_from"] == pytest.approx(expected)
    sets = pd.read_csv(out)["conformal_set"]
    assert set(sets) <= {"positive", "negative", "uncertain", "empty"}
    # refusals, each before any case is scored
    for extra, message in (
        (
            ["--conformal", str(calib), "--alpha", "0.2", "--adaptive", str(calib)],
            "no adaptive replay",
        ),
        (
            ["--conformal", str(calib), "--alpha", "0.1", "--adaptive", str(feedback)],
            "other conformal sets",
        ),
        (["--adaptive", str(feedback)], "need --conformal"),
    ):
        assert main([*base[:-1], str(tmp_path / "x.csv"), *extra]) == 1
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x.csv").exists()
