"""The ``clinfuse explain`` command, as a plain function for ``clinfuse.cli`` to register::

from clinfuse.explain.cli import EXPLAIN_EPILOG, explain
app.command(epilog=EXPLAIN_EPILOG)(explain)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from clinfuse._options import ExternalPaths, LoadWorkers

__all__ = ["EXPLAIN_EPILOG", "explain"]

EXPLAIN_EPILOG = (
    "Examples:\n\n"
    "  clinfuse explain runs/demo demo_cohort/manifest.csv --out explain_out\n\n"
    "  clinfuse explain runs/demo demo_cohort/manifest.csv --case case0007 --out explain_out\n\n"
    "  clinfuse explain runs/demo cohort.csv --case c12 --note-max-evals 100 --n-boot 200 --out ex\n\n"
    "  clinfuse explain runs/demo deid/manifest.csv --case c12 --keep-note-identifiers --out ex\n\n"
    "  clinfuse explain runs/demo_cv new_cohort/manifest.csv --out ex_cv   # fold ensemble\n\n"
    "  clinfuse explain runs/demo_cv new_cohort/manifest.csv --case case0003 --out ex_cv3"
)


def explain(
    run: Annotated[
        Path,
        typer.Argument(
            help="Run folder written by `clinfuse train`, or a `clinfuse crossval` folder "
            "(modality Shapley values and --case attributions averaged over its fold models)."
        ),
    ],
    cohort: Annotated[Path, typer.Argument(help="Manifest of the cases to explain.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the explanations and figures.")],
    case: Annotated[
        str | None,
        typer.Option(
            "--case",
            help="Case id to explain in depth: words, image regions, ECG segments, labs.",
        ),
    ] = None,
    note_max_evals: Annotated[
        int,
        typer.Option(
            "--note-max-evals",
            min=10,
            help="Cap on note-model calls for token SHAP values (higher: finer token "
            "attributions, slower; about 0.2 s per call for MiniLM on 2 CPU cores).",
        ),
    ] = 64,
    n_boot: Annotated[
        int, typer.Option("--n-boot", min=0, help="Bootstrap replicates for cohort-level CIs.")
    ] = 1000,
    no_run_cache: Annotated[
        bool,
        typer.Option(
            "--no-run-cache",
            help="Do not copy the results into RUN/explanations/ (done only when the cohort "
            "is the run's own).",
        ),
    ] = False,
    keep_note_identifiers: Annotated[
        bool,
        typer.Option(
            "--keep-note-identifiers",
            help="Store the note's tokens as written. By default identifiers found in them "
            "(names, dates, numbers) become [TYPE] tags unless the cohort was de-identified "
            "with `clinfuse deid`.",
        ),
    ] = False,
    workers: LoadWorkers = "auto",
    allow_external_paths: ExternalPaths = False,
) -> None:
    """Modality Shapley values and within-modality attributions.

    Writes `modality_shapley.csv` (one row per case: base value + one φ per modality
    = fused logit), cohort-level importance (mean |φ| and performance Shapley, with
    bootstrap CIs) and, with `--case`, that case's token, voxel, segment and lab
    attributions as JSON plus PNG/HTML figures. For the run's own cohort the results
    are also cached in the run folder for the review app; another cohort's are read by
    `clinfuse app RUN --predictions P.csv --explanations OUT`.
    """
    from rich.console import Console

    from clinfuse.ensemble import is_crossval_folder
    from clinfuse.explain.report import explain_ensemble, explain_run

    console = Console(stderr=True)
    options: dict[str, Any] = {
        "case": case,
        "note_max_evals": note_max_evals,
        "n_boot": n_boot,
        "keep_note_identifiers": keep_note_identifiers,
        "log": lambda msg: console.print(msg, highlight=False),
        "workers": workers,
    }
    if is_crossval_folder(run):
        summary = explain_ensemble(run, cohort, out, **options)
    else:
        summary = explain_run(run, cohort, out, cache_in_run=not no_run_cache, **options)
    out_console = Console()
    averaged = f" averaged over {summary['n_models']} fold models" if "n_models" in summary else ""
    out_console.print(
        f"modality Shapley values of {summary['n_cases']} cases{averaged}: "
        f"{out / 'modality_shapley.csv'}"
    )
    ranking = sorted(summary["importance"].items(), key=lambda kv: -kv[1]["mean_abs_phi"])
    out_console.print(
        "mean |φ|: " + ", ".join(f"{m} {v['mean_abs_phi']:.3f}" for m, v in ranking),
        highlight=False,
    )
    info = summary.get("case")
    if info is not None:
        if info.get("message"):
            out_console.print(f"case {info['case_id']}: {info['message']}", highlight=False)
        ms = info["modality_shapley"]
        spread = info.get("ensemble")
        models = (
            f", fold models {spread['risk_fusion_min']:.1%}–{spread['risk_fusion_max']:.1%}"
            if spread
            else ""
        )
        out_console.print(
            f"case {info['case_id']}: risk {ms['risk_fusion']:.1%}{models} "
            f"(base {ms['base_risk']:.1%}); details in {out / 'cases'}",
            highlight=False,
        )
        for w in info.get("warnings", []):
            console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
