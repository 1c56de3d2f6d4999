"""Calibration of predicted risks: recalibration intercept and slope, O/E, Brier, ECE, curves.

Definitions follow Van Calster et al. (J Clin Epidemiol 2016; "Calibration: the
Achilles heel of predictive analytics", BMC Med 2019):

- *calibration intercept* (calibration-in-the-large): ``a`` in
  ``logit P(y=1) = a + logit(p)`` (the predictor as an offset); 0 is ideal;
- *calibration slope*: ``b`` in ``logit P(y=1) = a + b · logit(p)``; 1 is ideal,
  < 1 means predictions too extreme;
- *O/E*: observed events / expected events (Σ p), with the interval
  ``O/E · exp(± z / √O)`` (Debray et al., BMJ 2017);
- *scaled Brier*: ``1 − Brier / (prevalence · (1 − prevalence))``;
- *ECE* (secondary): equal-width bins, L1, as ``torchmetrics``'
  ``BinaryCalibrationError(norm="l1")``;
- the *calibration curve*: a logistic regression of the outcome on a restricted
  cubic spline of ``logit(p)`` (Harrell), with a pointwise Wald band, plus
  observed proportions in risk-quantile bins with Wilson intervals.

Probabilities are clipped to ``[1e-6, 1 − 1e-6]`` before taking logits (an
isotonic calibrator can return exact 0 or 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit, logit
from scipy.stats import norm

from clinfuse.calibration import fit_logistic
from clinfuse.evaluation.utility import wilson_interval

__all__ = [
    "calibration_curve",
    "calibration_summary",
    "expected_calibration_error",
    "fit_logistic",
    "logistic_recalibration",
    "observed_expected",
    "scaled_brier",
]

EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    return np.asarray(logit(np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)))


def logistic_recalibration(y: np.ndarray, p: np.ndarray, *, level: float = 0.95) -> dict[str, Any]:
    """Calibration intercept (offset model) and slope, each with a Wald interval.

    Returns:
        ``{"intercept": {value, ci_low, ci_high}, "slope": {...}}``; values are
        ``None`` (with ``"reason"``) when undefined (one class only).
    """
    y = np.asarray(y, dtype=float)
    z = _logit(p)
    zc = float(norm.ppf(1 - (1 - level) / 2))
    empty = {"value": None, "ci_low": None, "ci_high": None}
    out: dict[str, Any] = {"intercept": dict(empty), "slope": dict(empty)}
    citl = fit_logistic(np.ones((len(y), 1)), y, offset=z)
    slope = fit_logistic(np.column_stack([np.ones(len(y)), z]), y)
    if citl is None or slope is None:
        out["reason"] = (
            "undefined: the cohort has only one outcome class"
            if len(np.unique(y)) < 2
            else "undefined: the fit does not converge (perfectly separated or nearly "
            "constant risks)"
        )
    if citl is not None:
        out["intercept"] = _wald(float(citl[0][0]), float(citl[1][0, 0]), zc)
    if slope is not None:
        out["slope"] = _wald(float(slope[0][1]), float(slope[1][1, 1]), zc)
    if any(
        out[k]["value"] is not None and out[k]["ci_low"] is None for k in ("intercept", "slope")
    ):
        out["reason"] = "no interval: the fit's variance is not positive (nearly constant risks)"
    return out


def _wald(value: float, variance: float, z: float) -> dict[str, Any]:
    """``{value, ci_low, ci_high}``; no interval from a variance that is not positive
    (the information matrix of a fit on nearly constant risks is numerically singular)."""
    if not (np.isfinite(variance) and variance > 0):
        return {"value": value, "ci_low": None, "ci_high": None}
    se = float(np.sqrt(variance))
    return {"value": value, "ci_low": value - z * se, "ci_high": value + z * se}


def observed_expected(y: np.ndarray, p: np.ndarray, *, level: float = 0.95) -> dict[str, Any]:
    """Observed / expected events with the interval ``O/E · exp(± z / √O)``."""
    o, e = float(np.sum(y)), float(np.sum(p))
    if e <= 0:
        return {"value": None, "ci_low": None, "ci_high": None, "observed": o, "expected": e}
    ratio = o / e
    if o == 0:
        return {"value": 0.0, "ci_low": None, "ci_high": None, "observed": o, "expected": e}
    zc = float(norm.ppf(1 - (1 - level) / 2))
    half = zc / np.sqrt(o)
    return {
        "value": ratio,
        "ci_low": float(ratio * np.exp(-half)),
        "ci_high": float(ratio * np.exp(half)),
        "observed": o,
        "expected": e,
    }


def scaled_brier(y: np.ndarray, p: np.ndarray) -> float | None:
    """``1 − Brier / Brier_max`` with ``Brier_max = prevalence · (1 − prevalence)``; None for one class."""
    y = np.asarray(y, dtype=float)
    prev = float(np.mean(y))
    ref = prev * (1 - prev)
    if ref == 0:
        return None
    return float(1 - np.mean((np.asarray(p) - y) ** 2) / ref)


def expected_calibration_error(
    y: np.ndarray, p: np.ndarray, *, n_bins: int = 10
) -> tuple[float | None, dict[str, np.ndarray]]:
    """ECE over equal-width bins (L1), and the reliability table behind it.

    Returns:
        ``(ece, {"bin_low", "bin_high", "n", "mean_predicted", "observed"})``;
        empty bins have NaN means, and ``ece`` is None without any case.
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    n = np.bincount(idx, minlength=n_bins).astype(float)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p, obs = sum_p / n, sum_y / n
    ece = float(np.nansum(n / len(y) * np.abs(obs - mean_p))) if len(y) else None
    return ece, {
        "bin_low": edges[:-1],
        "bin_high": edges[1:],
        "n": n,
        "mean_predicted": mean_p,
        "observed": obs,
    }


