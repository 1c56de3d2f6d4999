"""Heterogeneity across subgroups: the likelihood-ratio test against statsmodels, Cochran's
Q by hand, and both tests by simulation."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from scipy.stats import chi2
from sklearn.metrics import roc_auc_score

from clinfuse.evaluation.delong import delong_ci
from clinfuse.evaluation.subgroups import group_heterogeneity, group_metrics


def _groups(rng, n=1500, shift=(0.0, 0.0, 0.0), slope=(1.0, 1.0, 1.0)):
    g = rng.integers(0, 3, n)
    lp = rng.normal(-0.8, 1.3, n)
    p = 1 / (1 + np.exp(-lp))
    true = np.asarray(shift)[g] + np.asarray(slope)[g] * lp
    y = (rng.random(n) < 1 / (1 + np.exp(-true))).astype(float)
    return y, p, np.array(["a", "b", "c"], dtype=object)[g]


def test_likelihood_ratio_equals_statsmodels_and_q_is_cochrans():
    sm = importlib.import_module("statsmodels.api")
    rng = np.random.default_rng(2)
    y, p, g = _groups(rng, shift=(0.0, 0.3, -0.2))
    het = group_heterogeneity(y, p, g)
    offset = np.log(p / (1 - p))
    dummies = np.column_stack([(g == k).astype(float) for k in ("a", "b", "c")])
    full = sm.GLM(y, dummies, family=sm.families.Binomial(), offset=offset).fit()
    common = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=offset).fit()
    lr = 2 * (full.llf - common.llf)
    c = het["calibration_in_the_large"]
    assert c["lr"] == pytest.approx(lr, rel=1e-6) and c["df"] == 2
    assert c["p_value"] == pytest.approx(chi2.sf(lr, 2), rel=1e-5)
    # Cochran's Q: inverse-variance weighted squared deviations from the weighted mean
    aucs = [roc_auc_score(y[g == k], p[g == k]) for k in ("a", "b", "c")]
    var = np.array([delong_ci(y[g == k], p[g == k])["se"] ** 2 for k in ("a", "b", "c")])
    w = 1 / var
    mean = np.sum(w * aucs) / np.sum(w)
    q = float(np.sum(w * (np.asarray(aucs) - mean) ** 2))
    assert het["auroc"]["q"] == pytest.approx(q) and het["auroc"]["df"] == 2
    assert het["auroc"]["p_value"] == pytest.approx(chi2.sf(q, 2))


def test_the_tests_find_differences_that_are_there_and_keep_their_level():
    rng = np.random.default_rng(5)
    null_cal, null_auc = [], []
    for _ in range(150):
        het = group_heterogeneity(*_groups(rng, n=900))
        null_cal.append(het["calibration_in_the_large"]["p_value"] < 0.05)
        null_auc.append(het["auroc"]["p_value"] < 0.05)
    assert np.mean(null_cal) <= 0.1 and np.mean(null_auc) <= 0.1
    shifted = group_heterogeneity(*_groups(rng, shift=(0.0, 0.8, 0.0)))
    assert shifted["calibration_in_the_large"]["p_value"] < 1e-4
    flat = group_heterogeneity(*_groups(rng, n=3000, slope=(1.0, 1.0, 0.2)))
    assert flat["auroc"]["p_value"] < 1e-4


def test_group_metrics_tests_only_the_reported_groups():
    rng = np.random.default_rng(8)
    y, p, g = _groups(rng, n=600)
    g = g.copy()
    g[:12] = "tiny"  # suppressed (fewer than 30 cases)
    res = group_metrics(y, p, list(g), threshold=0.3, min_size=30)
    assert [r["group"] for r in res["groups"] if r["suppressed"]] == ["tiny"]
    keep = g != "tiny"
    expected = group_heterogeneity(y[keep], p[keep], g[keep])
    assert res["heterogeneity"]["n_groups"] == 3
    assert res["heterogeneity"]["auroc"]["q"] == pytest.approx(expected["auroc"]["q"])
    one = group_metrics(y, p, ["x"] * len(y), threshold=0.3)
    assert one["heterogeneity"]["auroc"] is None
