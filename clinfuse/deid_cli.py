"""The ``clinfuse deid`` command: a de-identified copy of a cohort.

This module is the bridge between the cohort contract (:mod:`clinfuse.cohort`) and the
generic de-identification package :mod:`privacy`. It reads the manifest, tells
:func:`privacy.cohort.deidentify_cohort` which columns hold what, and turns
:class:`privacy.errors.PrivacyError` into :class:`clinfuse.errors.ConfigError` /
:class:`clinfuse.errors.CohortError` so the CLI prints one line and exits with 1.

Register it in ``clinfuse/cli.py`` with::

    from clinfuse.deid_cli import DEID_EPILOG, deid
    app.command(name="deid", epilog=DEID_EPILOG)(deid)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from clinfuse.errors import CohortError, ConfigError

if TYPE_CHECKING:
    from privacy.cohort import CohortDeidResult

__all__ = ["DEID_EPILOG", "deid", "deid_cohort"]

DEID_EPILOG = (
    "Examples:\n\n"
    '  python -c "import secrets; print(secrets.token_hex(32))" > ~/site.key\n\n'
    "  clinfuse deid demo_cohort --out demo_deid --secret-file ~/site.key\n\n"
    "  CLINFUSE_DEID_SECRET=$(cat ~/site.key) clinfuse deid cohort.csv --out deid "
    "--date-columns admit_date --id-columns encounter_id --overwrite\n\n"
    "  clinfuse deid cohort.csv --out deid --secret-file ~/site.key --tags "
    "--retain-patient-characteristics --clean-descriptors --clean-structured-content\n\n"
    "  clinfuse deid cohort.csv --out deid --secret-file ~/site.key --clean-pixels all-text "
    "--pixel-rules us_layouts.toml --workers auto\n\n"
    "The secret never leaves the site and is never written to the output; keep it to "
    "re-create the same pseudonyms later (same secret → same ids, UIDs and date shifts)."
)


def _split(value: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in value.split(",") if c.strip())


def deid_cohort(
    cohort: str | Path,
    out: str | Path,
    *,
    secret_file: str | Path | None = None,
    overwrite: bool = False,
    date_columns: tuple[str, ...] = (),
    id_columns: tuple[str, ...] = (),
    text_columns: tuple[str, ...] = (),
    drop_columns: tuple[str, ...] = (),
    age_columns: tuple[str, ...] = ("age",),
    tags: bool = False,
    retain_dates: bool = True,
    retain_patient_characteristics: bool = False,
    retain_device_identity: bool = False,
    retain_institution_identity: bool = False,
    clean_descriptors: bool = False,
    clean_structured_content: bool = False,
    clean_pixels: str | None = None,
    pixel_rules: str | Path | None = None,
    note_encoding: str = "utf-8",
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> CohortDeidResult:
    """Library form of ``clinfuse deid``; returns :class:`privacy.cohort.CohortDeidResult`.

    ``clean_pixels`` (``all-text`` or ``identifiers``) and ``pixel_rules`` (a region-rules
    file) turn on Clean Pixel Data (113101, :class:`privacy.pixels.PixelCleaner`); rules alone
    mask fixed regions without OCR.

    ``workers`` cases are de-identified at once, each in its own process (``0``: one per CPU
    core, at most 8); the output is identical to ``workers=1`` (see
    :func:`privacy.cohort.deidentify_cohort`).

    Raises:
        ConfigError: missing/empty secret, unsafe output folder, missing privacy extra,
            bad pixel-cleaning options (unknown mode, bad rules file, no OCR engine),
            negative ``workers``.
        CohortError: unreadable manifest, or original identifiers left in the output.
    """
    from clinfuse.cohort import read_manifest

    try:
        from privacy.cohort import CohortSpec, deidentify_cohort
        from privacy.dicom import DicomOptions
        from privacy.errors import (
            OutputFolderError,
            PrivacyError,
            ResidualRiskError,
            SecretKeyError,
        )
        from privacy.pseudonym import Pseudonymizer, load_secret
    except ImportError as e:
        raise ConfigError(
            f"de-identification needs the privacy extra ({e.name} is missing)",
            hint="pip install 'clinfuse[privacy]'",
        ) from e

    if workers < 0:
        raise ConfigError(
            f"--workers {workers} is negative",
            hint="give a number of processes (1: one case at a time), or 0/auto for one per core",
        )
    cohort = Path(cohort)
    manifest_path = cohort
    if cohort.is_dir():
        found = [p for p in (cohort / "manifest.csv", cohort / "manifest.parquet") if p.exists()]
        manifest_path = found[0] if found else cohort / "manifest.csv"
    frame = read_manifest(manifest_path)
    root = manifest_path.parent
    text_cols = ("note_text", *text_columns)
    spec = CohortSpec(
        case_column="case_id",
        patient_column="patient_id",
        id_columns=id_columns,
        dicom_columns=("image",),
        text_file_columns=("note",),
        text_columns=text_cols,
        file_columns=("signal",),
        date_columns=date_columns,
        age_columns=age_columns,
        drop_columns=drop_columns,
        text_encoding=note_encoding,
    )
    for c in (*id_columns, *date_columns, *text_columns, *drop_columns):
        if c not in frame.columns:
            raise CohortError(
                f"column {c!r} named on the command line is not in the manifest "
                f"(columns: {', '.join(frame.columns)})",
                path=manifest_path,
                hint="check the spelling",
            )
    options = DicomOptions(
        clean_pixel_data=_pixel_cleaner(clean_pixels, pixel_rules),
        retain_longitudinal=retain_dates,
        retain_patient_characteristics=retain_patient_characteristics,
        retain_device_identity=retain_device_identity,
        retain_institution_identity=retain_institution_identity,
        clean_descriptors=clean_descriptors,
        clean_structured_content=clean_structured_content,
    )
    try:
        secret = load_secret(secret_file)
        pseudonymizer = Pseudonymizer(secret)
        return deidentify_cohort(
            frame,
            root,
            out,
            pseudonymizer,
            spec,
            dicom_options=options,
            text_mode="tag" if tags else "surrogate",
            overwrite=overwrite,
            manifest_name="manifest.parquet"
            if manifest_path.suffix.lower() in (".parquet", ".pq")
            else "manifest.csv",
            progress=progress,
            workers=workers,
        )
    except (SecretKeyError, OutputFolderError) as e:
        raise ConfigError(str(e)) from e
    except ResidualRiskError as e:
        raise CohortError(str(e), path=manifest_path) from e
    except PrivacyError as e:
        raise CohortError(str(e), path=manifest_path) from e


def _parse_workers(value: str) -> int:
    """``--workers``: a whole number of processes, or ``auto`` (0: one per CPU core)."""
    text = value.strip().lower()
    if text == "auto":
        return 0
    try:
        n = int(text)
    except ValueError:
        raise ConfigError(
            f"--workers {value!r} is not a number",
            hint="give a number of processes (1: one case at a time), or auto for one per core",
        ) from None
    if n < 0:
        raise ConfigError(
            f"--workers {value} is negative",
            hint="give a number of processes (1: one case at a time), or auto for one per core",
        )
    return n


def _pixel_cleaner(mode: str | None, rules_file: str | Path | None) -> Any:
    """The Clean Pixel Data step asked for on the command line, or ``None``."""
    if mode is None and rules_file is None:
        return None
    from privacy.pixels import PIXEL_MODES, PixelCleaner, PixelCleaningError, load_region_rules

    if mode is not None and mode not in PIXEL_MODES:
        raise ConfigError(
            f"--clean-pixels {mode!r} is not a mode", hint=f"use one of {', '.join(PIXEL_MODES)}"
        )
    try:
        rules = load_region_rules(rules_file) if rules_file is not None else []
        return PixelCleaner(mode or "regions", rules=rules)  # type: ignore[arg-type]
    except PixelCleaningError as e:
        raise ConfigError(str(e)) from e


def deid(
    cohort: Annotated[Path, typer.Argument(help="The manifest (CSV/Parquet) or its folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the de-identified cohort.")],
    secret_file: Annotated[
        Path | None,
        typer.Option(
            "--secret-file",
            help="File holding the site secret (≥ 16 bytes). Default: $CLINFUSE_DEID_SECRET.",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the content of a non-empty --out.")
    ] = False,
    date_columns: Annotated[
        str, typer.Option("--date-columns", help="Comma-separated date columns to shift.")
    ] = "",
    id_columns: Annotated[
        str, typer.Option("--id-columns", help="Comma-separated extra id columns to pseudonymise.")
    ] = "",
    text_columns: Annotated[
        str, typer.Option("--text-columns", help="Comma-separated free-text columns to scrub.")
    ] = "",
    drop_columns: Annotated[
        str, typer.Option("--drop-columns", help="Comma-separated columns to leave out.")
    ] = "",
    tags: Annotated[
        bool,
        typer.Option("--tags", help="Replace identifiers in notes by [TYPE] tags, not surrogates."),
    ] = False,
    retain_dates: Annotated[
        bool,
        typer.Option(
            "--shift-dates/--remove-dates",
            help="Keep dates shifted by a per-patient offset (DICOM option 113107), or remove them.",
        ),
    ] = True,
    retain_patient_characteristics: Annotated[
        bool,
        typer.Option(
            "--retain-patient-characteristics",
            help="Keep sex, age (90+ capped), size, weight in DICOM headers (113108).",
        ),
    ] = False,
    retain_device_identity: Annotated[
        bool,
        typer.Option(
            "--retain-device-identity", help="Keep device serials/station names (113109)."
        ),
    ] = False,
    retain_institution_identity: Annotated[
        bool,
        typer.Option("--retain-institution-identity", help="Keep institution names (113112)."),
    ] = False,
    clean_descriptors: Annotated[
        bool,
        typer.Option(
            "--clean-descriptors",
            help="Keep series/study descriptions, protocol names and comments with their "
            "identifiers scrubbed, instead of removing them (113105).",
        ),
    ] = False,
    clean_structured_content: Annotated[
        bool,
        typer.Option(
            "--clean-structured-content",
            help="Keep the free text of structured reports (SR content items) and the "
            "acquisition context with their identifiers scrubbed, instead of replacing it "
            "(113104).",
        ),
    ] = False,
    clean_pixels: Annotated[
        str | None,
        typer.Option(
            "--clean-pixels",
            help="Remove text burned into the pixels (113101) of flagged files and of "
            "ultrasound/secondary-capture/photo/document images, found by OCR (Tesseract): "
            "'all-text' masks every word read, 'identifiers' only names, ids, dates, ...",
            metavar="all-text|identifiers",
        ),
    ] = None,
    pixel_rules: Annotated[
        Path | None,
        typer.Option(
            "--pixel-rules",
            help="TOML/JSON file of fixed regions to mask per device layout (matched on "
            "Modality, Manufacturer, model, Rows, Columns); alone, no OCR is used and files "
            "no rule matches are quarantined.",
        ),
    ] = None,
    note_encoding: Annotated[
        str, typer.Option("--note-encoding", help="Encoding of the note files.")
    ] = "utf-8",
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            help="Cases de-identified at once, each in its own process; auto (or 0): one "
            "per CPU core, at most 8. The output is identical to a run with 1.",
            metavar="N|auto",
        ),
    ] = "1",
) -> None:
    """Write a de-identified copy of a cohort (images, notes, signals, manifest).

    DICOM files follow the PS3.15 Annex E Basic Profile; notes lose the HIPAA Safe Harbor
    identifiers (names, dates, phone numbers, MRNs, addresses, ...); case and patient ids
    become keyed pseudonyms (HMAC-SHA256 with the site secret). `deid_report.json` lists what
    was done per file and the residual-risk check: every original name, id and date is
    searched for in the output, and any hit stops the run.
    """
    from rich.console import Console

    n_workers = _parse_workers(workers)
    console = Console(stderr=True)
    disable = not console.is_terminal and os.environ.get("CLINFUSE_PROGRESS") != "1"
    from rich.progress import Progress

    # with workers, no refresh thread: worker processes are forked from this one, and a
    # thread that holds a lock at that moment could leave the lock held in the workers
    auto_refresh = n_workers == 1
    with Progress(console=console, disable=disable, auto_refresh=auto_refresh) as bar:
        task = bar.add_task("de-identifying cases", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, refresh=not auto_refresh)

        result = deid_cohort(
            cohort,
            out,
            secret_file=secret_file,
            overwrite=overwrite,
            date_columns=_split(date_columns),
            id_columns=_split(id_columns),
            text_columns=_split(text_columns),
            drop_columns=_split(drop_columns),
            tags=tags,
            retain_dates=retain_dates,
            retain_patient_characteristics=retain_patient_characteristics,
            retain_device_identity=retain_device_identity,
            retain_institution_identity=retain_institution_identity,
            clean_descriptors=clean_descriptors,
            clean_structured_content=clean_structured_content,
            clean_pixels=clean_pixels,
            pixel_rules=pixel_rules,
            note_encoding=note_encoding,
            progress=update,
            workers=n_workers,
        )
    report = result.report
    problems = result.problems
    out_console = Console()
    out_console.print(
        f"de-identified {report['n_cases']} cases, {report['n_files_written']} files → "
        f"{result.out_dir}"
    )
    counts = report["counts"]
    for part in ("dicom", "text", "manifest"):
        if counts.get(part):
            items = ", ".join(f"{k} {v}" for k, v in counts[part].items())
            out_console.print(f"  {part}: {items}")
    out_console.print(
        f"  residual-risk check: {report['residual_risk']['n_values_checked']} values in "
        f"{report['residual_risk']['n_files_scanned']} files, no hit"
    )
    if problems:
        console.print(f"[yellow]{len(problems)} file(s) not copied[/yellow] (modality left empty):")
        for p in problems:
            console.print(f"  {p['status']}: {p['path']}: {p['reason']}", highlight=False)