def _rcs_basis(z: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Restricted cubic spline basis (Harrell): linear term plus K − 2 non-linear terms."""
    k = len(knots)
    cols = [z]
    scale = (knots[-1] - knots[0]) ** 2
    for j in range(k - 2):
        term = (
            np.maximum(z - knots[j], 0) ** 3
            - np.maximum(z - knots[-2], 0) ** 3 * (knots[-1] - knots[j]) / (knots[-1] - knots[-2])
            + np.maximum(z - knots[-1], 0) ** 3 * (knots[-2] - knots[j]) / (knots[-1] - knots[-2])
        )
        cols.append(term / scale)
    return np.column_stack(cols)


def calibration_curve(
    y: np.ndarray,
    p: np.ndarray,
    *,
    n_bins: int = 10,
    n_grid: int = 100,
    level: float = 0.95,
) -> dict[str, Any]:
    """Flexible calibration curve with a pointwise band, and binned observed proportions.

    The curve is a logistic regression of ``y`` on a restricted cubic spline of
    ``logit(p)`` (4 knots at the 5/35/65/95 % quantiles with ≥ 20 events and
    non-events, 3 knots with ≥ 10, else linear).

    Returns:
        ``{"grid", "curve", "curve_low", "curve_high", "knots"}`` (the curve
        entries are ``None`` when it cannot be fitted) and ``"bins"``: a dict of
        arrays ``mean_predicted``, ``observed``, ``observed_low``,
        ``observed_high``, ``n`` over risk-quantile bins.
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    z = _logit(p)
    n_min = int(min(y.sum(), len(y) - y.sum()))
    quantiles = (
        [0.05, 0.35, 0.65, 0.95] if n_min >= 20 else [0.10, 0.50, 0.90] if n_min >= 10 else []
    )
    knots = np.unique(np.quantile(z, quantiles)) if quantiles else np.array([])
    if len(knots) < 3:
        knots = np.array([])
    lo, hi = np.quantile(p, [0.01, 0.99]) if len(p) else (0.0, 1.0)
    grid = np.linspace(max(lo, EPS), min(hi, 1 - EPS), n_grid)
    zg = _logit(grid)

    def design(v: np.ndarray) -> np.ndarray:
        basis = _rcs_basis(v, knots) if len(knots) else v[:, None]
        return np.column_stack([np.ones(len(v)), basis])

    out: dict[str, Any] = {
        "grid": grid,
        "curve": None,
        "curve_low": None,
        "curve_high": None,
        "knots": expit(knots) if len(knots) else [],
    }
    fit = fit_logistic(design(z), y) if n_min > 0 else None
    if fit is None and len(knots) and n_min > 0:  # spline unstable (narrow risk range): linear
        knots = np.array([])
        out["knots"] = []
        fit = fit_logistic(design(z), y)
    if fit is not None:
        beta, cov = fit
        xg = design(zg)
        eta = xg @ beta
        se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", xg, cov, xg), 0.0))
        zc = float(norm.ppf(1 - (1 - level) / 2))
        out.update(
            curve=expit(eta), curve_low=expit(eta - zc * se), curve_high=expit(eta + zc * se)
        )
    # risk-quantile bins with Wilson intervals
    k = max(1, min(n_bins, len(y) // 10 or 1))
    edges = np.unique(np.quantile(p, np.linspace(0, 1, k + 1)))
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    rows = []
    for b in np.unique(idx):
        sel = idx == b
        cnt, ev = int(sel.sum()), int(y[sel].sum())
        low, high = wilson_interval(ev, cnt, level=level)
        rows.append((float(p[sel].mean()), ev / cnt, low, high, cnt))
    arr = np.array(rows, dtype=float).reshape(-1, 5)
    out["bins"] = {
        "mean_predicted": arr[:, 0],
        "observed": arr[:, 1],
        "observed_low": arr[:, 2],
        "observed_high": arr[:, 3],
        "n": arr[:, 4],
    }
    return out


def calibration_summary(
    y: np.ndarray, p: np.ndarray, *, level: float = 0.95, n_bins_ece: int = 10
) -> dict[str, Any]:
    """Every calibration number of the report, JSON-ready (``None`` where undefined)."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    recal = logistic_recalibration(y, p, level=level)
    ece, _ = expected_calibration_error(y, p, n_bins=n_bins_ece)
    out: dict[str, Any] = {
        "n_cases": len(y),
        "observed_rate": float(np.mean(y)) if len(y) else None,
        "mean_predicted": float(np.mean(p)) if len(p) else None,
        "intercept": recal["intercept"],
        "slope": recal["slope"],
        "oe_ratio": observed_expected(y, p, level=level),
        "brier": float(np.mean((p - y) ** 2)) if len(y) else None,
        "scaled_brier": scaled_brier(y, p) if len(y) else None,
        "ece": ece,
        "ece_bins": n_bins_ece,
    }
    if "reason" in recal:
        out["note"] = recal["reason"]
    return out
