"""Command-line options shared by several commands (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clinfuse._context import EXTERNAL_PATHS

__all__ = [
    "ConformalAdaptive",
    "ConformalAlpha",
    "ConformalAlphaEvents",
    "ConformalFrom",
    "ConformalMarginal",
    "ExternalPaths",
    "LoadWorkers",
    "TimePeriod",
    "check_period_option",
    "conformal_sets",
]


def _external_paths(value: bool) -> bool:
    """Set :data:`clinfuse._context.EXTERNAL_PATHS` for the command (the root callback
    resets it at each invocation, before the command's options are parsed)."""
    EXTERNAL_PATHS.set(bool(value))
    return value


ExternalPaths = Annotated[
    bool,
    typer.Option(
        "--allow-external-paths",
        callback=_external_paths,
        help="Accept files outside the manifest's folder (absolute paths, `..`, links that "
        "lead elsewhere).",
    ),
]

LoadWorkers = Annotated[
    str,
    typer.Option(
        "--workers",
        help="Processes that read and preprocess the cohort's files: auto (one per CPU, at "
        "most 8, for cohorts of 128 cases or more) or a number (0 = in this process). The "
        "results do not depend on it.",
    ),
]

ConformalFrom = Annotated[
    Path | None,
    typer.Option(
        "--conformal",
        help="An evaluation of this model (`clinfuse evaluate` folder, on labelled cases it did "
        "not train on) that calibrates conformal prediction sets: each case's set of plausible "
        "outcomes, wrong for at most --alpha of events and of non-events.",
    ),
]

ConformalAlpha = Annotated[
    float | None,
    typer.Option(
        "--alpha",
        min=0.001,
        max=0.499,
        help="Error level of the conformal sets (default 0.1: each covers the true outcome "
        "with 90 % probability).",
    ),
]

ConformalMarginal = Annotated[
    bool,
    typer.Option(
        "--marginal",
        help="Conformal sets whose coverage holds on average over cases instead of for events "
        "and non-events separately (smaller sets; rare events may be missed more often).",
    ),
]

ConformalAlphaEvents = Annotated[
    float | None,
    typer.Option(
        "--alpha-events",
        min=0.001,
        max=0.499,
        help="Another error level for events than --alpha (which then holds for non-events), "
        "e.g. --alpha-events 0.05 --alpha 0.2: at most 5 % of events missed, up to 20 % of "
        "non-events left uncertain.",
    ),
]

ConformalAdaptive = Annotated[
    Path | None,
    typer.Option(
        "--adaptive",
        help="An evaluation of recent labelled cases run with the same --conformal and "
        "--time-column: the sets move to the levels its adaptive replay ended at (the sets "
        "to use next, after drift).",
    ),
]

TimePeriod = Annotated[
    str | None,
    typer.Option(
        "--period", help="month, quarter (default) or year: the periods of --time-column."
    ),
]


def conformal_sets(
    evaluation: Path | None,
    model: Path,
    *,
    alpha: float | None,
    marginal: bool,
    alpha_events: float | None,
    out: Path | None = None,
    adaptive: Path | None = None,
) -> object:
    """The conformal sets ``--conformal EVAL`` asks for (None without it), fitted before any
    case is loaded, and with ``--adaptive FEEDBACK`` moved to the levels of that evaluation's
    adaptive replay; ``--alpha``/``--alpha-events``/``--marginal``/``--adaptive`` without
    ``--conformal`` are an error (they would be ignored)."""
    from clinfuse.errors import ConfigError

    if evaluation is None:
        given = [
            name
            for name, value in (
                ("--alpha", alpha),
                ("--alpha-events", alpha_events),
                ("--marginal", marginal or None),
                ("--adaptive", adaptive),
            )
            if value is not None
        ]
        if given:
            raise ConfigError(
                f"{', '.join(given)} set(s) conformal prediction sets, which need --conformal",
                field="conformal",
                hint="add --conformal EVAL (an evaluation of this model on held-out cases)",
            )
        return None
    if out is not None and Path(evaluation).resolve() == Path(out).resolve():
        raise ConfigError(
            "--conformal names the output folder itself",
            path=evaluation,
            hint="pass an earlier evaluation of this model and a new --out",
        )
    from clinfuse.evaluation.conformal import adapted_from_evaluation, conformal_from_evaluation

    sets = conformal_from_evaluation(
        evaluation,
        model,
        alpha=0.1 if alpha is None else alpha,
        mondrian=not marginal,
        alpha_events=alpha_events,
    )
    return sets if adaptive is None else adapted_from_evaluation(sets, adaptive, model)


CusumFalseAlarm = Annotated[
    float | None,
    typer.Option(
        "--cusum-false-alarm",
        help="Each CUSUM chart's chance of signalling in a cohort the model fits throughout "
        "(default 0.05): lower it for fewer, later signals.",
    ),
]


def _needs_time_column(time_column: str | None, option: str, does: str, field: str) -> None:
    """An error for ``option``, given without the ``--time-column`` it works on."""
    from clinfuse.errors import ConfigError

    if not time_column:
        raise ConfigError(
            f"{option} {does} of --time-column, which is missing",
            field=field,
            hint="add --time-column COL (a manifest column of dates)",
        )


def check_cusum_option(time_column: str | None, false_alarm: float | None) -> float:
    """``--cusum-false-alarm``'s value (default 0.05); an error without ``--time-column``."""
    from clinfuse.evaluation.cusum import check_false_alarm

    if false_alarm is not None:
        _needs_time_column(
            time_column, "--cusum-false-alarm", "sets the CUSUM charts", "cusum_false_alarm"
        )
    return check_false_alarm(0.05 if false_alarm is None else false_alarm)


def check_period_option(time_column: str | None, period: str | None) -> str:
    """``--period``'s value (default quarter); an error without ``--time-column``."""
    if period is not None:
        _needs_time_column(time_column, "--period", "groups the dates", "period")
    return "quarter" if period is None else period
