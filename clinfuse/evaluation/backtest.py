"""Temporal backtest: retrain on the past, test on the next period, for every period.

A model in use is retrained from time to time on the cases collected so far and applied to
the patients who come next. A *rolling-origin* (forward-chaining) validation replays that
(Hyndman & Athanasopoulos, *Forecasting: principles and practice*, §5.10; TRIPOD+AI's
temporal validation): with the dated cases grouped by ``period`` (year, quarter, month), for
each period ``P_k`` after the first ``min_train_periods`` ones,

- a complete run is trained on every case dated before ``P_k`` (its latest patients by
  date form the validation split — early stopping, the fusion combiner and the calibration
  are fitted on the most recent past, as in use), and
- evaluated on the cases dated in ``P_k`` of patients it did not see (a full report each):
  a returning patient's later cases are left out of the test — splits are by patient, as
  everywhere in clinfuse — and counted.

With ``window=W`` the training uses only the ``W`` calendar periods before ``P_k`` (a
*sliding* window) instead of every earlier one (an *expanding* window, the default): a model
that forgets the distant past, which may suit a drifting cohort better. The test cases are
the same either way — a patient seen in any earlier period is left out — so backtests with
different windows compare on identical cases.

``backtest.json`` and ``backtest.csv`` hold one row per origin — the training window, cases,
AUROC (DeLong), calibration intercept and slope, O/E and Brier, and how many of the period's
cases were left out as returning patients' — and ``figures/backtest.png`` draws AUROC and
O/E by origin. Nothing is pooled across origins: each row is a model the procedure would
have produced then.

>>> result = backtest_run("cohort/manifest.csv", "runs/backtest", config,
...                       time_column="encounter_date", period="year")  # doctest: +SKIP
>>> result.rows[["period", "n_train", "n_test", "auroc"]]  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinfuse.errors import CohortError, ConfigError

__all__ = ["BacktestResult", "backtest_run"]


@dataclass
class BacktestResult:
    """What :func:`backtest_run` wrote.

    Attributes:
        out: the backtest folder.
        summary: ``backtest.json`` (settings, periods, one entry per origin).
        rows: ``backtest.csv``, one row per origin.
    """

    out: Path
    summary: dict[str, Any]
    rows: pd.DataFrame


def _origins(periods: list[str | None], min_train_periods: int) -> tuple[list[str], list[str]]:
    """All periods in order, and those that are test periods (origins)."""
    ordered = sorted({p for p in periods if p is not None})
    if len(ordered) < min_train_periods + 1:
        raise CohortError(
            f"the dated cases span {len(ordered)} period(s); a backtest with "
            f"{min_train_periods} training period(s) needs at least {min_train_periods + 1}",
            field="period",
            hint="use a shorter --period (quarter, month) or fewer --min-train-periods",
        )
    return ordered, ordered[min_train_periods:]


def _window_start(test_period: str, period: str, window: int | None) -> str | None:
    """The first period of ``test_period``'s training window (None: every earlier one)."""
    if window is None:
        return None
    from clinfuse.evaluation.temporal import PERIODS

    return str(pd.Period(test_period, freq=PERIODS[period]) - window)


