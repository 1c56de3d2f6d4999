"""The ``clinfuse`` command line (Typer + Rich).

Exit codes: 0 ok, 1 data or usage error (one-line reason on stderr; the
traceback only with ``--debug``), 2 internal error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clinfuse._context import EXTERNAL_PATHS
from clinfuse._options import (
    ConformalAdaptive,
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
from clinfuse.errors import ClinFuseError, ConfigError

app = typer.Typer(
    name="clinfuse",
    help=(
        "Multimodal clinical decision support: fuse images, notes, signals and tabular "
        "values into one calibrated risk.\n\n"
        "Start with `clinfuse demo`, or `clinfuse synth --out demo` then "
        "`clinfuse validate demo/manifest.csv`."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=False,
)

console = Console(stderr=False)
err_console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug
    EXTERNAL_PATHS.set(False)  # a command's --allow-external-paths sets it for that command


def _warn_in_sample(sets: Any, cohort: Path, case_ids: Any) -> None:
    """Say so when scored cases are among the cases that calibrated the conformal sets."""
    from clinfuse.evaluation.conformal import calibration_overlap

    n = calibration_overlap(sets, cohort, case_ids)
    if n:
        err_console.print(
            f"{n} cases here calibrated the conformal sets: their sets are in-sample, not "
            "predictions for new cases",
            highlight=False,
            soft_wrap=True,
        )


@contextmanager
def _progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A Rich progress bar; yields ``update(done, total)``."""
    disable = not console.is_terminal and os.environ.get("CLINFUSE_PROGRESS") != "1"
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=disable,
        transient=False,
    ) as prog:
        task = prog.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield update


# ---------------------------------------------------------------------------
# synth
# ---------------------------------------------------------------------------
@app.command(
    epilog=(
        "Examples:\n\n"
        "  clinfuse synth --out demo_cohort\n\n"
        "  clinfuse synth --out big --n-cases 2000 --seed 7\n\n"
        "  clinfuse synth --out null_tab --uninformative tabular\n\n"
        "  clinfuse synth --out drifting --n-cases 2000 --seed 2 --drift 0.5   # dated, drifting\n\n"
        "  clinfuse synth --out shifted --n-cases 2000 --shift-date 2022-01-01 --shift-odds 2"
    )
)
def synth(
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write the cohort into (new or empty).")
    ],
    n_cases: Annotated[
        int, typer.Option("--n-cases", min=10, help="Number of cases (encounters).")
    ] = 400,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed; the same seed gives the same cohort.")
    ] = 0,
    uninformative: Annotated[
        str,
        typer.Option(
            "--uninformative",
            help="Comma-separated modalities whose content is independent of the outcome "
            "(image,note,signal,tabular).",
        ),
    ] = "",
    volumes: Annotated[
        bool,
        typer.Option(
            "--volumes", help="Write each image as a folder holding a DICOM series (3-D)."
        ),
    ] = False,
    encounter_dates: Annotated[
        bool,
        typer.Option(
            "--encounter-dates",
            help="Add the manifest column encounter_date (2019–2023; for `clinfuse evaluate "
            "--time-column encounter_date`).",
        ),
    ] = False,
    drift: Annotated[
        float,
        typer.Option(
            "--drift",
            help="Change of the outcome's log odds per year of encounter date (e.g. 0.5: "
            "events grow more common over time); implies --encounter-dates.",
        ),
    ] = 0.0,
    shift_date: Annotated[
        str | None,
        typer.Option(
            "--shift-date",
            help="From this encounter date (YYYY-MM-DD) on, the outcome's odds are --shift-odds "
            "times what they were: a sudden change for the CUSUM charts of `clinfuse evaluate "
            "--time-column` to find; implies --encounter-dates.",
        ),
    ] = None,
    shift_odds: Annotated[
        float | None,
        typer.Option("--shift-odds", help="The odds ratio of --shift-date's change (default 2)."),
    ] = None,
) -> None:
    """Write a demo cohort: manifest + real DICOM images + notes + WFDB ECGs + labs.

    Each modality carries partial, independent evidence about the outcome, so
    fusing them beats any single one (see docs/demo_cohort.md).
    """
    from clinfuse.synth import synthesize_cohort

    mods = [m.strip() for m in uninformative.split(",") if m.strip()]
    if shift_odds is not None and shift_date is None:
        raise ConfigError(
            "--shift-odds sizes the change at --shift-date, which is missing",
            field="shift_odds",
            hint="add --shift-date YYYY-MM-DD",
        )
    shift = None if shift_date is None else (shift_date, 2.0 if shift_odds is None else shift_odds)
    with _progress("synthesizing cases") as update:
        manifest = synthesize_cohort(
            out,
            n_cases=n_cases,
            seed=seed,
            uninformative=mods,
            volumes=volumes,
            progress=update,
            encounter_dates=encounter_dates,
            drift=drift,
            shift=shift,
        )
    console.print(f"wrote {n_cases} cases: {manifest}")
    console.print(f"next: clinfuse validate {manifest}")


