"""Metrics against scikit-learn (the reference), and the seeded bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from clinfuse.evaluation.metrics import (
    auprc_batch,
    auroc_batch,
    bootstrap_ci,
    brier_batch,
    metric_with_ci,
)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_point_estimates_match_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    y = rng.integers(0, 2, n)
    p = rng.random(n) * 0.7 + 0.3 * y
    if ties:
        p = np.round(p, 1)
    assert auroc_batch(y[None], p[None])[0] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert auprc_batch(y[None], p[None])[0] == pytest.approx(
        average_precision_score(y, p), abs=1e-12
    )
    assert brier_batch(y[None], p[None])[0] == pytest.approx(brier_score_loss(y, p), abs=1e-12)


def test_batched_rows_are_independent():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (7, 50))
    p = rng.random((7, 50))
    expected = [roc_auc_score(y[i], p[i]) for i in range(7)]
    np.testing.assert_allclose(auroc_batch(y, p), expected, atol=1e-12)


def test_single_class_row_is_nan():
    assert np.isnan(auroc_batch(np.ones((1, 5)), np.random.rand(1, 5))[0])
    assert np.isnan(auprc_batch(np.zeros((1, 5)), np.random.rand(1, 5))[0])


def test_bootstrap_is_seeded_and_covers_the_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = rng.random(300) + 0.5 * y
    a = metric_with_ci("auroc", y, p, n_boot=500, seed=3)
    b = metric_with_ci("auroc", y, p, n_boot=500, seed=3)
    assert a == b
    assert a["ci_low"] < a["value"] < a["ci_high"]
    # the percentile interval equals numpy's quantiles of explicitly resampled sklearn AUROCs
    idx = np.random.default_rng(3).integers(0, 300, size=(500, 300))
    ref = [roc_auc_score(y[i], p[i]) for i in idx]
    assert a["ci_low"] == pytest.approx(np.quantile(ref, 0.025), abs=1e-12)
    assert a["ci_high"] == pytest.approx(np.quantile(ref, 0.975), abs=1e-12)


def test_bootstrap_chunking_does_not_change_the_result():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    p = rng.random(200)
    lo1, hi1, reps1 = bootstrap_ci(y, p, auroc_batch, n_boot=300, seed=0, chunk=7)
    lo2, hi2, reps2 = bootstrap_ci(y, p, auroc_batch, n_boot=300, seed=0, chunk=300)
    np.testing.assert_array_equal(reps1, reps2)
    assert (lo1, hi1) == (lo2, hi2)
