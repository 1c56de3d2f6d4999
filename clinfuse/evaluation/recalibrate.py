"""Model updating at a new site: ``clinfuse recalibrate``.

A model taken to another hospital usually keeps its ranking of cases but not its
calibration: the event rate differs (the calibration intercept is off) and risks
come out too extreme or too moderate (the slope is off). ``clinfuse evaluate``
measures both; this module fixes them on the site's own labelled cases and writes
a *new* run folder, leaving the source run untouched.

Methods, in increasing order of what they change (Steyerberg, *Clinical Prediction
Models*, 2nd ed., ch. 20; Van Calster et al., BMC Med 2019):

- ``intercept`` — recalibration in the large: ``logit p' = a + logit p``; the site's
  event rate, same ranking, same spread;
- ``logistic`` — logistic recalibration: ``logit p' = a + b · logit p``; also the
  spread (b < 1 shrinks extreme risks); ranking unchanged (b > 0 is required: a
  fused risk with b ≤ 0 is refused, a modality's risk falls back to ``intercept``);
- ``isotonic`` — a monotone step function of ``logit p``; needs many cases, ties risks;
- ``dynamic`` — a logistic update that follows a drifting site: replayed in date order,
  each day's outcomes update ``(a, b)``, older days counting less (a half-life); the
  state at the last day is the update (:mod:`clinfuse.evaluation.dynamic`), and each
  case's *prequential* risk — from the state before its day — measures whether updating
  helps;
- ``auto`` — the closed testing procedure of Vergouwe et al. (Stat Med 2017): the
  logistic update is tested against the unchanged model (likelihood ratio, 2 df); if
  it is not significant at ``alpha`` the model is kept as it is; otherwise the
  logistic update is tested against the intercept update (1 df) and the simpler one
  is kept unless the slope is needed.

Every output the review app shows is updated — the fused risk and each modality's
risk (on the cases that have the modality) — with the same method (``auto`` decides
per output). An update is stored as :class:`clinfuse.calibration.Updated` around the
run's calibrator in ``model/model.json``; a run can be recalibrated again.

The new run folder is a copy of the source (without its ``explanations/`` and
``evaluation/`` folders, which show the source's risks) with: the updated ``model/model.json``;
``predictions.csv`` and ``metrics.json`` recomputed for the development cases the
source run holds (the same model, updated, on the same cases: discrimination is
unchanged, calibration there moves to the new site); ``recalibration.json`` (what
was fitted on which cases, the tests, coefficients with 95 % CIs, calibration before
and after on the recalibration cases — apparent, i.e. on the cases used for fitting);
``recalibration_cases.csv`` (case id, outcome and the logit the fused update saw, for
the review app's uncertainty band; written when the fused risk is updated); ``run.json`` with ``recalibrated_from``. It is
written to a temporary sibling folder and renamed into place.

A ``clinfuse crossval`` folder's fold ensemble is recalibrated as a whole: the outputs
updated are the ensemble's risks (the mean of the fold models' calibrated risks), whose
calibration was never fitted as such. The new folder is a copy of the cross-validation
(the fold models, its out-of-fold evaluation and fold plan unchanged) with
``ensemble_calibration.json`` (the update of each output, applied by
:class:`clinfuse.ensemble.FoldEnsemble` after averaging) and ``recalibration.json``.
Its model version (:func:`clinfuse.scored.model_version`) differs from the source's, so
tables, explanations and evaluations of the source ensemble are not taken for its own.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chi2, norm

from clinfuse._files import publish, temp_sibling
from clinfuse.calibration import (
    UPDATE_EPS,
    UPDATE_METHODS,
    Calibrator,
    Dynamic,
    Identity,
    Updated,
    fit_logistic,
    fit_update,
)
from clinfuse.errors import CohortError, ConfigError
from clinfuse.evaluation.dynamic import choose_half_life, dynamic_recalibration
from clinfuse.evaluation.metrics import log_loss

__all__ = [
    "METHODS",
    "RecalibrationResult",
    "closed_test",
    "recalibrate_run",
]

METHODS: tuple[str, ...] = ("auto", *UPDATE_METHODS, "dynamic")
"""What ``--method`` accepts."""

MIN_EVENTS = 100
"""Fewer events (or non-events) than this draw a warning: calibration estimates are
imprecise (Van Calster et al. 2016 and Riley et al. 2021 ask for at least 100 of each)."""

MIN_ISOTONIC = 1000
"""Fewer cases than this draw a warning for the isotonic update (it overfits)."""


@dataclass
class RecalibrationResult:
    """What :func:`recalibrate_run` wrote."""

    out: Path
    """The new run folder."""
    report: dict[str, Any]
    """The content of ``recalibration.json``."""

    def method(self, output: str = "fusion") -> str:
        """The update chosen for ``output`` (``none`` when the model was kept)."""
        return str(self.report["outputs"][output]["method"])


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), UPDATE_EPS, 1 - UPDATE_EPS)
    return np.asarray(np.log(q) - np.log1p(-q))


def _deviance(y: np.ndarray, eta: np.ndarray) -> float:
    """−2 log likelihood of outcomes ``y`` under linear predictor ``eta``."""
    return float(-2.0 * np.sum(y * eta - np.logaddexp(0.0, eta)))


def closed_test(z: np.ndarray, y: np.ndarray, *, alpha: float = 0.05) -> dict[str, Any]:
    """The closed testing procedure between no update, intercept and logistic update.

    Args:
        z: (N,) logits of the model's current risks.
        y: (N,) 0/1 outcomes.
        alpha: significance level of both likelihood-ratio tests.

    Returns:
        ``{"deviance": {none, intercept, logistic}, "tests": [...], "alpha",
        "selected"}``; each test has ``compare``, ``statistic``, ``df``, ``p_value``.
        A fit that does not exist (perfect separation) has deviance ``None`` and
        cannot be selected.
    """
    z = np.asarray(z, dtype=float)
    y = np.asarray(y, dtype=float)
    ones = np.ones((len(z), 1))
    dev: dict[str, float | None] = {"none": _deviance(y, z)}
    fit_a = fit_logistic(ones, y, offset=z)
    dev["intercept"] = None if fit_a is None else _deviance(y, z + fit_a[0][0])
    fit_ab = fit_logistic(np.column_stack([ones, z]), y)
    dev["logistic"] = None if fit_ab is None else _deviance(y, fit_ab[0][0] + fit_ab[0][1] * z)

    def lr(big: str, small: str, df: int) -> dict[str, Any]:
        d_big, d_small = dev[big], dev[small]
        if d_big is None or d_small is None:
            return {"compare": f"{big} vs {small}", "statistic": None, "df": df, "p_value": None}
        stat = max(d_small - d_big, 0.0)
        return {
            "compare": f"{big} vs {small}",
            "statistic": stat,
            "df": df,
            "p_value": float(chi2.sf(stat, df)),
        }

    tests = [lr("logistic", "none", 2)]
    first = tests[0]["p_value"]
    if first is None:  # no logistic fit: fall back to the intercept test alone
        tests.append(lr("intercept", "none", 1))
        second = tests[1]["p_value"]
        selected = "intercept" if second is not None and second < alpha else "none"
    elif first >= alpha:
        selected = "none"
    else:
        tests.append(lr("logistic", "intercept", 1))
        second = tests[1]["p_value"]
        selected = "logistic" if second is None or second < alpha else "intercept"
    return {"deviance": dev, "tests": tests, "alpha": alpha, "selected": selected}


def _coefficients(update: Calibrator, z: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The update's intercept (and slope) with Wald 95 % CIs; empty for isotonic."""
    zc = float(norm.ppf(0.975))
    ones = np.ones((len(z), 1))
    out: dict[str, Any] = {}
    if update.method == "intercept":
        fit = fit_logistic(ones, y, offset=z)
        names = ["intercept"]
    elif update.method == "platt":
        fit = fit_logistic(np.column_stack([ones, z]), y)
        names = ["intercept", "slope"]
    else:
        return out
    if fit is None:
        return out
    beta, cov = fit
    for i, name in enumerate(names):
        se = float(np.sqrt(cov[i, i]))
        value = float(beta[i])
        out[name] = {"value": value, "ci_low": value - zc * se, "ci_high": value + zc * se}
    return out