# ---------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------
@app.command(
    epilog=(
        "Examples:\n\n"
        "  clinfuse validate demo_cohort/manifest.csv\n\n"
        "  clinfuse validate cohort.parquet --require-label --json report.json\n\n"
        "  clinfuse validate cohort.csv --no-read   (manifest only, fast)\n\n"
        "  clinfuse validate dated/manifest.csv --time-column encounter_date   (and its dates)"
    )
)
def validate(
    cohort: Annotated[Path, typer.Argument(help="The manifest (CSV/TSV/Parquet) or its folder.")],
    target: Annotated[str, typer.Option("--target", help="Outcome column.")] = "label",
    require_label: Annotated[
        bool,
        typer.Option("--require-label", help="Every case needs a 0/1 outcome (as for training)."),
    ] = False,
    read: Annotated[
        bool, typer.Option("--read/--no-read", help="Read every file (finds corrupt files).")
    ] = True,
    tabular: Annotated[
        str, typer.Option("--tabular", help="Comma-separated tabular columns that must exist.")
    ] = "",
    allow_external_paths: ExternalPaths = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the full report (every issue) as JSON.")
    ] = None,
    max_rows: Annotated[int, typer.Option("--max-rows", help="Issues shown in the table.")] = 50,
    workers: LoadWorkers = "auto",
    time_column: Annotated[
        str | None,
        typer.Option(
            "--time-column",
            help="A column of dates (as for `clinfuse evaluate --time-column`): values that "
            "are not dates are errors, dates after today warnings, undated cases counted.",
        ),
    ] = None,
) -> None:
    """Check a cohort manifest and every file it names; exit 1 if any case has an error.

    Finds missing or unreadable files, empty notes, NaN-only signals, duplicate
    case ids, patients in two splits, labels that are not 0/1 and (with --time-column)
    dates that are not dates, and lists them as a table (case, field, file, reason).
    """
    from clinfuse.cohort.validate import validate_cohort

    cols = [c.strip() for c in tabular.split(",") if c.strip()] or None
    with _progress("reading files") as update:
        report = validate_cohort(
            cohort,
            target=target,
            require_label=require_label,
            read_files=read,
            allow_external_paths=allow_external_paths,
            tabular_columns=cols,
            progress=update,
            workers=workers,
            time_column=time_column,
        )
    if json_out is not None:
        _write_json_atomic(json_out, report.to_dict())

    summary = Table(title=f"{report.manifest_path}", show_header=True, header_style="bold")
    summary.add_column("modality")
    summary.add_column("named", justify="right")
    summary.add_column("readable" if read else "named (not read)", justify="right")
    summary.add_column("what was read")
    for m, n in report.declared.items():
        shapes = ", ".join(f"{k}: {v}" for k, v in report.shapes.get(m, {}).items())
        summary.add_row(m, str(n), str(report.presence.get(m, 0)), shapes)
    console.print(summary)

    if report.issues:
        table = Table(show_header=True, header_style="bold", title="problems")
        for col in ("case_id", "field", "severity", "file", "reason"):
            table.add_column(col, overflow="fold")
        for issue in report.issues[:max_rows]:
            style = "red" if issue.severity == "error" else "yellow"
            table.add_row(
                issue.case_id or "(manifest)",
                issue.field,
                f"[{style}]{issue.severity}[/]",
                issue.path or "",
                issue.message,
            )
        console.print(table)
        if len(report.issues) > max_rows:
            more = len(report.issues) - max_rows
            hint = f" (all in {json_out})" if json_out else " (use --json FILE for the full list)"
            console.print(f"... and {more} more{hint}")
    console.print(
        f"{report.n_rows} rows, {len(report.errors)} errors in {report.n_cases_with_errors} cases, "
        f"{len(report.warnings)} warnings"
    )
    if not report.ok:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------
# train / predict / demo
# ---------------------------------------------------------------------------
def _epoch_printer() -> Callable[[object, int], None]:
    def show(record: object, max_epochs: int) -> None:
        val = getattr(record, "val_auroc", {})
        scores = "  ".join(f"{k} {v:.3f}" for k, v in val.items() if v == v)
        mark = " *" if getattr(record, "improved", []) else ""
        err_console.print(
            f"epoch {getattr(record, 'epoch', '?')}/{max_epochs}  loss {getattr(record, 'train_loss', 0):.4f}  "
            f"val AUROC  {scores}{mark}",
            highlight=False,
        )

    return show


def _metrics_table(metrics: dict, title: str) -> Table:
    table = Table(title=title, header_style="bold")
    for col in ("model", "cases", "AUROC (95% CI)", "AUPRC (95% CI)", "Brier"):
        table.add_column(col, justify="right" if col != "model" else "left")

    def fmt(block: dict) -> str:
        if block.get("value") is None:
            return "n/a"
        if block.get("ci_low") is None:
            return f"{block['value']:.3f}"
        return f"{block['value']:.3f} ({block['ci_low']:.3f}-{block['ci_high']:.3f})"

    for name, block in metrics["models"].items():
        table.add_row(
            name,
            str(block["n_cases"]),
            fmt(block["auroc"]),
            fmt(block["auprc"]),
            "n/a" if block["brier"]["value"] is None else f"{block['brier']['value']:.3f}",
        )
    return table


# Options `train` and `crossval` share: one declaration, the same flags and help.
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="YAML run config (see docs/configuration.md).")
]
DeviceOption = Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")]
EpochsOption = Annotated[int | None, typer.Option("--epochs", help="Maximum epochs.")]
FusionOption = Annotated[
    str | None, typer.Option("--fusion", help="late (default), early or intermediate.")
]
TabularOption = Annotated[
    str | None, typer.Option("--tabular", help="Comma-separated tabular columns.")
]
ModalitiesOption = Annotated[
    str | None,
    typer.Option(
        "--modalities",
        help="Comma-separated modalities to use (default: every one the manifest has), "
        "e.g. tabular for a baseline.",
    ),
]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Training seed.")]


