"""Performance per subgroup (sex, age band, …) and per site, with small groups suppressed.

Point estimates per group come from fairlearn's ``MetricFrame`` (the tool users
know for disaggregated metrics); intervals are DeLong (AUROC), O/E's Poisson
interval and Wilson (sensitivity, specificity). A group with fewer than
``min_size`` cases, or fewer than ``min_events`` events or non-events, is
*suppressed*: listed without counts or metrics (no meaningless intervals, no
small cells that could identify patients). The largest gap between reported
groups is given for each metric, and two tests ask whether the groups differ more than
chance allows (``heterogeneity``):

- discrimination: Cochran's Q of the groups' AUROCs with their DeLong variances (and I²);
- calibration-in-the-large: the likelihood-ratio test of one intercept per group against
  one for all, in a logistic model with the model's logit as offset (df = groups − 1).

Each grouping also gets a risk-adjusted funnel plot's data (``funnel``,
:mod:`clinfuse.evaluation.funnel`): every reported group's observed against expected events,
and whether it lies outside the model's 95 % or 99.8 % limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from clinfuse.evaluation.calibration import observed_expected
from clinfuse.evaluation.delong import delong_ci
from clinfuse.evaluation.funnel import funnel_data
from clinfuse.evaluation.utility import wilson_interval

__all__ = [
    "MISSING_GROUP",
    "group_heterogeneity",
    "group_labels",
    "group_metrics",
    "subgroup_table",
]

MISSING_GROUP = "(missing)"
GAP_METRICS = ("auroc", "brier", "oe_ratio", "sensitivity", "specificity")


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    from clinfuse.evaluation.metrics import auroc_batch

    return float(auroc_batch(np.asarray(y)[None], np.asarray(p)[None])[0])


def _brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(p) - np.asarray(y)) ** 2))


def _oe(y: np.ndarray, p: np.ndarray) -> float:
    e = float(np.sum(p))
    return float(np.sum(y)) / e if e > 0 else float("nan")


def _sens_at(t: float):  # type: ignore[no-untyped-def]
    def sens(y: np.ndarray, p: np.ndarray) -> float:
        y = np.asarray(y, dtype=bool)
        return float(np.mean(np.asarray(p)[y] >= t)) if y.any() else float("nan")

    return sens


def _spec_at(t: float):  # type: ignore[no-untyped-def]
    def spec(y: np.ndarray, p: np.ndarray) -> float:
        y = np.asarray(y, dtype=bool)
        return float(np.mean(np.asarray(p)[~y] < t)) if (~y).any() else float("nan")

    return spec


def group_labels(groups: Sequence[Any]) -> np.ndarray:
    """Each case's group as text, a missing value (None, NaN) as :data:`MISSING_GROUP`."""
    return np.array(
        [
            MISSING_GROUP if g is None or (isinstance(g, float) and np.isnan(g)) else str(g)
            for g in groups
        ],
        dtype=object,
    )


def _clean(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float | np.floating):
        return float(v) if np.isfinite(v) else None
    return v


def group_metrics(
    y: np.ndarray,
    p: np.ndarray,
    groups: Sequence[Any],
    *,
    threshold: float,
    min_size: int = 30,
    min_events: int = 5,
    level: float = 0.95,
) -> dict[str, Any]:
    """Metrics of one grouping (a subgroup column or the site).

    Args:
        y: (N,) outcomes.
        p: (N,) risks.
        groups: (N,) group label of each case (``None`` → ``"(missing)"``).
        threshold: risk threshold for sensitivity/specificity.
        min_size: smallest group reported.
        min_events: fewest events (and non-events) for a reported group.
        level: confidence level.

    Returns:
        ``{"groups": [...], "largest_gap": {metric: {...}}, "min_size", "min_events",
        "threshold"}``; each group is ``{"group", "suppressed", ...metrics}``.
    """
    from fairlearn.metrics import MetricFrame

    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    labels = pd.Series(group_labels(groups), name="group")
    frame = MetricFrame(
        metrics={
            "auroc": _auroc,
            "brier": _brier,
            "oe_ratio": _oe,
            "sensitivity": _sens_at(threshold),
            "specificity": _spec_at(threshold),
        },
        y_true=y,
        y_pred=p,
        sensitive_features=labels,
    )
    by_group = frame.by_group
    rows: list[dict[str, Any]] = []
    for name in sorted(labels.unique()):
        sel = (labels == name).to_numpy()
        n, ev = int(sel.sum()), int(y[sel].sum())
        if n < min_size or ev < min_events or n - ev < min_events:
            rows.append(
                {
                    "group": name,
                    "suppressed": True,
                    "reason": f"fewer than {min_size} cases or {min_events} events/non-events",
                }
            )
            continue
        point = by_group.loc[name]
        auc = delong_ci(y[sel], p[sel], level=level)
        oe = observed_expected(y[sel], p[sel], level=level)
        flag = p[sel] >= threshold
        ys = y[sel].astype(bool)
        tp, tn = int((flag & ys).sum()), int((~flag & ~ys).sum())
        s_lo, s_hi = wilson_interval(tp, ev, level=level)
        c_lo, c_hi = wilson_interval(tn, n - ev, level=level)
        rows.append(
            {
                "group": name,
                "suppressed": False,
                "n_cases": n,
                "n_events": ev,
                "auroc": {
                    "value": _clean(point["auroc"]),
                    "ci_low": auc["ci_low"],
                    "ci_high": auc["ci_high"],
                },
                "brier": {"value": _clean(point["brier"])},
                "oe_ratio": {
                    "value": _clean(point["oe_ratio"]),
                    "ci_low": oe["ci_low"],
                    "ci_high": oe["ci_high"],
                },
                "sensitivity": {
                    "value": _clean(point["sensitivity"]),
                    "ci_low": s_lo,
                    "ci_high": s_hi,
                },
                "specificity": {
                    "value": _clean(point["specificity"]),
                    "ci_low": c_lo,
                    "ci_high": c_hi,
                },
            }
        )
    gaps: dict[str, Any] = {}
    shown = [r for r in rows if not r["suppressed"]]
    for metric in GAP_METRICS:
        vals = [(r["group"], r[metric]["value"]) for r in shown if r[metric]["value"] is not None]
        if len(vals) < 2:
            gaps[metric] = None
            continue
        lo = min(vals, key=lambda v: v[1])
        hi = max(vals, key=lambda v: v[1])
        gaps[metric] = {"gap": hi[1] - lo[1], "lowest": lo[0], "highest": hi[0]}
    reported = np.isin(labels.to_numpy(), [r["group"] for r in shown])
    return {
        "threshold": float(threshold),
        "min_size": min_size,
        "min_events": min_events,
        "groups": rows,
        "largest_gap": gaps,
        "heterogeneity": group_heterogeneity(y[reported], p[reported], labels.to_numpy()[reported]),
        "funnel": funnel_data(y[reported], p[reported], labels.to_numpy()[reported])
        if shown
        else None,
    }


