"""Random-effects meta-analysis of performance across clusters (sites, periods).

When a model is validated in several clusters, its performance varies between them
beyond chance; one pooled figure hides that. Following Debray et al. (BMJ 2017;356:i6460)
and Riley et al. (BMJ 2016;353:i3140), each cluster's estimate is combined on a scale
where it is roughly normal (the logit of the AUROC, the log of the O/E ratio, the
calibration slope as it is; Snell et al., Stat Methods Med Res 2018) with
the DerSimonian–Laird between-cluster variance τ², and the 95 % *prediction interval*
says where the performance in a new cluster of the same kind is expected to fall.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import chi2, norm
from scipy.stats import t as student_t

__all__ = ["auroc_meta_analysis", "group_meta_analysis", "oe_meta_analysis", "random_effects"]


def random_effects(
    estimates: Sequence[float], variances: Sequence[float], *, level: float = 0.95
) -> dict[str, Any]:
    """DerSimonian–Laird random-effects pooling with a prediction interval.

    Args:
        estimates: (K,) per-cluster estimates.
        variances: (K,) their within-cluster variances (squared standard errors).
        level: level of the confidence and prediction intervals.

    Returns:
        ``{"estimate", "se", "ci_low", "ci_high", "tau2", "i2", "q", "q_p_value",
        "pi_low", "pi_high", "k"}``: the prediction interval uses a t distribution with
        K − 2 degrees of freedom (Higgins et al. 2009) and is ``None`` for K < 3.
    """
    y = np.asarray(estimates, dtype=float)
    v = np.asarray(variances, dtype=float)
    if y.shape != v.shape or y.ndim != 1:
        raise ValueError("estimates and variances must be 1-D and of the same length")
    if len(y) < 2:
        raise ValueError("a meta-analysis needs at least two clusters")
    if np.any(v <= 0) or not np.all(np.isfinite(np.r_[y, v])):
        raise ValueError("variances must be positive and every value finite")
    k = len(y)
    w = 1 / v
    fixed = float(np.sum(w * y) / np.sum(w))
    q = float(np.sum(w * (y - fixed) ** 2))
    c = float(np.sum(w) - np.sum(w**2) / np.sum(w))
    tau2 = max(0.0, (q - (k - 1)) / c)
    w_re = 1 / (v + tau2)
    est = float(np.sum(w_re * y) / np.sum(w_re))
    se = float(np.sqrt(1 / np.sum(w_re)))
    z = float(norm.ppf(1 - (1 - level) / 2))
    out: dict[str, Any] = {
        "estimate": est,
        "se": se,
        "ci_low": est - z * se,
        "ci_high": est + z * se,
        "tau2": tau2,
        "i2": max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0,
        "q": q,
        "q_p_value": float(chi2.sf(q, k - 1)),
        "pi_low": None,
        "pi_high": None,
        "k": k,
    }
    if k >= 3:
        half = float(student_t.ppf(1 - (1 - level) / 2, k - 2)) * np.sqrt(tau2 + se**2)
        out["pi_low"], out["pi_high"] = float(est - half), float(est + half)
    return out


def _back_transformed(
    res: dict[str, Any], scale: str, inverse: Callable[[float], float]
) -> dict[str, Any]:
    """A pooled result on a transformed ``scale`` with the estimate and both intervals
    mapped back by ``inverse``; the scale's own estimate and SE kept as ``<scale>_...``."""
    out = {"scale": scale, **res, f"{scale}_estimate": res["estimate"], f"{scale}_se": res["se"]}
    for key in ("estimate", "ci_low", "ci_high", "pi_low", "pi_high"):
        out[key] = None if res[key] is None else float(inverse(res[key]))
    return out


def auroc_meta_analysis(
    aurocs: Sequence[float], ses: Sequence[float], *, level: float = 0.95
) -> dict[str, Any]:
    """Random-effects summary AUROC of clusters, pooled on the logit scale.

    ``Var(logit AUROC) ≈ SE² / (AUROC (1 − AUROC))²`` (delta method, Snell et al. 2018);
    the estimate and both intervals are transformed back to the AUROC scale, τ² stays
    on the logit scale.

    Args:
        aurocs: (K,) cluster AUROCs, each strictly between 0 and 1.
        ses: (K,) their DeLong standard errors.
    """
    a = np.asarray(aurocs, dtype=float)
    s = np.asarray(ses, dtype=float)
    if np.any((a <= 0) | (a >= 1)):
        raise ValueError("every AUROC must lie strictly between 0 and 1 to be pooled")
    res = random_effects(np.log(a / (1 - a)), (s / (a * (1 - a))) ** 2, level=level)
    return _back_transformed(res, "logit", lambda x: 1 / (1 + np.exp(-x)))