def _update_output(
    name: str,
    base: Calibrator,
    q: np.ndarray,
    y: np.ndarray,
    *,
    method: str,
    alpha: float,
    dates: np.ndarray | None = None,
    dynamic: dict[str, Any] | None = None,
) -> tuple[Calibrator, dict[str, Any]]:
    """Fit the update of one output (``fusion`` or a modality) from its current risks ``q``.

    ``method="dynamic"`` needs the cases' ``dates`` and the settings of
    :func:`~clinfuse.evaluation.dynamic.dynamic_recalibration` (``dynamic``); the entry
    then holds the replay under ``replay`` (taken out before it is written)."""
    from clinfuse.evaluation.calibration import calibration_summary

    n, events = len(y), int(np.sum(y))
    entry: dict[str, Any] = {"n_cases": n, "n_events": events, "requested": method}
    if n == 0 or events in (0, n):
        entry.update(
            method="none",
            reason=f"the cases with this output have {'no' if n == 0 else 'one'} outcome class; "
            "kept unchanged",
        )
        return base, entry
    z = _logit(q)
    if method == "dynamic":
        assert dynamic is not None and dates is not None
        update, coef = _dynamic_update(entry, q, y, dates, dynamic)
        chosen = "dynamic"
    else:
        test = closed_test(z, y, alpha=alpha)
        chosen = test["selected"] if method == "auto" else method
        entry["closed_test"] = test
        entry["method"] = chosen
        entry["before"] = calibration_summary(y, q)
        if chosen == "none":
            entry["after"] = entry["before"]
            return base, entry
        update = fit_update(chosen, z, y)
        coef = _coefficients(update, z, y)
    if chosen in ("logistic", "dynamic") and coef["slope"]["value"] <= 0:
        slope = coef["slope"]
        what = f"the {name} risk's calibration slope here is {slope['value']:.3f} " + (
            "(≤ 0)"
            if slope["ci_low"] is None
            else f"(95 % CI {slope['ci_low']:.2f} to {slope['ci_high']:.2f}, ≤ 0)"
        )
        if name == "fusion":
            raise CohortError(
                f"{what}: the fused risk does not rank this cohort's cases (or ranks them the "
                "wrong way round), which recalibration cannot fix",
                field=name,
                hint="do not use this model at this site; check the outcome coding, or retrain",
            )
        # a modality with no discrimination here: its risk gets the site's event rate only
        chosen = "intercept"
        entry["method"] = chosen
        for key in ("replay", "dynamic", "prequential", "log_loss"):
            entry.pop(key, None)
        entry["warning"] = (
            f"{what}: it does not rank this site's cases, so it was recalibrated in the large "
            "only; do not rely on it here"
        )
        update = fit_update(chosen, z, y)
        coef = _coefficients(update, z, y)
    entry["update"] = update.to_dict()
    entry["coefficients"] = coef
    entry["after"] = calibration_summary(y, update.predict_proba(z))
    return Updated(base, update), entry


