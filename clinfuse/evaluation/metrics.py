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
    "auprc_from_counts",
    "auroc_batch",
    "auroc_from_counts",
    "bootstrap_ci",
    "brier_batch",
    "brier_from_counts",
    "log_loss",
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


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-likelihood of 0/1 outcomes ``y`` under risks ``p`` (clipped to
    [1e-12, 1 − 1e-12]), as scikit-learn's ``log_loss``."""
    q = np.clip(np.asarray(p, dtype=float), 1e-12, 1 - 1e-12)
    y = np.asarray(y, dtype=float)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "auroc": auroc_batch,
    "auprc": auprc_batch,
    "brier": brier_batch,
}


def _tie_groups(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort once: the distinct scores (ascending) and each case's (score, class) cell.

    Returns:
        ``(values (G,), key (N,) intp)`` with ``key = group + G * y``: cells
        ``0..G-1`` hold non-events, ``G..2G-1`` events, each in ascending score order.
    """
    values, group = np.unique(p, return_inverse=True)
    key = group.reshape(-1).astype(np.intp) + len(values) * y.astype(np.intp)
    return values, key


def _cell_counts(key: np.ndarray, idx: np.ndarray, n_cells: int) -> np.ndarray:
    """(B, n_cells) float multiplicity of each cell in each resample row of ``idx`` (B, N)."""
    out = np.empty((idx.shape[0], n_cells))
    for r in range(idx.shape[0]):  # row by row keeps the counting in cache
        out[r] = np.bincount(key[idx[r]], minlength=n_cells)
    return out


def auroc_from_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC from case counts per distinct score, in ascending score order.

    Args:
        pos: (B, G) number of events at each distinct score (integer counts or weights).
        neg: (B, G) number of non-events at each distinct score.

    Returns:
        (B,) AUROC with ties counted one half (Mann–Whitney); NaN for one class.
        With integer counts the sums are exact, so the result equals
        :func:`auroc_batch` on the expanded resample bit for bit.
    """
    # 2U = Σ pos · (2 · negatives below + negatives tied) = 2 Σ pos · cumneg − Σ pos · neg
    twice_u = 2.0 * np.einsum("ij,ij->i", pos, np.cumsum(neg, axis=1)) - np.einsum(
        "ij,ij->i", pos, neg
    )
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), twice_u / (2.0 * n_pos * n_neg), np.nan).astype(
            float
        )


def auprc_from_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Average precision (scikit-learn's step definition) from counts per distinct score.

    Args:
        pos, neg: (B, G) event / non-event counts per distinct score, ascending order.

    Returns:
        (B,) average precision; NaN without events.
    """
    pos = np.asarray(pos, dtype=float)
    neg = np.asarray(neg, dtype=float)
    n_pos = pos.sum(axis=1, keepdims=True)
    n_all = n_pos + neg.sum(axis=1, keepdims=True)
    # cases scoring at or above each distinct score (the threshold): events and all
    tp = n_pos - np.cumsum(pos, axis=1) + pos
    flagged = n_all - np.cumsum(pos + neg, axis=1) + pos + neg
    precision = np.divide(tp, flagged, out=np.zeros_like(tp), where=flagged > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.einsum("ij,ij->i", pos, precision) / n_pos[:, 0]
    return np.where(n_pos[:, 0] > 0, ap, np.nan)


def brier_from_counts(pos: np.ndarray, neg: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Brier score from counts per distinct probability ``values`` (G,)."""
    n = pos.sum(axis=1) + neg.sum(axis=1)
    return (pos @ (values - 1.0) ** 2 + neg @ values**2) / n


_FROM_COUNTS: dict[Callable[..., np.ndarray], str] = {
    auroc_batch: "auroc",
    auprc_batch: "auprc",
    brier_batch: "brier",
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
    method: str = "auto",
) -> tuple[float, float, np.ndarray]:
    """Percentile bootstrap confidence interval, vectorised over replicates.

    Seed semantics: replicate ``b`` resamples the cases
    ``idx[b] = default_rng(seed).integers(0, N, size=(n_boot, N))[b]`` (drawn in
    chunks, which does not change the stream). ``method="counts"`` (the default
    for :func:`auroc_batch`, :func:`auprc_batch`, :func:`brier_batch`) sorts the
    scores once and reduces each replicate to how many times each (distinct
    score, class) cell was drawn; the metric then comes from cumulative sums
    over that fixed order, O(B·N) with no per-replicate sort. It gives the same
    replicates as ``method="resample"`` (explicit ``metric(y[idx], p[idx])``):
    exactly for AUROC, to rounding (~1e-15) for AUPRC and Brier.

    Args:
        y: (N,) outcomes.
        p: (N,) scores or probabilities.
        metric: a ``*_batch`` function (any ``(B, N), (B, N) -> (B,)`` function
            with ``method="resample"``).
        n_boot: replicates.
        level: confidence level.
        seed: random seed (same seed → same interval).
        chunk: replicates computed at once (bounds memory; default keeps
            each chunk near 20 M elements).
        method: ``"auto"``, ``"counts"`` or ``"resample"``.

    Returns:
        ``(low, high, replicates)``; replicates where the metric is undefined
        (one class only) are NaN and ignored.
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    n = len(y)
    if method not in ("auto", "counts", "resample"):
        raise ValueError(f"method must be 'auto', 'counts' or 'resample', not {method!r}")
    name = _FROM_COUNTS.get(metric)
    if method == "counts" and name is None:
        raise ValueError("method='counts' supports auroc_batch, auprc_batch and brier_batch")
    use_counts = method != "resample" and name is not None
    rng = np.random.default_rng(seed)
    # counting wants small chunks (cache); explicit resampling wants fewer, larger ones
    budget = 1_000_000 if use_counts else 20_000_000
    chunk = chunk or max(1, min(n_boot, budget // max(n, 1)))
    out = np.empty(n_boot)
    if use_counts:
        values, key = _tie_groups(y, p)
        g = len(values)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        if not use_counts:
            out[start : start + b] = metric(y[idx], p[idx])
            continue
        counts = _cell_counts(key, idx, 2 * g)
        neg, pos = counts[:, :g], counts[:, g:]
        if name == "auroc":
            out[start : start + b] = auroc_from_counts(pos, neg)
        elif name == "auprc":
            out[start : start + b] = auprc_from_counts(pos, neg)
        else:
            out[start : start + b] = brier_from_counts(pos, neg, values)
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
