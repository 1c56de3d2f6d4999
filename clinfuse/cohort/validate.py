"""``clinfuse validate``: check a manifest and read every file it names.

The result is a :class:`ValidationReport`: every problem as an
:class:`~clinfuse.cohort.manifest.Issue` (case, field, file, message), the
declared and loadable modality counts, and whether anything is fatal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from clinfuse._parallel import ordered_map, scoring_workers
from clinfuse.cohort.manifest import CaseRow, Cohort, Issue
from clinfuse.errors import ClinFuseError

__all__ = ["ValidationReport", "validate_cohort"]


@dataclass
class ValidationReport:
    """What ``validate`` found.

    Attributes:
        manifest_path: the manifest checked.
        n_rows: rows in the manifest.
        issues: every problem found.
        presence: per modality, cases whose file was named and read successfully.
        declared: per modality, cases that name a file (or inline text).
        shapes: per modality, counts of what was read (e.g. ``"2D 1ch"``, ``"12 leads @ 500 Hz"``).
    """

    manifest_path: Path
    n_rows: int
    issues: list[Issue] = field(default_factory=list)
    presence: dict[str, int] = field(default_factory=dict)
    declared: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, Counter[str]] = field(default_factory=dict)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when nothing is fatal (warnings allowed)."""
        return not self.errors

    @property
    def n_cases_with_errors(self) -> int:
        return len({i.case_id for i in self.errors if i.case_id is not None})

    def to_frame(self) -> pd.DataFrame:
        """The issues as a table (case_id, field, severity, path, message)."""
        return pd.DataFrame(
            [i.as_dict() for i in self.issues],
            columns=["case_id", "field", "severity", "path", "message"],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": str(self.manifest_path),
            "n_rows": self.n_rows,
            "ok": self.ok,
            "n_errors": len(self.errors),
            "n_warnings": len(self.warnings),
            "n_cases_with_errors": self.n_cases_with_errors,
            "declared": self.declared,
            "loadable": self.presence,
            "shapes": {m: dict(c) for m, c in self.shapes.items()},
            "issues": [i.as_dict() for i in self.issues],
        }


def _describe(modality: str, meta: dict[str, Any]) -> str:
    if modality == "image":
        return f"{meta.get('ndim_spatial', '?')}D {meta.get('format', '?')} {meta.get('n_channels', '?')}ch"
    if modality == "signal":
        n = len(meta.get("lead_names") or [])
        return f"{n} leads @ {meta.get('fs', 0):g} Hz"
    return meta.get("format", "?")


def validate_cohort(
    path: str | Path,
    *,
    target: str = "label",
    require_label: bool = False,
    read_files: bool = True,
    allow_external_paths: bool = False,
    tabular_columns: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int | str = "auto",
    time_column: str | None = None,
) -> ValidationReport:
    """Check a manifest and (by default) read every file it names.

    Per-case problems never stop the check: they are collected so the user
    sees all of them at once.

    Args:
        path: the manifest (or its folder).
        target: the outcome column.
        require_label: every case needs a 0/1 outcome (as for training).
        read_files: read images, notes and signals (slower, but finds corrupt files).
        allow_external_paths: accept files outside the manifest folder.
        tabular_columns: columns that must exist and be numeric or categorical.
        progress: called as ``progress(done, total)`` while reading files.
        workers: processes that read the files (:func:`clinfuse.data.scoring_workers`:
            auto = one per CPU, at most 8, from 128 cases); the report is the same.
        time_column: a column of dates (as for ``clinfuse evaluate --time-column``): a value
            that is not a date is an error of its case, a date after today a warning, and
            undated cases are counted in one warning.

    Raises:
        CohortError: the manifest itself cannot be read (missing, empty,
            no ``case_id`` column).
        ConfigError: ``workers`` is not ``"auto"`` or a count >= 0.
    """
    scoring_workers(workers, 0)  # a bad count fails before the manifest is read
    cohort = Cohort.from_manifest(
        path,
        target=target,
        require_label=require_label,
        allow_external_paths=allow_external_paths,
        strict=False,
    )
    assert cohort.manifest_path is not None
    n_rows = cohort.n_manifest_rows or len(cohort) + len({i.case_id for i in cohort.excluded})
    report = ValidationReport(
        manifest_path=cohort.manifest_path, n_rows=n_rows, issues=list(cohort.issues)
    )
    declared = cohort.declared_presence()
    report.declared = {m: int(declared[m].sum()) for m in declared.columns}
    if tabular_columns:
        missing_cols = [c for c in tabular_columns if c not in cohort.columns]
        for c in missing_cols:
            report.issues.append(Issue(None, c, f"tabular column {c!r} is not in the manifest"))
        present_cols = [c for c in tabular_columns if c in cohort.columns]
        if present_cols:
            report.issues += _tabular_issues(cohort, present_cols)
    if time_column:
        report.issues += _date_issues(cohort, time_column)
    loadable: Counter[str] = Counter()
    shapes: dict[str, Counter[str]] = {"image": Counter(), "note": Counter(), "signal": Counter()}
    total = len(cohort)
    read = (
        ordered_map(_read_row, cohort.rows, scoring_workers(workers, total)) if read_files else None
    )
    for k, row in enumerate(cohort.rows):
        if not any(row.has(m) for m in ("image", "note", "signal")) and not _has_tabular(
            row, tabular_columns
        ):
            report.issues.append(
                Issue(
                    row.case_id,
                    "modalities",
                    "the case names no image, note, signal or tabular value",
                    severity="warning",
                )
            )
        if read is not None:
            for modality, outcome in next(read):
                if isinstance(outcome, Issue):
                    report.issues.append(outcome)
                    continue
                loadable[modality] += 1
                shapes[modality][outcome] += 1
        if progress is not None:
            progress(k + 1, total)
    report.presence = dict(loadable) if read_files else dict(report.declared)
    report.shapes = {m: c for m, c in shapes.items() if c}
    # Cohort-wide consistency a model depends on.
    if len(shapes["image"]) > 1:
        dims = {s.split()[0] for s in shapes["image"]}
        if len(dims) > 1:
            report.issues.append(
                Issue(
                    None,
                    "image",
                    f"images mix 2-D and 3-D ({dict(shapes['image'])}); "
                    "a run uses one: set image.ndim in the config",
                    severity="warning",
                )
            )
    if len(shapes["signal"]) > 1:
        report.issues.append(
            Issue(
                None,
                "signal",
                f"signals differ in lead count or rate ({dict(shapes['signal'])}); "
                "they are resampled, and leads selected by signal.n_leads",
                severity="warning",
            )
        )
    if require_label or target in cohort.columns:
        labels = [r.label for r in cohort.rows if r.label is not None]
        if labels and len(set(labels)) == 1:
            report.issues.append(
                Issue(
                    None,
                    target,
                    f"every case has outcome {labels[0]}; training needs both classes",
                    severity="warning",
                )
            )
    return report


