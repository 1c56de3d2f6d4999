"""Performance over time: discrimination and calibration per calendar period, and the drift
of calibration-in-the-large.

A model validated once can drift as practice, case mix and coding change (Davis et al., JAMIA
2017). Given a date column of the manifest (``clinfuse evaluate … --time-column
encounter_date``), the evaluated cases are grouped by ``month``, ``quarter`` or ``year``; each
period gets its cases, events, mean risk, O/E (interval ``O/E · exp(± z/√O)``), AUROC
(DeLong) and Brier score, with periods too small to report suppressed as subgroups are.

The drift is one logistic model over all dated cases::

    logit P(y = 1) = logit(p) + a + b · t

with the model's risk ``p`` as offset and ``t`` the years since the first dated case: ``b``
is the yearly change in the log odds of the outcome beyond what the model predicts (0: no
drift; > 0: risks fall increasingly short of the events). Wald interval and test.

The drift of the calibration *slope* is a second model over the same cases::

    logit P(y = 1) = a + b · t + (s + d · t) · logit(p)

``s`` is the slope at the first dated case and ``d`` its yearly change (0: the spread of the
risks stays right; < 0: risks grow too extreme as time goes by). And the drift of
*discrimination* is the inverse-variance weighted regression of the reported periods'
AUROCs on time (each period at its cases' mean date, DeLong variances, scale fixed at 1: a
fixed-effect meta-regression), for three reported periods or more.

A drift test looks for a steady trend. A sudden change is what the risk-adjusted CUSUM
(:mod:`clinfuse.evaluation.cusum`) is for.

>>> performance_over_time(y, p, dates, period="quarter")["drift"]["per_year"]  # doctest: +SKIP
{'value': 0.41, 'ci_low': 0.12, 'ci_high': 0.70, 'p_value': 0.006}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.stats import norm

from clinfuse.errors import CohortError, ConfigError

__all__ = [
    "PERIODS",
    "auroc_trend",
    "calibration_drift",
    "check_period",
    "cohort_dates",
    "parse_dates",
    "performance_over_time",
    "period_labels",
]

PERIODS = {"month": "M", "quarter": "Q", "year": "Y"}
"""The calendar periods of :func:`performance_over_time` and their pandas codes."""

DAYS_PER_YEAR = 365.25


def check_period(period: str) -> str:
    """``period`` if it is one of :data:`PERIODS`, else a ConfigError."""
    if period not in PERIODS:
        raise ConfigError(
            f"unknown period {period!r}; use one of {', '.join(PERIODS)}", field="period"
        )
    return period


def cohort_dates(cohort: Any, column: str, case_ids: Sequence[str] | None = None) -> np.ndarray:
    """The dates of a cohort's cases (all, or ``case_ids``) in its manifest column ``column``.

    Raises:
        CohortError: no such column (naming the manifest's columns), or an unreadable date
            (naming the case).
    """
    if column not in cohort.columns:
        raise CohortError(
            f"time column {column!r} is not in the manifest (columns: {', '.join(cohort.columns)})",
            field=column,
            path=cohort.manifest_path,
            hint="check --time-column against the manifest's header",
        )
    rows = cohort.rows if case_ids is None else [cohort[c] for c in case_ids]
    return parse_dates(
        [r.extra.get(column) for r in rows],
        [r.case_id for r in rows],
        column=column,
        path=cohort.manifest_path,
    )


def parse_dates(
    values: Sequence[Any], case_ids: Sequence[str], *, column: str, path: Any = None
) -> np.ndarray:
    """Dates of a manifest column: ISO dates or date-times (``2024-03-15``, ``2024-03-15
    08:30``); an empty cell is NaT (the case is undated).

    Returns:
        (N,) ``datetime64[ns]`` (time-zone information dropped).

    Raises:
        CohortError: a value that is not a date, or one outside 1678–2261 (nanosecond
            datetimes cannot hold it), naming the case and the value.
    """
    out = np.full(len(values), np.datetime64("NaT"), dtype="datetime64[ns]")
    for i, (value, case_id) in enumerate(zip(values, case_ids, strict=True)):
        if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
            continue
        try:
            stamp = pd.Timestamp(str(value).strip())
        except (ValueError, TypeError, OverflowError):
            stamp = pd.NaT
        if pd.isna(stamp):
            problem = "is not a date"
            hint = "write dates as YYYY-MM-DD (a time may follow), or leave the cell empty"
        else:
            stamp = stamp.tz_localize(None) if stamp.tzinfo else stamp
            problem = hint = ""
            if not pd.Timestamp.min <= stamp <= pd.Timestamp.max:  # would wrap around in ns
                problem = "is outside the dates clinfuse can hold (1678 to 2261)"
                hint = "check the date: a typo in the year?"
        if problem:
            raise CohortError(
                f"{value!r} {problem}", case_id=str(case_id), field=column, path=path, hint=hint
            )
        out[i] = np.datetime64(stamp, "ns")
    return out


def period_labels(dates: np.ndarray, period: str) -> list[str | None]:
    """Each date's calendar period as :func:`performance_over_time` names it (``2024Q1``,
    ``2024-01``, ``2024``); None for NaT."""
    code = PERIODS[check_period(period)]
    stamps = pd.DatetimeIndex(np.asarray(dates, dtype="datetime64[ns]"))
    return [None if pd.isna(t) else str(t.to_period(code)) for t in stamps]


def _wald(coef: np.ndarray, cov: np.ndarray, k: int, z: float) -> dict[str, Any]:
    value, se = float(coef[k]), float(np.sqrt(cov[k, k]))
    return {"value": value, "ci_low": value - z * se, "ci_high": value + z * se}


def calibration_drift(
    y: np.ndarray, p: np.ndarray, years: np.ndarray, *, level: float = 0.95
) -> dict[str, Any]:
    """Fit the two drift models of the module's docstring.

    Returns:
        ``intercept`` (``a``: calibration-in-the-large at ``years = 0``), ``per_year``
        (``b``), ``slope`` (``s``: the calibration slope at ``years = 0``) and
        ``slope_per_year`` (``d``), each ``{value, ci_low, ci_high}``; the two yearly changes
        with their two-sided ``p_value``. Values are None with a ``reason`` when the model
        cannot be fitted (one outcome class, every case on one day, or separation).
    """
    from clinfuse.calibration import fit_logistic
    from clinfuse.evaluation.calibration import _logit

    empty = {"value": None, "ci_low": None, "ci_high": None}
    out: dict[str, Any] = {
        "intercept": dict(empty),
        "per_year": dict(empty, p_value=None),
        "slope": dict(empty),
        "slope_per_year": dict(empty, p_value=None),
    }
    years = np.asarray(years, dtype=float)
    if len(years) == 0 or np.ptp(years) == 0:
        return out | {"reason": "undefined: the dated cases span no time"}
    ones = np.ones(len(y))
    lp = _logit(p)
    fit = fit_logistic(np.column_stack([ones, years]), y, offset=lp)
    if fit is None:
        return out | {"reason": "undefined: one outcome class (or perfectly separated)"}
    z = float(norm.ppf(1 - (1 - level) / 2))
    coef, cov = fit
    out["intercept"] = _wald(coef, cov, 0, z)
    out["per_year"] = _wald(coef, cov, 1, z)
    out["per_year"]["p_value"] = float(2 * norm.sf(abs(coef[1] / np.sqrt(cov[1, 1]))))
    slope_fit = fit_logistic(np.column_stack([ones, years, lp, years * lp]), y)
    if slope_fit is not None:
        coef, cov = slope_fit
        out["slope"] = _wald(coef, cov, 2, z)
        out["slope_per_year"] = _wald(coef, cov, 3, z)
        out["slope_per_year"]["p_value"] = float(2 * norm.sf(abs(coef[3] / np.sqrt(cov[3, 3]))))
    return out


def auroc_trend(
    aurocs: ArrayLike,
    ses: ArrayLike,
    years: ArrayLike,
    *,
    level: float = 0.95,
) -> dict[str, Any]:
    """The yearly change of the AUROC across periods: weighted least squares of ``aurocs``
    on ``years`` with weights ``1 / se²`` and the scale fixed at 1.

    Returns:
        ``{value, ci_low, ci_high, p_value, k}`` (``k`` periods); values None with a
        ``reason`` for fewer than three periods with a standard error, or periods at one
        time.
    """
    a = np.asarray(aurocs, dtype=float)
    se = np.asarray(ses, dtype=float)
    x = np.asarray(years, dtype=float)
    ok = np.isfinite(a) & np.isfinite(se) & (se > 0) & np.isfinite(x)
    a, se, x = a[ok], se[ok], x[ok]
    out: dict[str, Any] = {"value": None, "ci_low": None, "ci_high": None, "p_value": None}
    out["k"] = len(a)
    if len(a) < 3:
        return out | {"reason": "undefined: fewer than three periods report an AUROC"}
    if np.ptp(x) == 0:
        return out | {"reason": "undefined: the periods span no time"}
    w = 1 / se**2
    xbar = float(np.sum(w * x) / np.sum(w))
    sxx = float(np.sum(w * (x - xbar) ** 2))
    value = float(np.sum(w * (x - xbar) * a) / sxx)
    half = float(norm.ppf(1 - (1 - level) / 2)) / np.sqrt(sxx)
    return out | {
        "value": value,
        "ci_low": value - half,
        "ci_high": value + half,
        "p_value": float(2 * norm.sf(abs(value) * np.sqrt(sxx))),
    }


def performance_over_time(
    y: np.ndarray,
    p: np.ndarray,
    dates: np.ndarray,
    *,
    period: str = "quarter",
    min_size: int = 30,
    min_events: int = 5,
    level: float = 0.95,
) -> dict[str, Any]:
    """Metrics per calendar period and the calibration drift (see the module's docstring).

    Args:
        y: (N,) 0/1 outcomes.
        p: (N,) risks.
        dates: (N,) ``datetime64`` (NaT: undated, left out).
        period: ``month``, ``quarter`` or ``year``.
        min_size: a period with fewer cases is suppressed.
        min_events: … or with fewer events or non-events (AUROC needs both).
        level: confidence level.

    Returns:
        ``period``, ``n_dated``, ``n_undated``, ``first``/``last`` (ISO dates), ``periods``
        (one row per calendar period from the first to the last, empty ones included:
        ``period``, ``start``, ``n``, ``n_events``, ``suppressed`` and, when reported,
        ``observed_rate``, ``mean_risk``, ``oe``, ``auroc``, ``brier``), ``drift``
        (:func:`calibration_drift`) and ``auroc_trend`` (:func:`auroc_trend` of the reported
        periods).
    """
    from clinfuse.evaluation.calibration import observed_expected
    from clinfuse.evaluation.delong import delong_ci

    check_period(period)
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    dates = np.asarray(dates, dtype="datetime64[ns]")
    dated = ~np.isnat(dates)
    y, p, dates = y[dated], p[dated], dates[dated]
    out: dict[str, Any] = {
        "period": period,
        "n_dated": int(dated.sum()),
        "n_undated": int((~dated).sum()),
        "min_size": min_size,
        "min_events": min_events,
        "periods": [],
    }
    if not len(y):
        return out | {
            "drift": calibration_drift(y, p, np.zeros(0), level=level),
            "auroc_trend": auroc_trend([], [], [], level=level),
        }
    years = (dates - dates.min()) / np.timedelta64(1, "D") / DAYS_PER_YEAR
    trend: list[tuple[float, float, float]] = []  # (AUROC, its SE, mean years) of each period
    stamps = pd.DatetimeIndex(dates)
    labels = stamps.to_period(PERIODS[period])
    out["first"] = str(stamps.min().date())
    out["last"] = str(stamps.max().date())
    for label in pd.period_range(labels.min(), labels.max(), freq=PERIODS[period]):
        sel = np.asarray(labels == label)
        n, ev = int(sel.sum()), int(y[sel].sum())
        row: dict[str, Any] = {
            "period": str(label),
            "start": str(label.start_time.date()),
            "n": n,
            "n_events": ev,
        }
        if n < min_size or ev < min_events or n - ev < min_events:
            out["periods"].append(row | {"suppressed": True})
            continue
        ys, ps = y[sel], p[sel]
        auroc = delong_ci(ys, ps, level=level)
        if auroc["se"]:
            trend.append((auroc["value"], auroc["se"], float(years[sel].mean())))
        out["periods"].append(
            row
            | {
                "suppressed": False,
                "observed_rate": ev / n,
                "mean_risk": float(ps.mean()),
                "oe": observed_expected(ys, ps, level=level),
                "auroc": auroc,
                "brier": float(np.mean((ps - ys) ** 2)),
            }
        )
    out["drift"] = calibration_drift(y, p, years, level=level)
    rows = np.asarray(trend, dtype=float).reshape(-1, 3)
    out["auroc_trend"] = auroc_trend(rows[:, 0], rows[:, 1], rows[:, 2], level=level)
    return out