def group_heterogeneity(y: np.ndarray, p: np.ndarray, groups: Sequence[Any]) -> dict[str, Any]:
    """Do the groups differ in discrimination or in calibration-in-the-large more than
    chance allows? (See the module's docstring.)

    Args:
        y: (N,) outcomes of the cases of the groups compared.
        p: (N,) their risks.
        groups: (N,) group of each case (each with both outcomes).

    Returns:
        ``{"n_groups", "auroc": {"q", "df", "p_value", "i2"}, "calibration_in_the_large":
        {"lr", "df", "p_value"}}``; a test is None with fewer than two groups or when its
        model cannot be fitted.
    """
    from scipy.stats import chi2

    from clinfuse.calibration import fit_logistic
    from clinfuse.evaluation.calibration import _logit
    from clinfuse.evaluation.meta import random_effects

    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    labels = group_labels(groups)
    names = sorted(set(labels))
    out: dict[str, Any] = {"n_groups": len(names), "auroc": None, "calibration_in_the_large": None}
    if len(names) < 2:
        return out
    aucs = [delong_ci(y[labels == g], p[labels == g]) for g in names]
    if all(a["se"] for a in aucs):
        re = random_effects([a["value"] for a in aucs], [a["se"] ** 2 for a in aucs])
        out["auroc"] = {
            "q": re["q"],
            "df": len(names) - 1,
            "p_value": re["q_p_value"],
            "i2": re["i2"],
        }
    z = _logit(p)
    dummies = (labels[:, None] == np.asarray(names, dtype=object)[None, :]).astype(float)
    common = fit_logistic(np.ones((len(y), 1)), y, offset=z)
    each = fit_logistic(dummies, y, offset=z)
    if common is not None and each is not None:

        def loglik(x: np.ndarray, coef: np.ndarray) -> float:
            eta = x @ coef + z
            return float(np.sum(y * eta - np.logaddexp(0.0, eta)))

        lr = 2 * (loglik(dummies, each[0]) - loglik(np.ones((len(y), 1)), common[0]))
        lr = max(lr, 0.0)
        out["calibration_in_the_large"] = {
            "lr": lr,
            "df": len(names) - 1,
            "p_value": float(chi2.sf(lr, len(names) - 1)),
        }
    return out


def subgroup_table(result: dict[str, Any]) -> pd.DataFrame:
    """A flat table of :func:`group_metrics` output (for CSV export and the report)."""
    funnel = {g["group"]: g for g in (result.get("funnel") or {}).get("groups", [])}
    records = []
    for r in result["groups"]:
        rec: dict[str, Any] = {"group": r["group"], "suppressed": r["suppressed"]}
        if not r["suppressed"]:
            rec.update(n_cases=r["n_cases"], n_events=r["n_events"])
            for m in GAP_METRICS:
                for k in ("value", "ci_low", "ci_high"):
                    if k in r[m]:
                        rec[f"{m}_{k}" if k != "value" else m] = r[m][k]
            if r["group"] in funnel:
                g = funnel[r["group"]]
                rec.update(
                    expected_events=g["expected"],
                    funnel_z=g["z"],
                    funnel_outside=g["outside"],
                    funnel_outside_random_effects=g["outside_random_effects"],
                )
        records.append(rec)
    return pd.DataFrame.from_records(records)