def _date_issues(cohort: Cohort, column: str) -> list[Issue]:
    """Every case's problem with its date in ``column`` (see :func:`validate_cohort`)."""
    import datetime as _dt

    import numpy as np

    from clinfuse.errors import CohortError
    from clinfuse.evaluation.temporal import parse_dates

    if column not in cohort.columns:
        return [
            Issue(
                None,
                column,
                f"time column {column!r} is not in the manifest "
                f"(columns: {', '.join(cohort.columns)})",
            )
        ]
    issues: list[Issue] = []
    undated = 0
    today = np.datetime64(_dt.date.today(), "ns")
    for row in cohort.rows:
        try:
            (when,) = parse_dates([row.extra.get(column)], [row.case_id], column=column)
        except CohortError as e:
            issues.append(Issue(row.case_id, column, f"{e.reason}; {e.hint}"))
            continue
        if np.isnat(when):
            undated += 1
        elif when > today:
            issues.append(
                Issue(
                    row.case_id,
                    column,
                    f"{str(when)[:10]} is after today: check the date",
                    severity="warning",
                )
            )
    if undated:
        issues.append(
            Issue(
                None,
                column,
                f"{undated} case(s) have no {column}: analyses over time leave them out",
                severity="warning",
            )
        )
    return issues


def _tabular_issues(cohort: Cohort, columns: list[str]) -> list[Issue]:
    """What training would refuse in the tabular columns: a column that is neither numbers
    nor a category (for the manifest), a cell that is not a number or not finite in a
    numeric column (for its case). Each column is read as :class:`TabularEncoder` reads the
    training cases, here from every case."""
    from clinfuse.io.tabular import TabularEncoder

    frame = pd.DataFrame([r.extra for r in cohort.rows], columns=columns)
    issues: list[Issue] = []
    encoders = {}
    for col in columns:
        try:
            encoders[col] = TabularEncoder([col]).fit(frame[[col]])
        except ClinFuseError as e:
            issues.append(Issue(None, col, _said(e)))
    for row in cohort.rows:
        for encoder in encoders.values():
            try:
                encoder.transform_row(row.extra, case_id=row.case_id)
            except ClinFuseError as e:
                issues.append(Issue(row.case_id, e.field or "tabular", _said(e)))
    return issues


def _said(error: ClinFuseError) -> str:
    return error.reason + (f" ({error.hint})" if error.hint else "")


def _has_tabular(row: CaseRow, columns: list[str] | None) -> bool:
    if not columns:
        return False
    return any(row.extra.get(c) is not None for c in columns)


def _read_row(row: CaseRow) -> list[tuple[str, str | Issue]]:
    """Each named file of a row read: ``(modality, description)`` or ``(modality, issue)``."""
    out: list[tuple[str, str | Issue]] = []
    for modality in ("image", "note", "signal"):
        if not row.has(modality):
            continue
        try:
            meta = _read_one(row, modality)
        except ClinFuseError as e:
            reason = e.reason + (f" ({e.hint})" if e.hint else "")
            out.append((modality, Issue(row.case_id, e.field or modality, reason, path=e.path)))
            continue
        out.append((modality, _describe(modality, meta)))
    return out


def _read_one(row: CaseRow, modality: str) -> dict[str, Any]:
    if modality == "image":
        from clinfuse.io.image import load_image

        return load_image(row.image, case_id=row.case_id, field="image")[1]  # type: ignore[arg-type]
    if modality == "note":
        from clinfuse.io.note import load_note

        if row.note is not None:
            return load_note(row.note, case_id=row.case_id, field="note")[1]
        return load_note(text=row.note_text, case_id=row.case_id, field="note_text")[1]
    from clinfuse.io.signal import load_signal

    return load_signal(row.signal, fs=row.signal_fs, case_id=row.case_id, field="signal")[1]  # type: ignore[arg-type]