def _dynamic_update(
    entry: dict[str, Any], q: np.ndarray, y: np.ndarray, dates: np.ndarray, settings: dict
) -> tuple[Calibrator, dict[str, Any]]:
    """Replay the dynamic update of risks ``q``; fill ``entry`` with the source's and the
    prequential calibration and log loss, the final state and the replay; return the update
    (the last day's state) and its coefficients with Wald 95 % CIs."""
    from clinfuse.evaluation.calibration import calibration_summary

    if settings["half_life_days"] == "auto":
        replay, choice = choose_half_life(_logit(q), y, dates, prior_sd=settings["prior_sd"])
        entry["half_life_choice"] = choice
    else:
        replay = dynamic_recalibration(_logit(q), y, dates, **settings)
    state = replay.to_dict()
    zc = float(norm.ppf(0.975))
    coef = {
        k: {
            "value": state[k],
            "ci_low": state[k] - zc * state[f"{k}_se"],
            "ci_high": state[k] + zc * state[f"{k}_se"],
        }
        for k in ("intercept", "slope")
    }
    entry.update(
        method="dynamic",
        before=calibration_summary(y, q),
        prequential=calibration_summary(y, replay.prequential),
        log_loss={"before": log_loss(y, q), "prequential": log_loss(y, replay.prequential)},
        dynamic=state,
        replay=replay,
    )
    update = Dynamic(
        replay.intercept,
        replay.slope,
        replay.covariance,
        last_day=str(replay.days[-1]),
        half_life_days=replay.half_life_days,
    )
    return update, coef