@app.command(
    epilog=(
        "Examples:\n\n"
        "  clinfuse train demo_cohort/manifest.csv --out runs/demo\n\n"
        "  clinfuse train cohort.csv --out runs/r1 --config my.yaml --device cuda\n\n"
        "  clinfuse train cohort.csv --out runs/r1 --resume   (continue an interrupted run)\n\n"
        "  clinfuse train cohort.csv --out runs/early --fusion early --tabular age,crp\n\n"
        "  clinfuse train dated/manifest.csv --out runs/temporal --split-by-date encounter_date"
    )
)
def train(
    cohort: Annotated[Path, typer.Argument(help="The manifest (CSV/TSV/Parquet).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder to create.")],
    config: ConfigOption = None,
    device: DeviceOption = None,
    epochs: EpochsOption = None,
    fusion: FusionOption = None,
    tabular: TabularOption = None,
    modalities: ModalitiesOption = None,
    seed: SeedOption = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing run folder.")
    ] = False,
    split_by_date: Annotated[
        str | None,
        typer.Option(
            "--split-by-date",
            help="Manifest column of dates: split patients in time order (earliest train, "
            "latest test: temporal validation) instead of at random (data.split_by_date).",
        ),
    ] = None,
    allow_external_paths: ExternalPaths = False,
) -> None:
    """Train encoders, heads, the fusion combiner and calibration; write a run folder.

    The run folder holds config.yaml, model weights (safetensors), data_report.json,
    metrics.json and predictions.csv. It appears only when complete.
    """
    from clinfuse.training.run import launched_worker

    cfg = _run_config(
        config,
        device,
        epochs,
        fusion,
        seed,
        tabular,
        modalities,
        resume=resume,
        split_by_date=split_by_date,
    )
    run = _train_with_progress(cohort, out, cfg, resume=resume, overwrite=overwrite)
    if not launched_worker():  # DDP: the extra processes rerun this command silently
        _print_run_summary(run)


def _run_config(
    config: Path | None,
    device: str | None,
    epochs: int | None,
    fusion: str | None,
    seed: int | None,
    tabular: str | None,
    modalities: str | None,
    *,
    resume: bool,
    split_by_date: str | None = None,
) -> object:
    """The run config from --config and the training options (None: resume the stored one)."""
    from clinfuse.config import load_config

    overrides: dict[str, object] = {}
    if device is not None:
        overrides["training.device"] = device
    if epochs is not None:
        overrides["training.epochs"] = epochs
    if fusion is not None:
        overrides["fusion.strategy"] = fusion
    if seed is not None:
        overrides["training.seed"] = seed
    if tabular is not None:
        overrides["data.tabular_columns"] = [c.strip() for c in tabular.split(",") if c.strip()]
    if modalities is not None:
        overrides["data.modalities"] = [m.strip() for m in modalities.split(",") if m.strip()]
    if split_by_date is not None:
        overrides["data.split_by_date"] = split_by_date.strip() or None
    if EXTERNAL_PATHS.get() and not resume:  # --allow-external-paths, kept in the run's config
        overrides["data.allow_external_paths"] = True
    return None if (resume and config is None and not overrides) else load_config(config, overrides)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  clinfuse crossval demo_cohort/manifest.csv --out runs/demo_cv\n\n"
        "  clinfuse crossval cohort.csv --out runs/cv10 --folds 10 --config my.yaml "
        "--subgroups sex\n\n"
        "  clinfuse crossval cohort.csv --out runs/cv5x5 --repeats 5   "
        "(5 × 5-fold, fresh folds each time)\n\n"
        "  clinfuse crossval cohort.csv --out runs/by_site --group-by site   "
        "(leave one site out)\n\n"
        "  clinfuse crossval cohort.csv --out runs/cv10 --folds 10 --resume   "
        "(continue after an interruption)"
    )
)
def crossval(
    cohort: Annotated[Path, typer.Argument(help="The manifest of labelled cases.")],
    out: Annotated[Path, typer.Option("--out", help="Cross-validation folder to create.")],
    folds: Annotated[
        int | None, typer.Option("--folds", min=2, help="Number of folds (default 5).")
    ] = None,
    group_by: Annotated[
        str | None,
        typer.Option(
            "--group-by",
            help="Leave one group out: a manifest column (e.g. site); one fold per value.",
        ),
    ] = None,
    fold_seed: Annotated[
        int | None,
        typer.Option("--fold-seed", help="Seed of the patient-to-fold assignment (default 0)."),
    ] = None,
    config: ConfigOption = None,
    device: DeviceOption = None,
    epochs: EpochsOption = None,
    fusion: FusionOption = None,
    tabular: TabularOption = None,
    modalities: ModalitiesOption = None,
    seed: SeedOption = None,
    subgroups: Annotated[
        str,
        typer.Option("--subgroups", help="Comma-separated manifest columns for the report."),
    ] = "",
    thresholds: Annotated[
        str,
        typer.Option("--thresholds", help="Risk thresholds for the report (default 0.1,0.2,0.3)."),
    ] = "",
    n_boot: Annotated[
        int, typer.Option("--n-boot", min=0, help="Bootstrap replicates for the 95 % CIs.")
    ] = 2000,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted cross-validation.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing folder.")
    ] = False,
    time_column: Annotated[
        str | None,
        typer.Option(
            "--time-column",
            help="Manifest column of dates: the pooled report adds metrics per --period and "
            "the calibration drift.",
        ),
    ] = None,
    period: TimePeriod = None,
    cusum_false_alarm: CusumFalseAlarm = None,
    repeats: Annotated[
        int,
        typer.Option(
            "--repeats",
            min=1,
            help="Repeat the cross-validation with the patients dealt to folds anew (fold seeds "
            "--fold-seed, +1, ...): --out then holds repeat_1/ ... and repeats.json with the "
            "mean and spread of the pooled figures.",
        ),
    ] = 1,
    allow_external_paths: ExternalPaths = False,
) -> None:
    """Internal validation: train one run per fold, pool the out-of-fold predictions and
    write the evaluation report of the training procedure.

    Every patient is held out once (patient-level folds, stratified by outcome and
    site). Writes crossval.json, per_fold.csv, assignment.csv, folds/fold_k/ (complete
    runs) and evaluation/ (report.html, metrics.json, out-of-fold predictions.csv).
    The folder appears only when complete. With --repeats R: R such folders, and their
    figures side by side.
    """
    from clinfuse.evaluation.crossval import cross_validate

    cfg = _run_config(config, device, epochs, fusion, seed, tabular, modalities, resume=resume)
    common: dict[str, Any] = {
        "folds": folds,
        "fold_seed": fold_seed,
        "group_by": group_by,
        "resume": resume,
        "overwrite": overwrite,
        "subgroups": [s for s in subgroups.split(",") if s.strip()],
        "thresholds": thresholds or None,
        "n_boot": n_boot,
        "time_column": time_column,
        "period": check_period_option(time_column, period),
        "cusum_false_alarm": check_cusum_option(time_column, cusum_false_alarm),
    }
    if repeats > 1:
        _repeated_crossval(cohort, out, cfg, repeats=repeats, **common)
        return
    with _progress("preparing") as update:
        result = cross_validate(
            cohort,
            out,
            cfg,
            **common,
            progress=lambda _stage, done, total: update(done, total),
            on_epoch=_epoch_printer(),
            log=lambda msg: err_console.print(msg, highlight=False),
        )
    s = result.summary
    title = (
        f"leave one {s['group_by']} out ({s['folds']} folds)"
        if s.get("group_by")
        else f"{s['folds']}-fold cross-validation"
    )
    table = Table(title=title, header_style="bold")
    for col in ("fold", "cases", "events", "AUROC", "cal. slope", "Brier"):
        table.add_column(col, justify="right")

    def num(v: float | None, digits: int = 3) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    for r in s["per_fold"]:
        table.add_row(
            f"{r['fold']}: {r['group']}" if "group" in r else str(r["fold"]),
            str(r["n_cases"]),
            str(r["n_events"]),
            num(r["auroc"]),
            num(r["calibration_slope"], 2),
            num(r["brier"]),
        )
    console.print(table)
    auc = s["pooled"]["auroc"]
    spread = s["across_folds"]["auroc"]
    console.print(
        f"pooled out-of-fold AUROC {num(auc['value'])} ({num(auc['ci_low'])}-"
        f"{num(auc['ci_high'])}); fold mean {num(spread['mean'])} ± {num(spread['sd'])}"
    )
    meta = (s.get("meta_analysis") or {}).get("auroc")
    if meta:
        pi = (
            ""
            if meta["pi_low"] is None
            else f"; prediction interval {num(meta['pi_low'])}-{num(meta['pi_high'])}"
        )
        console.print(
            f"random-effects AUROC over {meta['k']} {s['group_by']} groups {num(meta['estimate'])} "
            f"({num(meta['ci_low'])}-{num(meta['ci_high'])}){pi}; I² {100 * meta['i2']:.0f} %"
        )
    console.print(f"report: {result.report}")


