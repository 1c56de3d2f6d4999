"""Monitoring a model in use before the outcomes arrive: period by period, are the cases and
the model's outputs still like the ones it was developed on?

Outcomes come late (a diagnosis is confirmed days or months after the risk was shown), so a
deployed model is watched first through what it sees and says. ``clinfuse monitor MODEL
P.csv --time-column encounter_date`` reads a predictions table written by ``clinfuse
predict`` (its provenance names the model version and the manifest) and, for each calendar
period of the manifest's date column, compares the scored cases with the model's
development cases (the run's train and validation splits; for a fold ensemble, the
cross-validation's pooled out-of-fold predictions):

- **risk**: mean risk and the share of cases at or above each alert threshold — the
  clinicians' workload and the first sign of a shift;
- **distribution shift**: the population stability index (PSI) of the fused logit and of
  each modality's risk against the development cases, in the development's deciles::

      PSI = Σ_bins (a − e) · ln(a / e)

  with ``e`` and ``a`` the development's and the period's shares of cases per bin (a bin's
  count plus ½, so an empty bin stays finite). By the usual convention, below 0.1 is stable,
  0.1–0.25 a moderate shift and above 0.25 a major one. A small period's PSI is large by
  chance alone: with no shift, ``PSI / (1/n + 1/N)`` follows a χ² law with B − 1 degrees of
  freedom (n and N the two samples' sizes, B the bins; Yurdakul, 2018), which gives each PSI
  its p-value;
- **modality availability**: the share of cases with each modality, against development — a
  scanner off line or a note template changed shows here first;
- **tabular inputs**: for each numeric input, the standardised mean difference against the
  training split's mean and SD stored in the model (|SMD| ≥ 0.2 flagged: a unit or assay
  change shifts a lab value's mean).

With a site column, every site's periods are also compared, each site with its own
development cases (:func:`_by_site`): a change at one site is otherwise diluted among the
others. Periods with fewer than ``min_size`` cases are counted but not compared. A comparison
becomes a flag of its period when the change is both large enough to matter (the lines
above) and unlikely by chance at the period's size: availability by a two-proportion
z-test, an SMD by its large-sample standard error, and each comparison's p-values
Holm-adjusted across the compared periods, below :data:`FLAG_P` (0.01). So a quiet month of
40 cases does not raise flags that only its size explains, and a long series of periods
does not raise them by its length: with no shift, a given comparison flags some period of
the report with probability at most 1 %. Where some outcomes are already known
(the manifest's label cells that are filled), the labelled cases also get the per-period
O/E and AUROC, the drifts and the risk-adjusted CUSUM charts of :mod:`clinfuse.evaluation
.temporal` and :mod:`clinfuse.evaluation.cusum`.

>>> result = monitor_predictions("runs/demo", "scored/p.csv", "monitor_2024",
...                              time_column="encounter_date", period="month")  # doctest: +SKIP
>>> result.table[["period", "n", "mean_risk", "psi_fusion", "flags"]]  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinfuse._files import assembled_from_sites
from clinfuse.errors import CohortError, ConfigError
from clinfuse.evaluation.calibration import _logit
from clinfuse.evaluation.subgroups import group_labels

__all__ = [
    "AVAILABILITY_FLAG",
    "FLAG_P",
    "PSI_MAJOR",
    "PSI_MODERATE",
    "SMD_ALERT",
    "MonitorResult",
    "known_outcomes_cusum",
    "monitor_periods",
    "monitor_predictions",
    "psi",
    "psi_p_value",
    "site_flags",
]

PSI_MODERATE = 0.1
"""PSI from which a distribution counts as moderately shifted."""
PSI_MAJOR = 0.25
"""PSI from which a distribution counts as shifted a lot."""
AVAILABILITY_FLAG = 0.10
"""Absolute change of a modality's availability (share of cases) that is flagged."""
SMD_ALERT = 0.2
"""|standardised mean difference| of a numeric input that is flagged in a period."""
FLAG_P = 0.01
"""A flag also needs its change to be this unlikely by chance: the two-sided p-value,
Holm-adjusted across the compared periods of that comparison, below it."""

_PSI_BINS = 10


def _psi(reference: np.ndarray, current: np.ndarray, bins: int) -> dict[str, Any]:
    """PSI of the finite values (None when either sample has none), its number of bins and
    the two sample sizes."""
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    out: dict[str, Any] = {"value": None, "bins": 0, "n_reference": len(ref), "n": len(cur)}
    if not len(ref) or not len(cur):
        return out
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    k = len(edges) + 1
    e = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=k) + 0.5
    a = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=k) + 0.5
    e, a = e / e.sum(), a / a.sum()
    return out | {"value": float(np.sum((a - e) * np.log(a / e))), "bins": k}