def _outcomes(frame: pd.DataFrame, cohort: Any) -> np.ndarray:
    """The scored cases' outcomes; both classes are needed.

    Raises:
        CohortError: one outcome class only.
    """
    y = frame["label"].to_numpy(dtype=float)
    if len(np.unique(y)) < 2:
        raise CohortError(
            f"all {len(y)} usable cases have outcome {int(y[0])}; recalibration needs events "
            "and non-events",
            field=cohort.target,
            path=cohort.manifest_path,
            hint="use a cohort (or --split) with both outcomes",
        )
    return y


def _fit_updates(
    frame: pd.DataFrame,
    y: np.ndarray,
    names: list[str],
    current: dict[str, Calibrator],
    *,
    method: str,
    alpha: float,
    dates: np.ndarray | None = None,
    dynamic: dict[str, Any] | None = None,
) -> tuple[dict[str, Calibrator], dict[str, dict[str, Any]], dict[str, Calibrator]]:
    """Each output's update from its risks ``p_<name>`` (on the cases that have it).

    Returns:
        ``(calibrators, outputs, updates)``: every output's calibrator after the update
        (``current``'s when kept), the report entry of each, and the updates fitted.
    """
    calibrators = dict(current)
    outputs: dict[str, dict[str, Any]] = {}
    updates: dict[str, Calibrator] = {}
    for name in names:
        p = frame[f"p_{name}"].to_numpy(dtype=float)
        has = ~np.isnan(p)
        base = calibrators.get(name) or Identity()
        new, entry = _update_output(
            name,
            base,
            p[has],
            y[has],
            method=method,
            alpha=alpha,
            dates=None if dates is None else dates[has],
            dynamic=dynamic,
        )
        outputs[name] = entry
        if new is not base:
            calibrators[name] = new
            updates[name] = new.update if isinstance(new, Updated) else new
    return calibrators, outputs, updates


def _check_window(time_column: str | None, since: str | None) -> tuple[str, Any] | None:
    """``(column, first date)`` of a recent-cases window, or None; both or neither given."""
    if time_column is None and since is None:
        return None
    if time_column is None or since is None:
        raise ConfigError(
            "--since and --time-column go together: the date column and the first date to use",
            field="since" if since is None else "time_column",
            hint="e.g. --time-column encounter_date --since 2024-01-01",
        )
    import pandas as pd

    try:
        first = pd.Timestamp(since)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"--since {since!r} is not a date", field="since", hint="write YYYY-MM-DD"
        ) from e
    if pd.isna(first):
        raise ConfigError(
            f"--since {since!r} is not a date", field="since", hint="write YYYY-MM-DD"
        )
    return time_column, first


def _check_dynamic(
    method: str, time_column: str | None, half_life_days: float | str | None, prior_sd: float
) -> dict[str, Any] | None:
    """The settings of a dynamic update, or None for the other methods."""
    if method != "dynamic":
        return None
    if time_column is None:
        raise ConfigError(
            "--method dynamic replays the cases in date order: it needs --time-column",
            field="time_column",
            hint="e.g. --method dynamic --time-column encounter_date",
        )
    if half_life_days == "auto":
        pass
    elif isinstance(half_life_days, str) or (half_life_days is not None and not half_life_days > 0):
        raise ConfigError(
            f"the half-life is {half_life_days!r}; use a positive number of days, or auto",
            field="half_life_days",
        )
    if not prior_sd > 0:
        raise ConfigError(f"prior_sd is {prior_sd}; use a positive number", field="prior_sd")
    return {"half_life_days": half_life_days, "prior_sd": prior_sd}


def _dates(frame: pd.DataFrame, cohort: Any, column: str) -> np.ndarray:
    """The scored cases' dates in ``column`` (NaT: undated), in the frame's order.

    Raises:
        CohortError: the column is missing, a date unreadable, or no scored case dated.
    """
    from clinfuse.evaluation.temporal import cohort_dates

    by_case = dict(zip((r.case_id for r in cohort.rows), cohort_dates(cohort, column), strict=True))
    dates = np.array([by_case[c] for c in frame["case_id"]], dtype="datetime64[D]")
    kept = ~np.isnat(dates)
    if not kept.any():
        raise CohortError(
            f"none of the {len(frame)} scored cases has a date in {column!r}",
            field=column,
            path=cohort.manifest_path,
            hint="--method dynamic replays the cases in date order",
        )
    return dates


