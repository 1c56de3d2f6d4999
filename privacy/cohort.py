"""De-identify a whole cohort folder: manifest, DICOM files, notes and signal files together.

Generic: the caller passes the manifest as a table, the folder its relative paths resolve
against, and which columns hold ids, DICOM paths, note paths, inline text, other files,
dates and ages (:class:`CohortSpec`). Nothing here knows about clinfuse.

What happens (:func:`deidentify_cohort`):

1. The output folder is checked: not inside the input, not holding the input, empty unless
   ``overwrite``.
2. A first pass reads every DICOM header and the manifest to learn each patient's
   identifying values (names, MRNs, accession numbers, dates, places). They feed the
   note deny-lists and, at the end, the residual-risk scan.
3. Each row is rewritten: case and patient ids (and extra id columns) become keyed
   pseudonyms; date columns move by the patient's shift; ages over 89 become 90; DICOM files
   get the PS3.15 Basic Profile (:mod:`privacy.dicom`) with ``PatientID`` = the patient
   pseudonym; notes and inline text are scrubbed (:mod:`privacy.text`) with the patient's
   deny-list and date shift; WFDB headers are renamed and their comments scrubbed; EDF/BDF
   headers are blanked and EDF+/BDF+ annotation texts scrubbed (:mod:`privacy.edf`); other
   files are copied. Files are named after the case pseudonym. With ``workers`` > 1 the
   rows are shared out to worker processes in chunks and their results put back in row
   order: the output is byte for byte that of the serial loop.
4. A file that cannot be read (or a DICOM with burned-in annotation) is listed in the report
   and not copied; its manifest cell is emptied, so the modality is missing for that case.
5. Residual-risk scan: every identifying value from step 2 is searched for (case-insensitive,
   whole words) in every output file: DICOM element values, notes, headers, the manifest.
   Names and ids are searched in every file, dates in the files of their own patient. Any
   hit is an error: nothing is published and :class:`~privacy.errors.ResidualRiskError` is
   raised.
6. Everything is written to a hidden temporary folder next to the output and renamed into
   place at the end, together with ``deid_report.json`` (no original values or paths in it).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import io
import json
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import os
import pickle
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
from pydicom.dataset import Dataset

from privacy.archive import extract_dicom_zip, is_zip, iter_dicom_members
from privacy.dicom import (
    DicomDeidentifier,
    DicomOptions,
    Identifier,
    deny_list,
    dicom_identifiers,
    dicom_text_values,
    load_profile_table,
)
from privacy.edf import EdfError, annotation_texts, deidentify_edf, header_identifiers
from privacy.errors import (
    ArchiveError,
    DeidError,
    NoteEncodingError,
    OutputFolderError,
    ResidualRiskError,
)
from privacy.pseudonym import Pseudonymizer
from privacy.text import Detector, PatientContext, TextDeidentifier, date_variants

__all__ = [
    "REPORT_NAME",
    "CohortDeidResult",
    "CohortSpec",
    "check_output_folder",
    "deidentify_cohort",
    "residual_risk_scan",
]

REPORT_NAME = "deid_report.json"
"""Name of the report written into the output folder."""

_RUN = re.compile(r"[^\W_]+")
"""Runs of letters (any script) and digits: the scan's pre-check keys. ASCII-only runs made a
name in Greek or Cyrillic unsearchable (no run at all) and split accented names."""
_TEXT_SUFFIXES = {".txt", ".csv", ".tsv", ".json", ".hea", ".md", ".xml", ".yaml", ".yml"}


@dataclass(frozen=True)
class CohortSpec:
    """Which manifest columns hold what. Columns absent from the manifest are skipped.

    Attributes:
        case_column: the case id (required); becomes ``C`` + pseudonym.
        patient_column: the patient id; becomes ``P`` + pseudonym (default: the case id
            is the patient).
        id_columns: other id columns to pseudonymise (namespace = column name).
        dicom_columns: paths to a DICOM file or a folder of DICOM files (one series).
        text_file_columns: paths to text files (notes).
        text_columns: inline free text to scrub.
        file_columns: other files (WFDB ``.hea`` records, EDF, DICOM waveforms, ``.npy``,
            ``.csv``): de-identified by type, otherwise copied.
        date_columns: dates, shifted by the patient's shift (written as ``YYYY-MM-DD``).
        age_columns: ages in years; values above 89 become 90 (Safe Harbor).
        drop_columns: removed from the output manifest.
        text_encoding: encoding of the text files.
    """

    case_column: str = "case_id"
    patient_column: str | None = "patient_id"
    id_columns: tuple[str, ...] = ()
    dicom_columns: tuple[str, ...] = ("image",)
    text_file_columns: tuple[str, ...] = ("note",)
    text_columns: tuple[str, ...] = ("note_text",)
    file_columns: tuple[str, ...] = ("signal",)
    date_columns: tuple[str, ...] = ()
    age_columns: tuple[str, ...] = ()
    drop_columns: tuple[str, ...] = ()
    text_encoding: str = "utf-8"


@dataclass
class CohortDeidResult:
    """Outcome of :func:`deidentify_cohort`.

    Attributes:
        out_dir: the de-identified cohort folder.
        manifest_path: its manifest.
        report: the content of ``deid_report.json``.
        problems: files not copied, with their *original* paths (kept in memory only, for
            the person running the tool; never written to the output).
    """

    out_dir: Path
    manifest_path: Path
    report: dict[str, Any]
    problems: list[dict[str, str]] = field(default_factory=list)


def check_output_folder(root: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse unsafe output folders; returns ``out`` resolved.

    Raises:
        OutputFolderError: ``out`` is the input folder, inside it, contains it, is a file,
            or is a non-empty folder and ``overwrite`` is False.
    """
    root_r = Path(root).resolve()
    out_r = Path(out).resolve()
    if out_r == root_r or out_r.is_relative_to(root_r):
        raise OutputFolderError(
            f"output folder {out} is inside the input cohort folder {root}: de-identified "
            "data would sit next to the originals; choose a folder outside it"
        )
    if root_r.is_relative_to(out_r):
        raise OutputFolderError(
            f"output folder {out} contains the input cohort folder {root}; choose another folder"
        )
    if out_r.exists() and not out_r.is_dir():
        raise OutputFolderError(f"output {out} exists and is not a folder; choose a folder path")
    if out_r.is_dir() and any(out_r.iterdir()) and not overwrite:
        raise OutputFolderError(
            f"output folder {out} is not empty; choose an empty folder or pass overwrite "
            "(--overwrite) to replace its content"
        )
    return out_r


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and pd.isna(value):
        return False
    with contextlib.suppress(TypeError, ValueError):  # pd.isna of a list-like is not a bool
        if pd.isna(value):
            return False
    return str(value).strip() != ""