def psi(reference: np.ndarray, current: np.ndarray, *, bins: int = _PSI_BINS) -> float | None:
    """Population stability index of ``current`` against ``reference``, in the reference's
    quantile bins (see the module's docstring); None when either sample is empty.

    The bin edges are the reference's inner quantiles (ties merged), the outer bins open; a
    value on an edge goes to the bin above it.
    """
    return _psi(reference, current, bins)["value"]


def psi_p_value(value: float, n_reference: int, n_current: int, n_bins: int) -> float:
    """The chance of a PSI of ``value`` or more between two samples of one distribution:
    ``value / (1/n + 1/N)`` against χ² with ``n_bins − 1`` degrees of freedom."""
    from scipy.stats import chi2

    if n_bins < 2:
        return 1.0
    return float(chi2.sf(value / (1 / n_reference + 1 / n_current), n_bins - 1))


def _psi_test(reference: np.ndarray, current: np.ndarray) -> dict[str, Any]:
    res = _psi(reference, current, _PSI_BINS)
    p = (
        None
        if res["value"] is None
        else psi_p_value(res["value"], res["n_reference"], res["n"], res["bins"])
    )
    return {"value": res["value"], "p_value": p, "n": res["n"]}


def _numeric_stats(tabular: Any) -> dict[str, tuple[float, float]]:
    if tabular is None:
        return {}
    return {
        col: (tabular.means_[col], tabular.stds_[col])
        for col in tabular.columns
        if tabular.kinds_.get(col) == "numeric"
    }


def _smd(values: pd.Series, mean_d: float, sd_d: float, n_d: int) -> dict[str, Any]:
    """:func:`~clinfuse.evaluation.casemix.standardised_mean_difference` of ``values`` against
    a sample of ``n_d``, with its two-sided p-value (SE² = 1/n + 1/n_d + SMD² / (2 (n + n_d)))."""
    from scipy.stats import norm

    from clinfuse.evaluation.casemix import numeric_values, standardised_mean_difference

    arr = numeric_values(values)
    d = standardised_mean_difference(arr, mean_d, sd_d)
    if d is None:
        return {"value": None, "p_value": None}
    se = np.sqrt(1 / len(arr) + 1 / n_d + d**2 / (2 * (len(arr) + n_d)))
    return {"value": d, "p_value": float(2 * norm.sf(abs(d) / se))}


def _proportion_p(share: float, n: int, share_d: float, n_d: int) -> float:
    """Two-sided p-value of the two-proportion z-test (pooled SE)."""
    from scipy.stats import norm

    pooled = (share * n + share_d * n_d) / (n + n_d)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n + 1 / n_d))
    if se == 0:
        return 1.0 if share == share_d else 0.0
    return float(2 * norm.sf(abs(share - share_d) / se))


def _profile(frame: pd.DataFrame, modalities: Sequence[str], thresholds: Sequence[float]) -> dict:
    p = frame["p_fusion"].to_numpy(dtype=float)
    return {
        "n": len(frame),
        "mean_risk": float(p.mean()) if len(p) else None,
        "alert_rate": {f"{t:g}": float((p >= t).mean()) if len(p) else None for t in thresholds},
        "availability": {
            m: float(frame[f"present_{m}"].astype(float).mean()) if len(frame) else None
            for m in modalities
        },
    }


def _adjust(rows: list[dict[str, Any]]) -> None:
    """Holm-adjust each comparison's p-values across the periods (``p_adjusted``)."""
    from clinfuse.evaluation.compare import holm

    if not rows:
        return
    families: list[list[dict[str, Any]]] = [[r["psi_fusion"] for r in rows]]
    for key in ("psi", "availability", "smd"):
        families += [[r[key][name] for r in rows] for name in rows[0][key]]
    for tests in families:
        for test, p in zip(tests, holm([t["p_value"] for t in tests]), strict=True):
            test["p_adjusted"] = p


def _flags(row: dict[str, Any], development: dict[str, Any]) -> list[str]:
    def shown(test: dict[str, Any], line: float) -> bool:
        return (
            test["value"] is not None
            and abs(test["value"]) >= line
            and test["p_adjusted"] is not None
            and test["p_adjusted"] < FLAG_P
        )

    out = []
    test = row["psi_fusion"]
    if shown(test, PSI_MODERATE):
        size = "major" if test["value"] >= PSI_MAJOR else "moderate"
        out.append(f"fused risk distribution: {size} shift (PSI {test['value']:.2f})")
    for m, test in row["psi"].items():
        if shown(test, PSI_MAJOR):
            out.append(f"{m} risk distribution: major shift (PSI {test['value']:.2f})")
    for m, test in row["availability"].items():
        if shown(test | {"value": test["change"]}, AVAILABILITY_FLAG):
            out.append(
                f"{m} available in {100 * test['value']:.0f} % of cases (development "
                f"{100 * development['availability'][m]:.0f} %)"
            )
    for col, test in row["smd"].items():
        if shown(test, SMD_ALERT):
            out.append(f"{col}: mean shifted by {test['value']:+.2f} SD")
    return out


