"""Conformal prediction sets: the cut-offs against the definition by conformal p-values,
the coverage guarantee by simulation, and the evaluation folder they are fitted on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clinfuse.errors import ConfigError
from clinfuse.evaluation.conformal import (
    ConformalSets,
    conformal_from_evaluation,
    coverage_by_group,
    coverage_table,
)


def _cohort(rng: np.random.Generator, n: int, prevalence: float = 0.2):
    y = (rng.random(n) < prevalence).astype(float)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 2.0 * y - 1.8)))
    return y, p


def _p_value(cal_scores: np.ndarray, score: float) -> float:
    """The conformal p-value of a test score among calibration scores (the definition)."""
    return (1 + np.sum(cal_scores >= score)) / (len(cal_scores) + 1)


def _sets_by_definition(y_cal, p_cal, p_test, alpha, mondrian):
    """Each test case's set by brute force: outcome k is in it when its p-value > alpha."""
    out = []
    for p in p_test:
        keep = []
        for k, score in ((0, p), (1, 1 - p)):
            if mondrian:
                sel = y_cal == k
                cal = np.where(k == 1, 1 - p_cal[sel], p_cal[sel])
            else:
                cal = np.where(y_cal == 1, 1 - p_cal, p_cal)
            if _p_value(cal, score) > alpha:
                keep.append(k)
        out.append(
            {(0,): "negative", (1,): "positive", (0, 1): "uncertain", (): "empty"}[tuple(keep)]
        )
    return np.array(out, dtype=object)


@pytest.mark.parametrize("mondrian", [True, False])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_sets_equal_the_p_value_definition(mondrian, alpha):
    rng = np.random.default_rng(7)
    y_cal, p_cal = _cohort(rng, 157)
    _, p_test = _cohort(rng, 400)
    fitted = ConformalSets.fit(y_cal, p_cal, alpha=alpha, mondrian=mondrian)
    expected = _sets_by_definition(y_cal, p_cal, p_test, alpha, mondrian)
    assert (fitted.predict(p_test) == expected).all()
    # and on the calibration risks themselves, where a test score ties a calibration one
    assert (
        fitted.predict(p_cal) == _sets_by_definition(y_cal, p_cal, p_cal, alpha, mondrian)
    ).all()


def test_class_conditional_coverage_holds_for_rare_events_where_marginal_does_not():
    """Over many calibration/test draws, Mondrian sets cover ≥ 1 − α of events and of
    non-events; marginal sets cover 1 − α on average but far less among rare events."""
    rng = np.random.default_rng(11)
    alpha, reps = 0.1, 300
    cover = {True: [], False: []}
    for _ in range(reps):
        y_cal, p_cal = _cohort(rng, 300, prevalence=0.08)
        y_new, p_new = _cohort(rng, 300, prevalence=0.08)
        for mondrian in (True, False):
            sets = ConformalSets.fit(y_cal, p_cal, alpha=alpha, mondrian=mondrian).predict(p_new)
            t = coverage_table(y_new, sets)["coverage"]
            cover[mondrian].append(
                (t["overall"]["value"], t["events"]["value"], t["non_events"]["value"])
            )
    mond, marg = np.nanmean(cover[True], axis=0), np.nanmean(cover[False], axis=0)
    # the guarantee, with a Monte Carlo allowance (SD of the mean coverage < 0.005)
    assert mond[1] >= 1 - alpha - 0.01 and mond[2] >= 1 - alpha - 0.01
    # and not much above it: the cut-off is the tightest one that keeps the promise
    assert mond[1] <= 1 - alpha + 0.05
    assert marg[0] >= 1 - alpha - 0.01 and marg[0] <= 1 - alpha + 0.02
    assert marg[1] < 1 - alpha - 0.1  # the rare events are the ones left uncovered


def test_cutoffs_are_order_statistics_and_too_few_cases_keep_an_outcome():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], float)
    p = np.array([0.9, 0.6, 0.7, 0.1, 0.2, 0.05, 0.3, 0.15, 0.25, 0.4, 0.12, 0.22, 0.35])
    sets = ConformalSets.fit(y, p, alpha=0.2)
    # 3 events: ⌊4 · 0.2⌋ = 0, so no risk excludes the event; 10 non-events: ⌊11 · 0.2⌋ = 2,
    # the second-largest non-event risk
    assert sets.positive_from is None
    assert sets.negative_up_to == pytest.approx(0.35)
    assert list(sets.predict([0.35, 0.36, 0.0, 1.0])) == [
        "uncertain",
        "positive",
        "uncertain",
        "positive",
    ]
    assert "always" in sets.describe() and "≤ 35.0 %" in sets.describe()


