"""The ``clinfuse evaluate`` and ``clinfuse recalibrate`` commands, as plain functions
the main CLI registers.

Register them in :mod:`clinfuse.cli` with::

    from clinfuse.evaluation.cli import EVALUATE_EPILOG, RECALIBRATE_EPILOG, evaluate, recalibrate
    app.command(epilog=EVALUATE_EPILOG)(evaluate)
    app.command(epilog=RECALIBRATE_EPILOG)(recalibrate)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from clinfuse._options import (
    ConformalAlpha,
    ConformalAlphaEvents,
    ConformalFrom,
    ConformalMarginal,
    CusumFalseAlarm,
    ExternalPaths,
    LoadWorkers,
    TimePeriod,
    check_cusum_option,
    check_period_option,
    conformal_sets,
)

__all__ = [
    "COMPARE_EPILOG",
    "EVALUATE_EPILOG",
    "MONITOR_EPILOG",
    "POOL_EPILOG",
    "RECALIBRATE_EPILOG",
    "compare",
    "evaluate",
    "monitor",
    "pool_evaluations",
    "recalibrate",
]

EVALUATE_EPILOG = (
    "Examples:\n\n"
    "  clinfuse evaluate runs/demo site_d/manifest.csv --out eval_site_d\n\n"
    "  clinfuse evaluate runs/demo demo/manifest.csv --out eval_test --split test "
    "--subgroups sex,age_band --thresholds 0.1,0.2\n\n"
    "  clinfuse evaluate runs/demo new.csv --out eval --n-boot 500 --min-group-size 50 --overwrite\n\n"
    "  clinfuse evaluate runs/demo_cv site_d/manifest.csv --out eval_ensemble   # fold ensemble\n\n"
    "  clinfuse evaluate runs/demo site_e/manifest.csv --out eval_site_e --conformal eval_site_d "
    "--alpha 0.1   # do sets calibrated at site D cover at site E?\n\n"
    "  clinfuse evaluate runs/demo last_year/manifest.csv --out eval_time --time-column "
    "encounter_date --period month   # performance per month, calibration drift"
)


def evaluate(
    run: Annotated[
        Path,
        typer.Argument(
            help="Run folder written by `clinfuse train`, or a `clinfuse crossval` folder "
            "(its fold models scored together)."
        ),
    ],
    cohort: Annotated[Path, typer.Argument(help="Manifest of labelled cases to evaluate on.")],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for metrics.json, report.html, figures.")
    ],
    subgroups: Annotated[
        str,
        typer.Option("--subgroups", help="Comma-separated manifest columns, e.g. sex,age_band."),
    ] = "",
    thresholds: Annotated[
        str,
        typer.Option(
            "--thresholds",
            help="Comma-separated risk thresholds in (0, 1) for sensitivity/specificity/PPV/NPV "
            "(default 0.1,0.2,0.3).",
        ),
    ] = "",
    split: Annotated[
        str | None, typer.Option("--split", help="Evaluate only this split (train, val, test).")
    ] = None,
    n_boot: Annotated[
        int, typer.Option("--n-boot", min=0, help="Bootstrap replicates for the 95 % CIs.")
    ] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    min_group_size: Annotated[
        int,
        typer.Option("--min-group-size", min=1, help="Suppress subgroups/sites with fewer cases."),
    ] = 30,
    allow_missing_modalities: Annotated[
        bool,
        typer.Option(
            "--allow-missing-modalities",
            help="Accept a cohort lacking a column for a run modality.",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output folder.")
    ] = False,
    device: Annotated[
        str, typer.Option("--device", help="cpu (default), cuda or auto: where the model runs.")
    ] = "cpu",
    workers: LoadWorkers = "auto",
    conformal: ConformalFrom = None,
    alpha: ConformalAlpha = None,
    marginal: ConformalMarginal = False,
    alpha_events: ConformalAlphaEvents = None,
    time_column: Annotated[
        str | None,
        typer.Option(
            "--time-column",
            help="Manifest column of dates (YYYY-MM-DD, e.g. the encounter's): metrics per "
            "--period, the drifts of calibration and AUROC over time, and risk-adjusted CUSUM "
            "charts that date a sudden shift.",
        ),
    ] = None,
    period: TimePeriod = None,
    cusum_false_alarm: CusumFalseAlarm = None,
    allow_external_paths: ExternalPaths = False,
) -> None:
    """Offline cohort evaluation: a TRIPOD+AI-tagged report with discrimination, calibration,
    clinical utility, subgroups, sites and a modality ablation.

    Writes metrics.json, report.html (self-contained), figures/ (PNG and SVG),
    predictions.csv, excluded.csv and subgroups.csv into --out. With --conformal EVAL, the
    conformal prediction sets calibrated on that earlier evaluation are checked here: their
    coverage of events and non-events, and how many cases got a single outcome.
    """
    from rich.console import Console

    from clinfuse.evaluation.evaluate import evaluate_run

    period = check_period_option(time_column, period)
    false_alarm = check_cusum_option(time_column, cusum_false_alarm)
    sets = conformal_sets(  # fitted before any case is loaded: a bad folder fails fast
        conformal, run, alpha=alpha, marginal=marginal, alpha_events=alpha_events, out=out
    )

    result = evaluate_run(
        run,
        cohort,
        out,
        subgroups=[s for s in subgroups.split(",") if s.strip()],
        thresholds=thresholds or None,
        n_boot=n_boot,
        seed=seed,
        min_group_size=min_group_size,
        split=split,
        allow_missing_modalities=allow_missing_modalities,
        overwrite=overwrite,
        device=device,
        workers=workers,
        conformal=sets,
        time_column=time_column,
        period=period,
        cusum_false_alarm=false_alarm,
    )
    m = result.metrics
    auc = m["models"]["fusion"]["auroc"]
    console = Console()
    if auc["value"] is None:
        text = "undefined (one outcome class)"
    elif auc.get("delong_ci_low") is None:
        text = f"{auc['value']:.3f} (no DeLong interval: a single event or non-event)"
    else:
        text = (
            f"{auc['value']:.3f} (DeLong 95 % CI {auc['delong_ci_low']:.3f}–"
            f"{auc['delong_ci_high']:.3f})"
        )
    console.print(f"evaluated {m['n_cases']} cases ({m['n_events']} events); fused AUROC {text}")
    if m["participants"]["n_excluded"]:
        console.print(
            f"{m['participants']['n_excluded']} cases excluded; reasons in {out / 'excluded.csv'}"
        )
    if "conformal" in m:
        c = m["conformal"]["coverage"]
        console.print(
            f"conformal sets ({_levels(m['conformal']['fitted'])}): covered "
            f"{_pct(c['events'])} of events and {_pct(c['non_events'])} of non-events; "
            f"{_pct({'value': m['conformal']['singletons']['share']})} of cases got one outcome",
            highlight=False,
            soft_wrap=True,
        )
    adaptive = (m.get("conformal") or {}).get("adaptive")
    if adaptive:
        c = adaptive["coverage"]
        console.print(
            f"adaptive sets replayed in date order (gamma {adaptive['gamma']:g}): covered "
            f"{_pct(c['events'])} of events and {_pct(c['non_events'])} of non-events",
            highlight=False,
            soft_wrap=True,
        )
    from clinfuse.evaluation.cusum import describe_change, first_signals

    drift = (m.get("over_time") or {}).get("drift", {}).get("per_year", {})
    if drift.get("value") is not None:
        console.print(
            f"calibration drift: {drift['value']:+.2f} log odds per year "
            f"(95 % CI {drift['ci_low']:+.2f} to {drift['ci_high']:+.2f}, p = {drift['p_value']:.3g})",
            highlight=False,
            soft_wrap=True,
        )
    for chart in (m.get("over_time") or {}).get("cusum", {}).get("charts", []):
        first = chart["signals"][0] if chart["signals"] else None
        console.print(
            f"CUSUM, {chart['direction']}: "
            + (
                f"{chart['n_signals']} signal(s); the first climb began {first['since']}, "
                f"signal {first['date']} ({first['observed']} events, {first['expected']:.1f} "
                "expected)" + (f"; {describe_change(first)}" if "change" in first else "")
                if first
                else "no signal"
            ),
            highlight=False,
            soft_wrap=True,
        )
    for site, chart, first in first_signals((m.get("over_time") or {}).get("cusum_by_site")):
        console.print(
            f"CUSUM at site {site}, {chart['direction']}: first signal {first['date']}"
            + (f"; {describe_change(first)}" if "change" in first else ""),
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"report: {result.report}")


def _levels(fitted: dict[str, Any]) -> str:
    levels = fitted.get("levels") or {"overall": fitted["level"]}
    if len(set(levels.values())) == 1:
        return f"{100 * next(iter(levels.values())):g} %"
    return ", ".join(f"{k.replace('_', '-')} {100 * v:g} %" for k, v in levels.items())


def _pct(stat: dict[str, Any]) -> str:
    return "—" if stat.get("value") is None else f"{100 * stat['value']:.1f} %"


RECALIBRATE_EPILOG = (
    "Examples:\n\n"
    "  clinfuse recalibrate runs/demo site_d/manifest.csv --out runs/demo_site_d\n\n"
    "  clinfuse recalibrate runs/demo site_d/manifest.csv --out runs/demo_site_d "
    "--split train --method logistic\n\n"
    "  clinfuse evaluate runs/demo_site_d site_d/manifest.csv --split test --out eval_site_d\n\n"
    "  clinfuse recalibrate runs/demo_cv site_d/manifest.csv --out runs/demo_cv_site_d "
    "--split train   (a fold ensemble, recalibrated as a whole)\n\n"
    "  clinfuse recalibrate runs/demo site_d/manifest.csv --out runs/demo_2024 "
    "--time-column encounter_date --since 2024-01-01   (recent cases only, after a drift)\n\n"
    "  clinfuse recalibrate runs/demo site_d/manifest.csv --out runs/demo_dynamic "
    "--method dynamic --time-column encounter_date --half-life auto   (follow a drifting site "
    "day by day)"
)


def _half_life(text: str) -> float | str | None:
    """``--half-life``: days, ``inf`` (None: nothing forgotten) or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        days = float(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a number of days, inf or auto", param_hint="--half-life"
        ) from None
    return None if math.isinf(days) else days