@dataclass
class _SiteFit:
    """The updates fitted on a site's scored cases (:func:`_fit_site`).

    Attributes:
        frame, y: the cases fitted on (the dated ones for ``dynamic``) and their outcomes.
        kept: which rows of the scored frame ``frame`` holds.
        dates: their dates (``dynamic`` only).
        calibrators, updates: as :func:`_fit_updates` returns them.
        replays: each output's dynamic replay (``dynamic`` only).
        report: ``recalibration.json`` without the source's version.
    """

    frame: pd.DataFrame
    y: np.ndarray
    kept: np.ndarray
    dates: np.ndarray | None
    calibrators: dict[str, Calibrator]
    updates: dict[str, Calibrator]
    replays: dict[str, Any]
    report: dict[str, Any]


def _fit_site(
    source: Path,
    cohort: Any,
    frame: pd.DataFrame,
    excluded: list[Any],
    names: list[str],
    current: dict[str, Calibrator],
    *,
    method: str,
    alpha: float,
    split: str | None,
    recent: dict[str, Any] | None,
    time_column: str | None,
    dynamic: dict[str, Any] | None,
    what: str,
) -> _SiteFit:
    """Fit every output's update on the scored cases (the dated ones for ``dynamic``) and
    write the report: what a run and a fold ensemble share."""
    kept = np.ones(len(frame), dtype=bool)
    dates = None
    if dynamic:
        all_dates = _dates(frame, cohort, str(time_column))
        kept = ~np.isnat(all_dates)
        frame, dates = frame[kept].reset_index(drop=True), all_dates[kept]
    y = _outcomes(frame, cohort)
    calibrators, outputs, updates = _fit_updates(
        frame, y, names, current, method=method, alpha=alpha, dates=dates, dynamic=dynamic
    )
    # the replays are written as tables, not into recalibration.json
    replays = {name: entry.pop("replay") for name, entry in outputs.items() if "replay" in entry}
    report = _report(
        source, cohort, y, excluded, outputs, method=method, alpha=alpha, split=split, what=what
    )
    if recent is not None:
        report["since"] = recent
    if dynamic:
        report["dated"] = {
            "column": time_column,
            "n_dated": int(kept.sum()),
            "n_undated": int((~kept).sum()),
        }
    return _SiteFit(frame, y, kept, dates, calibrators, updates, replays, report)


def _write_replays(
    folder: Path, replays: dict[str, Any], frame: pd.DataFrame, dates: np.ndarray | None
) -> None:
    """``recalibration_dynamic.csv``: each output's state after each day of the replay;
    ``recalibration_prequential.csv``: each case's fused risk from the source and from the
    state before its day."""
    if not replays:
        return
    table = pd.concat(
        [r.table().assign(output=name) for name, r in replays.items()], ignore_index=True
    )
    cols = ["output", *[c for c in table.columns if c != "output"]]
    table[cols].to_csv(folder / "recalibration_dynamic.csv", index=False)
    if "fusion" in replays and dates is not None:
        pd.DataFrame(
            {
                "case_id": frame["case_id"],
                "date": pd.to_datetime(dates).strftime("%Y-%m-%d"),
                "label": frame["label"].astype(int),
                "p_before": frame["p_fusion"],
                "p_prequential": replays["fusion"].prequential,
            }
        ).to_csv(folder / "recalibration_prequential.csv", index=False)


def _recent(cohort: Any, window: tuple[str, Any] | None) -> tuple[Any, dict[str, Any] | None]:
    """The cohort's cases dated on or after the window's first date, and what was kept.

    Raises:
        CohortError: the column is not in the manifest, a date is unreadable, or no case is
            recent enough.
    """
    if window is None:
        return cohort, None
    from clinfuse.evaluation.temporal import cohort_dates

    column, first = window
    dates = cohort_dates(cohort, column)
    keep = [
        r.case_id for r, d in zip(cohort.rows, dates, strict=True) if d >= first.to_datetime64()
    ]
    if not keep:
        raise CohortError(
            f"no case is dated on or after {first.date()} in {column!r}",
            field=column,
            path=cohort.manifest_path,
            hint="choose an earlier --since",
        )
    info = {
        "column": column,
        "since": str(first.date()),
        "n_kept": len(keep),
        "n_earlier": int(sum(1 for d in dates if not np.isnat(d) and d < first.to_datetime64())),
        "n_undated": int(np.isnat(dates).sum()),
    }
    return cohort.subset(keep), info


