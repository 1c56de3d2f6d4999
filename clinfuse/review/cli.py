"""The ``clinfuse app`` command, as a plain function the main CLI registers.

Register it in :mod:`clinfuse.cli` with::

    from clinfuse.review.cli import APP_EPILOG, app as app_command
    app.command(name="app", epilog=APP_EPILOG)(app_command)
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from clinfuse.errors import ConfigError

__all__ = ["APP_EPILOG", "app", "app_script", "streamlit_command"]

APP_EPILOG = (
    "Examples:\n\n"
    "  clinfuse app demo_out/run --add-reviewer alice\n\n"
    "  clinfuse app demo_out/run --deactivate-reviewer bob --list-reviewers\n\n"
    "  clinfuse app demo_out/run\n\n"
    "  clinfuse app runs/r1 --port 8600 --db /secure/reviews.sqlite --threshold 0.3\n\n"
    "  clinfuse app runs/r1 --host 0.0.0.0 --cohort moved/manifest.csv --evaluation eval_r1\n\n"
    "  clinfuse predict runs/r1 site_d/manifest.csv --out site_d/scored.csv\n"
    "  clinfuse app runs/r1 --predictions site_d/scored.csv \\\n"
    "      --copy-reviewers-from runs/r1.reviews.sqlite   # the run's reviewers\n"
    "  clinfuse app runs/r1 --predictions site_d/scored.csv   # new patients\n\n"
    "  clinfuse predict runs/cv site_d/manifest.csv --out site_d/cv.csv\n"
    "  clinfuse app runs/cv --predictions site_d/cv.csv   # fold ensemble: band = models' range\n\n"
    "  clinfuse app runs/r1 --predictions scored/p.csv --monitoring monitor_2024   "
    "# and how they compare, month by month"
)


def app_script() -> Path:
    """The dashboard's entry script: ``streamlit_app.py`` of the ``clinfuse_app`` package (the
    source tree's ``app/`` folder, which the wheel ships under that name).

    Raises:
        ConfigError: neither the installed ``clinfuse_app`` nor a source tree's ``app/`` has it.
    """
    import clinfuse

    spec = importlib.util.find_spec("clinfuse_app")
    folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    folders.append(Path(clinfuse.__file__).resolve().parent.parent / "app")
    for folder in folders:
        script = folder / "streamlit_app.py"
        if script.is_file():
            return script.resolve()
    raise ConfigError(
        "the review dashboard's files (package clinfuse_app) are not installed",
        path=folders[-1] / "streamlit_app.py",
        hint="reinstall clinfuse with the app extra: `pip install 'clinfuse[app]'` "
        "(or `pip install -e '.[app]'` from a checkout)",
    )


def streamlit_command(script: Path, *, host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line for the dashboard (headless, no telemetry)."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(script),
        "--server.headless",
        "true",
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "minimal",
    ]


def _ask_password(username: str) -> str:
    env = os.environ.get("CLINFUSE_REVIEWER_PASSWORD")
    if env:
        return env
    return str(typer.prompt(f"password for {username}", hide_input=True, confirmation_prompt=True))


def app(
    run: Annotated[
        Path,
        typer.Argument(
            help="Run folder written by `clinfuse train` (or a `clinfuse crossval` folder, "
            "with --predictions)."
        ),
    ],
    predictions: Annotated[
        Path | None,
        typer.Option(
            "--predictions",
            help="Review the cases of this `clinfuse predict` table (new patients, another "
            "site) instead of the run's own; its manifest comes from P.provenance.json.",
        ),
    ] = None,
    explanations: Annotated[
        Path | None,
        typer.Option(
            "--explanations",
            help="With --predictions: a `clinfuse explain` folder of the same model and "
            "cohort (default: P.explanations/ beside the table, filled as cases are explained).",
        ),
    ] = None,
    monitoring: Annotated[
        Path | None,
        typer.Option(
            "--monitoring",
            help="With --predictions: the `clinfuse monitor` folder of that table, shown on the "
            "cohort page (each period against the development data, and its flags).",
        ),
    ] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to serve on.")] = 8501,
    host: Annotated[
        str,
        typer.Option("--host", help="Address to listen on (0.0.0.0 for every interface)."),
    ] = "127.0.0.1",
    db: Annotated[
        Path | None,
        typer.Option(
            "--db",
            help="Review database (default: RUN.reviews.sqlite beside the run, or "
            "P.reviews.sqlite beside the --predictions table).",
        ),
    ] = None,
    cohort: Annotated[
        Path | None,
        typer.Option(
            "--cohort",
            help="Cohort manifest (default: the one the run was trained on, or the one the "
            "--predictions were scored from).",
        ),
    ] = None,
    evaluation: Annotated[
        Path | None,
        typer.Option(
            "--evaluation",
            help="`clinfuse evaluate` folder for the cohort page (default: RUN/evaluation or "
            "a sibling evaluation/ made for this model version).",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold", help="Decision threshold on the calibrated risk (default 0.5)."
        ),
    ] = None,
    add_reviewer: Annotated[
        str | None,
        typer.Option(
            "--add-reviewer",
            help="Create a local reviewer account (asks for the password, or reads "
            "CLINFUSE_REVIEWER_PASSWORD) and exit.",
        ),
    ] = None,
    reset_password: Annotated[
        str | None,
        typer.Option("--reset-password", help="Set a new password for an account and exit."),
    ] = None,
    deactivate_reviewer: Annotated[
        str | None,
        typer.Option(
            "--deactivate-reviewer",
            help="Stop an account (local or single sign-on) from logging in and saving "
            "decisions; its past decisions stay. Exits.",
        ),
    ] = None,
    reactivate_reviewer: Annotated[
        str | None,
        typer.Option("--reactivate-reviewer", help="Let a deactivated account back in and exit."),
    ] = None,
    list_reviewers: Annotated[
        bool,
        typer.Option("--list-reviewers", help="List the accounts (no password hashes) and exit."),
    ] = False,
    copy_reviewers_from: Annotated[
        Path | None,
        typer.Option(
            "--copy-reviewers-from",
            help="Copy the accounts of another review database (e.g. the run's, for a scored "
            "cohort's new one): password hashes and deactivations kept, accounts already here "
            "left alone. Exits.",
        ),
    ] = None,
) -> None:
    """Start the Streamlit review dashboard on a run: worklist, case review with
    explanations, decisions saved to SQLite with an audit trail, cohort figures, export.

    The worklist is the run's own cases, or with --predictions the cases of a cohort
    scored later by `clinfuse predict` (a run's or a cross-validation's fold ensemble,
    whose band is then the fold models' range of risks).

    Reviewers log in with a local account (create one with --add-reviewer) or, when
    an auth section is configured in .streamlit/secrets.toml, through OIDC (st.login).
    """
    from rich.console import Console

    from clinfuse.review import auth
    from clinfuse.review.runview import open_run_view
    from clinfuse.review.settings import AppSettings
    from clinfuse.review.store import ReviewStore, default_db_path

    console = Console()

    def absolute(path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().resolve()

    scored = absolute(predictions)
    settings = AppSettings(
        run=run.expanduser().resolve(),
        db=(db or default_db_path(run.expanduser().resolve(), scored)).expanduser().resolve(),
        cohort=absolute(cohort),
        evaluation=absolute(evaluation),
        threshold=threshold,
        predictions=scored,
        explanations=absolute(explanations),
        monitoring=absolute(monitoring),
    )
    view = open_run_view(
        settings.run,
        cohort=settings.cohort,
        evaluation=settings.evaluation,
        threshold=settings.threshold,
        n_boot=20,
        predictions=settings.predictions,
        explanations=settings.explanations,
        monitoring=settings.monitoring,
    )
    store = ReviewStore(settings.db)
    admin = (
        copy_reviewers_from,
        add_reviewer,
        reset_password,
        deactivate_reviewer,
        reactivate_reviewer,
    )
    if any(admin) or list_reviewers:
        if copy_reviewers_from:
            done = store.copy_reviewers(copy_reviewers_from, actor="cli")
            console.print(
                f"copied {len(done['copied'])} reviewer accounts to {settings.db}"
                + (
                    f"; already here, left as they are: {', '.join(done['kept'])}"
                    if done["kept"]
                    else ""
                ),
                highlight=False,
            )
        if add_reviewer:
            name = auth.add_reviewer(store, add_reviewer, _ask_password(add_reviewer))
            console.print(f"added reviewer {name!r} to {settings.db}")
        if reset_password:
            auth.reset_password(store, reset_password, _ask_password(reset_password))
            console.print(f"new password set for {reset_password!r}")
        if deactivate_reviewer:
            store.set_active(deactivate_reviewer, False, actor="cli")
            console.print(f"deactivated {deactivate_reviewer!r} (past decisions kept)")
        if reactivate_reviewer:
            store.set_active(reactivate_reviewer, True, actor="cli")
            console.print(f"reactivated {reactivate_reviewer!r}")
        if list_reviewers:
            for r in store.reviewers():
                state = "active" if r["active"] else "deactivated"
                console.print(f"{r['username']}\t{r['auth']}\t{state}\tsince {r['created_at']}")
        return
    script = app_script()
    if not store.reviewers():
        add, *copy = auth.first_account_commands(view, settings.db)
        # soft wrap: a long path stays whole, so the command can be copied
        console.print(
            f"no reviewer account yet: add one with `{add}`", highlight=False, soft_wrap=True
        )
        for command in copy:
            console.print(
                f"or copy the run's reviewers: `{command}`", highlight=False, soft_wrap=True
            )
    if view.source_note:
        console.print(view.source_note, highlight=False)
    if view.cohort_error:
        console.print(f"note: {view.cohort_error}")
    url_host = "localhost" if host in ("0.0.0.0", "127.0.0.1") else host
    console.print(
        f"review dashboard on http://{url_host}:{port} (reviews: {settings.db}); Ctrl+C stops it"
    )
    env = {**os.environ, **settings.to_env()}
    try:
        code = subprocess.call(streamlit_command(script, host=host, port=port), env=env)
    except KeyboardInterrupt:
        code = 0
    if code not in (0, -2, 130):
        raise ConfigError(f"streamlit exited with code {code}", hint="see its output above")