def _repeated_crossval(cohort: Path, out: Path, cfg: Any, **kwargs: Any) -> None:
    from clinfuse.evaluation.repeated import repeated_cross_validate

    result = repeated_cross_validate(
        cohort,
        out,
        cfg,
        on_epoch=_epoch_printer(),
        log=lambda msg: err_console.print(msg, highlight=False),
        **kwargs,
    )
    s = result.summary
    table = Table(title=f"{s['repeats']} × {s['folds']}-fold cross-validation", header_style="bold")
    for col in ("repeat", "fold seed", "pooled AUROC (95 % CI)", "cal. slope", "O/E", "Brier"):
        table.add_column(col, justify="right")

    def num(v: float | None, digits: int = 3) -> str:
        return "n/a" if v is None or v != v else f"{v:.{digits}f}"

    for r in s["repeats_detail"]:
        table.add_row(
            str(r["repeat"]),
            str(r["fold_seed"]),
            f"{num(r['auroc'])} ({num(r['auroc_ci_low'])}-{num(r['auroc_ci_high'])})",
            num(r["calibration_slope"], 2),
            num(r["oe_ratio"], 2),
            num(r["brier"]),
        )
    console.print(table)
    auc = s["across_repeats"]["auroc"]
    console.print(
        f"mean pooled AUROC over {s['repeats']} repeats {num(auc['mean'])} (SD {num(auc['sd'])}, "
        f"range {num(auc['min'])}-{num(auc['max'])})",
        highlight=False,
    )
    console.print(f"repeats: {result.out / 'repeats.json'}; each repeat: {result.repeat(1)} ...")