def _report(
    source: Path,
    cohort: Any,
    y: np.ndarray,
    excluded: list[Any],
    outputs: dict[str, dict[str, Any]],
    *,
    method: str,
    alpha: float,
    split: str | None,
    what: str,
) -> dict[str, Any]:
    """The content of ``recalibration.json`` (the source's version added by the caller)."""
    from clinfuse import __version__

    report: dict[str, Any] = {
        "schema": "clinfuse.recalibration.v1",
        "clinfuse_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source_run": str(source.resolve()),
        "manifest": str(cohort.manifest_path),
        "split": split,
        "method": method,
        "alpha": alpha,
        "n_cases": len(y),
        "n_events": int(y.sum()),
        "n_excluded": len({i.case_id for i in excluded}),
        "excluded": [i.as_dict() for i in excluded],
        "outputs": outputs,
        "note": "before/after are apparent: measured on the cases the update was fitted on; "
        f"evaluate the new {what} on other cases of the site",
    }
    report["warnings"] = _warnings(outputs)
    return report


def _warnings(outputs: dict[str, dict[str, Any]]) -> list[str]:
    out = [entry["warning"] for entry in outputs.values() if "warning" in entry]
    fusion = outputs["fusion"]
    n, events = fusion["n_cases"], fusion["n_events"]
    if min(events, n - events) < MIN_EVENTS:
        out.append(
            f"{events} events and {n - events} non-events: fewer than {MIN_EVENTS} of each, so "
            "the updated intercept and slope are imprecise (see their CIs); collect more cases "
            "before relying on the update"
        )
    if fusion.get("method") == "isotonic" and n < MIN_ISOTONIC:
        out.append(
            f"isotonic update on {n} cases (< {MIN_ISOTONIC}): a step function this flexible "
            "overfits; prefer --method logistic"
        )
    return out


def _check_folders(source: Path, out: Path, *, overwrite: bool) -> None:
    if not (source / "model" / "model.json").exists():
        raise ConfigError(
            "not a finished run folder (no model/model.json)",
            path=source,
            hint="give the folder `clinfuse train`, `clinfuse federated` or `clinfuse crossval` "
            "wrote",
        )
    _check_out(source, out, overwrite=overwrite)


def _check_out(source: Path, out: Path, *, overwrite: bool) -> None:
    if out.resolve() == source.resolve():
        raise ConfigError(
            "--out is the source run; recalibration writes a new run and keeps the source",
            path=out,
            hint="choose another --out",
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(
            "output folder exists and is not empty",
            path=out,
            hint="choose another --out or pass --overwrite",
        )


STALE = ("explanations", "evaluation")
"""Folders of a run that describe its risks as they were: not copied into the updated run."""


def _stale(source: Path) -> Callable[[str, list[str]], list[str]]:
    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n in STALE] if Path(folder) == source else []

    return ignore


def _rewrite_predictions(
    tmp: Path, modalities: list[str], updates: dict[str, Calibrator], seed: int
) -> dict[str, Any] | None:
    """Apply the updates to the copied ``predictions.csv``; recompute the run's metrics."""
    from clinfuse.evaluation.summary import summarize_predictions

    path = tmp / "predictions.csv"
    if not path.exists():
        return None
    frame = pd.read_csv(path, dtype={"case_id": str})
    for name, update in updates.items():
        col = f"p_{name}"
        if col not in frame.columns:
            continue
        p = frame[col].to_numpy(dtype=float)
        has = ~np.isnan(p)
        new = p.copy()
        new[has] = update.predict_proba(_logit(p[has]))
        frame[col] = new
    staged = tmp / ".predictions.csv.tmp"
    frame.to_csv(staged, index=False)
    os.replace(staged, path)
    splits = {}
    for split in ("val", "test"):
        part = frame[(frame["split"] == split) & frame["label"].notna()]
        if len(part):
            splits[split] = summarize_predictions(part, modalities, seed=seed)
    if not splits:
        return None
    primary = "test" if "test" in splits else "val"
    return {"split": primary, **splits[primary], "splits": splits}


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default), encoding="utf-8")


