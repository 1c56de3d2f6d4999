"""Clinical utility: decision curves and classification metrics at chosen risk thresholds.

Net benefit at threshold ``t`` (Vickers & Elkin, Med Decis Making 2006)::

    NB(t) = TP / N − FP / N · t / (1 − t)

with a case flagged when its risk is ``≥ t``; *treat all* has
``NB = prevalence − (1 − prevalence) · t / (1 − t)``, *treat none* 0. This is the
definition of ``dcurves.dca`` (checked by hand in the tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import norm

__all__ = ["decision_curve", "net_benefit", "threshold_metrics", "wilson_interval"]

DEFAULT_DCA_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


def wilson_interval(k: float, n: float, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``k / n``; ``(nan, nan)`` when ``n == 0``."""
    if n <= 0:
        return float("nan"), float("nan")
    z = float(norm.ppf(1 - (1 - level) / 2))
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    # at k = 0 or k = n a bound equals p̂ exactly in real arithmetic; rounding can put it a
    # hair on the wrong side (e.g. 1e-17 above 0), so the interval is made to contain p̂
    low = min(phat, max(0.0, centre - half))
    high = max(phat, min(1.0, centre + half))
    return float(low), float(high)


def net_benefit(
    y: np.ndarray, p: np.ndarray, thresholds: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Net benefit of treating cases with ``p ≥ t``, for each threshold ``t``.

    Args:
        y: (N,) 0/1 outcomes.
        p: (N,) predicted risks.
        thresholds: (T,) risk thresholds in (0, 1).

    Returns:
        (T,) net benefit.
    """
    y = np.asarray(y, dtype=bool)
    p = np.asarray(p, dtype=float)
    t = np.asarray(thresholds, dtype=float)
    n = len(y)
    flagged = p[None, :] >= t[:, None]
    tp = (flagged & y[None, :]).sum(axis=1)
    fp = (flagged & ~y[None, :]).sum(axis=1)
    return np.asarray(tp / n - fp / n * t / (1 - t))


def decision_curve(
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Net-benefit curves of several models against treat-all and treat-none.

    Args:
        y: (N,) outcomes.
        scores: {model name: (N,) risks}.
        thresholds: risk thresholds (default 0.01 … 0.99 by 0.01).

    Returns:
        ``{"thresholds": [...], "net_benefit": {name: [...], "treat_all": [...],
        "treat_none": [...]}}``.
    """
    t = np.asarray(DEFAULT_DCA_THRESHOLDS if thresholds is None else thresholds, dtype=float)
    y = np.asarray(y, dtype=float)
    prev = float(y.mean()) if len(y) else 0.0
    curves = {name: net_benefit(y, p, t).tolist() for name, p in scores.items()}
    curves["treat_all"] = (prev - (1 - prev) * t / (1 - t)).tolist()
    curves["treat_none"] = np.zeros_like(t).tolist()
    return {"thresholds": t.tolist(), "net_benefit": curves}


def _proportion(k: int, n: int, level: float) -> dict[str, Any]:
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "k": k, "n": n}
    low, high = wilson_interval(k, n, level=level)
    return {"value": k / n, "ci_low": low, "ci_high": high, "k": k, "n": n}


def threshold_metrics(
    y: np.ndarray, p: np.ndarray, thresholds: Sequence[float], *, level: float = 0.95
) -> list[dict[str, Any]]:
    """Sensitivity, specificity, PPV and NPV at each threshold, with Wilson intervals.

    A case is flagged when ``p ≥ t``. Each metric is ``{value, ci_low, ci_high,
    k, n}``; ``value`` is ``None`` when its denominator is 0 (e.g. sensitivity
    without events). Also returns the 2×2 counts, the share flagged and the net
    benefit at ``t``.
    """
    y = np.asarray(y, dtype=bool)
    p = np.asarray(p, dtype=float)
    rows = []
    for t in thresholds:
        flag = p >= t
        tp, fp = int((flag & y).sum()), int((flag & ~y).sum())
        fn, tn = int((~flag & y).sum()), int((~flag & ~y).sum())
        n = len(y)
        rows.append(
            {
                "threshold": float(t),
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "tn": tn,
                "flagged": (tp + fp) / n if n else None,
                "sensitivity": _proportion(tp, tp + fn, level),
                "specificity": _proportion(tn, tn + fp, level),
                "ppv": _proportion(tp, tp + fp, level),
                "npv": _proportion(tn, tn + fn, level),
                "net_benefit": float(net_benefit(y, p, [t])[0]) if n else None,
            }
        )
    return rows