@app.command(
    epilog=(
        "Examples:\n\n"
        "  clinfuse tune cohort.csv --space space.yaml --out runs/tune --config my.yaml\n\n"
        "  clinfuse tune cohort.csv --space space.yaml --out runs/tune --outer 5   "
        "(nested cross-validation of the whole search)\n\n"
        "  clinfuse tune cohort.csv --space space.yaml --out runs/tune --metric log_loss\n\n"
        "  clinfuse train cohort.csv --config runs/tune/best_config.yaml --out runs/final\n\n"
        "space.yaml:  params: {training.lr: [0.001, 0.0003], fusion.strategy: [late, "
        "intermediate]}"
    )
)
def tune(
    cohort: Annotated[Path, typer.Argument(help="The manifest of labelled cases.")],
    space: Annotated[
        Path,
        typer.Option(
            "--space",
            help="YAML search space: params (dotted config fields → lists of values, or "
            "{low, high, log} ranges with search: random), search, trials, seed, and "
            "halving: {factor: 3, min_epochs: 1} for successive halving.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Tuning folder to create.")],
    folds: Annotated[
        int, typer.Option("--folds", min=2, help="Folds of each trial's cross-validation.")
    ] = 5,
    fold_seed: Annotated[
        int, typer.Option("--fold-seed", help="Seed of the patient-to-fold assignment.")
    ] = 0,
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="What chooses: auroc (highest), log_loss or brier (lowest) of the pooled "
            "out-of-fold risks.",
        ),
    ] = "auroc",
    outer: Annotated[
        int | None,
        typer.Option(
            "--outer",
            min=2,
            help="Nested cross-validation: outer folds, each scored by a model whose config "
            "was chosen by a search on the other folds only (the honest figure of the search).",
        ),
    ] = None,
    outer_seed: Annotated[int, typer.Option("--outer-seed", help="Seed of the outer folds.")] = 0,
    config: ConfigOption = None,
    device: DeviceOption = None,
    epochs: EpochsOption = None,
    fusion: FusionOption = None,
    tabular: TabularOption = None,
    modalities: ModalitiesOption = None,
    seed: SeedOption = None,
    n_boot: Annotated[
        int,
        typer.Option("--n-boot", min=0, help="Bootstrap replicates of each trial's report."),
    ] = 200,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted search.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing folder.")
    ] = False,
    allow_external_paths: ExternalPaths = False,
) -> None:
    """Choose hyperparameters: cross-validate every candidate config of a search space on
    the same patient-level folds and keep the best.

    Writes tuning.json, trials.csv (each trial's values and pooled and per-fold metric,
    with the paired difference from the chosen one), best_config.yaml (for `clinfuse
    train --config`) and trials/trial_NNN/ (each trial's cross-validation report). With
    --outer K, a nested cross-validation of the whole search shows how much the chosen
    trial's figure flatters it. The folder appears only when complete.
    """
    from clinfuse.evaluation.tune import tune as run_tune

    cfg = _run_config(config, device, epochs, fusion, seed, tabular, modalities, resume=resume)
    with _progress("preparing") as update:
        result = run_tune(
            cohort,
            out,
            space,
            cfg,
            folds=folds,
            fold_seed=fold_seed,
            metric=metric,
            outer=outer,
            outer_seed=outer_seed,
            n_boot=n_boot,
            resume=resume,
            overwrite=overwrite,
            progress=lambda _stage, done, total: update(done, total),
            on_epoch=_epoch_printer(),
            log=lambda msg: err_console.print(msg, highlight=False),
        )
    s = result.summary
    table = Table(
        title=f"{s['n_trials']} trials, {s['folds']}-fold cross-validation each",
        header_style="bold",
    )
    names = list(s["space"]["params"])
    halving = s.get("halving")
    rung_col = ("rung (epochs)",) if halving else ()
    versus = "vs best of its rung (fold SE)" if halving else "vs chosen (fold SE)"
    for col in ("trial", *[k.rsplit(".", 1)[-1] for k in names], *rung_col, metric, versus):
        table.add_column(col, justify="right")

    def shown(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else json.dumps(value)

    for r in s["trials"]:
        se = "" if r["fold_diff_se"] is None else f" ({r['fold_diff_se']:.3f})"
        chosen = r["trial"] == s["best"]["trial"]
        table.add_row(
            f"{r['trial']}{' *' if chosen else ''}",
            *(shown(r["values"][k]) for k in names),
            *((f"{r['rung']} ({r['epochs']})",) if halving else ()),
            f"{r[metric]:.4f}",
            "chosen" if chosen else f"{r['diff_vs_best']:+.4f}{se}",
        )
    console.print(table)
    if halving:
        console.print(
            f"successive halving: {len(halving['rungs'])} rungs, "
            f"{halving['epochs_budgeted']} fold-epochs budgeted instead of "
            f"{halving['epochs_without_halving']}",
            highlight=False,
        )
    console.print(
        f"chosen: trial {s['best']['trial']} ({metric} {s['best'][metric]:.4f}); "
        f"its config: {result.best_config_path}",
        highlight=False,
    )
    nested = s.get("nested")
    if nested:
        auc = nested["auroc"]

        def num(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        console.print(
            f"nested {nested['outer_folds']}-fold estimate of the search: {metric} "
            f"{nested['pooled']:.4f} (AUROC {num(auc['value'])}, DeLong "
            f"{num(auc['delong_ci_low'])}-{num(auc['delong_ci_high'])}); the chosen trial's "
            f"figure flatters it by {nested['optimism']:+.4f}",
            highlight=False,
        )
    console.print(
        f"next: clinfuse train {cohort} --config {result.best_config_path} --out RUN",
        highlight=False,
    )


@app.command(
    epilog=(
        "Examples:\n\n"
        "  clinfuse backtest dated/manifest.csv --out runs/backtest --time-column "
        "encounter_date\n\n"
        "  clinfuse backtest dated/manifest.csv --out runs/bt_q --time-column encounter_date "
        "--period quarter --min-train-periods 4 --config my.yaml\n\n"
        "  clinfuse backtest dated/manifest.csv --out runs/bt_w2 --time-column encounter_date "
        "--window 2   # train on the 2 years before each test year only"
    )
)
def backtest(
    cohort: Annotated[Path, typer.Argument(help="The labelled manifest, with a date column.")],
    out: Annotated[Path, typer.Option("--out", help="Backtest folder to create.")],
    time_column: Annotated[
        str, typer.Option("--time-column", help="Manifest column of dates (YYYY-MM-DD).")
    ],
    period: Annotated[
        str, typer.Option("--period", help="year (default), quarter or month.")
    ] = "year",
    min_train_periods: Annotated[
        int,
        typer.Option(
            "--min-train-periods", min=1, help="Periods of training data before the first test."
        ),
    ] = 1,
    window: Annotated[
        int | None,
        typer.Option(
            "--window",
            min=1,
            help="Train on this many periods before each test period only (a sliding window); "
            "by default every earlier period (an expanding window). The test cases are the same "
            "either way.",
        ),
    ] = None,
    config: ConfigOption = None,
    device: DeviceOption = None,
    epochs: EpochsOption = None,
    fusion: FusionOption = None,
    tabular: TabularOption = None,
    modalities: ModalitiesOption = None,
    seed: SeedOption = None,
    n_boot: Annotated[
        int, typer.Option("--n-boot", min=0, help="Bootstrap replicates for the 95 % CIs.")
    ] = 1000,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing folder.")
    ] = False,
    allow_external_paths: ExternalPaths = False,
) -> None:
    """Rolling-origin validation: for every period, train on all earlier cases (or the last
    --window periods) and test on that period's — how a model retrained as data accrue would
    have fared.

    Writes backtest.json, backtest.csv, figures/backtest.png, runs/until_PERIOD/ (complete
    runs) and evaluations/PERIOD/ (a full report each). The folder appears only when complete.
    """
    from clinfuse.evaluation.backtest import backtest_run

    cfg = _run_config(config, device, epochs, fusion, seed, tabular, modalities, resume=False)
    result = backtest_run(
        cohort,
        out,
        cfg,
        time_column=time_column,
        period=period,
        min_train_periods=min_train_periods,
        window=window,
        n_boot=n_boot,
        overwrite=overwrite,
        log=lambda msg: err_console.print(msg, highlight=False),
    )
    table = Table(title=f"rolling-origin backtest by {period}", header_style="bold")
    for col in ("test period", "trained on", "cases", "events", "AUROC", "O/E", "cal. slope"):
        table.add_column(col, justify="right")

    def num(v: Any, digits: int = 3) -> str:
        return "n/a" if v is None or v != v else f"{v:.{digits}f}"

    for r in result.rows.to_dict(orient="records"):
        table.add_row(
            str(r["period"]),
            f"{r['train_first']} to {r['train_last']}",
            str(r["n_test"]),
            str(r["n_test_events"]),
            num(r["auroc"]),
            num(r["oe_ratio"], 2),
            num(r["calibration_slope"], 2),
        )
    console.print(table)
    for skip in result.summary["skipped"]:
        console.print(f"{skip['period']}: not tested — {skip['reason']}", highlight=False)
    left = int(result.rows["n_returning_left_out"].sum())
    if left:
        console.print(
            f"{left} test-period cases of patients already in training were left out "
            "(splits are by patient)",
            highlight=False,
        )
    console.print(f"backtest folder: {result.out}")


def _train_with_progress(
    cohort: Path, out: Path, cfg: object, *, resume: bool, overwrite: bool
) -> Path:
    from clinfuse.training import train_run
    from clinfuse.training.run import launched_worker

    if launched_worker():  # a DDP worker: rank 0 reports progress and results
        return train_run(cohort, out, cfg, resume=resume, overwrite=overwrite)  # type: ignore[arg-type]
    with _progress("preparing") as update:

        def stage(name: str, done: int, total: int) -> None:
            update(done, total)

        return train_run(
            cohort,
            out,
            cfg,  # type: ignore[arg-type]
            resume=resume,
            overwrite=overwrite,
            progress=stage,
            on_epoch=_epoch_printer(),
            log=lambda msg: err_console.print(msg, highlight=False),
        )


def _print_run_summary(run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    console.print(
        _metrics_table(
            metrics,
            f"{metrics['split']} split ({metrics['n_cases']} cases, {metrics['n_events']} events)",
        )
    )
    report = json.loads((run / "data_report.json").read_text())
    dated = report.get("split_by_date")
    if dated:
        spans = [
            f"{s} {dated[s]['first']} to {dated[s]['last']}"
            for s in ("train", "val", "test")
            if dated.get(s)
        ]
        console.print(f"split in time order of {dated['column']}: " + "; ".join(spans))
    console.print(f"run folder: {run}")


@app.command(
    epilog=(
        "Examples:\n\n"
        "  clinfuse predict runs/demo new_cohort/manifest.csv --out predictions.csv\n\n"
        "  clinfuse predict runs/demo notes_only.csv --out p.csv --allow-missing-modalities\n\n"
        "  clinfuse predict runs/demo_cv new_cohort/manifest.csv --out p.csv   # fold ensemble\n\n"
        "  clinfuse predict runs/demo new_cohort/manifest.csv --out p.csv --conformal "
        "runs/demo/evaluation --alpha 0.1   # each case's 90 % conformal set"
    )
)
def predict(
    run: Annotated[
        Path,
        typer.Argument(
            help="Run folder written by `clinfuse train`, or a `clinfuse crossval` folder "
            "(its fold models averaged; adds p_fusion_sd/min/max)."
        ),
    ],
    cohort: Annotated[Path, typer.Argument(help="Manifest of the cases to score.")],
    out: Annotated[Path, typer.Option("--out", help="CSV file to write.")],
    allow_missing_modalities: Annotated[
        bool,
        typer.Option(
            "--allow-missing-modalities",
            help="Accept a cohort lacking a column for a run modality.",
        ),
    ] = False,
    device: Annotated[
        str, typer.Option("--device", help="cpu (default), cuda or auto: where the model runs.")
    ] = "cpu",
    workers: LoadWorkers = "auto",
    conformal: ConformalFrom = None,
    alpha: ConformalAlpha = None,
    marginal: ConformalMarginal = False,
    alpha_events: ConformalAlphaEvents = None,
    adaptive: ConformalAdaptive = None,
    allow_external_paths: ExternalPaths = False,
) -> None:
    """Fused and per-modality risks for each case of a cohort (the run's preprocessing reused exactly).

    Beside the CSV go OUT_STEM.provenance.json (the model's version and the manifest, for
    `clinfuse app RUN --predictions OUT`), for a crossval folder OUT_STEM.fold_models.csv
    (each fold model's own outputs, one row per case and model) and, when some cases cannot
    be scored, OUT_STEM.excluded.csv with the reasons. With --conformal EVAL each case also
    gets its conformal prediction set (column conformal_set: positive, negative, uncertain
    or empty), calibrated on the labelled cases of that evaluation of this model."""
    from clinfuse.ensemble import is_crossval_folder, load_ensemble
    from clinfuse.model import load_run
    from clinfuse.scored import check_table_path, write_scored
    from clinfuse.training.trainer import resolve_device

    check_table_path(out)  # before any scoring
    sets: Any = conformal_sets(
        conformal,
        run,
        alpha=alpha,
        marginal=marginal,
        alpha_events=alpha_events,
        adaptive=adaptive,
    )
    where = resolve_device(device)
    ensemble = is_crossval_folder(run)
    model: Any = load_ensemble(run, device=where) if ensemble else load_run(run, device=where)
    per_model = None
    with _progress("scoring cases") as update:
        if ensemble:
            scores = model.score_manifest(
                cohort,
                allow_missing_modalities=allow_missing_modalities,
                progress=update,
                workers=workers,
            )
            frame, excluded, per_model = scores.frame, scores.excluded, scores.per_model
        else:
            frame, excluded = model.predict(
                cohort,
                allow_missing_modalities=allow_missing_modalities,
                progress=update,
                return_excluded=True,
                workers=workers,
            )
    n_excluded = len({i.case_id for i in excluded})
    if sets is not None:
        frame["conformal_set"] = sets.predict(frame["p_fusion"].to_numpy(float))
        _warn_in_sample(sets, cohort, frame["case_id"])
    write_scored(
        out,
        frame,
        model=run,
        manifest=cohort,
        n_excluded=n_excluded,
        per_model=per_model,
        conformal=None if sets is None else sets.to_dict(),
    )
    console.print(f"wrote {len(frame)} predictions: {out}")
    if sets is not None:
        counts = frame["conformal_set"].value_counts()
        console.print(
            sets.describe()
            + " Sets here: "
            + ", ".join(
                f"{counts.get(k, 0)} {k}" for k in ("positive", "negative", "uncertain", "empty")
            ),
            highlight=False,
            soft_wrap=True,
        )
    exc_path = out.with_name(out.stem + ".excluded.csv")
    if not excluded and exc_path.exists():
        exc_path.unlink()  # an earlier scoring's exclusions no longer apply
    if excluded:
        import pandas as pd

        pd.DataFrame([i.as_dict() for i in excluded]).to_csv(exc_path, index=False)
        err_console.print(f"{n_excluded} cases could not be scored; reasons in {exc_path}")
    console.print(
        f"review them in the dashboard: clinfuse app {run} --predictions {out}",
        highlight=False,
        soft_wrap=True,
    )


@app.command(epilog="Example:\n\n  clinfuse demo --out demo_out")
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo cohort and run.")] = Path(
        "demo_out"
    ),
    n_cases: Annotated[int, typer.Option("--n-cases", min=60, help="Demo cohort size.")] = 800,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the demo cohort.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """The main job on the embedded default: synthesize a demo cohort, validate it, train the
    late-fusion model, evaluate it on the test split, explain it, and write the reports."""
    import pandas as pd

    from clinfuse.cohort.validate import validate_cohort
    from clinfuse.config import demo_config
    from clinfuse.evaluation import evaluate_run
    from clinfuse.explain.report import explain_run
    from clinfuse.synth import MARKER_FILE, synthesize_cohort

    out.mkdir(parents=True, exist_ok=True)
    cohort_dir = out / "cohort"
    manifest = cohort_dir / "manifest.csv"
    marker = cohort_dir / MARKER_FILE
    previous = json.loads(marker.read_text()) if marker.exists() and manifest.exists() else {}
    if previous.get("n_cases") == n_cases and previous.get("seed") == seed:
        console.print(f"1/5 reusing the demo cohort {manifest}")
    else:
        with _progress("synthesizing cases") as update:
            manifest = synthesize_cohort(cohort_dir, n_cases=n_cases, seed=seed, progress=update)
        console.print(f"1/5 synthesized {n_cases} cases: {manifest}")
    cfg = demo_config().model_copy(deep=True)
    report = validate_cohort(manifest, tabular_columns=cfg.data.tabular_columns)
    console.print(
        f"2/5 validated: {report.n_rows} rows, {len(report.errors)} errors, "
        f"{len(report.warnings)} warnings"
    )
    cfg.training.device = device  # type: ignore[assignment]
    run = _train_with_progress(manifest, out / "run", cfg, resume=False, overwrite=True)
    console.print("3/5 trained")
    _print_run_summary(run)

    evaluation = evaluate_run(
        run,
        manifest,
        out / "evaluation",
        subgroups=["sex", "age_band"],
        thresholds=[0.2, 0.4],
        split="test",
        overwrite=True,
    )
    console.print(f"4/5 evaluated the test split: {evaluation.report}")

    preds = pd.read_csv(run / "predictions.csv", dtype={"case_id": str})
    complete = preds[(preds["split"] == "test") & (preds.filter(like="present_").min(axis=1) == 1)]
    case = str(complete.sort_values("p_fusion").iloc[-1]["case_id"]) if len(complete) else None
    explain_run(run, manifest, out / "explanations", case=case)
    console.print(
        f"5/5 explained every case (modality Shapley values) and case {case} in depth: "
        f"{out / 'explanations'}"
    )
    console.print(f"open the report: {evaluation.report}")
    console.print(
        f"score new cases: clinfuse predict {run} NEW_MANIFEST --out predictions.csv "
        f"--conformal {out / 'evaluation'}   (each case's 90 % conformal set, calibrated on "
        "the test split)",
        highlight=False,
        soft_wrap=True,
    )


# ---------------------------------------------------------------------------
# evaluate / explain (their code lives next to the features they drive)
# ---------------------------------------------------------------------------
def _register_feature_commands() -> None:
    from clinfuse.deid_cli import DEID_EPILOG, deid
    from clinfuse.evaluation.cli import (
        COMPARE_EPILOG,
        EVALUATE_EPILOG,
        MONITOR_EPILOG,
        POOL_EPILOG,
        RECALIBRATE_EPILOG,
        SAMPLESIZE_EPILOG,
        compare,
        evaluate,
        monitor,
        pool_evaluations,
        recalibrate,
        samplesize,
    )
    from clinfuse.explain.cli import EXPLAIN_EPILOG, explain
    from clinfuse.federated.cli import (
        FEDERATED_EPILOG,
        FLOWER_ASSEMBLE_EPILOG,
        FLOWER_CONFIG_EPILOG,
        federated,
        flower_assemble,
        flower_config,
    )
    from clinfuse.review.cli import APP_EPILOG
    from clinfuse.review.cli import app as review_app

    app.command(epilog=EVALUATE_EPILOG)(evaluate)
    app.command(epilog=RECALIBRATE_EPILOG)(recalibrate)
    app.command(epilog=COMPARE_EPILOG)(compare)
    app.command(name="pool-evaluations", epilog=POOL_EPILOG)(pool_evaluations)
    app.command(epilog=MONITOR_EPILOG)(monitor)
    app.command(epilog=SAMPLESIZE_EPILOG)(samplesize)
    app.command(epilog=EXPLAIN_EPILOG)(explain)
    app.command(name="deid", epilog=DEID_EPILOG)(deid)
    app.command(epilog=FEDERATED_EPILOG)(federated)
    app.command(name="flower-config", epilog=FLOWER_CONFIG_EPILOG)(flower_config)
    app.command(name="flower-assemble", epilog=FLOWER_ASSEMBLE_EPILOG)(flower_assemble)
    app.command(name="app", epilog=APP_EPILOG)(review_app)


_register_feature_commands()


def examples_as_code(epilog: str | None) -> str | None:
    r"""An epilog with its indented example lines fenced as one code block.

    Typer's markdown help joins an epilog's paragraphs with single line breaks, which markdown
    then runs together: a command's examples would print as one wrapped blob. Inside a fence
    each example keeps its own line, in ``--help`` and in docs/cli.md alike. Paragraphs that
    are not indented (prose) stay outside the fence.

    >>> examples_as_code("Examples:\n\n  clinfuse a\n\n  clinfuse b")
    'Examples:\n\n```\n\nclinfuse a\n\nclinfuse b\n\n```'
    """
    if not epilog:
        return epilog
    out: list[str] = []
    fenced = False
    for chunk in epilog.split("\n\n"):
        code = chunk.startswith("  ")
        if code != fenced:
            out.append("```")
            fenced = code
        out.append(chunk.strip() if code else chunk)
    if fenced:
        out.append("```")
    return "\n\n".join(out)


for _info in app.registered_commands:  # every command's examples, one per line
    _info.epilog = examples_as_code(_info.epilog)


# ---------------------------------------------------------------------------
# helpers and entry point
# ---------------------------------------------------------------------------
def _write_json_atomic(path: Path, data: object) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _click_exception_types() -> tuple[tuple[type[Exception], ...], tuple[type[BaseException], ...]]:
    """Click's usage-error and abort types (Typer may vendor its own copy of click)."""
    import importlib

    errors: list[type[Exception]] = []
    aborts: list[type[BaseException]] = []
    for name in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "ClickException"):
            errors.append(mod.ClickException)
        if hasattr(mod, "Abort"):
            aborts.append(mod.Abort)
    return tuple(errors), tuple(aborts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clinfuse`` command; returns the exit code."""
    click_errors, aborts = _click_exception_types()
    # the command line shows its own progress; Hugging Face's per-file bars are noise here
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="clinfuse", standalone_mode=False)
    except ClinFuseError as e:
        if debug:
            err_console.print_exception()
        err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        return 1
    except aborts:
        err_console.print("aborted")
        return 1
    except click_errors as e:
        e.show()  # type: ignore[attr-defined]
        return 1
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 1
    except Exception as e:  # noqa: BLE001 - an internal error: a bug, not the user's input
        if debug:
            err_console.print_exception()
        else:
            err_console.print(
                f"[red]internal error:[/red] {type(e).__name__}: {e} (rerun with --debug for the traceback, "
                "and please report it)",
                highlight=False,
                soft_wrap=True,
            )
        return 2
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