def test_a_monotone_recalibration_leaves_every_set_unchanged():
    rng = np.random.default_rng(3)
    y, p = _cohort(rng, 200)
    _, p_new = _cohort(rng, 100)

    def g(q):
        return 1 / (1 + np.exp(-(0.6 * np.log(q / (1 - q)) - 0.4)))

    a = ConformalSets.fit(y, p, alpha=0.1).predict(p_new)
    b = ConformalSets.fit(y, g(p), alpha=0.1).predict(g(p_new))
    assert (a == b).all()


def test_coverage_table_counts_and_intervals():
    y = np.array([1, 1, 0, 0, 0, 1])
    sets = np.array(["positive", "negative", "negative", "uncertain", "positive", "empty"])
    t = coverage_table(y, sets)
    assert t["coverage"]["overall"]["value"] == pytest.approx(3 / 6)
    assert t["coverage"]["events"]["value"] == pytest.approx(1 / 3)
    assert t["coverage"]["non_events"]["value"] == pytest.approx(2 / 3)
    lo, hi = t["coverage"]["overall"]["ci_low"], t["coverage"]["overall"]["ci_high"]
    assert lo < 0.5 < hi
    assert {k: v["n"] for k, v in t["sets"].items()} == {
        "negative": 2,
        "positive": 2,
        "uncertain": 1,
        "empty": 1,
    }
    # singletons: 4 cases, 2 of them wrong (a missed event, a flagged non-event)
    assert t["singletons"]["share"] == pytest.approx(4 / 6)
    assert t["singletons"]["error"]["value"] == pytest.approx(2 / 4)


def test_coverage_within_groups_and_small_groups_suppressed():
    rng = np.random.default_rng(5)
    y, p = _cohort(rng, 400, prevalence=0.3)
    sets = ConformalSets.fit(*_cohort(rng, 300, prevalence=0.3), alpha=0.1).predict(p)
    groups = np.where(np.arange(400) < 380, np.where(np.arange(400) % 2, "a", "b"), "c")
    groups = groups.astype(object)
    groups[:3] = None  # a missing value is its own group
    rows = {r["group"]: r for r in coverage_by_group(y, sets, groups, min_size=30)}
    assert set(rows) == {"a", "b", "c", "(missing)"}
    assert rows["c"]["suppressed"] and rows["(missing)"]["suppressed"] and rows["c"]["n"] == 20
    sel = groups == "a"
    expected = coverage_table(y[sel], sets[sel])
    assert rows["a"]["events"] == expected["coverage"]["events"]
    assert rows["a"]["non_events"] == expected["coverage"]["non_events"]
    assert rows["a"]["singletons"] == expected["singletons"]["share"]


def test_round_trip_and_bad_input_named():
    rng = np.random.default_rng(0)
    y, p = _cohort(rng, 80)
    sets = ConformalSets.fit(y, p, alpha=0.1, source={"evaluation": "x"})
    again = ConformalSets.from_dict(json.loads(json.dumps(sets.to_dict())))
    assert again == sets
    with pytest.raises(ConfigError, match=r"alpha is 0\.6"):
        ConformalSets.fit(y, p, alpha=0.6)
    with pytest.raises(ConfigError, match="no events"):
        ConformalSets.fit(np.zeros(5), p[:5])
    with pytest.raises(ConfigError, match="0 or 1"):
        ConformalSets.fit(np.r_[y[:4], np.nan], p[:5])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        sets.predict([0.2, 1.5])
    with pytest.raises(ConfigError, match="not a conformal-set description"):
        ConformalSets.from_dict({"alpha": 0.1})