def _resolve(root: Path, value: Any) -> Path:
    p = Path(str(value).strip()).expanduser()
    return p if p.is_absolute() else root / p


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _dicom_files(path: Path) -> list[Path]:
    """The files of a DICOM file or series folder. A folder's DICOMDIR is left out (as the
    image reader leaves it out): it indexes the original file names, which the copy
    renames, and names folders by patient."""
    if path.is_dir():
        return sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
        )
    return [path]


def _dicom_headers(path: Path) -> Iterator[Dataset]:
    """Headers (no pixels) of the DICOM files of a cell: a file, a folder, or a zip (read
    without unpacking). Unreadable files are skipped here: they are reported once, when the
    file itself is processed."""
    sources: Iterable[Any] = []
    if is_zip(path):
        sources = iter_dicom_members(path)
    elif path.exists():
        sources = _dicom_files(path)
    try:
        for source in sources:
            ds = _header(source)
            if ds is not None:
                yield ds
    except ArchiveError:
        return  # a corrupt archive is reported when the cell is written


def _header(source: Any) -> Dataset | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(source, stop_before_pixels=True, force=True)
    except (
        pydicom.errors.InvalidDicomError,
        OSError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
    ):
        return None


def _shift_iso(value: Any, days: int) -> str | None:
    try:
        ts = pd.Timestamp(str(value))
    except (ValueError, TypeError):
        return None
    if pd.isna(ts):
        return None
    return (ts + pd.Timedelta(days=days)).strftime("%Y-%m-%d")


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("pydicom", "dicom-anonymizer", "presidio-analyzer", "faker", "pandas"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class _Writer:
    """Per-row file writers; collects per-file actions and problems."""

    def __init__(
        self,
        root: Path,
        tmp: Path,
        dicom: DicomDeidentifier,
        text: TextDeidentifier,
        spec: CohortSpec,
    ) -> None:
        self.root = root
        self.tmp = tmp
        self.dicom = dicom
        self.text = text
        self.spec = spec
        self.files: dict[str, dict[str, Any]] = {}
        self.problems: list[dict[str, str]] = []
        self.errors: list[dict[str, str]] = []
        self.text_counts: Counter[str] = Counter()
        self.dicom_counts: Counter[str] = Counter()
        self.file_patient: dict[str, str] = {}
        self.cell_files: dict[tuple[Any, Any], list[str]] = defaultdict(list)
        """(case, column) → the relative paths recorded for it (for :func:`_fix_patient`)."""

    def merge(self, other: _Writer) -> None:
        """Add what ``other`` (the writer of later rows) recorded, as if this one had."""
        self.files.update(other.files)
        self.file_patient.update(other.file_patient)
        for cell, rels in other.cell_files.items():
            self.cell_files[cell].extend(rels)
        self.problems.extend(other.problems)
        self.errors.extend(other.errors)
        self.text_counts.update(other.text_counts)
        self.dicom_counts.update(other.dicom_counts)

    def __getstate__(self) -> dict[str, Any]:
        # a worker sends its records back, not its de-identifiers (presidio, OCR engines)
        return {**self.__dict__, "dicom": None, "text": None, "cell_files": dict(self.cell_files)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.cell_files = defaultdict(list, state["cell_files"])

    def _problem(self, case: str, column: str, src: Path, status: str, reason: str) -> None:
        safe = reason.replace(str(src), "<input file>").replace(str(self.root), "<cohort>")
        self.errors.append({"case": case, "column": column, "status": status, "reason": safe})
        self.problems.append(
            {"case": case, "column": column, "path": str(src), "status": status, "reason": reason}
        )

    def _record(self, rel: str, patient: str, entry: dict[str, Any]) -> None:
        self.files[rel] = entry
        self.file_patient[rel] = patient
        self.cell_files[entry.get("case"), entry.get("column")].append(rel)

    # -- DICOM ----------------------------------------------------------------
    def dicom_cell(
        self, src: Path, column: str, case: str, patient: str, pseudo: str, ctx: PatientContext
    ) -> str | None:
        if is_zip(src):  # unpacked to a private temporary folder, written as a series folder
            with tempfile.TemporaryDirectory(prefix="clinfuse-deid-unzip-") as unzipped:
                try:
                    files = extract_dicom_zip(src, unzipped)
                except ArchiveError as e:
                    self._problem(case, column, src, "error", str(e))
                    return None
                if not files:
                    self._problem(case, column, src, "error", "zip archive holds no DICOM file")
                    return None
                return self._write_dicom(files, True, src, column, case, patient, pseudo, ctx)
        files = _dicom_files(src)
        if not files:
            self._problem(case, column, src, "error", "folder holds no files")
            return None
        return self._write_dicom(files, src.is_dir(), src, column, case, patient, pseudo, ctx)

    def _write_dicom(
        self,
        files: list[Path],
        series: bool,
        src: Path,
        column: str,
        case: str,
        patient: str,
        pseudo: str,
        ctx: PatientContext,
    ) -> str | None:
        """De-identify the files of one DICOM cell; a series folder is written whole or not."""
        rel_base = f"{column}/{case}"
        written: list[tuple[str, dict[str, Any]]] = []
        for i, f in enumerate(files):
            rel = f"{rel_base}/{i + 1:04d}.dcm" if series else f"{rel_base}.dcm"
            try:
                res = self.dicom.deidentify_file(
                    f,
                    self.tmp / rel,
                    patient_key=patient,
                    patient_pseudonym=pseudo,
                    clean_text=lambda text: self.scrub(text, ctx)[0],
                )
            except DeidError as e:
                self._problem(case, column, f, "error", str(e))
                res = None
            if res is None or res.status != "deidentified":
                if res is not None:
                    self._problem(case, column, f, "quarantined", res.reason)
                for r, _ in written:  # a series with a missing slice is dropped whole
                    (self.tmp / r).unlink(missing_ok=True)
                if series:
                    shutil.rmtree(self.tmp / rel_base, ignore_errors=True)
                return None
            self.dicom_counts.update(res.categories)
            if res.pixels:
                self.dicom_counts["pixels_cleaned"] += 1
            written.append(
                (rel, {"case": case, "column": column, "kind": "dicom", **res.to_dict()})
            )
        for rel, entry in written:
            self._record(rel, patient, entry)
        return rel_base if series else f"{rel_base}.dcm"

    # -- text -----------------------------------------------------------------
    def read_text(self, src: Path, column: str, case: str) -> str | None:
        try:
            raw = src.read_bytes()
        except OSError as e:
            self._problem(case, column, src, "error", f"cannot read: {e.strerror or e}")
            return None
        enc = self.spec.text_encoding
        try:
            text = raw.decode("utf-8-sig" if enc.lower().replace("_", "-") == "utf-8" else enc)
        except (UnicodeDecodeError, LookupError) as e:
            err = NoteEncodingError(
                f"{src}: not {enc} text ({e}); re-encode it as UTF-8 "
                "(e.g. iconv -f latin1 -t utf-8) or give the right encoding"
            )
            self._problem(case, column, src, "error", str(err))
            return None
        return text

    def scrub(self, text: str, ctx: PatientContext) -> tuple[str, Counter[str]]:
        res = self.text.deidentify(text, ctx)
        self.text_counts.update(res.counts)
        return res.text, res.counts

    def text_cell(
        self, src: Path, column: str, case: str, patient: str, ctx: PatientContext
    ) -> str | None:
        text = self.read_text(src, column, case)
        if text is None:
            return None
        new, counts = self.scrub(text, ctx)
        rel = f"{column}/{case}.txt"
        (self.tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.tmp / rel).write_text(new, encoding="utf-8")
        self._record(
            rel,
            patient,
            {
                "case": case,
                "column": column,
                "kind": "text",
                "status": "deidentified",
                "replaced": dict(sorted(counts.items())),
            },
        )
        return rel

    # -- other files ------------------------------------------------------------
    def file_cell(
        self, src: Path, column: str, case: str, patient: str, pseudo: str, ctx: PatientContext
    ) -> str | None:
        suffix = src.suffix.lower()
        if suffix == ".hea":
            return self._wfdb(src, column, case, patient, ctx)
        if _is_dicom(src):
            return self.dicom_cell(src, column, case, patient, pseudo, ctx)
        if not src.is_file():
            self._problem(case, column, src, "error", "file not found")
            return None
        rel = f"{column}/{case}{''.join(src.suffixes[-2:]) if src.name.endswith('.gz') else suffix}"
        dst = self.tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if suffix in (".edf", ".bdf"):
            try:
                edf = deidentify_edf(src.read_bytes(), lambda text: self.scrub(text, ctx)[0])
            except EdfError as e:
                self._problem(case, column, src, "error", f"unreadable EDF/BDF file: {e}")
                return None
            dst.write_bytes(edf.data)
            action = "edf header blanked (patient, recording, start date)"
            if edf.annotations:
                action += (
                    f"; {edf.annotations} annotations scrubbed ({edf.changed} changed, "
                    f"{edf.replaced_whole} replaced by X for lack of room)"
                )
        elif suffix in (".csv", ".tsv", ".txt"):
            text = self.read_text(src, column, case)
            if text is None:
                return None
            new, _ = self.scrub(text, ctx)
            dst.write_text(new, encoding="utf-8")
            action = "text scrubbed"
        else:
            shutil.copyfile(src, dst)
            action = "copied (numeric data)"
        self._record(
            rel, patient, {"case": case, "column": column, "kind": "file", "status": action}
        )
        return rel

    def _wfdb(
        self, src: Path, column: str, case: str, patient: str, ctx: PatientContext
    ) -> str | None:
        text = self.read_text(src, column, case)
        if text is None:
            return None
        lines = text.splitlines()
        out_lines: list[str] = []
        record_done = False
        renamed: dict[str, str] = {}
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#"):
                new, _ = self.scrub(line, ctx)
                out_lines.append(new)
                continue
            if not stripped:
                out_lines.append(line)
                continue
            tokens = stripped.split()
            if not record_done:
                # name[/segments] nsig fs nsamp [base_time [base_date]]: drop time and date
                name = tokens[0]
                seg = name.split("/", 1)[1] if "/" in name else None
                tokens[0] = case + (f"/{seg}" if seg else "")
                out_lines.append(" ".join(tokens[:4]))
                record_done = True
                continue
            fname = tokens[0]
            if fname not in renamed:
                sub = Path(fname)
                renamed[fname] = f"{case}{sub.suffix}" if fname != "~" else "~"
                if len(renamed) > 1 and fname != "~":
                    renamed[fname] = f"{case}_{len(renamed)}{sub.suffix}"
            tokens[0] = renamed[fname]
            out_lines.append(" ".join(tokens))
        dst_dir = self.tmp / column
        dst_dir.mkdir(parents=True, exist_ok=True)
        for old, new in renamed.items():
            if old == "~":
                continue
            s = src.parent / old
            if not s.is_file():
                self._problem(
                    case, column, s, "error", "WFDB signal file named in header not found"
                )
                return None
            shutil.copyfile(s, dst_dir / new)
            self._record(
                f"{column}/{new}",
                patient,
                {"case": case, "column": column, "kind": "file", "status": "copied (numeric data)"},
            )
        rel = f"{column}/{case}.hea"
        (self.tmp / rel).write_text("\n".join(out_lines) + "\n", encoding="utf-8")
        self._record(
            rel,
            patient,
            {
                "case": case,
                "column": column,
                "kind": "wfdb-header",
                "status": "renamed; base time/date removed; comments scrubbed",
            },
        )
        return rel


def _pseudo_case(p: Pseudonymizer, value: str) -> str:
    return p.pseudonym(value, "case", prefix="C", length=12)


def _pseudo_patient(p: Pseudonymizer, value: str) -> str:
    return p.pseudonym(value, "patient", prefix="P", length=12)


def _collect(
    frame: pd.DataFrame,
    root: Path,
    spec: CohortSpec,
    cols: dict[str, list[str]],
    retained: frozenset[str] = frozenset(),
) -> dict[str, list[Identifier]]:
    """Identifying values per original patient id (from DICOM and EDF headers and the manifest).

    DICOM attributes that the chosen options keep on purpose (``retained``) are left out.
    """
    table = load_profile_table()
    found: dict[str, list[Identifier]] = defaultdict(list)
    for _, row in frame.iterrows():
        case = str(row[spec.case_column]).strip()
        patient = str(row[spec.patient_column]).strip() if cols["patient"] else case
        found[patient].append(Identifier("id", spec.case_column, case))
        if cols["patient"]:
            found[patient].append(Identifier("id", spec.patient_column or "", patient))
        for c in cols["ids"]:
            if _present(row[c]):
                found[patient].append(Identifier("id", c, str(row[c]).strip()))
        for c in cols["dates"]:
            if _present(row[c]):
                iso = _shift_iso(row[c], 0)
                if iso:
                    found[patient].append(Identifier("date", c, iso.replace("-", "")))
        for c in [*cols["dicom"], *cols["files"]]:
            if not _present(row[c]):
                continue
            path = _resolve(root, row[c])
            if c in cols["files"] and path.suffix.lower() in (".edf", ".bdf") and path.is_file():
                with path.open("rb") as fh:
                    header = fh.read(256)
                found[patient].extend(Identifier(*ident) for ident in header_identifiers(header))
                continue
            if c in cols["files"] and not (path.is_dir() or _is_dicom(path)):
                continue
            for ds in _dicom_headers(path):
                found[patient].extend(dicom_identifiers(ds, table, retained))
    return found


def _date_gaps(idents: list[Identifier], max_days: int) -> set[int]:
    """The negative day gaps between a patient's known dates (``YYYYMMDD`` values): a date
    shift equal to one would turn a later date into an earlier original one."""
    import datetime as dt

    days = set()
    for ident in idents:
        if ident.kind != "date":
            continue
        try:
            days.add(dt.datetime.strptime(ident.value[:8], "%Y%m%d").date().toordinal())
        except ValueError:
            continue
    ordered = sorted(days)
    return {a - b for i, a in enumerate(ordered) for b in ordered[i + 1 :] if 0 < b - a <= max_days}


class _Needle:
    """The search for one identifier: a set lookup first, the regex (compiled lazily) second.

    A whole match is bounded by characters that are neither letters (of any script) nor
    digits, so every such run of a form is a whole run of the text too: the longest run of
    each form is a safe pre-check.
    """

    def __init__(self, ident: Identifier) -> None:
        self.ident = ident
        forms = date_variants(ident.value) if ident.kind == "date" else [ident.value]
        if ident.kind == "name" and "^" in ident.value:
            parts = [p for p in re.split(r"[\^=]+", ident.value) if p]
            forms += [" ".join(parts), " ".join(reversed(parts)), ", ".join(parts)]
        token_lists = [[t for t in re.split(r"[\s^,]+", f.strip()) if t] for f in forms]
        self._tokens = [t for t in token_lists if t]
        self.keys = tuple(
            sorted({max(_RUN.findall(" ".join(t).lower()) or [""], key=len) for t in self._tokens})
        )
        self._regex: re.Pattern[str] | None = None

    @property
    def regex(self) -> re.Pattern[str]:
        if self._regex is None:
            alts = "|".join(r"[\s^,]+".join(re.escape(x) for x in t) for t in self._tokens)
            self._regex = re.compile(rf"(?<![^\W_])(?:{alts})(?![^\W_])", re.IGNORECASE)
        return self._regex

    def search(self, blob: str, runs: set[str]) -> bool:
        return any(k in runs for k in self.keys) and self.regex.search(blob) is not None


def _value_regex(ident: Identifier) -> _Needle:
    return _Needle(ident)


_SLICE_NAME = re.compile(r"\d+\.dcm")
"""Names the writer gives the files of a series folder (``0001.dcm``, ...): sequence numbers,
not searched (a study id such as ``0001`` would match them by chance)."""


def _file_texts(path: Path) -> list[str] | None:
    """Searchable text of an output file; ``None`` for numeric data files."""
    if path.suffix.lower() == ".dcm" or _is_dicom(path):
        ds = pydicom.dcmread(path, force=True)
        name = "" if _SLICE_NAME.fullmatch(path.name) else path.name
        return [*dicom_text_values(ds), name]
    if path.suffix.lower() in _TEXT_SUFFIXES:
        return [path.read_text(encoding="utf-8", errors="replace"), path.name]
    if path.suffix.lower() in (".edf", ".bdf"):
        data = path.read_bytes()
        try:
            notes = annotation_texts(data)
        except EdfError:  # not parseable (deidentify_edf wrote none such): search every byte
            notes = [data.decode("latin-1")]
        return [data[:256].decode("latin-1"), *notes, path.name]
    return [path.name]


def residual_risk_scan(
    out_dir: Path,
    identifiers: dict[str, list[Identifier]],
    file_patient: dict[str, str],
    *,
    manifest_rel: str,
    manifest_patients: Sequence[str],
    pseudonymizer: Pseudonymizer,
) -> dict[str, Any]:
    """Search every original identifying value in every output file.

    Whole names, ids, places and phones are searched in every file; dates and single name
    components only in the files of their own patient and in that patient's manifest rows
    (another patient's shifted date may equal them by chance; a surname may be a common
    word), and name components not in DICOM elements. Hits are reported by file, kind and source field, with a keyed
    fingerprint instead of the value.

    Args:
        out_dir: the (temporary) output folder.
        identifiers: original patient id → identifying values.
        file_patient: output relative path → original patient id.
        manifest_rel: the manifest's relative path in ``out_dir``.
        manifest_patients: original patient id of each manifest row, in row order.
        pseudonymizer: for the fingerprints.
    """
    global_idents = {
        (i.kind, i.source, i.value): i
        for idents in identifiers.values()
        for i in idents
        if i.kind not in ("date", "name_part")
    }
    global_res = [_value_regex(i) for i in global_idents.values()]
    own = {
        pid: [
            _value_regex(i)
            for i in {
                (x.kind, x.value): x for x in idents if x.kind in ("date", "name_part")
            }.values()
        ]
        for pid, idents in identifiers.items()
    }
    own_text = {pid: [n for n in v if n.ident.kind == "date"] for pid, v in own.items()}
    hits: list[dict[str, str]] = []
    scanned = 0
    not_scanned: list[str] = []

    global_index: dict[str, list[_Needle]] = defaultdict(list)
    for needle in global_res:
        for key in needle.keys:
            global_index[key].append(needle)

    def check(rel: str, texts: Iterable[str], needles: Iterable[_Needle] | None) -> None:
        blob = "\n".join(texts)
        runs = set(_RUN.findall(blob.lower()))
        if needles is None:  # the global list: only the needles whose key occurs
            found = {id(n): n for k in runs & global_index.keys() for n in global_index[k]}
            needles = list(found.values())
        for needle in needles:
            if needle.search(blob, runs):
                ident = needle.ident
                hits.append(
                    {
                        "file": rel,
                        "kind": ident.kind,
                        "source": ident.source,
                        "fingerprint": pseudonymizer.pseudonym(ident.value, "residual", length=10),
                    }
                )

    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(out_dir).as_posix()
        texts = _file_texts(path)
        if texts is None:
            not_scanned.append(rel)
            continue
        if len(texts) == 1 and path.suffix.lower() not in _TEXT_SUFFIXES:
            not_scanned.append(rel)  # numeric data: only the name is checked
        scanned += 1
        check(rel, texts, None)
        if rel == manifest_rel:
            lines = texts[0].splitlines()
            body = lines[1:] if len(lines) == len(manifest_patients) + 1 else []
            for line, pid in zip(body, manifest_patients, strict=False):
                check(rel, [line], own.get(pid, []))
        elif rel in file_patient:
            # single name components are ordinary words often enough ("Lake", "Philips") that
            # they are only searched in the patient's own text files, not in DICOM elements
            # (where names live in PN attributes, searched whole above)
            is_dicom = path.suffix.lower() == ".dcm" or _is_dicom(path)
            table = own_text if is_dicom else own
            check(rel, texts, table.get(file_patient[rel], []))
    n_values = len(global_res) + sum(len(v) for v in own.values())
    return {
        "ok": not hits,
        "n_values_checked": n_values,
        "n_files_scanned": scanned,
        "name_only_files": not_scanned,
        "hits": hits,
    }


@dataclass
class _RunContext:
    """What every row needs: the settings, the patients' identifying values and the
    de-identifiers. Built once; worker processes inherit it (``fork``) or unpickle it."""

    root: Path
    tmp: Path
    spec: CohortSpec
    cols: dict[str, list[str]]
    columns: list[Any]
    keep_dates: bool
    identifiers: dict[str, list[Identifier]]
    pseudonymizer: Pseudonymizer
    text: TextDeidentifier
    dicom: DicomDeidentifier


def _deidentify_row(
    run: _RunContext, writer: _Writer, row: pd.Series, manifest_counts: Counter[str]
) -> tuple[dict[str, Any], str]:
    """De-identify one manifest row: the new row and the original patient id."""
    spec, cols, p = run.spec, run.cols, run.pseudonymizer
    case_orig = str(row[spec.case_column]).strip()
    pat_orig = str(row[cols["patient"][0]]).strip() if cols["patient"] else case_orig
    if cols["patient"] and not _present(row[cols["patient"][0]]):
        pat_orig = case_orig
    case = _pseudo_case(p, case_orig)
    patient = _pseudo_patient(p, pat_orig)
    shift = p.date_shift_days(pat_orig)
    ctx = PatientContext(
        key=patient,
        shift_days=shift if run.keep_dates else None,
        deny=deny_list(run.identifiers.get(pat_orig, [])),
    )
    new = {c: row[c] for c in run.columns if c not in spec.drop_columns}
    new[spec.case_column] = case
    manifest_counts["case_id"] += 1
    if cols["patient"]:
        new[cols["patient"][0]] = patient
        manifest_counts["patient_id"] += 1
    for c in cols["ids"]:
        if _present(row[c]):
            new[c] = p.pseudonym(str(row[c]).strip(), c, length=12)
            manifest_counts["id"] += 1
    for c in cols["dates"]:
        if _present(row[c]):
            new[c] = _shift_iso(row[c], shift) if run.keep_dates else None
            manifest_counts["date_shifted" if run.keep_dates else "date_removed"] += 1
    for c in cols["ages"]:
        if _present(row[c]):
            try:
                if float(row[c]) > 89:
                    new[c] = 90
                    manifest_counts["age_over_89"] += 1
            except (TypeError, ValueError):
                new[c] = None
    for c in cols["text"]:
        if _present(row[c]):
            new[c], _ = writer.scrub(str(row[c]), ctx)
            manifest_counts["free_text"] += 1
    for c in cols["dicom"]:
        if _present(row[c]):
            new[c] = writer.dicom_cell(_resolve(run.root, row[c]), c, case, pat_orig, patient, ctx)
            _fix_patient(writer, new, c, case, patient)
    for c in cols["text_files"]:
        if _present(row[c]):
            new[c] = writer.text_cell(_resolve(run.root, row[c]), c, case, pat_orig, ctx)
    for c in cols["files"]:
        if _present(row[c]):
            new[c] = writer.file_cell(_resolve(run.root, row[c]), c, case, pat_orig, patient, ctx)
            _fix_patient(writer, new, c, case, patient)
    return new, pat_orig


# -- case-level parallelism ----------------------------------------------------------------
#
# Rows are cut into contiguous chunks; each worker process de-identifies a chunk with its
# own _Writer into the shared temporary folder (files are named by column and case
# pseudonym, so chunks never write the same path) and sends back the new rows and what its
# writer recorded. The parent merges the chunks in row order, so the manifest, the report
# and every counter are those of the serial loop.

_MAX_AUTO_WORKERS = 8
_MAX_CHUNK = 16
_STOP_TIMEOUT_S = 30.0


@dataclass
class _ChunkResult:
    rows: list[dict[str, Any]]
    row_patients: list[str]
    manifest_counts: Counter[str]
    writer: _Writer


@dataclass
class _ParallelPlan:
    workers: int
    chunk_size: int
    context: multiprocessing.context.BaseContext
    payload: _RunContext | bytes
    ocr_workers: int


_WORKER_RUN: _RunContext | None = None
"""The run context of this worker process (set by :func:`_worker_init`)."""


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _resolve_workers(workers: int | None) -> int:
    if workers is None or workers == 0:
        return min(_cpu_count(), _MAX_AUTO_WORKERS)
    if workers < 0:
        raise DeidError(
            f"workers must be 0 (one per CPU core, at most {_MAX_AUTO_WORKERS}) or more, "
            f"got {workers}"
        )
    return int(workers)


def _choose_start_method(requested: str | None) -> str:
    methods = multiprocessing.get_all_start_methods()
    if requested is not None:
        if requested not in methods:
            raise DeidError(
                f"start method {requested!r} is not available here; use one of {', '.join(methods)}"
            )
        return requested
    # fork copies the parent as it is: safe while no other thread may hold a lock (a
    # progress-bar refresher, a logging handler); native pools of numpy/jemalloc are
    # fork-aware. macOS: fork is unsafe (system frameworks), Python defaults to spawn there.
    if sys.platform.startswith("linux") and "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


class _RunPickler(pickle.Pickler):
    """Pickles module references by name (an OCR engine keeps its ``pytesseract`` module)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        return NotImplemented


def _parallel_plan(
    frame: pd.DataFrame,
    spec: CohortSpec,
    workers: int,
    run: _RunContext,
    start_method: str | None,
) -> _ParallelPlan | None:
    """How to run the rows in worker processes, or ``None`` to run them here, one by one."""
    if workers <= 1:
        return None
    method = _choose_start_method(start_method)
    n = len(frame)
    if n < 2 * workers:
        return None  # starting processes would cost more than it saves
    if frame[spec.case_column].map(lambda v: str(v).strip()).duplicated().any():
        return None  # two rows of one case write the same files: keep their serial order
    chunk_size = max(1, min(_MAX_CHUNK, math.ceil(n / (workers * 8))))
    workers = min(workers, math.ceil(n / chunk_size))
    context = multiprocessing.get_context(method)
    payload: _RunContext | bytes = run
    if method == "fork":
        _warm_up(run)  # loaded once here, shared by every worker
    else:
        buf = io.BytesIO()
        try:
            _RunPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(run)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            warnings.warn(
                f"workers={workers}: the de-identification options cannot be sent to "
                f"{method!r} worker processes ({e}); de-identifying one case at a time",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        payload = buf.getvalue()
        if method == "forkserver":  # no effect once this process's fork server runs
            preload = ["__main__", "privacy.cohort"]
            if run.text.use_presidio:
                preload.append("presidio_analyzer")
            context.set_forkserver_preload(preload)
    return _ParallelPlan(
        workers=workers,
        chunk_size=chunk_size,
        context=context,
        payload=payload,
        ocr_workers=max(1, _cpu_count() // workers),
    )


def _warm_up(run: _RunContext) -> None:
    """Build the lazily loaded detectors before forking, so workers do not each load them."""
    from privacy.text import _name_dictionaries, _presidio_analyzer, international_first_names

    if run.text.use_presidio:
        _presidio_analyzer()
    if run.text.use_dictionaries:
        _name_dictionaries()
        international_first_names()


class _Stop(BaseException):
    """Raised in a worker the parent stops (SIGTERM): unwinds the case being written, so
    its temporary files (an unzipped series, the OCR engine's images) are removed."""


_IN_CHUNK = False


def _on_sigterm(signum: int, frame: Any) -> None:
    if _IN_CHUNK:
        # once: the pool terminates its other workers again when the first one ends, and a
        # second stop would cut the clean-up short (half an unzipped series left behind)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _Stop
    os._exit(1)  # between chunks: nothing to clean up


def _worker_init(payload: _RunContext | bytes, ocr_workers: int) -> None:
    global _WORKER_RUN
    # Ctrl-C is the parent's to handle: it stops the workers and removes the partial output
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    run = pickle.loads(payload) if isinstance(payload, bytes) else payload
    ocr = getattr(run.dicom.options.clean_pixel_data, "ocr", None)
    if ocr is not None and getattr(ocr, "workers", 0) is None:
        ocr.workers = ocr_workers  # Tesseract processes per worker: the cores are shared
    _WORKER_RUN = run


def _worker_chunk(chunk: pd.DataFrame) -> _ChunkResult:
    global _IN_CHUNK
    run = _WORKER_RUN
    if run is None:  # pragma: no cover - the pool's initializer sets it
        raise RuntimeError("worker process not initialised")
    writer = _Writer(run.root, run.tmp, run.dicom, run.text, run.spec)
    result = _ChunkResult([], [], Counter(), writer)
    _IN_CHUNK = True
    try:
        for _, row in chunk.iterrows():
            new, pat_orig = _deidentify_row(run, writer, row, result.manifest_counts)
            result.rows.append(new)
            result.row_patients.append(pat_orig)
    except _Stop:
        os._exit(1)  # cleaned up on the way here; the parent discards the run
    finally:
        _IN_CHUNK = False
    return result


def _deidentify_in_workers(
    frame: pd.DataFrame, plan: _ParallelPlan, progress: Callable[[int, int], None] | None
) -> list[_ChunkResult]:
    """De-identify the rows in worker processes; the chunks' results in row order.

    A failing chunk fails the run with the exception of the first failing row, as in the
    serial loop: the chunks before it are awaited (they run already: chunks start in
    order), the others are cancelled and their workers terminated.
    """
    n = len(frame)
    bounds = [(a, min(a + plan.chunk_size, n)) for a in range(0, n, plan.chunk_size)]
    results: list[_ChunkResult | None] = [None] * len(bounds)
    pool = ProcessPoolExecutor(
        max_workers=plan.workers,
        mp_context=plan.context,
        initializer=_worker_init,
        initargs=(plan.payload, plan.ocr_workers),
    )
    finished_cleanly = False
    try:
        index = {pool.submit(_worker_chunk, frame.iloc[a:b]): i for i, (a, b) in enumerate(bounds)}
        pending = set(index)
        failed: int | None = None
        done_rows = 0
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                i = index[future]
                if future.cancelled():
                    continue
                if future.exception() is not None:
                    failed = i if failed is None else min(failed, i)
                    continue
                results[i] = future.result()
                done_rows += bounds[i][1] - bounds[i][0]
                if progress is not None and failed is None:
                    progress(done_rows, n)
            if failed is not None:
                for future in pending:
                    if index[future] > failed:
                        future.cancel()
                pending = {f for f in pending if index[f] < failed}
        if failed is not None:
            error = next(f for f, i in index.items() if i == failed).exception()
            assert error is not None
            if isinstance(error, BrokenProcessPool):
                # every chunk in flight fails with the pool: name the span they cover
                lost = [
                    i
                    for f, i in index.items()
                    if f.done()
                    and not f.cancelled()
                    and isinstance(f.exception(), BrokenProcessPool)
                ]
                a, b = bounds[min(lost)][0], bounds[max(lost)][1]
                raise DeidError(
                    f"a worker process ended abruptly on a case in manifest data rows "
                    f"{a + 1}-{b} (killed, out of memory, or it could not start); nothing "
                    "was written. Rerun with fewer workers, or with --workers 1 to see the "
                    "failing case's own error"
                ) from error
            raise error
        finished_cleanly = True
    finally:
        _shut_down(pool, terminate=not finished_cleanly)
    return [r for r in results if r is not None]


def _shut_down(pool: ProcessPoolExecutor, *, terminate: bool) -> None:
    """Stop the pool and reap its processes; ``terminate``: without waiting for the chunks
    still running (the run failed or was interrupted; its output is thrown away). A stopped
    worker removes the temporary files of the case it was writing first; one that has not
    ended after :data:`_STOP_TIMEOUT_S` is killed."""
    if terminate:
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.terminate()
        # wait on the exit sentinels, not by joining: the pool's own thread reaps them
        with contextlib.suppress(OSError, ValueError):
            left = {proc.sentinel: proc for proc in procs}
            deadline = time.monotonic() + _STOP_TIMEOUT_S
            while left and (remaining := deadline - time.monotonic()) > 0:
                for ready in multiprocessing.connection.wait(list(left), remaining):
                    left.pop(ready)
            for proc in left.values():
                proc.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def deidentify_cohort(
    manifest: pd.DataFrame,
    root: str | Path,
    out: str | Path,
    pseudonymizer: Pseudonymizer,
    spec: CohortSpec | None = None,
    *,
    dicom_options: DicomOptions | None = None,
    text_mode: str = "surrogate",
    detectors: Sequence[Detector] = (),
    use_presidio: bool = True,
    overwrite: bool = False,
    manifest_name: str = "manifest.csv",
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
    start_method: str | None = None,
) -> CohortDeidResult:
    """Write a de-identified copy of a cohort and its ``deid_report.json``.

    Args:
        manifest: one row per case.
        root: the folder relative paths in ``manifest`` resolve against.
        out: the output folder (absent, or empty; or anything with ``overwrite``).
        pseudonymizer: the keyed pseudonymizer (holds the site secret).
        spec: which columns hold what (default: the clinfuse manifest contract).
        dicom_options: PS3.15 options; default: Basic Profile with Retain Longitudinal
            Temporal Information (modified dates), so DICOM, note and manifest dates shift
            together. Without that option, dates are removed everywhere: note dates become
            ``[DATE]`` and date columns are emptied.
        text_mode: ``"surrogate"`` or ``"tag"`` (see :class:`~privacy.text.TextDeidentifier`).
        detectors: extra name/entity detectors for notes (e.g. a local NER model).
        use_presidio: use presidio-analyzer's offline recognizers for notes.
        overwrite: replace the content of a non-empty output folder.
        manifest_name: file name of the output manifest (``.csv`` or ``.parquet``).
        progress: called as ``progress(done, total)`` after each case (with ``workers``,
            after each chunk of cases).
        workers: cases de-identified at once, each in its own process (``0``: one per CPU
            core, at most 8). The output is byte for byte the one of ``workers=1``. Runs
            serially anyway when the cohort has fewer than ``2 * workers`` cases, or
            repeated case ids (they would write the same files), or when the options cannot
            be sent to a worker process (a warning says so; only with ``spawn`` or
            ``forkserver``).
        start_method: how worker processes start (:mod:`multiprocessing`): ``"fork"``,
            ``"forkserver"`` or ``"spawn"``. Default: ``fork`` on Linux when the calling
            process runs no other Python thread (fast: the workers inherit the loaded
            presidio and rule table), else ``forkserver`` where available, else ``spawn``.

    Returns:
        The result; ``result.problems`` lists files not copied with their original paths.

    Raises:
        OutputFolderError: unsafe output folder.
        DeidError: a column named in ``spec`` is missing where required; negative
            ``workers``; unknown ``start_method``.
        ResidualRiskError: an original identifying value was found in the output; nothing
            but ``deid_report.json`` is written.
    """
    spec = spec or CohortSpec()
    root = Path(root).resolve()
    out_r = check_output_folder(root, out, overwrite=overwrite)
    frame = manifest.reset_index(drop=True)
    if spec.case_column not in frame.columns:
        raise DeidError(
            f"the manifest has no {spec.case_column!r} column (columns: {list(frame.columns)}); "
            "name the case id column"
        )
    if frame[spec.case_column].map(_present).sum() != len(frame):
        raise DeidError(f"column {spec.case_column!r} has empty cells; every case needs an id")

    def have(cs: Iterable[str]) -> list[str]:
        return [c for c in cs if c in frame.columns]

    cols = {
        "patient": have([spec.patient_column] if spec.patient_column else []),
        "ids": have(spec.id_columns),
        "dicom": have(spec.dicom_columns),
        "text_files": have(spec.text_file_columns),
        "text": have(spec.text_columns),
        "files": have(spec.file_columns),
        "dates": have(spec.date_columns),
        "ages": have(spec.age_columns),
    }
    dicom_options = dicom_options or DicomOptions(retain_longitudinal=True)
    keep_dates = dicom_options.retain_longitudinal
    identifiers = _collect(frame, root, spec, cols, dicom_options.retained_keywords())
    for patient, idents in identifiers.items():  # a shifted date never equals another original
        pseudonymizer.avoid_date_shifts(patient, _date_gaps(idents, pseudonymizer.max_shift_days))
    name_tokens = {
        t.lower()
        for idents in identifiers.values()
        for i in idents
        if i.kind == "name"
        for t in re.split(r"[\s^,=]+", i.value)
        if t
    }
    text_deid = TextDeidentifier(
        pseudonymizer,
        mode="tag" if text_mode == "tag" else "surrogate",
        use_presidio=use_presidio,
        detectors=detectors,
        forbidden_surrogates=name_tokens,
    )
    dicom_deid = DicomDeidentifier(pseudonymizer, dicom_options)

    workers = _resolve_workers(workers)
    out_r.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_r.name}.partial-", dir=out_r.parent))
    try:
        run = _RunContext(
            root=root,
            tmp=tmp,
            spec=spec,
            cols=cols,
            columns=list(frame.columns),
            keep_dates=keep_dates,
            identifiers=identifiers,
            pseudonymizer=pseudonymizer,
            text=text_deid,
            dicom=dicom_deid,
        )
        writer = _Writer(root, tmp, dicom_deid, text_deid, spec)
        rows: list[dict[str, Any]] = []
        row_patients: list[str] = []
        manifest_counts: Counter[str] = Counter()
        parallel = _parallel_plan(frame, spec, workers, run, start_method)
        if parallel is None:
            for _, row in frame.iterrows():
                new, pat_orig = _deidentify_row(run, writer, row, manifest_counts)
                rows.append(new)
                row_patients.append(pat_orig)
                if progress is not None:
                    progress(len(rows), len(frame))
        else:
            for chunk in _deidentify_in_workers(frame, parallel, progress):
                rows.extend(chunk.rows)
                row_patients.extend(chunk.row_patients)
                manifest_counts.update(chunk.manifest_counts)
                writer.merge(chunk.writer)

        out_frame = pd.DataFrame(
            rows, columns=[c for c in frame.columns if c not in spec.drop_columns]
        )
        manifest_path = tmp / manifest_name
        if manifest_name.endswith((".parquet", ".pq")):
            out_frame.to_parquet(manifest_path, index=False)
        else:
            out_frame.to_csv(manifest_path, index=False)

        residual = residual_risk_scan(
            tmp,
            identifiers,
            writer.file_patient,
            manifest_rel=manifest_name,
            manifest_patients=row_patients,
            pseudonymizer=pseudonymizer,
        )
        report = {
            "tool": "privacy.cohort (clinfuse)",
            "versions": _versions(),
            "key_id": pseudonymizer.key_id,
            "dicom_profile": {
                "table": dicom_deid.table.version,
                "n_rules": len(dicom_deid.table),
                "codes": dicom_options.codes(),
            },
            "text": {
                "mode": text_deid.mode,
                "presidio": use_presidio,
                "external_detectors": len(detectors),
            },
            "n_cases": len(frame),
            "n_files_written": len(writer.files),
            "n_files_not_copied": len(writer.errors),
            "counts": {
                "manifest": dict(sorted(manifest_counts.items())),
                "dicom": dict(sorted(writer.dicom_counts.items())),
                "text": dict(sorted(writer.text_counts.items())),
            },
            "not_copied": writer.errors,
            "residual_risk": residual,
            "files": dict(sorted(writer.files.items())),
        }
        if not residual["ok"]:
            _publish_report_only(out_r, report, overwrite)
            raise ResidualRiskError(
                f"{len(residual['hits'])} original identifying value(s) found in the "
                f"de-identified output (see {out_r / REPORT_NAME}: residual_risk.hits); "
                "nothing was published. Add the fields to the text deny-lists or drop the "
                "columns, then run again"
            )
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2, default=str) + "\n")
        _swap_into_place(tmp, out_r)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return CohortDeidResult(
        out_dir=out_r,
        manifest_path=out_r / manifest_name,
        report=report,
        problems=writer.problems,
    )


def _fix_patient(
    writer: _Writer, new: dict[str, Any], column: str, case: str, patient: str
) -> None:
    """Record the pseudonymous patient on the file entries just written for this case."""
    for rel in writer.cell_files.get((case, column), ()):
        entry = writer.files[rel]
        if entry.get("case") == case and entry.get("column") == column:
            entry["patient"] = patient


def _swap_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        trash = out.parent / f".{out.name}.old-{os.getpid()}-{_dt.datetime.now():%H%M%S%f}"
        out.rename(trash)
        tmp.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(out)


def _publish_report_only(out: Path, report: dict[str, Any], overwrite: bool) -> None:
    report = {**report, "status": "failed: residual identifiers found; nothing published"}
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    (stage / REPORT_NAME).write_text(json.dumps(report, indent=2, default=str) + "\n")
    _swap_into_place(stage, out)
