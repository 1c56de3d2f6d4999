"""Command-line options shared by several commands (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "ConformalAlpha",
    "ConformalAlphaEvents",
    "ConformalFrom",
    "ConformalMarginal",
    "LoadWorkers",
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
    float,
    typer.Option(
        "--alpha",
        min=0.001,
        max=0.499,
        help="Error level of the conformal sets (0.1: each covers the true outcome with 90 % "
        "probability).",
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
