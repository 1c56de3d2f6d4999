"""Discrimination and calibration metrics as pure, vectorised functions.

Point estimates match scikit-learn (``roc_auc_score``, ``average_precision_score``,
``brier_score_loss``; tests check it). The ``*_batch`` variants compute a metric
for many resamples at once, rows of a (B, N) array, which makes a seeded
percentile bootstrap of 2,000 replicates on 100,000 cases take seconds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "METRICS",
    "auprc_batch",
    "auroc_batch",
    "bootstrap_ci",
    "brier_batch",
    "metric_with_ci",
]


def auroc_batch(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUROC of each row (Mann–Whitney U with average ranks for ties).

    Args:
        y: (B, N) 0/1 outcomes.
        p: (B, N) scores.

    Returns:
        (B,) AUROC; NaN for a row with only one class.
    """
    y = np.atleast_2d(y).astype(bool)
    ranks = rankdata(np.atleast_2d(p), axis=1)
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    u = np.where(y, ranks, 0.0).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def auprc_batch(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Average precision of each row, as scikit-learn's ``average_precision_score`` (ties grouped).

    Args:
        y: (B, N) 0/1 outcomes.
        p: (B, N) scores.

    Returns:
        (B,) average precision; NaN for a row without positives.
    """
    y = np.atleast_2d(y).astype(float)
    p = np.atleast_2d(p).astype(float)
    order = np.argsort(-p, axis=1, kind="stable")
    ys = np.take_along_axis(y, order, axis=1)
    ps = np.take_along_axis(p, order, axis=1)
    n = ys.shape[1]
    tp = np.cumsum(ys, axis=1)
    precision = tp / np.arange(1, n + 1)
    # the last element of each group of tied scores is where the threshold sits
    last = np.ones_like(ps, dtype=bool)
    last[:, :-1] = ps[:, :-1] != ps[:, 1:]
    end = np.where(last, np.arange(n), n)
    end = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]
    prec_at_end = np.take_along_axis(precision, end, axis=1)
    n_pos = ys.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, (ys * prec_at_end).sum(axis=1) / n_pos, np.nan)


def brier_batch(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Brier score of each row: mean squared difference of probability and outcome."""
    return np.mean((np.atleast_2d(p) - np.atleast_2d(y)) ** 2, axis=1)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "auroc": auroc_batch,
    "auprc": auprc_batch,
    "brier": brier_batch,
}


def bootstrap_ci(
    y: np.ndarray,
    p: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    chunk: int | None = None,
) -> tuple[float, float, np.ndarray]:
    """Percentile bootstrap confidence interval, vectorised over replicates.

    Args:
        y: (N,) outcomes.
        p: (N,) scores or probabilities.
        metric: a ``*_batch`` function.
        n_boot: replicates.
        level: confidence level.
        seed: random seed (same seed → same interval).
        chunk: replicates computed at once (bounds memory; default keeps
            each chunk near 20 M elements).

    Returns:
        ``(low, high, replicates)``; replicates where the metric is undefined
        (one class only) are NaN and ignored.
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    n = len(y)
    rng = np.random.default_rng(seed)
    chunk = chunk or max(1, min(n_boot, 20_000_000 // max(n, 1)))
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        out[start : start + b] = metric(y[idx], p[idx])
    alpha = (1 - level) / 2
    if np.all(np.isnan(out)):
        return float("nan"), float("nan"), out
    low, high = np.nanquantile(out, [alpha, 1 - alpha])
    return float(low), float(high), out


def metric_with_ci(
    name: str,
    y: np.ndarray,
    p: np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """``{"value", "ci_low", "ci_high"}`` for a metric named in :data:`METRICS`."""
    fn = METRICS[name]
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    value = float(fn(y[None], p[None])[0])
    if n_boot > 0:
        low, high, _ = bootstrap_ci(y, p, fn, n_boot=n_boot, seed=seed, level=level)
    else:
        low = high = float("nan")
    return {"value": value, "ci_low": low, "ci_high": high}