def test_fitted_on_an_evaluation_of_this_model_only(tiny_run, tiny_cohort, tmp_path):
    from clinfuse.evaluation.evaluate import evaluate_run

    ev = evaluate_run(
        tiny_run, tiny_cohort, tmp_path / "ev", split="test", n_boot=0, min_group_size=5
    )
    sets = conformal_from_evaluation(tmp_path / "ev", tiny_run, alpha=0.2)
    frame = ev.predictions
    direct = ConformalSets.fit(frame["label"], frame["p_fusion"], alpha=0.2)
    assert (sets.positive_from, sets.negative_up_to) == (
        direct.positive_from,
        direct.negative_up_to,
    )
    assert sets.n_cases == len(frame) and sets.source["evaluation"] == str(
        (tmp_path / "ev").resolve()
    )
    # another model version: the same evaluation with another recorded digest
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    metrics["run"]["model_sha256"] = "0" * 64
    (tmp_path / "ev" / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ConfigError, match="another model"):
        conformal_from_evaluation(tmp_path / "ev", tiny_run)
    with pytest.raises(ConfigError, match="not an evaluation folder"):
        conformal_from_evaluation(tmp_path, tiny_run)
    # an evaluation holding the training and validation cases: in-sample risks, refused
    evaluate_run(tiny_run, tiny_cohort, tmp_path / "ev_all", n_boot=0, min_group_size=5)
    with pytest.raises(ConfigError, match=r"trained or tuned the model .*--split test"):
        conformal_from_evaluation(tmp_path / "ev_all", tiny_run)
    with pytest.raises(ConfigError, match="not a run folder"):
        conformal_from_evaluation(tmp_path / "ev", tmp_path / "no_run")


@pytest.fixture(scope="module")
def test_split_evaluation(tiny_run, tiny_cohort, tmp_path_factory):
    """The tiny run evaluated on its test split: the cases that calibrate the sets."""
    from clinfuse.evaluation.evaluate import evaluate_run

    out = tmp_path_factory.mktemp("conformal") / "ev_test"
    evaluate_run(tiny_run, tiny_cohort, out, split="test", n_boot=0, min_group_size=5)
    return out


def test_predict_adds_each_cases_set_and_records_the_calibration(
    tiny_run, tiny_cohort, test_split_evaluation, tmp_path, capsys
):
    import pandas as pd

    from clinfuse.cli import main
    from clinfuse.scored import read_provenance

    out = tmp_path / "p.csv"
    args = ["predict", str(tiny_run), str(tiny_cohort), "--out", str(out)]
    assert main([*args, "--conformal", str(test_split_evaluation), "--alpha", "0.2"]) == 0
    printed = capsys.readouterr()
    frame = pd.read_csv(out, dtype={"case_id": str})
    calib = pd.read_csv(test_split_evaluation / "predictions.csv", dtype={"case_id": str})
    expected = ConformalSets.fit(calib["label"], calib["p_fusion"], alpha=0.2)
    assert (frame["conformal_set"] == expected.predict(frame["p_fusion"])).all()
    info = read_provenance(out)["conformal"]
    assert ConformalSets.from_dict(info) == conformal_from_evaluation(
        test_split_evaluation, tiny_run, alpha=0.2
    )
    assert info["source"]["split"] == "test" and info["n_cases"] == len(calib)
    # the test-split cases are in the scored manifest too: said, on stderr
    assert f"{len(calib)} cases here calibrated the conformal sets" in printed.err
    assert "80 % conformal sets (per outcome)" in printed.out
    # without --conformal the column and the record go again
    assert main(args) == 0
    assert "conformal_set" not in pd.read_csv(out).columns
    assert "conformal" not in read_provenance(out)


def test_evaluate_checks_the_sets_coverage_on_another_cohort(
    tiny_run, tiny_cohort, test_split_evaluation, tmp_path, capsys
):
    import pandas as pd

    from clinfuse.cli import main

    out = tmp_path / "ev_val"
    args = ["evaluate", str(tiny_run), str(tiny_cohort), "--split", "val", "--out", str(out)]
    args += ["--n-boot", "0", "--min-group-size", "5", "--conformal", str(test_split_evaluation)]
    assert main([*args, "--alpha", "0.2", "--marginal"]) == 0
    assert "conformal sets (80 %): covered" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    frame = pd.read_csv(out / "predictions.csv")
    fitted = ConformalSets.from_dict(metrics["conformal"]["fitted"])
    assert not fitted.mondrian and fitted.alpha == 0.2
    assert (frame["conformal_set"] == fitted.predict(frame["p_fusion"])).all()
    expected = coverage_table(frame["label"], frame["conformal_set"])
    for key, stat in expected["coverage"].items():
        assert metrics["conformal"]["coverage"][key] == pytest.approx(stat, nan_ok=True)
    assert metrics["conformal"]["n_in_calibration"] == 0  # val and test cases differ
    # the alpha sweep refits the same calibration cases: its 0.2 row is these sets
    sweep = {r["alpha"]: r for r in metrics["conformal"]["by_alpha"]}
    assert sorted(sweep) == [0.05, 0.1, 0.2]
    assert sweep[0.2]["events"] == pytest.approx(metrics["conformal"]["coverage"]["events"])
    assert sweep[0.2]["negative_up_to"] == fitted.negative_up_to
    assert sweep[0.05]["singletons"] <= sweep[0.2]["singletons"]  # more promised, less settled
    by_site = metrics["conformal"]["by_group"]["site"]
    assert {r["group"] for r in by_site} == set(frame["site"].dropna().astype(str))
    report = (out / "report.html").read_text()
    assert "Conformal prediction sets" in report and "ev_test" in report


