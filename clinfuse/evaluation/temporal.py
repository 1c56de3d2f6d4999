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

>>> performance_over_time(y, p, dates, period="quarter")["drift"]["per_year"]  # doctest: +SKIP
{'value': 0.41, 'ci_low': 0.12, 'ci_high': 0.70, 'p_value': 0.006}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from clinfuse.errors import CohortError, ConfigError

__all__ = [
    "PERIODS",
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
        CohortError: a value that is not a date, naming the case and the value.
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
            raise CohortError(
                f"{value!r} is not a date",
                case_id=str(case_id),
                field=column,
                path=path,
                hint="write dates as YYYY-MM-DD (a time may follow), or leave the cell empty",
            )
        out[i] = np.datetime64(stamp.tz_localize(None) if stamp.tzinfo else stamp, "ns")
    return out


def period_labels(dates: np.ndarray, period: str) -> list[str | None]:
    """Each date's calendar period as :func:`performance_over_time` names it (``2024Q1``,
    ``2024-01``, ``2024``); None for NaT."""
    code = PERIODS[check_period(period)]
    stamps = pd.DatetimeIndex(np.asarray(dates, dtype="datetime64[ns]"))
    return [None if pd.isna(t) else str(t.to_period(code)) for t in stamps]


def calibration_drift(
    y: np.ndarray, p: np.ndarray, years: np.ndarray, *, level: float = 0.95
) -> dict[str, Any]:
    """Fit ``logit P(y=1) = logit(p) + a + b·years`` (see the module's docstring).

    Returns:
        ``intercept`` (``a``: calibration-in-the-large at ``years = 0``) and ``per_year``
        (``b``), each ``{value, ci_low, ci_high}``, ``per_year`` with its two-sided
        ``p_value``; values None with a ``reason`` when the model cannot be fitted (one
        outcome class, or every case on one day).
    """
    from clinfuse.calibration import fit_logistic
    from clinfuse.evaluation.calibration import _logit

    empty = {"value": None, "ci_low": None, "ci_high": None}
    out: dict[str, Any] = {"intercept": dict(empty), "per_year": dict(empty, p_value=None)}
    years = np.asarray(years, dtype=float)
    if len(years) == 0 or np.ptp(years) == 0:
        return out | {"reason": "undefined: the dated cases span no time"}
    fit = fit_logistic(np.column_stack([np.ones(len(y)), years]), y, offset=_logit(p))
    if fit is None:
        return out | {"reason": "undefined: one outcome class (or perfectly separated)"}
    coef, cov = fit
    z = float(norm.ppf(1 - (1 - level) / 2))
    for k, key in enumerate(("intercept", "per_year")):
        value, se = float(coef[k]), float(np.sqrt(cov[k, k]))
        out[key] = {"value": value, "ci_low": value - z * se, "ci_high": value + z * se}
    b, se_b = float(coef[1]), float(np.sqrt(cov[1, 1]))
    out["per_year"]["p_value"] = float(2 * norm.sf(abs(b / se_b)))
    return out


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
        ``observed_rate``, ``mean_risk``, ``oe``, ``auroc``, ``brier``) and ``drift``
        (:func:`calibration_drift`).
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
        return out | {"drift": calibration_drift(y, p, np.zeros(0), level=level)}
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
        out["periods"].append(
            row
            | {
                "suppressed": False,
                "observed_rate": ev / n,
                "mean_risk": float(ps.mean()),
                "oe": observed_expected(ys, ps, level=level),
                "auroc": delong_ci(ys, ps, level=level)
                if 0 < ev < n
                else {"value": None, "ci_low": None, "ci_high": None},
                "brier": float(np.mean((ps - ys) ** 2)),
            }
        )
    years = (dates - dates.min()) / np.timedelta64(1, "D") / DAYS_PER_YEAR
    out["drift"] = calibration_drift(y, p, years, level=level)
    return out