def _fmt(stat: dict | None, digits: int = 2) -> str:
    if not stat or stat.get("value") is None:
        return "—"
    if stat.get("ci_low") is None:
        return f"{stat['value']:.{digits}f}"
    return f"{stat['value']:.{digits}f} [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"


def recalibrate(
    run: Annotated[
        Path,
        typer.Argument(
            help="Run folder to update, or a crossval folder (its fold ensemble); not modified."
        ),
    ],
    cohort: Annotated[Path, typer.Argument(help="Manifest of the site's labelled cases.")],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the recalibrated run (or ensemble).")
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="auto (closed testing: keep, intercept or logistic), intercept, logistic, "
            "isotonic, or dynamic (a logistic update replayed day by day in --time-column "
            "order, older days counting less: for a site that keeps drifting).",
        ),
    ] = "auto",
    alpha: Annotated[
        float, typer.Option("--alpha", help="Significance level of the closed test (auto).")
    ] = 0.05,
    split: Annotated[
        str | None,
        typer.Option("--split", help="Use only this split of the cohort (train, val, test)."),
    ] = None,
    allow_missing_modalities: Annotated[
        bool,
        typer.Option(
            "--allow-missing-modalities",
            help="Accept a cohort lacking a column for a run modality.",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output folder.")
    ] = False,
    workers: LoadWorkers = "auto",
    time_column: Annotated[
        str | None,
        typer.Option(
            "--time-column", help="Manifest column of dates (with --since, or --method dynamic)."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Use only cases dated on or after this day (YYYY-MM-DD) in --time-column: "
            "recalibrate on recent cases after a drift.",
        ),
    ] = None,
    half_life: Annotated[
        str,
        typer.Option(
            "--half-life",
            help="--method dynamic: days after which a day's outcomes count half; inf: never "
            "forgotten; auto: of 30, 90, 180, 365, 730 days and inf, the one whose prequential "
            "risks have the lowest log loss.",
        ),
    ] = "365",
    prior_sd: Annotated[
        float,
        typer.Option(
            "--prior-sd",
            help="--method dynamic: prior SD of the update's intercept (around 0) and slope "
            "(around 1) before the first day.",
        ),
    ] = 1.0,
    allow_external_paths: ExternalPaths = False,
) -> None:
    """Update a run's calibration on a new site's labelled cases; write a new run folder.

    The fused risk and each modality's risk get the site's event rate (intercept) and,
    where the data ask for it, spread (slope); the ranking of cases is unchanged. The new
    folder works with predict, evaluate, explain and app; recalibration.json records what
    was fitted. Evaluate it on cases not used here (e.g. --split train here, --split test
    in evaluate). A crossval folder's fold ensemble is updated as a whole (the mean of
    its fold models' risks; the fold models are kept): the new folder is a crossval folder
    with ensemble_calibration.json.
    """
    from rich.console import Console
    from rich.table import Table

    from clinfuse.evaluation.recalibrate import recalibrate_run

    result = recalibrate_run(
        run,
        cohort,
        out,
        method=method,
        alpha=alpha,
        split=split,
        allow_missing_modalities=allow_missing_modalities,
        overwrite=overwrite,
        workers=workers,
        time_column=time_column,
        since=since,
        half_life_days=_half_life(half_life),
        prior_sd=prior_sd,
    )
    rep = result.report
    console = Console()
    recent = rep.get("since")
    console.print(
        f"recalibrated on {rep['n_cases']} cases ({rep['n_events']} events)"
        + (f", {rep['n_excluded']} excluded" if rep["n_excluded"] else "")
        + (
            f"; dated from {recent['since']} on ({recent['n_earlier']} earlier and "
            f"{recent['n_undated']} undated cases left out)"
            if recent
            else ""
        )
    )
    table = Table("output", "cases", "update", "intercept before", "slope before", "O/E before")
    table.caption = "before: the source run on these cases, with 95 % CIs"
    for name, entry in rep["outputs"].items():
        before = entry.get("before", {})
        oe = before.get("oe_ratio", {}).get("value")
        table.add_row(
            name,
            str(entry["n_cases"]),
            entry["method"],
            _fmt(before.get("intercept")),
            _fmt(before.get("slope")),
            "—" if oe is None else f"{oe:.2f}",
        )
    console.print(table)
    fused = rep["outputs"]["fusion"]
    if fused.get("method") == "dynamic":
        state, pre, before = fused["dynamic"], fused["prequential"], fused["before"]
        if "half_life_choice" in fused:

            def days(value: float | None) -> str:
                return "inf" if value is None else f"{value:g}"

            losses = ", ".join(
                f"{days(c['half_life_days'])}: {c['log_loss']:.4f}"
                for c in fused["half_life_choice"]
            )
            console.print(
                f"half-life chosen by prequential log loss: {days(state['half_life_days'])} "
                f"days ({losses})",
                highlight=False,
            )
        console.print(
            f"dynamic update replayed over {state['n_days']} "
            f"{'day' if state['n_days'] == 1 else 'days'} with cases "
            f"({state['first_day']} to {state['last_day']}): at the last day intercept "
            f"{state['intercept']:.3f} "
            f"(SE {state['intercept_se']:.3f}), slope {state['slope']:.3f} "
            f"(SE {state['slope_se']:.3f})",
            highlight=False,
        )
        console.print(
            "each case scored before its outcome was known (prequential) against the source: "
            f"log loss {fused['log_loss']['prequential']:.4f} vs {fused['log_loss']['before']:.4f}, "
            f"calibration intercept {_fmt(pre['intercept'])} vs {_fmt(before['intercept'])}, "
            f"slope {_fmt(pre['slope'])} vs {_fmt(before['slope'])}",
            highlight=False,
        )
    for warning in rep["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    what = "new fold ensemble" if "fold_ensemble" in rep else "new run"
    console.print(f"{what}: {result.out} (details in recalibration.json)")
    console.print(
        f"check it on cases not used here: clinfuse evaluate {result.out} COHORT --out DIR"
    )


COMPARE_EPILOG = (
    "Examples:\n\n"
    "  clinfuse compare eval_baseline eval_fused --out cmp\n\n"
    "  clinfuse compare eval_late eval_early eval_intermediate --out cmp "
    "--name late --name early --name intermediate --thresholds 0.1,0.3\n\n"
    "  clinfuse compare runs/cv_tabular runs/cv_fused --out cmp_cv   "
    "(cross-validation folders: their out-of-fold predictions)"
)


def compare(
    folders: Annotated[
        list[Path],
        typer.Argument(
            help="Evaluation folders (clinfuse evaluate) or cross-validation folders "
            "(clinfuse crossval); the first is the reference."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the comparison.")],
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="A label per folder, in order (default: folder names)."),
    ] = None,
    thresholds: Annotated[
        str,
        typer.Option(
            "--thresholds",
            help="Risk thresholds for Δnet benefit and the NRI's risk categories "
            "(default 0.1,0.2,0.3).",
        ),
    ] = "",
    n_boot: Annotated[
        int, typer.Option("--n-boot", min=0, help="Paired bootstrap replicates.")
    ] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    allow_other_cohorts: Annotated[
        bool,
        typer.Option(
            "--allow-other-cohorts",
            help="Compare evaluations of different manifests (copies of one cohort).",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output folder.")
    ] = False,
) -> None:
    """Compare models on the same cases: paired ΔAUROC (DeLong, Holm-adjusted), ΔBrier,
    Δnet benefit, IDI and the event/non-event NRI (paired bootstrap), calibration, overlaid
    curves.

    Writes comparison.json, models.csv, pairs.csv, report.html and figures/ into --out.
    """
    from rich.console import Console
    from rich.table import Table

    from clinfuse.evaluation.compare import compare_evaluations

    result = compare_evaluations(
        folders,
        out,
        names=name or None,
        thresholds=thresholds or None,
        n_boot=n_boot,
        seed=seed,
        allow_other_cohorts=allow_other_cohorts,
        overwrite=overwrite,
    )
    c = result.comparison
    table = Table(
        title=f"{c['n_common_cases']} common cases, {c['n_events']} events; "
        f"reference {c['reference']}",
        header_style="bold",
    )
    for col in ("model", "AUROC", "ΔAUROC (95 % CI)", "Holm p", "ΔBrier (95 % CI)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    auroc = {m["model"]: m["auroc"] for m in c["models"]}
    table.add_row(c["reference"], f"{auroc[c['reference']]:.3f}", "", "", "")
    for r in c["pairs"]:
        table.add_row(
            r["model"],
            f"{auroc[r['model']]:.3f}",
            _fmt(_block(r, "delta_auroc"), 3),
            "—" if r["delong_p_holm"] is None else f"{r['delong_p_holm']:.3g}",
            _fmt(_block(r, "delta_brier"), 4),
        )
    Console().print(table)
    for name, n in (result.comparison.get("optimistic") or {}).items():
        Console(stderr=True).print(
            f"{name}: evaluated on {n} of its model's own training or validation cases; its "
            "figures, and the differences with it, are optimistic",
            highlight=False,
            soft_wrap=True,
        )
    Console().print(f"report: {result.report}")


POOL_EPILOG = (
    "Example (each site ran clinfuse evaluate RUN its_manifest.csv --split test --out eval_X):\n\n"
    "  clinfuse pool-evaluations eval_a eval_b eval_c --out pooled "
    "--name hospital-a --name hospital-b --name hospital-c"
)


def pool_evaluations(
    folders: Annotated[
        list[Path],
        typer.Argument(
            help="Each site's evaluation folder (clinfuse evaluate --out) of one model."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for pooled.json, sites.csv, figures.")],
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="A name per folder, in order (default: folder names)."),
    ] = None,
    allow_other_models: Annotated[
        bool,
        typer.Option(
            "--allow-other-models", help="Pool evaluations of different models (e.g. recalibrated)."
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output folder.")
    ] = False,
) -> None:
    """Combine one model's evaluations at several sites: each site's AUROC, O/E and
    calibration slope, their random-effects summaries with the 95 % prediction interval for a
    new site, and a forest plot. Only the sites' metrics.json are read (aggregates)."""
    from rich.console import Console
    from rich.table import Table

    from clinfuse.evaluation.pool import pool_evaluations as pool

    result = pool(
        folders,
        out,
        names=name or None,
        allow_other_models=allow_other_models,
        overwrite=overwrite,
    )
    p = result.pooled
    table = Table(
        title=f"{len(p['sites'])} sites, {p['n_cases']} cases, {p['n_events']} events",
        header_style="bold",
    )
    for col in ("site", "cases", "events", "AUROC (95 % CI)", "O/E", "slope"):
        table.add_column(col, justify="left" if col == "site" else "right")

    def num(value: float | None, digits: int = 2) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    for r in p["per_site"]:
        auc = (
            "—"
            if r["auroc"] is None
            else f"{r['auroc']:.3f}"
            + (
                ""
                if r["auroc_ci_low"] is None
                else f" ({r['auroc_ci_low']:.3f}–{r['auroc_ci_high']:.3f})"
            )
        )
        table.add_row(
            r["group"],
            str(r["n_cases"]),
            str(r["n_events"]),
            auc,
            num(r.get("oe_ratio")),
            num(r.get("calibration_slope")),
        )
    meta = p["meta_analysis"]
    for key, label in (("auroc", "AUROC"), ("oe_ratio", "O/E"), ("calibration_slope", "slope")):
        if key not in meta:
            table.caption = (table.caption + "\n" if table.caption else "") + (
                f"{label}: no summary (fewer than two sites have a usable value)"
            )
            continue
        m = meta[key]
        pi = "" if m["pi_low"] is None else f"; new site {m['pi_low']:.3f}–{m['pi_high']:.3f}"
        notes = [f"{len(m['groups'])} of {len(p['per_site'])} sites"]
        if m.get("left_out"):
            notes.append("left out: " + ", ".join(x["group"] for x in m["left_out"]))
        if m.get("continuity_corrected"):
            notes.append("0.5 added for " + ", ".join(m["continuity_corrected"]) + " (no events)")
        table.caption = (table.caption + "\n" if table.caption else "") + (
            f"{label}: {m['estimate']:.3f} ({m['ci_low']:.3f}–{m['ci_high']:.3f}{pi}; "
            f"I² {100 * m['i2']:.0f} %; {'; '.join(notes)})"
        )
    Console().print(table)
    Console().print(f"pooled: {result.out / 'pooled.json'}")


def _block(row: dict, key: str) -> dict:
    return {"value": row[key], "ci_low": row[f"{key}_ci_low"], "ci_high": row[f"{key}_ci_high"]}


SAMPLESIZE_EPILOG = (
    "Examples:\n\n"
    "  clinfuse samplesize --from eval_site_a --threshold 0.2   "
    "(prevalence, C-statistic and risk distribution of an evaluation)\n\n"
    "  clinfuse samplesize --prevalence 0.018 --c-statistic 0.8 --lp-normal -5,2.5 "
    "--oe-ci-width 1\n\n"
    "  clinfuse samplesize --develop --parameters 24 --prevalence 0.174 --r2-cs 0.288   "
    "(to develop a model)\n\n"
    "  clinfuse samplesize --develop --parameters 4 --from eval_site_a"
)


def _pair(value: str | None, option: str) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        a, b = (float(x) for x in value.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"give two numbers separated by a comma, e.g. {option} -5,2.5"
        ) from None
    return a, b


def samplesize(
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Evaluation or cross-validation folder: prevalence, C-statistic and the "
            "distribution of the model's risks are taken from its predictions.",
        ),
    ] = None,
    prevalence: Annotated[
        float | None, typer.Option("--prevalence", help="Anticipated outcome proportion.")
    ] = None,
    c_statistic: Annotated[
        float | None, typer.Option("--c-statistic", help="Anticipated C-statistic (AUROC).")
    ] = None,
    lp_normal: Annotated[
        str | None,
        typer.Option("--lp-normal", help="MEAN,SD of a normal linear predictor (logit risk)."),
    ] = None,
    lp_beta: Annotated[
        str | None, typer.Option("--lp-beta", help="A,B of beta-distributed predicted risks.")
    ] = None,
    oe: Annotated[float, typer.Option("--oe", help="Anticipated O/E.")] = 1.0,
    oe_ci_width: Annotated[
        float, typer.Option("--oe-ci-width", help="Target 95 % CI width of O/E.")
    ] = 0.2,
    slope_ci_width: Annotated[
        float,
        typer.Option("--slope-ci-width", help="Target 95 % CI width of the calibration slope."),
    ] = 0.2,
    c_ci_width: Annotated[
        float, typer.Option("--c-ci-width", help="Target 95 % CI width of the C-statistic.")
    ] = 0.1,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Risk threshold for the net-benefit criterion."),
    ] = None,
    sensitivity: Annotated[
        float | None, typer.Option("--sensitivity", help="Anticipated at --threshold.")
    ] = None,
    specificity: Annotated[
        float | None, typer.Option("--specificity", help="Anticipated at --threshold.")
    ] = None,
    nb_ci_width: Annotated[
        float,
        typer.Option("--nb-ci-width", help="Target 95 % CI width of the standardised net benefit."),
    ] = 0.2,
    develop: Annotated[
        bool,
        typer.Option(
            "--develop",
            help="Size a study that develops a model instead (Riley et al. 2019/2020: "
            "shrinkage, optimism, overall risk); needs --parameters.",
        ),
    ] = False,
    parameters: Annotated[
        int | None,
        typer.Option(
            "--parameters",
            min=1,
            help="--develop: candidate predictor parameters (coefficients the model may "
            "estimate; the late-fusion combiner has one per modality).",
        ),
    ] = None,
    r2_cs: Annotated[
        float | None,
        typer.Option("--r2-cs", help="--develop: anticipated Cox-Snell R2."),
    ] = None,
    r2_nagelkerke: Annotated[
        float | None,
        typer.Option(
            "--r2-nagelkerke",
            help="--develop: anticipated Nagelkerke R2 (0.15 when nothing is known).",
        ),
    ] = None,
    shrinkage: Annotated[
        float, typer.Option("--shrinkage", help="--develop: target shrinkage factor.")
    ] = 0.9,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Minimum number of cases to validate a risk model at a new site (Riley et al. 2021):
    precise O/E, calibration slope, C-statistic and, at a threshold, net benefit. With
    --develop: the minimum number of cases to develop one (Riley et al. 2019/2020)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from clinfuse.evaluation.samplesize import from_evaluation, validation_sample_size

    if develop:
        _development_size(
            source,
            parameters=parameters,
            prevalence=prevalence,
            c_statistic=c_statistic,
            r2_cs=r2_cs,
            r2_nagelkerke=r2_nagelkerke,
            shrinkage=shrinkage,
            as_json=as_json,
            lp_given=bool(lp_normal or lp_beta),
        )
        return
    if parameters is not None or r2_cs is not None or r2_nagelkerke is not None:
        raise typer.BadParameter(
            "--parameters, --r2-cs and --r2-nagelkerke size a development study: add --develop"
        )

    targets: dict[str, Any] = {
        "oe": oe,
        "oe_ci_width": oe_ci_width,
        "slope_ci_width": slope_ci_width,
        "c_ci_width": c_ci_width,
        "threshold": threshold,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "nb_ci_width": nb_ci_width,
    }
    if prevalence is not None:
        targets["prevalence"] = prevalence
    if c_statistic is not None:
        targets["c_statistic"] = c_statistic
    if source is not None:
        if lp_normal or lp_beta:
            raise typer.BadParameter(
                "--from takes the risk distribution from the evaluation; "
                "leave out --lp-normal and --lp-beta"
            )
        result = from_evaluation(source, **targets)
    else:
        missing = [
            o
            for o, v in (("--prevalence", prevalence), ("--c-statistic", c_statistic))
            if v is None
        ]
        if missing:
            raise typer.BadParameter(
                f"give {' and '.join(missing)}, or --from an evaluation folder"
            )
        result = validation_sample_size(
            lp_normal=_pair(lp_normal, "--lp-normal"),
            lp_beta=_pair(lp_beta, "--lp-beta"),
            **targets,
        )
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    table = Table(title=f"Minimum validation sample size (prevalence {result.prevalence:.3f})")
    for col in ("criterion", "anticipated", "SE", "CI width", "cases", "events"):
        table.add_column(col, justify="left" if col == "criterion" else "right")
    for row in result.criteria:
        table.add_row(
            row["criterion"],
            f"{row['anticipated']:.3f}",
            f"{row['se']:.4f}",
            f"{row['ci_width']:g}",
            f"{row['n']:,}",
            f"{row['events']:.0f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"at least {result.n:,} cases ({result.events:.0f} events); "
        f"linear predictor: {', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}' for k, v in result.lp.items())}"
    )


def _development_size(
    source: Path | None,
    *,
    parameters: int | None,
    prevalence: float | None,
    c_statistic: float | None,
    r2_cs: float | None,
    r2_nagelkerke: float | None,
    shrinkage: float,
    as_json: bool,
    lp_given: bool,
) -> None:
    """``clinfuse samplesize --develop``."""
    import json

    from rich.console import Console
    from rich.table import Table

    from clinfuse.evaluation.samplesize import (
        development_from_evaluation,
        development_sample_size,
    )

    if parameters is None:
        raise typer.BadParameter(
            "--develop needs --parameters: the number of candidate predictor parameters"
        )
    if lp_given:
        raise typer.BadParameter("--lp-normal and --lp-beta size a validation; leave them out")
    targets: dict[str, Any] = {
        "r2_cs": r2_cs,
        "r2_nagelkerke": r2_nagelkerke,
        "c_statistic": c_statistic,
        "shrinkage": shrinkage,
    }
    if source is not None:
        if prevalence is not None:
            targets["prevalence"] = prevalence
        result = development_from_evaluation(source, parameters=parameters, **targets)
    else:
        if prevalence is None:
            raise typer.BadParameter("give --prevalence, or --from an evaluation folder")
        result = development_sample_size(parameters=parameters, prevalence=prevalence, **targets)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    table = Table(
        title=f"Minimum development sample size ({result.parameters} parameters, "
        f"prevalence {result.prevalence:.3f})"
    )
    for col in ("criterion", "shrinkage", "cases", "events", "EPP"):
        table.add_column(col, justify="left" if col == "criterion" else "right")
    for row in result.criteria:
        table.add_row(
            row["criterion"],
            f"{row['shrinkage']:.3f}",
            f"{row['n']:,}",
            f"{row['events']:.0f}",
            f"{row['epp']:.2f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"at least {result.n:,} cases ({result.events:.0f} events, {result.epp:.1f} per "
        f"parameter); Cox-Snell R2 {result.r2_cs:.3f} ({result.r2_source}), "
        f"Nagelkerke {result.r2_cs / result.max_r2_cs:.3f}",
        highlight=False,
    )


MONITOR_EPILOG = (
    "Examples:\n\n"
    "  clinfuse predict runs/demo this_year/manifest.csv --out scored/p.csv\n\n"
    "  clinfuse monitor runs/demo scored/p.csv --out monitor_2024 --time-column encounter_date\n\n"
    "  clinfuse monitor runs/cv scored/p.csv --out monitor_q --time-column encounter_date "
    "--period quarter --thresholds 0.2\n\n"
    "  clinfuse monitor runs/fed_sites scored/p.csv --out monitor_site_a --time-column "
    "encounter_date --reference scored/dev.csv   (a run assembled from a federation: this "
    "site's development cases, scored by clinfuse predict)"
)


def monitor(
    model: Annotated[
        Path,
        typer.Argument(help="The run or cross-validation folder that scored the predictions."),
    ],
    predictions: Annotated[
        Path, typer.Argument(help="Predictions table written by `clinfuse predict` (P.csv).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Monitoring folder to create.")],
    time_column: Annotated[
        str,
        typer.Option("--time-column", help="Manifest column of dates (YYYY-MM-DD)."),
    ],
    period: Annotated[
        str, typer.Option("--period", help="month (default), quarter or year.")
    ] = "month",
    thresholds: Annotated[
        str,
        typer.Option(
            "--thresholds", help="Alert thresholds of the fused risk (default 0.1,0.2,0.3)."
        ),
    ] = "",
    min_size: Annotated[
        int,
        typer.Option("--min-size", min=1, help="Periods with fewer cases are not compared."),
    ] = 30,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="The scored manifest, if it moved since `clinfuse predict` (default: the one "
            "the predictions' provenance names).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output folder.")
    ] = False,
    cusum_false_alarm: CusumFalseAlarm = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="Cases to compare with, scored by `clinfuse predict` with this model "
            "(default: the run's train and validation predictions; needed for a run "
            "assembled from a federation).",
        ),
    ] = None,
) -> None:
    """Monitor a model in use before outcomes arrive: per period, risk and alert rate, the
    shift of the model's outputs (PSI), modality availability and numeric inputs against the
    development data, pooled and for each site against its own development cases; with the
    outcomes known so far, O/E, AUROC and CUSUM charts.

    Writes monitoring.json, monitoring.csv, monitoring_by_site.csv (with a site column),
    figures/ and report.html into --out (the folder appears only when complete).
    """
    from rich.console import Console

    from clinfuse.evaluation.monitor import monitor_predictions, site_flags

    result = monitor_predictions(
        model,
        predictions,
        out,
        time_column=time_column,
        period=period,
        thresholds=thresholds or None,
        min_size=min_size,
        manifest=manifest,
        overwrite=overwrite,
        cusum_false_alarm=check_cusum_option(time_column, cusum_false_alarm),
        reference=reference,
    )
    from clinfuse.evaluation.cusum import describe_change, first_signals

    s = result.summary
    console = Console()
    compared = [r for r in s["periods"] if not r["suppressed"]]
    console.print(
        f"monitored {s['n_dated']} dated cases in {len(s['periods'])} {s['period']}s "
        f"({len(compared)} compared with {s['development']['n']} development cases); "
        f"{s['n_flagged_periods']} flagged",
        highlight=False,
        soft_wrap=True,
    )
    for r in compared:
        if r["flags"]:
            console.print(
                f"{r['period']}: {'; '.join(r['flags'])}", highlight=False, soft_wrap=True
            )
    by_site = s.get("by_site")
    if by_site:
        own = sum(1 for e in by_site["sites"] if e["reference"] == "site")
        console.print(
            f"by site ({len(by_site['sites'])} compared, {own} with their own development "
            f"cases, {len(by_site['left_out'])} with too few cases): "
            f"{by_site['n_flagged_periods']} flagged",
            highlight=False,
            soft_wrap=True,
        )
        for e in by_site["sites"]:
            for line in site_flags(e):
                console.print(f"{e['site']} {line}", highlight=False, soft_wrap=True)
    outcomes = s["outcomes"]
    if outcomes is None:
        console.print("no outcomes of both kinds known yet", highlight=False)
    else:
        signals = [
            f"{chart['direction']} signalled {chart['signals'][0]['date']} (climb from "
            f"{chart['signals'][0]['since']}"
            + (
                f"; {describe_change(chart['signals'][0])})"
                if "change" in chart["signals"][0]
                else ")"
            )
            for chart in outcomes["cusum"]["charts"]
            if chart["n_signals"]
        ]
        signals += [
            f"at site {site}, {chart['direction']} signalled {first['date']}"
            for site, chart, first in first_signals(outcomes.get("cusum_by_site"))
        ]
        console.print(
            f"outcomes known for {outcomes['n_dated']} cases; CUSUM: "
            + ("; ".join(signals) if signals else "no signal"),
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"report: {result.report}")