@dataclass
class _Reference:
    """What a period is compared with: development cases' profile, fused logits, each
    modality's present logits, and the numeric inputs' mean and SD with their sample size."""

    profile: dict[str, Any]
    logit: np.ndarray
    risk: dict[str, np.ndarray]
    numeric: dict[str, tuple[float, float]]
    n_numeric: int

    @classmethod
    def of(
        cls,
        development: pd.DataFrame,
        modalities: Sequence[str],
        thresholds: Sequence[float],
        numeric: dict[str, tuple[float, float]],
        n_numeric: int | None = None,
    ) -> _Reference:
        if n_numeric is None:  # the model's stored statistics: its training split
            n_train = int((development["split"] == "train").sum()) if "split" in development else 0
            n_numeric = n_train or len(development)
        return cls(
            profile=_profile(development, modalities, thresholds),
            logit=development["logit_fusion"].to_numpy(dtype=float),
            risk={
                m: _logit(
                    development[f"p_{m}"].to_numpy(dtype=float)[development[f"present_{m}"] == 1]
                )
                for m in modalities
            },
            numeric=numeric,
            n_numeric=n_numeric,
        )


@dataclass
class _Periods:
    """The calendar periods of a report and the comparison of one set of cases per period."""

    calendar: pd.PeriodIndex
    labels: np.ndarray  # each dated case's period
    modalities: Sequence[str]
    thresholds: Sequence[float]
    min_size: int

    def rows(
        self,
        frame: pd.DataFrame,
        values: pd.DataFrame | None,
        ref: _Reference,
        select: np.ndarray | None = None,
    ) -> list[dict[str, Any]]:
        """One row per calendar period for the cases ``select`` (default: all)."""
        select = np.ones(len(frame), bool) if select is None else select
        known = (
            frame["label"].notna().to_numpy() if "label" in frame else np.zeros(len(frame), bool)
        )
        out = []
        for label in self.calendar:
            sel = (self.labels == label) & select
            part = frame[sel]
            row: dict[str, Any] = {
                "period": str(label),
                "start": str(label.start_time.date()),
                "n": int(sel.sum()),
                "n_labelled": int(known[sel].sum()),
            }
            if row["n"] < self.min_size:
                out.append(row | {"suppressed": True})
                continue
            out.append(
                row | {"suppressed": False} | self._compare(part, values, sel, ref, row["n"])
            )
        return out

    def _compare(
        self,
        part: pd.DataFrame,
        values: pd.DataFrame | None,
        sel: np.ndarray,
        ref: _Reference,
        n: int,
    ) -> dict[str, Any]:
        profile = _profile(part, self.modalities, self.thresholds)
        dev = ref.profile
        return {
            "mean_risk": profile["mean_risk"],
            "alert_rate": profile["alert_rate"],
            "psi_fusion": _psi_test(ref.logit, part["logit_fusion"].to_numpy(dtype=float)),
            "psi": {
                m: _psi_test(
                    ref.risk[m],
                    _logit(part[f"p_{m}"].to_numpy(dtype=float)[part[f"present_{m}"] == 1]),
                )
                for m in self.modalities
            },
            "availability": {
                m: {
                    "value": share,
                    "change": share - dev["availability"][m],
                    "p_value": _proportion_p(share, n, dev["availability"][m], dev["n"]),
                }
                for m, share in profile["availability"].items()
            },
            "smd": {
                col: _smd(values.loc[sel, col], *stats, ref.n_numeric)
                for col, stats in ref.numeric.items()
                if values is not None and col in values.columns
            },
        }


def site_flags(entry: dict[str, Any]) -> list[str]:
    """``PERIOD: flag; flag`` for each flagged period of one site of ``by_site``."""
    return [f"{r['period']}: {'; '.join(r['flags'])}" for r in entry["periods"] if r.get("flags")]