def _json_default(x: Any) -> Any:
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def recalibrate_run(
    run: str | Path,
    cohort: str | Path | Any,
    out: str | Path,
    *,
    method: str = "auto",
    alpha: float = 0.05,
    split: str | None = None,
    allow_missing_modalities: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    workers: int | str = "auto",
    time_column: str | None = None,
    since: str | None = None,
    half_life_days: float | str | None = 365.0,
    prior_sd: float = 1.0,
) -> RecalibrationResult:
    """Update a run's calibration on a site's labelled cohort; write a new run folder.

    Args:
        run: the source run folder (``clinfuse train`` / ``federated``), or a ``clinfuse
            crossval`` folder whose fold ensemble is recalibrated as a whole; not modified.
        cohort: manifest path (or :class:`~clinfuse.cohort.Cohort`) with the run's outcome.
        out: the new run folder (must be new or empty unless ``overwrite``).
        method: ``auto`` (closed testing), ``intercept``, ``logistic``, ``isotonic`` or
            ``dynamic`` (replayed in the date order of ``time_column``).
        alpha: significance level of the closed test (``auto``).
        split: use one split of the cohort only (e.g. ``train``, keeping ``test`` for
            ``clinfuse evaluate`` afterwards).
        allow_missing_modalities: accept a cohort without a column for a run modality.
        overwrite: replace an existing output folder.
        progress: ``callback(done, total)`` while cases load.
        workers: processes that read the cohort's files
            (:func:`clinfuse.data.scoring_workers`).
        time_column, since: use only the cases whose date in the manifest column
            ``time_column`` is on or after ``since`` (``YYYY-MM-DD``): recalibrate on recent
            cases after a drift (undated cases are left out, and counted). ``dynamic`` needs
            ``time_column`` (``since`` optional) and leaves undated cases out.
        half_life_days, prior_sd: the settings of ``dynamic``
            (:func:`~clinfuse.evaluation.dynamic.dynamic_recalibration`); ``half_life_days=
            "auto"`` takes, per output, the half-life among
            :data:`~clinfuse.evaluation.dynamic.HALF_LIVES` with the lowest prequential log
            loss (:func:`~clinfuse.evaluation.dynamic.choose_half_life`).

    Returns:
        :class:`RecalibrationResult`.

    Raises:
        ConfigError: an unknown method, ``alpha`` outside (0, 1), ``out`` in the way,
            or a source that is not a finished run.
        CohortError: no outcome column, one outcome class only, no loadable case,
            or a fused risk whose calibration slope is ≤ 0 (it does not rank the
            site's cases; no recalibration can fix that). A modality's risk with a
            slope ≤ 0 is recalibrated in the large instead, with a warning.
    """
    from clinfuse.evaluation.evaluate import labelled_cohort, model_sha256, score_cohort
    from clinfuse.model import load_run

    if method not in METHODS:
        raise ConfigError(
            f"unknown recalibration method {method!r}; use one of {', '.join(METHODS)}",
            field="method",
        )
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha is {alpha}; use a level in (0, 1), e.g. 0.05", field="alpha")
    dynamic = _check_dynamic(method, time_column, half_life_days, prior_sd)
    window = None if (dynamic and since is None) else _check_window(time_column, since)
    source, out = Path(run), Path(out)
    from clinfuse.ensemble import is_crossval_folder

    if is_crossval_folder(source):
        return _recalibrate_ensemble(
            source,
            cohort,
            out,
            method=method,
            alpha=alpha,
            split=split,
            allow_missing_modalities=allow_missing_modalities,
            overwrite=overwrite,
            progress=progress,
            workers=workers,
            window=window,
            time_column=time_column,
            dynamic=dynamic,
        )
    _check_folders(source, out, overwrite=overwrite)
    model = load_run(source)
    cohort = labelled_cohort(
        model, cohort, split=split, allow_missing_modalities=allow_missing_modalities
    )
    cohort, recent = _recent(cohort, window)
    scored = score_cohort(model, cohort, progress=progress, workers=workers)
    fit = _fit_site(
        source,
        cohort,
        scored.frame,
        scored.excluded,
        ["fusion", *model.modalities],
        model.calibrators,
        method=method,
        alpha=alpha,
        split=split,
        recent=recent,
        time_column=time_column,
        dynamic=dynamic,
        what="run",
    )
    frame, y, calibrators, updates, report = (
        fit.frame,
        fit.y,
        fit.calibrators,
        fit.updates,
        fit.report,
    )
    logits = np.asarray(scored.raw["logit"], dtype=float)[fit.kept]
    report["source_model_sha256"] = model_sha256(source)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    try:
        shutil.copytree(source, tmp, ignore=_stale(source))
        meta_path = tmp / "model" / "model.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        meta["calibrators"] = {k: c.to_dict() for k, c in calibrators.items()}
        _write_json(meta_path, meta)

        metrics_path = tmp / "metrics.json"
        metrics = (
            json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.exists() else {}
        )
        recomputed = _rewrite_predictions(
            tmp, list(model.modalities), updates, seed=model.config.training.seed
        )
        if recomputed is not None:
            for key in ("split", "n_cases", "n_events", "models", "paired", "splits"):
                metrics.pop(key, None)
            metrics.update(recomputed)
        metrics["calibration"] = {"fusion": calibrators["fusion"].to_dict()}
        metrics["recalibration"] = {
            "method": {k: v["method"] for k, v in report["outputs"].items()},
            "n_cases": len(y),
            "n_events": int(y.sum()),
            "manifest": str(cohort.manifest_path),
            "details": "recalibration.json",
        }
        _write_json(metrics_path, metrics)
        _write_json(tmp / "recalibration.json", report)
        _write_replays(tmp, fit.replays, frame, fit.dates)

        fusion_cal = calibrators["fusion"]
        if "fusion" in updates and isinstance(fusion_cal, Updated) and not fit.replays:
            # the cases the outermost fused update was fitted on (the app's band); when the
            # fused risk is kept, the copied file of an earlier update stays with it
            pd.DataFrame(
                {
                    "case_id": frame["case_id"],
                    "label": y.astype(int),
                    "logit_base": fusion_cal.base_logit(logits),
                }
            ).to_csv(tmp / "recalibration_cases.csv", index=False)

        run_json = tmp / "run.json"
        info = json.loads(run_json.read_text(encoding="utf-8")) if run_json.exists() else {}
        info.update(
            complete=True,
            recalibrated_from=str(source.resolve()),
            recalibrated_at=report["created"],
        )
        _write_json(run_json, info)
        load_run(tmp)  # the new folder must load before it takes the name
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return RecalibrationResult(out=out, report=report)