def test_bad_conformal_input_fails_before_anything_is_written(
    tiny_run, tiny_cohort, test_split_evaluation, tmp_path, capsys
):
    from clinfuse.cli import main

    p = tmp_path / "p.csv"
    base = ["predict", str(tiny_run), str(tiny_cohort), "--out", str(p)]
    assert main([*base, "--conformal", str(tmp_path / "nowhere")]) == 1
    assert "not an evaluation folder" in capsys.readouterr().err
    assert main([*base, "--conformal", str(test_split_evaluation), "--alpha", "0.7"]) == 1
    assert not p.exists()
    ev = tmp_path / "ev"
    cmd = ["evaluate", str(tiny_run), str(tiny_cohort), "--out", str(ev), "--conformal", str(ev)]
    assert main(cmd) == 1
    assert "names the output folder itself" in capsys.readouterr().err
    assert not ev.exists()


def test_coverage_given_calibration_is_the_beta_law_of_the_cutoff():
    """For uniform event risks the coverage of new events given one calibration sample is
    1 − (cut-off), exactly; over many samples its quantiles match Beta(n + 1 − l, l)."""
    rng = np.random.default_rng(21)
    n_events, alpha = 40, 0.1
    coverages = []
    for _ in range(4000):
        y = np.r_[np.ones(n_events), np.zeros(60)]
        p = rng.random(100)
        sets = ConformalSets.fit(y, p, alpha=alpha)
        coverages.append(1.0 - sets.positive_from)
    spread = sets.coverage_given_calibration(level=0.9)["events"]
    assert spread["n"] == n_events
    assert np.mean(coverages) == pytest.approx(spread["mean"], abs=0.003)
    assert np.quantile(coverages, 0.1) == pytest.approx(spread["quantile"], abs=0.006)
    assert spread["mean"] >= 1 - alpha  # the promise, on average
    few = ConformalSets.fit(np.r_[np.ones(5), np.zeros(50)], rng.random(55), alpha=0.1)
    assert few.coverage_given_calibration()["events"]["quantile"] == 1.0  # never excluded
    assert "95 % of calibration samples this size cover at least" in few.describe()


def test_a_separate_error_level_for_events():
    rng = np.random.default_rng(9)
    y, p = _cohort(rng, 300, prevalence=0.3)
    both = ConformalSets.fit(y, p, alpha=0.2, alpha_events=0.05)
    strict = ConformalSets.fit(y, p, alpha=0.05)
    loose = ConformalSets.fit(y, p, alpha=0.2)
    # the events' cut-off is the 5 % one, the non-events' the 20 % one
    assert both.positive_from == strict.positive_from
    assert both.negative_up_to == loose.negative_up_to
    assert both.levels == {"events": 0.95, "non_events": 0.8}
    assert both.title == "conformal set (events 95 %, non-events 80 %)"
    assert both.describe().startswith("Conformal sets covering 95 % of events and 80 % of")
    assert ConformalSets.from_dict(json.loads(json.dumps(both.to_dict()))) == both
    # by the definition: events judged at 0.05, non-events at 0.2
    _, p_new = _cohort(rng, 200)
    ev = _sets_by_definition(y, p, p_new, 0.05, True)
    nev = _sets_by_definition(y, p, p_new, 0.2, True)
    got = both.predict(p_new)
    has1 = np.isin(ev, ["positive", "uncertain"])
    has0 = np.isin(nev, ["negative", "uncertain"])
    assert (np.isin(got, ["positive", "uncertain"]) == has1).all()
    assert (np.isin(got, ["negative", "uncertain"]) == has0).all()
    assert ConformalSets.fit(y, p, alpha=0.1, alpha_events=0.1).alpha_events is None
    with pytest.raises(ConfigError, match="needs class-conditional sets"):
        ConformalSets.fit(y, p, alpha=0.1, alpha_events=0.05, mondrian=False)
