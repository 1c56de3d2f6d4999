"""Command-line options shared by several commands (one definition, one help text)."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["LoadWorkers"]

LoadWorkers = Annotated[
    str,
    typer.Option(
        "--workers",
        help="Processes that read and preprocess the cohort's files: auto (one per CPU, at "
        "most 8, for cohorts of 128 cases or more) or a number (0 = in this process). The "
        "results do not depend on it.",
    ),
]
