"""The cohort manifest: one row per case, validated against the public contract.

A manifest is a CSV or Parquet table (see ``docs/manifest.md``)::

    case_id,patient_id,label,site,image,note,signal,age,sex
    c001,p001,1,site_a,images/c001.dcm,notes/c001.txt,signals/c001.hea,71,F

Relative paths resolve against the manifest's folder. An empty cell means the
modality is missing for that case. Reading a manifest checks its *structure*
(the file, the columns, the types); per-case problems (duplicate ids, labels
that are not 0/1, paths outside the cohort folder, a patient in two splits) are
collected as :class:`Issue` objects by :func:`check_manifest` so that
``clinfuse validate`` can list all of them at once.

>>> cohort = Cohort.from_manifest("demo/manifest.csv")  # doctest: +SKIP
>>> cohort.declared_presence().sum()  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from clinfuse._context import EXTERNAL_PATHS
from clinfuse.errors import CohortError, ModalityLoadError

__all__ = [
    "EXTERNAL_PATHS",
    "MODALITY_COLUMNS",
    "RESERVED_COLUMNS",
    "SPLITS",
    "CaseRow",
    "Cohort",
    "Issue",
    "check_manifest",
    "read_manifest",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Valid values of the ``split`` column."""

MODALITY_COLUMNS: dict[str, tuple[str, ...]] = {
    "image": ("image",),
    "note": ("note", "note_text"),
    "signal": ("signal",),
}
"""Manifest columns that carry each file-based modality (tabular comes from named columns)."""

RESERVED_COLUMNS: frozenset[str] = frozenset(
    {
        "case_id",
        "patient_id",
        "label",
        "split",
        "site",
        "image",
        "note",
        "note_text",
        "signal",
        "signal_fs",
    }
)
"""Columns with a meaning fixed by the contract; every other column is tabular or subgroup data."""

PATH_COLUMNS: tuple[str, ...] = ("image", "note", "signal")


def _reserved(target: str) -> frozenset[str]:
    """Columns with a fixed meaning when ``target`` is the outcome column."""
    return (RESERVED_COLUMNS - {"label"}) | {target}


@dataclass(frozen=True)
class Issue:
    """One problem found in a cohort.

    Attributes:
        case_id: the case concerned, or ``None`` for a manifest-wide problem.
        field: the manifest column or modality concerned.
        message: what is wrong and what to do.
        severity: ``"error"`` excludes the case (or, without a case, stops the
            run); ``"warning"`` is reported only.
        path: the file concerned, if any.
    """

    case_id: str | None
    field: str
    message: str
    severity: Literal["error", "warning"] = "error"
    path: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "field": self.field,
            "severity": self.severity,
            "path": self.path,
            "message": self.message,
        }