def oe_meta_analysis(
    observed: Sequence[float], expected: Sequence[float], *, level: float = 0.95
) -> dict[str, Any]:
    """Random-effects summary O/E ratio of clusters, pooled on the log scale.

    ``Var(ln O/E) ≈ 1 / O`` (observed events treated as Poisson, the same approximation as
    :func:`clinfuse.evaluation.calibration.observed_expected`'s interval; Debray et al.
    2017). The estimate and both intervals are transformed back to the ratio scale.

    Args:
        observed: (K,) observed events per cluster, each > 0 (a cluster without events
            enters continuity-corrected: 0.5 added to both counts).
        expected: (K,) expected events per cluster (the sum of predicted risks), each > 0.
    """
    o = np.asarray(observed, dtype=float)
    e = np.asarray(expected, dtype=float)
    if np.any(o <= 0) or np.any(e <= 0):
        raise ValueError(
            "every cluster needs positive observed and expected event counts (add 0.5 to "
            "both for a cluster without events)"
        )
    res = random_effects(np.log(o / e), (1 / o).tolist(), level=level)
    return _back_transformed(res, "log", np.exp)


def group_meta_analysis(rows: Sequence[dict[str, Any]], level: float = 0.95) -> dict[str, Any]:
    """Random-effects summaries of several groups' AUROC, O/E ratio and calibration slope.

    Args:
        rows: one per group (site, fold, period): ``group``, ``auroc`` and ``auroc_se``
            (DeLong), ``calibration_slope`` and ``calibration_slope_se``, ``n_events`` and
            ``expected_events``; a group without a usable value is left out of that summary.
        level: level of the intervals.

    Returns:
        ``auroc``, ``calibration_slope`` and ``oe_ratio`` (each where two or more groups
        have it): :func:`random_effects`' result on the natural scale, with ``groups`` (those
        summarised) and ``left_out`` (``{"group", "reason"}`` for each of the others). A
        group without events enters the O/E summary with 0.5 added to its observed and
        expected counts (listed in ``continuity_corrected``); leaving it out would bias the
        summary upwards.
    """
    out: dict[str, Any] = {}

    def left_out(kept: Sequence[dict[str, Any]], reason: str) -> list[dict[str, str]]:
        names = {r["group"] for r in kept}
        return [{"group": r["group"], "reason": reason} for r in rows if r["group"] not in names]

    usable = [r for r in rows if r["auroc"] is not None and 0 < r["auroc"] < 1 and r["auroc_se"]]
    if len(usable) >= 2:
        out["auroc"] = auroc_meta_analysis(
            [r["auroc"] for r in usable], [r["auroc_se"] for r in usable], level=level
        )
        out["auroc"]["groups"] = [r["group"] for r in usable]
        out["auroc"]["left_out"] = left_out(
            usable,
            "no AUROC with a standard error (one outcome class, a single event or "
            "non-event, or an AUROC of 0 or 1)",
        )
    slopes = [r for r in rows if r["calibration_slope"] is not None and r["calibration_slope_se"]]
    if len(slopes) >= 2:
        out["calibration_slope"] = random_effects(
            [r["calibration_slope"] for r in slopes],
            [r["calibration_slope_se"] ** 2 for r in slopes],
            level=level,
        )
        out["calibration_slope"]["groups"] = [r["group"] for r in slopes]
        out["calibration_slope"]["left_out"] = left_out(slopes, "no calibration slope")
    counts = [r for r in rows if r["expected_events"] > 0]
    if len(counts) >= 2:
        zero = [r["n_events"] < 1 for r in counts]
        out["oe_ratio"] = oe_meta_analysis(
            [r["n_events"] + 0.5 * z for r, z in zip(counts, zero, strict=True)],
            [r["expected_events"] + 0.5 * z for r, z in zip(counts, zero, strict=True)],
            level=level,
        )
        out["oe_ratio"]["groups"] = [r["group"] for r in counts]
        out["oe_ratio"]["continuity_corrected"] = [
            r["group"] for r, z in zip(counts, zero, strict=True) if z
        ]
        out["oe_ratio"]["left_out"] = left_out(counts, "no expected events")
    return out
