"""DeLong's AUROC variance, confidence interval and paired test (fast midrank version).

DeLong, DeLong & Clarke-Pearson (Biometrics 1988) estimate the covariance of
correlated AUROCs from structural components; Sun & Xu (IEEE Signal Processing
Letters 2014, "Fast implementation of DeLong's algorithm") compute them from
midranks in O(K · N log N) for K scores on N cases. Ties count one half, as in
the Mann–Whitney AUROC. Tests check the interval and the p-value against
MLstatkit's ``Delong_test``.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1, 0, 1]); p = np.array([.1, .4, .35, .8, .2, .9])
>>> round(delong_ci(y, p)["value"], 4)
0.8889
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

__all__ = ["delong_ci", "delong_covariance", "delong_test"]


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of K scores on the same cases and their DeLong covariance.

    Args:
        y: (N,) 0/1 outcomes; both classes must occur.
        scores: (K, N) or (N,) scores (higher = more likely an event).

    Returns:
        ``(auc (K,), cov (K, K))``; ``cov`` is NaN with a single event or a single
        non-event: the variance among them cannot be estimated (it is not 0; pROC
        refuses the case too).

    Raises:
        ValueError: only one class in ``y``, or shapes that do not match.
    """
    y = np.asarray(y).astype(bool).reshape(-1)
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    if s.shape[1] != y.shape[0]:
        raise ValueError(f"scores have {s.shape[1]} cases, outcomes {y.shape[0]}")
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong's variance needs at least one event and one non-event")
    pos, neg = s[:, y], s[:, ~y]
    tx = rankdata(pos, axis=1)  # midranks among events
    ty = rankdata(neg, axis=1)  # midranks among non-events
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # midranks among all
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # (K, m): share of non-events below each event
    v01 = 1.0 - (tz[:, m:] - ty) / m  # (K, n): share of events above each non-event
    if m < 2 or n < 2:
        return auc, np.full((s.shape[0], s.shape[0]), np.nan)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return auc, s10 / m + s01 / n


def delong_ci(y: np.ndarray, p: np.ndarray, *, level: float = 0.95) -> dict[str, Any]:
    """AUROC with its DeLong standard error and Wald interval (clipped to [0, 1]).

    Args:
        y: (N,) 0/1 outcomes.
        p: (N,) scores.
        level: confidence level.

    Returns:
        ``{"value", "se", "ci_low", "ci_high"}``; all ``None`` when one class is missing,
        and all but ``value`` with a single event or non-event (no variance estimate).
    """
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return {"value": None, "se": None, "ci_low": None, "ci_high": None}
    auc, cov = delong_covariance(y, p)
    value = float(auc[0])
    if np.isnan(cov[0, 0]):
        return {"value": value, "se": None, "ci_low": None, "ci_high": None}
    se = float(np.sqrt(max(cov[0, 0], 0.0)))
    z = float(norm.ppf(1 - (1 - level) / 2))
    return {
        "value": value,
        "se": se,
        "ci_low": max(0.0, value - z * se),
        "ci_high": min(1.0, value + z * se),
    }


def delong_test(
    y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, *, level: float = 0.95
) -> dict[str, Any]:
    """Paired DeLong test of two AUROCs on the same cases (two-sided).

    Args:
        y: (N,) 0/1 outcomes.
        p_a: (N,) scores of model A.
        p_b: (N,) scores of model B.
        level: level of the interval for the difference.

    Returns:
        ``{"auroc_a", "auroc_b", "difference" (B − A), "se", "ci_low", "ci_high",
        "z", "p_value", "n_cases"}``; the test entries are ``None`` when one class
        is missing, with a single event or non-event (no variance estimate), and when the
        difference has zero variance (identical rankings).
    """
    y = np.asarray(y)
    out: dict[str, Any] = {
        "auroc_a": None,
        "auroc_b": None,
        "difference": None,
        "se": None,
        "ci_low": None,
        "ci_high": None,
        "z": None,
        "p_value": None,
        "n_cases": len(y),
    }
    if len(np.unique(y)) < 2:
        return out
    auc, cov = delong_covariance(y, np.vstack([p_a, p_b]))
    diff = float(auc[1] - auc[0])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    out.update(auroc_a=float(auc[0]), auroc_b=float(auc[1]), difference=diff)
    if not var > 1e-15:  # NaN: a single event or non-event
        return out
    se = float(np.sqrt(var))
    zc = float(norm.ppf(1 - (1 - level) / 2))
    z = diff / se
    out.update(
        se=se,
        ci_low=diff - zc * se,
        ci_high=diff + zc * se,
        z=z,
        p_value=float(2 * norm.sf(abs(z))),
    )
    return out
