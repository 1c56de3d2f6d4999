"""Evaluation maths against named references.

References: scikit-learn (AUROC), MLstatkit ``Delong_test`` (DeLong CI and paired
p-value), statsmodels GLM (calibration intercept/slope, Wilson interval),
torchmetrics ``BinaryCalibrationError`` (ECE), a hand computation of net benefit
(the definition ``dcurves.dca`` implements), and explicit resampling (bootstrap).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from clinfuse.evaluation.calibration import (
    calibration_curve,
    calibration_summary,
    expected_calibration_error,
    logistic_recalibration,
)
from clinfuse.evaluation.delong import delong_ci, delong_test
from clinfuse.evaluation.metrics import auprc_batch, auroc_batch, bootstrap_ci, brier_batch
from clinfuse.evaluation.subgroups import group_metrics
from clinfuse.evaluation.utility import (
    decision_curve,
    net_benefit,
    threshold_metrics,
    wilson_interval,
)


def _data(seed: int, n: int = 400, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = rng.random(n) + 0.5 * y
    b = rng.random(n) + 0.8 * y
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return y, a, b


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_equals_sklearn(ties):
    y, a, _ = _data(0, ties=ties)
    assert abs(auroc_batch(y[None], a[None])[0] - roc_auc_score(y, a)) < 1e-12
    assert abs(delong_ci(y, a)["value"] - roc_auc_score(y, a)) < 1e-12


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("metric", [auroc_batch, auprc_batch, brier_batch])
def test_fast_bootstrap_equals_explicit_resampling(metric, ties):
    y, a, _ = _data(1, n=150, ties=ties)
    fast = bootstrap_ci(y, a, metric, n_boot=300, seed=4, method="counts")
    slow = bootstrap_ci(y, a, metric, n_boot=300, seed=4, method="resample")
    if metric is auroc_batch:  # integer counts: exact
        np.testing.assert_array_equal(fast[2], slow[2])
    np.testing.assert_allclose(fast[2], slow[2], rtol=0, atol=1e-12)
    assert fast[0] == pytest.approx(slow[0], abs=1e-12)
    assert fast[1] == pytest.approx(slow[1], abs=1e-12)


def test_bootstrap_single_class_resamples_are_nan():
    y = np.array([0] * 9 + [1])
    p = np.linspace(0, 1, 10)
    _, _, reps = bootstrap_ci(y, p, auroc_batch, n_boot=200, seed=0)
    ref = bootstrap_ci(y, p, auroc_batch, n_boot=200, seed=0, method="resample")[2]
    assert np.isnan(reps).any()
    np.testing.assert_array_equal(np.isnan(reps), np.isnan(ref))


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False)])
def test_delong_ci_and_paired_test_equal_mlstatkit(seed, ties):
    mlstatkit = importlib.import_module("MLstatkit")
    y, a, b = _data(seed, n=300, ties=ties)
    z, p, ci_a, ci_b, auc_a, auc_b, info = mlstatkit.Delong_test(y, a, b, random_state=0)
    assert info["method"] == "delong"
    ours_a, ours_b = delong_ci(y, a), delong_ci(y, b)
    assert ours_a["ci_low"] == pytest.approx(ci_a[0], abs=1e-6)
    assert ours_a["ci_high"] == pytest.approx(ci_a[1], abs=1e-6)
    assert ours_b["ci_low"] == pytest.approx(ci_b[0], abs=1e-6)
    assert ours_b["ci_high"] == pytest.approx(ci_b[1], abs=1e-6)
    test = delong_test(y, a, b)
    assert test["z"] == pytest.approx(z, abs=1e-6)
    assert test["p_value"] == pytest.approx(p, rel=1e-6, abs=1e-12)
    assert test["difference"] == pytest.approx(auc_b - auc_a, abs=1e-12)


def test_delong_undefined_for_one_class():
    assert delong_ci(np.zeros(10), np.random.rand(10))["value"] is None
    assert delong_test(np.ones(10), np.random.rand(10), np.random.rand(10))["p_value"] is None


def test_perfectly_calibrated_predictor_has_slope_one_and_intercept_zero():
    rng = np.random.default_rng(0)
    p = 1 / (1 + np.exp(-rng.normal(-1, 1.5, 4000)))
    y = (rng.random(4000) < p).astype(int)
    rec = logistic_recalibration(y, p)
    assert abs(rec["slope"]["value"] - 1) < 0.1
    assert abs(rec["intercept"]["value"]) < 0.1
    summary = calibration_summary(y, p)
    assert summary["oe_ratio"]["ci_low"] < 1 < summary["oe_ratio"]["ci_high"]
    curve = calibration_curve(y, p)
    assert np.max(np.abs(curve["curve"] - curve["grid"])) < 0.08
    assert np.all(curve["curve_low"] <= curve["curve"]) and np.all(
        curve["curve"] <= curve["curve_high"]
    )


def test_overconfident_predictor_has_slope_below_one():
    rng = np.random.default_rng(1)
    lp = rng.normal(-1, 1, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-lp))).astype(int)
    rec = logistic_recalibration(y, 1 / (1 + np.exp(-2 * lp)))
    assert rec["slope"]["value"] == pytest.approx(0.5, abs=0.08)


def test_recalibration_equals_statsmodels_glm():
    sm = importlib.import_module("statsmodels.api")
    rng = np.random.default_rng(2)
    p = 1 / (1 + np.exp(-rng.normal(-0.5, 1, 500)))
    y = (rng.random(500) < np.clip(p * 1.2, 0, 1)).astype(int)
    lp = np.log(p / (1 - p))
    rec = logistic_recalibration(y, p)
    citl = sm.GLM(y, np.ones((500, 1)), family=sm.families.Binomial(), offset=lp).fit()
    slope = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit()
    assert rec["intercept"]["value"] == pytest.approx(citl.params[0], abs=1e-6)
    assert rec["slope"]["value"] == pytest.approx(slope.params[1], abs=1e-6)
    ci = slope.conf_int()[1]
    assert rec["slope"]["ci_low"] == pytest.approx(ci[0], abs=1e-5)
    assert rec["slope"]["ci_high"] == pytest.approx(ci[1], abs=1e-5)


def test_ece_equals_torchmetrics():
    torch = importlib.import_module("torch")
    tm = importlib.import_module("torchmetrics.classification")
    rng = np.random.default_rng(3)
    p = rng.random(1000)
    y = (rng.random(1000) < p**1.5).astype(int)
    ref = tm.BinaryCalibrationError(n_bins=10, norm="l1")(torch.tensor(p), torch.tensor(y)).item()
    assert expected_calibration_error(y, p)[0] == pytest.approx(ref, abs=1e-6)


def test_single_class_calibration_is_reported_but_slope_undefined():
    s = calibration_summary(np.zeros(40), np.linspace(0.05, 0.5, 40))
    assert s["slope"]["value"] is None and s["intercept"]["value"] is None
    assert s["oe_ratio"]["value"] == 0.0
    assert s["brier"] == pytest.approx(np.mean(np.linspace(0.05, 0.5, 40) ** 2))
    assert "one outcome class" in s["note"]


def test_net_benefit_equals_hand_computation():
    y = np.array([1, 1, 0, 0, 0, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.35, 0.2, 0.1, 0.15, 0.6, 0.05, 0.3, 0.25])
    # at t = 0.25: flagged p >= 0.25 -> 0.9(1) 0.4(1) 0.35(0) 0.6(0) 0.3(0) 0.25(0): TP 2, FP 4
    assert net_benefit(y, p, [0.25])[0] == pytest.approx(2 / 10 - 4 / 10 * 0.25 / 0.75, abs=1e-15)
    dca = decision_curve(y, {"m": p}, thresholds=[0.1, 0.25])
    assert dca["net_benefit"]["treat_all"][1] == pytest.approx(0.3 - 0.7 * 0.25 / 0.75)
    assert dca["net_benefit"]["treat_none"] == [0.0, 0.0]
    # t = 0.1: flagged all but 0.05: TP 3, FP 6
    assert dca["net_benefit"]["m"][0] == pytest.approx(0.3 - 0.6 * 0.1 / 0.9)


def test_threshold_metrics_and_wilson_equal_statsmodels():
    prop = importlib.import_module("statsmodels.stats.proportion")
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.05, 0.8])
    (row,) = threshold_metrics(y, p, [0.5])
    assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (3, 1, 1, 3)
    assert row["sensitivity"]["value"] == 0.75 and row["ppv"]["value"] == 0.75
    lo, hi = prop.proportion_confint(3, 4, alpha=0.05, method="wilson")
    assert row["sensitivity"]["ci_low"] == pytest.approx(lo, abs=1e-12)
    assert row["sensitivity"]["ci_high"] == pytest.approx(hi, abs=1e-12)
    assert wilson_interval(0, 0) != wilson_interval(0, 0)  # NaN: no denominator


def test_wilson_interval_contains_the_proportion_at_the_edges():
    """At k = 0 and k = n rounding once put a bound a hair past p̂ (a negative error bar)."""
    prop = importlib.import_module("statsmodels.stats.proportion")
    for n in range(1, 300):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert lo <= k / n <= hi, (k, n, lo, hi)
        ref = prop.proportion_confint(0, n, alpha=0.05, method="wilson")
        assert wilson_interval(0, n) == pytest.approx(ref, abs=1e-12)
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0


def test_subgroups_suppress_small_groups_and_find_largest_gap():
    rng = np.random.default_rng(5)
    n = 300
    g = np.array(["a"] * 140 + ["b"] * 140 + ["c"] * 20)
    y = rng.integers(0, 2, n)
    p = np.where(g == "a", 0.3 + 0.4 * y, 0.45 + 0.1 * y) + rng.normal(0, 0.15, n)
    p = np.clip(p, 0.01, 0.99)
    res = group_metrics(y, p, list(g), threshold=0.5, min_size=30)
    by = {r["group"]: r for r in res["groups"]}
    assert by["c"]["suppressed"] and "n_cases" not in by["c"]
    assert by["a"]["auroc"]["value"] == pytest.approx(roc_auc_score(y[g == "a"], p[g == "a"]))
    gap = res["largest_gap"]["auroc"]
    assert (gap["highest"], gap["lowest"]) == ("a", "b")
    assert gap["gap"] == pytest.approx(by["a"]["auroc"]["value"] - by["b"]["auroc"]["value"])