def _plan(
    cohort: Any,
    dates: np.ndarray,
    labels: list[str | None],
    origins: list[str],
    *,
    period: str,
    window: int | None,
    val_share: float,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Each origin's splits (train/val by date inside the training window, test: the
    period's new patients), and the origins skipped for lack of both outcomes."""
    from clinfuse.cohort.split import assign_splits_by_date

    rows = list(cohort.rows)
    plans: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for test_period in origins:
        start = _window_start(test_period, period, window)
        before = [i for i, p in enumerate(labels) if p is not None and p < test_period]
        train_idx = [i for i in before if start is None or str(labels[i]) >= start]
        seen = {rows[i].patient_id for i in before}
        in_period = [i for i, p in enumerate(labels) if p == test_period]
        test_idx = [i for i in in_period if rows[i].patient_id not in seen]
        if not train_idx:
            skipped.append({"period": test_period, "reason": "no dated case in its window"})
            continue
        train_ids = [rows[i].case_id for i in train_idx]
        inner = assign_splits_by_date(
            [rows[i].patient_id for i in train_idx],
            dates[train_idx],
            fractions=(1.0 - val_share, val_share, 0.0),
        )
        splits = dict(zip(train_ids, inner, strict=True))
        splits.update({rows[i].case_id: "test" for i in test_idx})
        short = []
        for part, ids in (
            ("train", [c for c, s in splits.items() if s == "train"]),
            ("val", [c for c, s in splits.items() if s == "val"]),
            ("test", [rows[i].case_id for i in test_idx]),
        ):
            outcomes = sorted({int(cohort[c].label or 0) for c in ids})
            if len(outcomes) < 2:
                short.append(f"its {part} part has {len(ids)} case(s) with outcomes {outcomes}")
        if short:  # a period without both outcomes cannot train or test a model
            skipped.append({"period": test_period, "reason": "; ".join(short)})
            continue
        plans.append(
            {
                "period": test_period,
                "splits": splits,
                "test_ids": [rows[i].case_id for i in test_idx],
                "train_first": str(dates[train_idx].min())[:10],
                "train_last": str(dates[train_idx].max())[:10],
                "n_returning": len(in_period) - len(test_idx),
            }
        )
    return plans, skipped


def backtest_run(
    cohort_path: str | Path,
    out: str | Path,
    config: Any = None,
    *,
    time_column: str,
    period: str = "year",
    min_train_periods: int = 1,
    window: int | None = None,
    n_boot: int = 1000,
    min_group_size: int = 30,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> BacktestResult:
    """Rolling-origin validation (see the module's docstring).

    Args:
        cohort_path: the labelled manifest, with a date column.
        out: the backtest folder to create (it appears only when complete).
        config: run configuration of every training (defaults when None).
        time_column: the manifest column of dates (undated cases are left out, counted).
        period: ``month``, ``quarter`` or ``year``.
        min_train_periods: periods before the first test period (at least 1).
        window: train on this many calendar periods before each test period only (a
            sliding window); None trains on every earlier period (an expanding window).
        n_boot, min_group_size: as for :func:`~clinfuse.evaluation.evaluate.evaluate_run`.
        overwrite: replace an existing folder.
        log: one-line messages (counts and periods only).

    Raises:
        ConfigError: a bad period, ``min_train_periods`` or ``window``, an ``out`` in the way, a
            multi-process training config.
        CohortError: no such column, an unreadable date, too few periods, or a training
            window or test period without both outcomes.
    """
    from clinfuse._files import atomic_folder
    from clinfuse.config import RunConfig
    from clinfuse.evaluation.crossval import _check_single_process
    from clinfuse.evaluation.evaluate import _check_out, evaluate_run
    from clinfuse.evaluation.figures import period_figure, save_figure
    from clinfuse.evaluation.temporal import check_period, cohort_dates, period_labels
    from clinfuse.training.run import load_labelled_cohort, train_run

    say = log or (lambda _m: None)
    check_period(period)
    if isinstance(min_train_periods, bool) or min_train_periods < 1:
        raise ConfigError(
            f"min_train_periods is {min_train_periods}; use 1 or more",
            field="min_train_periods",
        )
    if window is not None and (isinstance(window, bool) or window < 1):
        raise ConfigError(
            f"window is {window}; use 1 or more periods, or none for every earlier period",
            field="window",
        )
    out = Path(out)
    _check_out(out, overwrite)
    config = config or RunConfig()
    _check_single_process(config)
    cohort = load_labelled_cohort(cohort_path, config.data)
    dates = cohort_dates(cohort, time_column)
    labels = period_labels(dates, period)
    all_periods, origins = _origins(labels, min_train_periods)
    n_undated = int(np.isnat(dates).sum())
    fractions = config.data.split_fractions
    val_share = fractions[1] / (fractions[0] + fractions[1])
    plans, skipped = _plan(  # every origin checked before any training
        cohort, dates, labels, origins, period=period, window=window, val_share=val_share
    )
    if not plans:
        raise CohortError(
            "no period can be tested: "
            + " · ".join(f"{s['period']}: {s['reason']}" for s in skipped),
            field=time_column,
            path=cohort.manifest_path,
            hint="use a longer --period, fewer --min-train-periods, or more cases; each "
            "training window and test period needs both outcomes",
        )
    for s in skipped:
        say(f"origin {s['period']} skipped: {s['reason']} (both outcomes are needed)")

    with atomic_folder(out) as tmp:  # published only when every origin is done
        entries = []
        for k, plan in enumerate(plans, 1):
            test_period = plan["period"]
            say(
                f"origin {k}/{len(plans)}: training on {plan['train_first']} to "
                f"{plan['train_last']}, testing on {test_period}"
            )
            run = train_run(
                cohort_path,
                tmp / "runs" / f"until_{test_period}",
                config,
                splits=plan["splits"],
                case_ids=list(plan["splits"]),
            )
            ev = evaluate_run(
                run,
                cohort.subset(plan["test_ids"]),
                tmp / "evaluations" / str(test_period),
                n_boot=n_boot,
                min_group_size=min_group_size,
            )
            m = ev.metrics
            cal = m["calibration"]["fusion"]
            entries.append(
                {
                    "period": test_period,
                    "train_first": plan["train_first"],
                    "train_last": plan["train_last"],
                    "n_train": sum(1 for s in plan["splits"].values() if s == "train"),
                    "n_val": sum(1 for s in plan["splits"].values() if s == "val"),
                    "n_test": m["n_cases"],
                    "n_test_events": m["n_events"],
                    "n_returning_left_out": plan["n_returning"],
                    "auroc": m["discrimination"]["models"]["fusion"]["auroc_delong"],
                    "calibration_intercept": cal["intercept"],
                    "calibration_slope": cal["slope"],
                    "oe_ratio": cal["oe_ratio"],
                    "brier": m["models"]["fusion"]["brier"]["value"],
                    "run": f"runs/until_{test_period}",
                    "evaluation": f"evaluations/{test_period}",
                }
            )
        summary = {
            "schema": "clinfuse.backtest.v1",
            "manifest": str(cohort.manifest_path),
            "time_column": time_column,
            "period": period,
            "min_train_periods": min_train_periods,
            "window": window,
            "periods": all_periods,
            "skipped": skipped,
            "n_dated": len(dates) - n_undated,
            "n_undated": n_undated,
            "origins": entries,
        }
        table = _table(entries)
        (tmp / "backtest.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        table.to_csv(tmp / "backtest.csv", index=False)
        figure = period_figure(
            [
                {"period": e["period"], "n": e["n_test"], "oe": e["oe_ratio"], "auroc": e["auroc"]}
                for e in entries
            ],
            title="Rolling-origin backtest",
            xlabel=f"test {period} (trained on "
            + (f"every earlier {period})" if window is None else f"the {window} {period}s before)"),
        )
        save_figure(figure, tmp / "figures", "backtest")
        config.save(tmp / "config.yaml")
    return BacktestResult(out=out, summary=summary, rows=table)


def _table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    def value(d: Any, key: str = "value") -> Any:
        return d.get(key) if isinstance(d, dict) else None

    return pd.DataFrame(
        [
            {
                "period": e["period"],
                "train_first": e["train_first"],
                "train_last": e["train_last"],
                "n_train": e["n_train"],
                "n_val": e["n_val"],
                "n_test": e["n_test"],
                "n_test_events": e["n_test_events"],
                "n_returning_left_out": e["n_returning_left_out"],
                "auroc": value(e["auroc"]),
                "auroc_ci_low": value(e["auroc"], "ci_low"),
                "auroc_ci_high": value(e["auroc"], "ci_high"),
                "calibration_intercept": value(e["calibration_intercept"]),
                "calibration_slope": value(e["calibration_slope"]),
                "oe_ratio": value(e["oe_ratio"]),
                "oe_ci_low": value(e["oe_ratio"], "ci_low"),
                "oe_ci_high": value(e["oe_ratio"], "ci_high"),
                "brier": e["brier"],
            }
            for e in entries
        ]
    )