class CaseRow(BaseModel):
    """One validated manifest row.

    Paths are absolute (resolved against the manifest folder); ``None`` means
    the modality is missing for this case. ``extra`` holds every other column
    (tabular features, subgroup columns) with empty cells as ``None``.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    case_id: str
    patient_id: str
    label: int | None = None
    split: Literal["train", "val", "test"] | None = None
    site: str | None = None
    image: Path | None = None
    note: Path | None = None
    note_text: str | None = None
    signal: Path | None = None
    signal_fs: float | None = Field(default=None, gt=0)
    extra: dict[str, Any] = Field(default_factory=dict)

    def has(self, modality: str) -> bool:
        """Whether the manifest names data for ``modality`` (not whether it loads)."""
        if modality == "note":
            return self.note is not None or self.note_text is not None
        if modality in ("image", "signal"):
            return getattr(self, modality) is not None
        raise ValueError(f"unknown file modality {modality!r}")


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, str) and value.strip() == ""


def _clean_str(value: Any) -> str | None:
    if _is_empty(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest file into a table of strings and numbers.

    Id, path and split columns are read as text so ``007`` stays ``007``.

    Raises:
        CohortError: the file is missing, unreadable, of an unknown format,
            empty, or has no ``case_id`` column.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [p for p in (path / "manifest.csv", path / "manifest.parquet") if p.exists()]
        if not candidates:
            raise CohortError(
                "no manifest.csv or manifest.parquet in this folder",
                path=path,
                hint="pass the manifest file itself",
            )
        path = candidates[0]
    if not path.exists():
        raise CohortError("manifest file not found", path=path, hint="check the path")
    suffix = "".join(path.suffixes[-1:]).lower()
    text_cols = {
        c: "string" for c in ("case_id", "patient_id", "split", "site", *PATH_COLUMNS, "note_text")
    }
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            sep = "\t" if suffix == ".tsv" else ","
            df = pd.read_csv(path, sep=sep, dtype=text_cols, keep_default_na=True, encoding="utf-8")
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            raise CohortError(
                f"unknown manifest format {suffix!r}",
                path=path,
                hint="use a .csv, .tsv or .parquet file",
            )
    except CohortError:
        raise
    except UnicodeDecodeError as e:
        raise CohortError(
            "manifest is not UTF-8 text", path=path, hint="save it as UTF-8 CSV"
        ) from e
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as e:
        raise CohortError(
            f"cannot read manifest: {e}", path=path, hint="check it is a valid table"
        ) from e
    df.columns = [str(c).strip() for c in df.columns]
    if "case_id" not in df.columns:
        semicolons = len(df.columns) == 1 and ";" in str(df.columns[0])
        raise CohortError(
            f"required column 'case_id' is missing (columns: {', '.join(df.columns) or 'none'})",
            path=path,
            field="case_id",
            hint="the file is separated by semicolons; save it with commas (or as .tsv/.parquet)"
            if semicolons
            else "add a case_id column with one unique id per case",
        )
    if len(df) == 0:
        raise CohortError("manifest has no rows", path=path, hint="add one row per case")
    dupes = df.columns[df.columns.duplicated()].tolist()
    if dupes:
        raise CohortError(f"duplicate column names: {dupes}", path=path, hint="rename them")
    return df


def _resolve_path(
    value: str, root: Path, *, case_id: str, field: str, allow_external: bool
) -> Path:
    raw = Path(value).expanduser()
    resolved = (raw if raw.is_absolute() else root / raw).resolve()
    if "\\" in value and not resolved.exists():  # a manifest written on Windows
        posix = (root / value.replace("\\", "/")).resolve()
        if posix.exists():
            resolved = posix
    if not allow_external and not resolved.is_relative_to(root):
        raise ModalityLoadError(
            f"path {value!r} points outside the cohort folder {root}",
            case_id=case_id,
            field=field,
            path=value,
            hint="move the file under the manifest's folder, or pass --allow-external-paths",
        )
    return resolved


def check_manifest(
    df: pd.DataFrame,
    root: Path,
    *,
    target: str = "label",
    require_label: bool = False,
    allow_external_paths: bool = False,
) -> tuple[list[CaseRow], list[Issue]]:
    """Turn manifest rows into :class:`CaseRow` objects and collect every problem.

    A row with an error issue is left out of the returned rows (it is an
    exclusion, listed with its reason); manifest-wide errors (duplicate ids, a
    patient in two splits) have ``case_id`` set to the ids concerned and are
    fatal for :meth:`Cohort.from_manifest` with ``strict=True``.

    Args:
        df: the table from :func:`read_manifest`.
        root: the manifest's folder, against which relative paths resolve.
        target: the outcome column (``label`` by default).
        require_label: whether every case must have a 0/1 outcome (training,
            evaluation).
        allow_external_paths: accept files outside ``root``.
    """
    root = root.resolve()
    allow_external = allow_external_paths or EXTERNAL_PATHS.get()
    issues: list[Issue] = []
    rows: list[CaseRow] = []
    blank = df.isna().all(axis=1) | df.astype(str).apply(lambda c: c.str.strip() == "").all(axis=1)
    if blank.any():  # spreadsheet exports end with rows of bare commas
        numbers = [i + 2 for i in df.index[blank]]
        shown = ", ".join(map(str, numbers[:10])) + (" …" if len(numbers) > 10 else "")
        issues.append(
            Issue(
                None,
                "case_id",
                f"{len(numbers)} empty row(s) skipped (file rows {shown})",
                severity="warning",
            )
        )
        df = df.loc[~blank]  # the index keeps the file rows for the messages below
    if require_label and target not in df.columns:
        issues.append(
            Issue(
                None,
                target,
                f"outcome column {target!r} is missing; training and evaluation need a 0/1 outcome "
                f"(columns: {', '.join(df.columns)})",
            )
        )
    case_ids = df["case_id"].map(_clean_str)
    empty_ids = df.index[case_ids.isna()].tolist()
    for i in empty_ids:
        issues.append(
            Issue(None, "case_id", f"row {i + 2} has an empty case_id; give every case an id")
        )
    counts = case_ids.value_counts()
    for cid in counts[counts > 1].index:
        issues.append(
            Issue(
                str(cid),
                "case_id",
                f"case_id {cid!r} appears {counts[cid]} times; case ids must be unique",
            )
        )
    duplicated = set(counts[counts > 1].index)

    extra_cols = [c for c in df.columns if c not in _reserved(target)]
    for i, rec in enumerate(df.to_dict("records")):
        cid = case_ids.iloc[i]
        if pd.isna(cid) or cid in duplicated:  # empty: None, or <NA> in a string column
            continue
        row_issues: list[Issue] = []
        pid = _clean_str(rec.get("patient_id")) or cid

        label: int | None = None
        if target in df.columns and not _is_empty(rec.get(target)):
            raw = rec[target]
            try:
                fval = float(raw)
            except (TypeError, ValueError):
                fval = float("nan")
            if fval in (0.0, 1.0):
                label = int(fval)
            else:
                number: Any = int(fval) if math.isfinite(fval) and fval.is_integer() else raw
                row_issues.append(
                    Issue(cid, target, f"outcome {target!r} is {number!r}; it must be 0 or 1")
                )
        elif require_label and target in df.columns:
            row_issues.append(Issue(cid, target, f"outcome {target!r} is empty; it must be 0 or 1"))

        split = _clean_str(rec.get("split"))
        if split is not None:
            split = split.lower()
            if split not in SPLITS:
                row_issues.append(
                    Issue(
                        cid,
                        "split",
                        f"split is {split!r}; use one of {', '.join(SPLITS)} or leave it empty",
                    )
                )
                split = None

        paths: dict[str, Path | None] = {}
        for col in PATH_COLUMNS:
            value = _clean_str(rec.get(col))
            if value is None:
                paths[col] = None
                continue
            try:
                paths[col] = _resolve_path(
                    value, root, case_id=cid, field=col, allow_external=allow_external
                )
            except ModalityLoadError as e:
                row_issues.append(Issue(cid, col, e.reason + f" ({e.hint})", path=value))
                paths[col] = None

        note_text = rec.get("note_text")
        note_text = None if _is_empty(note_text) else str(note_text)
        if note_text is not None and paths.get("note") is not None:
            row_issues.append(
                Issue(
                    cid,
                    "note",
                    "both 'note' and 'note_text' are filled; keep one",
                    severity="warning",
                )
            )

        fs: float | None = None
        if not _is_empty(rec.get("signal_fs")):
            try:
                fs = float(rec["signal_fs"])
            except (TypeError, ValueError):
                fs = float("nan")
            if not (math.isfinite(fs) and fs > 0):
                row_issues.append(
                    Issue(
                        cid,
                        "signal_fs",
                        f"signal_fs is {rec['signal_fs']!r}; give the sampling rate in Hz (> 0)",
                    )
                )
                fs = None

        extra = {c: (None if _is_empty(rec.get(c)) else rec.get(c)) for c in extra_cols}
        for k, v in extra.items():
            if isinstance(v, np.generic):
                extra[k] = v.item()
        issues.extend(row_issues)
        if any(x.severity == "error" for x in row_issues):
            continue
        rows.append(
            CaseRow(
                case_id=cid,
                patient_id=pid,
                label=label,
                split=split,  # type: ignore[arg-type]
                site=_clean_str(rec.get("site")),
                image=paths.get("image"),
                note=paths.get("note"),
                note_text=note_text,
                signal=paths.get("signal"),
                signal_fs=fs,
                extra=extra,
            )
        )

    # A patient's cases must all be in one split (no leakage between splits).
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        if r.split is not None:
            by_patient.setdefault(r.patient_id, set()).add(r.split)
    for pid, splits in by_patient.items():
        if len(splits) > 1:
            cases = [r.case_id for r in rows if r.patient_id == pid]
            issues.append(
                Issue(
                    ",".join(cases),
                    "split",
                    f"patient {pid!r} is in several splits ({', '.join(sorted(splits))}); "
                    "all cases of a patient must share one split",
                )
            )
    return rows, issues


def _fatal_manifest_issues(issues: Sequence[Issue]) -> list[Issue]:
    """Issues that make the whole manifest unusable (not just one case)."""
    return [
        i
        for i in issues
        if i.severity == "error"
        and (
            i.case_id is None
            or (i.field == "case_id")
            or (i.field == "split" and "several splits" in i.message)
        )
    ]


class Cohort:
    """A validated cohort: the manifest's rows with resolved paths.

    Create it with :meth:`from_manifest`. Rows with a per-case error are not
    in :attr:`rows`; they are in :attr:`excluded` with their reasons.

    Attributes:
        manifest_path: the manifest file.
        root: the folder relative paths resolve against.
        rows: the usable cases, in manifest order.
        issues: every problem found (errors and warnings).
        target: the outcome column.
    """

    def __init__(
        self,
        rows: Sequence[CaseRow],
        *,
        root: Path,
        manifest_path: Path | None = None,
        issues: Sequence[Issue] = (),
        target: str = "label",
        columns: Sequence[str] = (),
    ) -> None:
        self.rows: list[CaseRow] = list(rows)
        self.n_manifest_rows: int | None = None  # set by from_manifest
        self.root = root
        self.manifest_path = manifest_path
        self.issues: list[Issue] = list(issues)
        self.target = target
        self.columns: list[str] = list(columns)
        self._index = {r.case_id: i for i, r in enumerate(self.rows)}

    @classmethod
    def from_manifest(
        cls,
        path: str | Path,
        *,
        target: str = "label",
        require_label: bool = False,
        allow_external_paths: bool = False,
        strict: bool = True,
    ) -> Cohort:
        """Read and check a manifest.

        Args:
            path: the manifest file (CSV/TSV/Parquet), or a folder holding
                ``manifest.csv``.
            target: the outcome column.
            require_label: every case needs a 0/1 outcome (training/evaluation).
            allow_external_paths: accept files outside the manifest's folder.
            strict: raise :class:`CohortError` on manifest-wide problems
                (duplicate ids, patient in two splits, missing outcome column).
                Per-case problems never raise: those cases are excluded and
                listed in :attr:`excluded`.

        Raises:
            CohortError: the manifest cannot be read, or (``strict``) has a
                manifest-wide problem.
        """
        path = Path(path)
        df = read_manifest(path)
        manifest_path = (
            path
            if path.is_file()
            else next(p for p in (path / "manifest.csv", path / "manifest.parquet") if p.exists())
        )
        root = manifest_path.parent.resolve()
        rows, issues = check_manifest(
            df,
            root,
            target=target,
            require_label=require_label,
            allow_external_paths=allow_external_paths,
        )
        fatal = _fatal_manifest_issues(issues)
        if strict and fatal:
            first = fatal[0]
            more = (
                f" (and {len(fatal) - 1} more; run `clinfuse validate` for the full list)"
                if len(fatal) > 1
                else ""
            )
            raise CohortError(
                first.message + more,
                case_id=first.case_id,
                field=first.field,
                path=manifest_path,
            )
        if strict and not rows:
            raise CohortError(
                f"no usable case in the manifest ({len(issues)} problems)",
                path=manifest_path,
                hint="run `clinfuse validate` to list them",
            )
        cohort = cls(
            rows,
            root=root,
            manifest_path=manifest_path,
            issues=issues,
            target=target,
            columns=list(df.columns),
        )
        cohort.n_manifest_rows = len(df)  # rows of the file (duplicates, blank ones included)
        return cohort

    # -- access -----------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[CaseRow]:
        return iter(self.rows)

    def __getitem__(self, case_id: str) -> CaseRow:
        try:
            return self.rows[self._index[case_id]]
        except KeyError:
            raise CohortError(f"no case {case_id!r} in this cohort", case_id=case_id) from None

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._index

    @property
    def case_ids(self) -> list[str]:
        return [r.case_id for r in self.rows]

    @property
    def excluded(self) -> list[Issue]:
        """Per-case error issues (cases left out of :attr:`rows`)."""
        return [i for i in self.issues if i.severity == "error" and i.case_id is not None]

    @property
    def extra_columns(self) -> list[str]:
        """Non-reserved columns: candidates for tabular features and subgroups."""
        return [c for c in self.columns if c not in _reserved(self.target)]

    def file_modalities(self) -> list[str]:
        """File modalities that the manifest has a column for."""
        present = []
        for modality, cols in MODALITY_COLUMNS.items():
            if any(c in self.columns for c in cols):
                present.append(modality)
        return present

    def declared_presence(self) -> pd.DataFrame:
        """Boolean table (case × modality): whether the manifest names data for it."""
        data = {m: [r.has(m) for r in self.rows] for m in MODALITY_COLUMNS}
        return pd.DataFrame(data, index=pd.Index(self.case_ids, name="case_id"))

    def labels(self) -> np.ndarray:
        """Outcomes as float array (NaN where unknown), in row order."""
        return np.array([np.nan if r.label is None else r.label for r in self.rows], dtype=float)

    def to_frame(self) -> pd.DataFrame:
        """The usable rows as a table (resolved paths as strings)."""
        records = []
        for r in self.rows:
            rec = {
                "case_id": r.case_id,
                "patient_id": r.patient_id,
                self.target: r.label,
                "split": r.split,
                "site": r.site,
                "image": None if r.image is None else str(r.image),
                "note": None if r.note is None else str(r.note),
                "note_text": r.note_text,
                "signal": None if r.signal is None else str(r.signal),
                "signal_fs": r.signal_fs,
            }
            rec.update(r.extra)
            records.append(rec)
        return pd.DataFrame.from_records(records)

    def subset(self, case_ids: Sequence[str]) -> Cohort:
        """A cohort with only the given cases (in the given order)."""
        rows = [self[c] for c in case_ids]
        return Cohort(
            rows,
            root=self.root,
            manifest_path=self.manifest_path,
            issues=[i for i in self.issues if i.case_id is None or i.case_id in set(case_ids)],
            target=self.target,
            columns=self.columns,
        )

    def with_rows(self, rows: Sequence[CaseRow]) -> Cohort:
        return Cohort(
            rows,
            root=self.root,
            manifest_path=self.manifest_path,
            issues=self.issues,
            target=self.target,
            columns=self.columns,
        )

    def __repr__(self) -> str:
        return (
            f"Cohort(n_cases={len(self)}, root={str(self.root)!r}, excluded={len(self.excluded)})"
        )