def _recalibrate_ensemble(
    source: Path,
    cohort: Any,
    out: Path,
    *,
    method: str,
    alpha: float,
    split: str | None,
    allow_missing_modalities: bool,
    overwrite: bool,
    progress: Callable[[int, int], None] | None,
    workers: int | str,
    window: tuple[str, Any] | None = None,
    time_column: str | None = None,
    dynamic: dict[str, Any] | None = None,
) -> RecalibrationResult:
    """:func:`recalibrate_run` for a cross-validation folder's fold ensemble."""
    from clinfuse.ensemble import ENSEMBLE_CALIBRATION, load_ensemble
    from clinfuse.evaluation.evaluate import labelled_cohort
    from clinfuse.scored import model_version

    _check_out(source, out, overwrite=overwrite)
    ensemble = load_ensemble(source)
    cohort = labelled_cohort(
        ensemble, cohort, split=split, allow_missing_modalities=allow_missing_modalities
    )
    cohort, recent = _recent(cohort, window)
    scores = ensemble.score(cohort, progress=progress, workers=workers)
    fit = _fit_site(
        source,
        cohort,
        scores.frame,
        scores.excluded,
        ["fusion", *ensemble.modalities],
        ensemble.recalibration,
        method=method,
        alpha=alpha,
        split=split,
        recent=recent,
        time_column=time_column,
        dynamic=dynamic,
        what="ensemble",
    )
    calibrators, report = fit.calibrators, fit.report
    report["source_model_version"] = model_version(source)
    report["fold_ensemble"] = len(ensemble)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    try:
        shutil.copytree(source, tmp)
        _write_json(
            tmp / ENSEMBLE_CALIBRATION,
            {
                "schema": "clinfuse.ensemble_calibration.v1",
                "calibrators": {k: c.to_dict() for k, c in calibrators.items()},
                "details": "recalibration.json",
            },
        )
        _write_json(tmp / "recalibration.json", report)
        _write_replays(tmp, fit.replays, fit.frame, fit.dates)
        load_ensemble(tmp)  # the new folder must load before it takes the name
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return RecalibrationResult(out=out, report=report)