def _site_numeric(
    values: pd.DataFrame, pooled: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """Each numeric input's mean and SD among one site's development cases (the pooled
    statistics where the site has fewer than two values)."""
    from clinfuse.evaluation.casemix import numeric_values

    out = {}
    for col, stats in pooled.items():
        arr = numeric_values(values[col]) if col in values.columns else np.zeros(0)
        out[col] = (float(arr.mean()), float(arr.std(ddof=1))) if len(arr) >= 2 else stats
    return out


def _by_site(
    compare: _Periods,
    frame: pd.DataFrame,
    values: pd.DataFrame | None,
    site_of: np.ndarray,
    development: pd.DataFrame,
    pooled: _Reference,
    development_sites: Sequence[Any] | None,
    tabular_reference: pd.DataFrame | None,
) -> dict[str, Any] | None:
    """Every site's periods compared, each site with its own development cases.

    A shift at one site (its scanner off line, a changed assay) is diluted among the others
    in the pooled periods. Each site with at least ``min_size`` dated cases is compared
    period by period with its own development cases when it has ``min_size`` of them (its
    case mix and feeds as they were), else with all of them (a site new to the model). The
    numeric inputs are compared with the site's development values when they are known (the
    training manifest), else with the model's stored training statistics. Each comparison's
    p-values are Holm-adjusted across every site's periods together, so with no shift a given
    comparison flags some site's period with probability at most :data:`FLAG_P`.

    Returns:
        None with fewer than two sites; else ``sites`` (per site: ``site``, ``n``,
        ``reference`` (``site`` or ``all``), ``n_reference``, ``development`` (the
        reference's profile), ``periods`` as the pooled ``periods``, ``n_flagged_periods``), ``left_out`` (sites with too few cases:
        ``site``, ``n``) and ``n_flagged_periods`` (site periods with a flag).
    """
    names = sorted(set(site_of.tolist()))
    if len(names) < 2:
        return None
    dev_sites = None if development_sites is None else group_labels(development_sites)
    entries: list[dict[str, Any]] = []
    left_out = []
    refs: dict[str, _Reference] = {}
    for name in names:
        select = site_of == name
        n = int(select.sum())
        if n < compare.min_size:
            left_out.append({"site": name, "n": n})
            continue
        own = None if dev_sites is None else dev_sites == name
        if own is not None and int(own.sum()) >= compare.min_size:
            numeric, n_numeric = pooled.numeric, pooled.n_numeric
            if tabular_reference is not None:
                numeric = _site_numeric(tabular_reference[own], pooled.numeric)
                n_numeric = int(own.sum())
            refs[name] = _Reference.of(
                development[own].reset_index(drop=True),
                compare.modalities,
                compare.thresholds,
                numeric,
                n_numeric,
            )
            reference = "site"
        else:
            refs[name] = pooled
            reference = "all"
        entries.append(
            {
                "site": name,
                "n": n,
                "reference": reference,
                "n_reference": refs[name].profile["n"],
                "development": refs[name].profile,
                "periods": compare.rows(frame, values, refs[name], select),
            }
        )
    compared = [r for e in entries for r in e["periods"] if not r["suppressed"]]
    _adjust(compared)
    for e in entries:
        for row in e["periods"]:
            if not row["suppressed"]:
                row["flags"] = _flags(row, refs[e["site"]].profile)
        e["n_flagged_periods"] = sum(1 for r in e["periods"] if r.get("flags"))
    return {
        "sites": entries,
        "left_out": left_out,
        "n_flagged_periods": sum(e["n_flagged_periods"] for e in entries),
    }


def monitor_periods(
    development: pd.DataFrame,
    scored: pd.DataFrame,
    dates: np.ndarray,
    modalities: Sequence[str],
    *,
    period: str = "month",
    thresholds: Sequence[float] = (0.1, 0.2, 0.3),
    min_size: int = 30,
    tabular: Any = None,
    tabular_values: pd.DataFrame | None = None,
    level: float = 0.95,
    cusum_false_alarm: float = 0.05,
    seed: int = 0,
    sites: Sequence[Any] | None = None,
    development_sites: Sequence[Any] | None = None,
    tabular_reference: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The per-period comparison of the module's docstring.

    Args:
        development: the development cases (``p_fusion``, ``logit_fusion``, ``p_<m>``,
            ``present_<m>``).
        scored: the monitored cases, same columns, and ``label`` (empty: not known yet).
        dates: (N,) ``datetime64`` of ``scored``'s rows; NaT cases are counted, not compared.
        modalities: the model's modalities.
        period: ``month``, ``quarter`` or ``year``.
        thresholds: alert thresholds of the fused risk.
        min_size: a period with fewer cases is not compared.
        tabular: the model's fitted tabular encoder (numeric inputs' training mean and SD).
        tabular_values: ``scored``'s raw tabular columns, rows in its order.
        level, cusum_false_alarm, seed: for the labelled cases' outcome section.
        sites: ``scored``'s site of each row: every site's periods are also compared
            (``by_site``), and the outcome section adds each site's CUSUM charts
            (:func:`~clinfuse.evaluation.cusum.cusum_by_group`).
        development_sites: ``development``'s site of each row (from the training manifest):
            a site is compared with its own development cases when it has ``min_size`` of
            them, else with all of them.
        tabular_reference: ``development``'s raw tabular columns, rows in its order: the
            numeric inputs' mean and SD of a site's own development cases.

    Returns:
        ``period``, ``n_dated``, ``n_undated``, ``first``/``last``, ``thresholds``,
        ``development`` (its profile), ``periods`` (per calendar period from the first to the
        last: ``period``, ``start``, ``n``, ``n_labelled``, ``suppressed`` and, when
        compared, ``mean_risk``, ``alert_rate``, ``psi_fusion`` and ``psi`` (per modality;
        each ``{value, p_value, n}``), ``availability`` (per modality ``{value, change,
        p_value}``), ``smd`` (per numeric input ``{value, p_value}``) and ``flags``),
        ``n_flagged_periods``, ``by_site`` (with ``sites``: :func:`_by_site`) and
        ``outcomes`` (None, or the labelled cases' performance over time with the CUSUM of
        :func:`known_outcomes_cusum`).
    """
    from clinfuse.evaluation.temporal import PERIODS, check_period, performance_over_time

    check_period(period)
    dates = np.asarray(dates, dtype="datetime64[ns]")
    if len(dates) != len(scored):
        raise ValueError("dates and scored cases differ in number")
    dated = ~np.isnat(dates)
    ref = _Reference.of(development, modalities, thresholds, _numeric_stats(tabular))
    out: dict[str, Any] = {
        "period": period,
        "n_dated": int(dated.sum()),
        "n_undated": int((~dated).sum()),
        "min_size": min_size,
        "thresholds": [float(t) for t in thresholds],
        "development": ref.profile,
        "periods": [],
        "outcomes": None,
    }
    if not dated.any():
        return out | {"n_flagged_periods": 0}
    stamps = pd.DatetimeIndex(dates[dated])
    labels = stamps.to_period(PERIODS[period])
    out["first"], out["last"] = str(stamps.min().date()), str(stamps.max().date())
    frame = scored[dated].reset_index(drop=True)
    values = None if tabular_values is None else tabular_values[dated].reset_index(drop=True)
    calendar = pd.period_range(labels.min(), labels.max(), freq=PERIODS[period])
    compare = _Periods(calendar, np.asarray(labels), modalities, thresholds, min_size)
    out["periods"] = compare.rows(frame, values, ref)
    compared = [r for r in out["periods"] if not r["suppressed"]]
    _adjust(compared)
    for row in compared:
        row["flags"] = _flags(row, ref.profile)
    out["n_flagged_periods"] = sum(1 for r in compared if r["flags"])
    if sites is not None:
        site_of = group_labels(sites)[dated]
        out["by_site"] = _by_site(
            compare,
            frame,
            values,
            site_of,
            development,
            ref,
            development_sites,
            tabular_reference,
        )
    chart = known_outcomes_cusum(scored, dates, false_alarm=cusum_false_alarm, seed=seed)
    if chart is not None:  # some outcomes known, of both kinds
        out["outcomes"] = performance_over_time(
            chart.y, chart.p, chart.dates, period=period, min_size=min_size, level=level
        ) | {"cusum": chart.to_dict()}
        if sites is not None:
            by_site = _known_outcomes_by_site(
                scored, dates, sites, false_alarm=cusum_false_alarm, seed=seed, min_size=min_size
            )
            if by_site is not None:
                out["outcomes"]["cusum_by_site"] = by_site
    return out


def _known_outcomes_by_site(
    scored: pd.DataFrame,
    dates: np.ndarray,
    sites: Sequence[Any],
    *,
    false_alarm: float,
    seed: int,
    min_size: int,
) -> dict[str, Any] | None:
    """Each site's CUSUM charts of its dated cases whose outcome is known."""
    from clinfuse.evaluation.cusum import cusum_by_group

    known = scored["label"].notna().to_numpy() if "label" in scored else np.zeros(len(scored), bool)
    return cusum_by_group(
        scored["label"].to_numpy(dtype=float)[known],
        scored["p_fusion"].to_numpy(dtype=float)[known],
        np.asarray(dates, dtype="datetime64[ns]")[known],
        np.asarray(list(sites), dtype=object)[known],
        false_alarm=false_alarm,
        seed=seed,
        case_ids=scored["case_id"].astype(str).to_numpy()[known].tolist(),
        min_size=min_size,
    )


def known_outcomes_cusum(
    scored: pd.DataFrame, dates: np.ndarray, *, false_alarm: float = 0.05, seed: int = 0
) -> Any:
    """The risk-adjusted CUSUM (:class:`~clinfuse.evaluation.cusum.Cusum`) of the dated
    cases whose outcome is known; None unless both outcomes are among them."""
    from clinfuse.evaluation.cusum import risk_adjusted_cusum

    dates = np.asarray(dates, dtype="datetime64[ns]")
    labels = scored["label"] if "label" in scored else pd.Series(np.nan, index=scored.index)
    known = labels.notna().to_numpy() & ~np.isnat(dates)
    y = labels.to_numpy(dtype=float)[known]
    if len(np.unique(y)) < 2:
        return None
    return risk_adjusted_cusum(
        y,
        scored["p_fusion"].to_numpy(dtype=float)[known],
        dates[known],
        false_alarm=false_alarm,
        seed=seed,
        case_ids=scored["case_id"].astype(str).to_numpy()[known].tolist(),
    )


@dataclass
class MonitorResult:
    """What :func:`monitor_predictions` wrote.

    Attributes:
        out: the monitoring folder.
        summary: ``monitoring.json``.
        table: ``monitoring.csv``, one row per period.
    """

    out: Path
    summary: dict[str, Any]
    table: pd.DataFrame

    @property
    def report(self) -> Path:
        return self.out / "report.html"


def _development(model: Path) -> tuple[pd.DataFrame, Any, list[str]]:
    """The development cases of a run or cross-validation folder, its tabular encoder and
    its modalities."""
    from clinfuse.ensemble import is_crossval_folder
    from clinfuse.evaluation.casemix import development_cases

    if is_crossval_folder(model):
        table = model / "evaluation" / "predictions.csv"
        what = "the cross-validation's pooled predictions"
    else:
        table = model / "predictions.csv"
        what = "the run's predictions"
    model_json = _model_json(model)
    if assembled_from_sites(model) and not table.is_file():
        raise ConfigError(
            "the run was assembled on a federation's coordinator: its development cases "
            "stayed at the sites",
            path=model,
            hint="score this site's development cases with `clinfuse predict` and pass the "
            "table as --reference",
        )
    if not table.is_file() or not model_json.is_file():
        raise ConfigError(
            f"{what} or its model.json are missing",
            path=model,
            hint="give a complete run folder (clinfuse train) or cross-validation folder",
        )
    frame = pd.read_csv(table, dtype={"case_id": str})
    if not is_crossval_folder(model):
        frame = development_cases(frame)
    modalities = [c.removeprefix("present_") for c in frame.columns if c.startswith("present_")]
    return frame, _tabular_of(model_json), modalities


def _model_json(model: Path) -> Path:
    """The ``model.json`` of a run, or of a cross-validation's first fold model."""
    from clinfuse.ensemble import is_crossval_folder

    if is_crossval_folder(model):
        summary = json.loads((model / "crossval.json").read_text(encoding="utf-8"))
        return model / summary["fold_models"][0]["path"] / "model" / "model.json"
    return model / "model" / "model.json"


def _tabular_of(model_json: Path) -> Any:
    from clinfuse.io.tabular import TabularEncoder

    meta = json.loads(model_json.read_text(encoding="utf-8"))
    return None if meta.get("tabular") is None else TabularEncoder.from_dict(meta["tabular"])


def _provenance(table: Path, version: str, what: str) -> dict[str, Any]:
    """The provenance of a table ``clinfuse predict`` wrote, checked against ``version``.

    Raises:
        ConfigError: no provenance file, or another model version.
    """
    from clinfuse.scored import read_provenance

    info = read_provenance(table)
    if info is None:
        raise ConfigError(
            f"the {what} has no provenance file, so its model and manifest are unknown",
            path=table,
            hint="score the cases with `clinfuse predict MODEL COHORT --out FILE.csv`",
        )
    if info["model_version"] != version:
        raise ConfigError(
            f"the {what} was made by model version {info['model_version']}, not by this "
            f"folder's {version}",
            path=table,
            hint="give the model that scored it, or rescore with `clinfuse predict`",
        )
    return dict(info)


def _reference_cases(
    model: Path, reference: Path, version: str
) -> tuple[pd.DataFrame, Any, list[str], Path]:
    """The development cases from a table ``clinfuse predict`` wrote with this model
    (``--reference``), the model's tabular encoder and modalities, and the table's manifest.

    Raises:
        ConfigError: a table without provenance, of another model version, or whose
            manifest is gone.
    """
    info = _provenance(reference, version, "reference table")
    model_json = _model_json(model)
    meta = json.loads(model_json.read_text(encoding="utf-8"))
    modalities = [m for m in meta.get("modalities", [])]
    frame = _scored(reference, modalities)
    return frame, _tabular_of(model_json), modalities, Path(info["manifest"])


def _development_sites(
    model: Path, development: pd.DataFrame, columns: Sequence[str], manifest: Path | None = None
) -> tuple[list[Any] | None, pd.DataFrame | None]:
    """The development cases' sites and raw tabular ``columns`` from the development
    manifest (``manifest``, else the one the run records), rows in ``development``'s order;
    (None, None) without a site column, or when the manifest is gone or lacks some
    development case."""
    from clinfuse.cohort.manifest import read_manifest
    from clinfuse.evaluation.casemix import development_manifest

    path = manifest if manifest is not None else development_manifest(model)
    if path is None or not path.is_file():
        return None, None
    table = read_manifest(path)
    if "site" not in table.columns:
        return None, None
    table = table.assign(case_id=table["case_id"].astype(str)).drop_duplicates("case_id")
    table = table.set_index("case_id")
    ids = development["case_id"].astype(str)
    if not ids.isin(table.index).all():
        return None, None
    rows = table.loc[ids]
    kept = [c for c in columns if c in rows.columns]
    values = rows[kept].reset_index(drop=True) if kept else None
    return rows["site"].tolist(), values


def _scored(predictions: Path, modalities: Sequence[str]) -> pd.DataFrame:
    frame = pd.read_csv(predictions, dtype={"case_id": str})
    need = ["case_id", "p_fusion", "logit_fusion"]
    need += [f"{k}_{m}" for m in modalities for k in ("p", "present")]
    lacking = [c for c in need if c not in frame.columns]
    if lacking:
        raise ConfigError(
            f"the predictions table lacks {', '.join(lacking)}",
            path=predictions,
            hint="give a table written by `clinfuse predict` with this model",
        )
    return frame


def monitor_predictions(
    model: str | Path,
    predictions: str | Path,
    out: str | Path,
    *,
    time_column: str,
    period: str = "month",
    thresholds: Sequence[float] | str | None = None,
    min_size: int = 30,
    manifest: str | Path | None = None,
    overwrite: bool = False,
    cusum_false_alarm: float = 0.05,
    reference: str | Path | None = None,
) -> MonitorResult:
    """Monitor a model's predictions period by period (see the module's docstring) and write
    ``monitoring.json``, ``monitoring.csv``, ``figures/monitoring.png`` and a self-contained
    ``report.html`` into ``out`` (which appears only when complete).

    Args:
        model: the run or cross-validation folder that scored ``predictions``.
        predictions: a table written by ``clinfuse predict`` (with its provenance file).
        out: the folder to create.
        time_column: the manifest column of dates.
        period: ``month``, ``quarter`` or ``year``.
        thresholds: alert thresholds of the fused risk (default 0.1, 0.2, 0.3).
        min_size: periods with fewer cases are counted, not compared.
        manifest: the scored manifest, when it moved since ``clinfuse predict`` (default: the
            one the provenance names).
        overwrite: replace an existing ``out``.
        cusum_false_alarm: each CUSUM chart's chance of a false signal among the cases
            whose outcomes are known.
        reference: a table ``clinfuse predict`` wrote with this model on the cases to
            compare with (default: the run's train and validation predictions). A run
            assembled from a federation needs it: its development cases stayed at the sites.

    Raises:
        ConfigError: predictions without provenance, or of another model version; a missing
            manifest; a folder in the way; bad thresholds, period or false-alarm rate.
        CohortError: no such date column, or an unreadable date (naming the case).
    """
    from clinfuse._files import atomic_folder
    from clinfuse.cohort.manifest import read_manifest
    from clinfuse.evaluation import figures
    from clinfuse.evaluation.evaluate import _check_out, parse_thresholds
    from clinfuse.evaluation.report import render_monitoring
    from clinfuse.evaluation.temporal import check_period, parse_dates
    from clinfuse.scored import model_version

    model, predictions, out = Path(model), Path(predictions), Path(out)
    from clinfuse.evaluation.cusum import check_false_alarm

    check_period(period)
    levels = parse_thresholds(thresholds)
    false_alarm = check_false_alarm(cusum_false_alarm)
    if min_size < 1:
        raise ConfigError("min_size must be at least 1", field="min_size")
    _check_out(out, overwrite)
    version = model_version(model)
    info = _provenance(predictions, version, "predictions table")
    manifest = Path(manifest or info["manifest"])
    if not manifest.is_file():
        raise ConfigError(
            "the scored manifest is not there",
            path=manifest,
            hint="pass --manifest with where it is now",
        )
    ref_manifest = None
    if reference is None:
        development, tabular, modalities = _development(model)
    else:
        development, tabular, modalities, ref_manifest = _reference_cases(
            model, Path(reference), version
        )
    scored = _scored(predictions, modalities)
    table = read_manifest(manifest)
    if time_column not in table.columns:
        raise CohortError(
            f"time column {time_column!r} is not in the manifest (columns: "
            f"{', '.join(map(str, table.columns))})",
            field=time_column,
            path=manifest,
            hint="check --time-column against the manifest's header",
        )
    table = table.assign(case_id=table["case_id"].astype(str)).set_index("case_id")
    if table.index.duplicated().any():
        raise ConfigError(
            f"case id {table.index[table.index.duplicated()][0]!r} appears twice in the manifest",
            path=manifest,
            hint="give each case one row (`clinfuse validate` lists such problems)",
        )
    missing = [c for c in scored["case_id"] if c not in table.index]
    if missing:
        raise ConfigError(
            f"{len(missing)} scored case(s) are not in the manifest, e.g. {missing[0]!r}",
            path=manifest,
            hint="give the manifest the predictions were made from (--manifest)",
        )
    rows = table.loc[scored["case_id"]]
    dates = parse_dates(
        rows[time_column].tolist(), list(scored["case_id"]), column=time_column, path=manifest
    )
    columns = [] if tabular is None else [c for c in tabular.columns if c in rows.columns]
    values = rows[columns].reset_index(drop=True) if columns else None
    sites = rows["site"].tolist() if "site" in rows.columns else None
    dev_sites, dev_values = (None, None)
    if sites is not None:
        dev_sites, dev_values = _development_sites(model, development, columns, ref_manifest)
    res = monitor_periods(
        development,
        scored,
        dates,
        modalities,
        period=period,
        thresholds=levels,
        min_size=min_size,
        tabular=tabular if columns else None,
        tabular_values=values,
        cusum_false_alarm=false_alarm,
        sites=sites,
        development_sites=dev_sites,
        tabular_reference=dev_values,
    )
    chart = (
        known_outcomes_cusum(scored, dates, false_alarm=false_alarm)
        if res["outcomes"] is not None
        else None
    )
    summary = {
        "schema": "clinfuse.monitoring.v1",
        "model": str(model.resolve()),
        "model_version": version,
        "predictions": str(predictions.resolve()),
        "manifest": str(manifest.resolve()),
        "column": time_column,
        "reference": None if reference is None else str(Path(reference).resolve()),
    } | res
    frame = _table(summary)
    with atomic_folder(out) as tmp:
        png = {
            "monitoring": figures.save_figure(
                figures.monitoring_figure(summary), tmp / "figures", "monitoring"
            )
        }
        sites_fig = figures.monitoring_sites_figure(summary)
        if sites_fig is not None:
            png["monitoring_sites"] = figures.save_figure(
                sites_fig, tmp / "figures", "monitoring_sites"
            )
        if summary["outcomes"] and summary["outcomes"]["periods"]:
            png["over_time"] = figures.save_figure(
                figures.over_time_figure(summary["outcomes"] | {"column": time_column}),
                tmp / "figures",
                "over_time",
            )
        if chart is not None and len(chart.y):
            png["cusum"] = figures.save_figure(
                figures.cusum_figure(chart, column=time_column), tmp / "figures", "cusum"
            )
        (tmp / "monitoring.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        frame.to_csv(tmp / "monitoring.csv", index=False)
        site_frame = _site_table(summary)
        if site_frame is not None:
            site_frame.to_csv(tmp / "monitoring_by_site.csv", index=False)
        (tmp / "report.html").write_text(render_monitoring(summary, png), encoding="utf-8")
    return MonitorResult(out=out, summary=summary, table=frame)


def _table(summary: dict[str, Any]) -> pd.DataFrame:
    """``monitoring.csv``: one row per period, nested values flattened."""
    return _period_table(summary["periods"])


def _site_table(summary: dict[str, Any]) -> pd.DataFrame | None:
    """``monitoring_by_site.csv``: one row per site and period (None without sites)."""
    by = summary.get("by_site")
    if not by:
        return None
    parts = [
        _period_table(e["periods"]).assign(site=e["site"], reference=e["reference"])
        for e in by["sites"]
    ]
    if not parts:
        return None
    frame = pd.concat(parts, ignore_index=True)
    return frame[
        ["site", "reference", *[c for c in frame.columns if c not in ("site", "reference")]]
    ]


def _period_table(periods: list[dict[str, Any]]) -> pd.DataFrame:
    records = []
    for r in periods:
        rec: dict[str, Any] = {k: r.get(k) for k in ("period", "start", "n", "n_labelled")}
        rec["suppressed"] = r["suppressed"]
        if not r["suppressed"]:
            rec["mean_risk"] = r["mean_risk"]
            rec |= {f"alert_rate_{t}": v for t, v in r["alert_rate"].items()}
            rec["psi_fusion"] = r["psi_fusion"]["value"]
            rec["psi_fusion_p"] = r["psi_fusion"]["p_value"]
            rec |= {f"psi_{m}": v["value"] for m, v in r["psi"].items()}
            rec |= {f"available_{m}": v["value"] for m, v in r["availability"].items()}
            rec |= {f"smd_{c}": v["value"] for c, v in r["smd"].items()}
            rec["flags"] = "; ".join(r["flags"])
        records.append(rec)
    return pd.DataFrame(records)
