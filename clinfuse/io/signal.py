"""Load physiological signals (ECG, PPG, vitals waveforms) from one file.

One entry point, :func:`load_signal`, reads every format the cohort manifest
allows in its ``signal`` column and returns the same thing for all of them:
a ``(leads, samples)`` float32 array in physical units and a small metadata
dict. Readers (wfdb, pydicom, pyedflib, pandas) are imported inside the
functions that use them, so ``import clinfuse`` stays light.

Formats, chosen by file name:

======================  ==================  ===========================================
path                    ``meta["format"]``  notes
======================  ==================  ===========================================
``rec.hea`` or ``rec``  ``wfdb``            ``wfdb.rdrecord``, physical units
``*.dcm`` / DICOM file  ``dicom_waveform``  first multiplex group (``waveform_array(0)``)
``*.edf`` / ``*.bdf``   ``edf``             pyedflib; all channels must share one rate
``*.npy``               ``npy``             needs ``fs`` (manifest column ``signal_fs``)
``*.csv``               ``csv``             needs ``fs``; optional header row
======================  ==================  ===========================================

Orientation of ``.npy`` and ``.csv`` arrays: a 1-D array is one lead. A 2-D
array is read as ``(samples, leads)`` when it has more rows than columns and
as ``(leads, samples)`` otherwise (a recording has far more samples than
leads). A CSV whose first row is not numeric has a header: the header names
the leads and the columns are then always leads.

Missing values (NaN, and ±inf, which are treated the same way) are repaired
so that downstream filters see finite numbers: gaps inside a lead are
linearly interpolated (the edges take the nearest valid value); a lead that
is entirely missing while other leads have data is filled with zeros and
listed in ``meta["nan_leads"]`` (so an encoder can mask it); a recording
where every lead is missing is an error.

No header field that could identify the patient (name, id, birth date,
recording date, free-text comments) is copied into the metadata.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse.io._common import ErrorContext, has_dicm_preamble

__all__ = ["SIGNAL_FORMATS", "load_signal"]

SIGNAL_FORMATS: tuple[str, ...] = ("wfdb", "dicom_waveform", "edf", "npy", "csv")
"""The values ``meta["format"]`` can take."""

_SUFFIX_FORMATS: dict[str, str] = {
    ".hea": "wfdb",
    ".dcm": "dicom_waveform",
    ".dicom": "dicom_waveform",
    ".edf": "edf",
    ".bdf": "edf",
    ".npy": "npy",
    ".csv": "csv",
}

_FS_HINT = "add a `signal_fs` column (Hz) to the manifest"


def load_signal(
    path: str | Path,
    *,
    fs: float | None = None,
    case_id: str | None = None,
    field: str = "signal",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one physiological recording.

    Args:
        path: a WFDB record (its ``.hea`` file, or the record path without
            extension), a DICOM waveform file, an EDF/EDF+/BDF file, or a
            ``.npy``/``.csv`` array.
        fs: sampling rate in Hz (the manifest column ``signal_fs``). Required
            for ``.npy`` and ``.csv``. For formats that store their own rate
            it may be left out; if given it must agree with the file.
            ``None`` and NaN (an empty manifest cell) mean "not given".
        case_id: the case the file belongs to, named in error messages.
        field: the manifest column the path came from, named in error messages.

    Returns:
        ``(signal, meta)``: ``signal`` is ``(leads, samples)`` float32 in the
        file's physical units, finite everywhere. ``meta`` holds

        - ``fs`` (float, Hz), ``n_samples`` (int), ``n_leads`` (int),
          ``duration_s`` (float, ``n_samples / fs``);
        - ``lead_names`` (list[str], one per lead; ``lead_0``, ``lead_1``, …
          where the file names none);
        - ``units`` (list[str] per lead, or ``None`` where the format has none);
        - ``format`` (one of :data:`SIGNAL_FORMATS`), ``path`` (str);
        - ``nan_fraction`` (float in [0, 1]: share of samples that were
          missing and were repaired), ``nan_leads`` (list[str]: leads that
          were missing entirely and are zeros now).

    Raises:
        DataFileNotFoundError: the file (or a WFDB record's data file) does
            not exist.
        ModalityLoadError: unsupported extension; unreadable, corrupt or
            truncated file; no sampling rate, or a non-positive or
            conflicting one; an array that is not 1-D/2-D, has no samples or
            is not numeric; every sample missing; EDF channels at different
            rates.

    Example:
        >>> x, meta = load_signal("ecg/c001.hea", case_id="c001")  # doctest: +SKIP
        >>> x.shape, meta["fs"], meta["lead_names"][:2]  # doctest: +SKIP
        ((12, 5000), 500.0, ['I', 'II'])
    """
    p = Path(path)
    ctx = ErrorContext(case_id, field, p)
    fs_arg = _check_fs_argument(fs, ctx)
    fmt, p = _detect_format(p, ctx)
    ctx = ErrorContext(case_id, field, p)  # the file actually read (e.g. the .hea of a record)

    orient = True
    if fmt == "wfdb":
        arr, file_fs, names, units = _read_wfdb(p, ctx)
    elif fmt == "dicom_waveform":
        arr, file_fs, names, units = _read_dicom_waveform(p, ctx)
    elif fmt == "edf":
        arr, file_fs, names, units = _read_edf(p, ctx)
    else:
        if fs_arg is None:
            raise ctx.error(f"a .{fmt} signal carries no sampling rate", hint=_FS_HINT)
        arr, names = _read_npy(p, ctx) if fmt == "npy" else _read_csv(p, ctx)
        file_fs, units = fs_arg, None
        # a CSV header fixes the orientation (columns are leads, already transposed)
        orient = names is None
    if not (math.isfinite(file_fs) and file_fs > 0):
        raise ctx.error(
            f"sampling rate must be a positive number of Hz, the file says {file_fs!r}",
            hint="fix the file header or re-export the recording",
        )
    if fs_arg is not None and not math.isclose(fs_arg, file_fs, rel_tol=1e-6):
        raise ctx.error(
            f"`signal_fs` says {fs_arg:g} Hz but the {fmt} file says {file_fs:g} Hz",
            hint="leave `signal_fs` empty for files that carry their own rate, or correct it",
        )

    arr = _as_leads_by_samples(arr, ctx, orient=fmt in ("npy", "csv") and orient)
    if names is None or len(names) != arr.shape[0]:
        names = [f"lead_{i}" for i in range(arr.shape[0])]
    arr, nan_fraction, nan_leads = _repair_missing(arr, names, ctx)

    n = int(arr.shape[1])
    meta: dict[str, Any] = {
        "fs": float(file_fs),
        "lead_names": list(names),
        "units": None if units is None else list(units),
        "format": fmt,
        "path": str(p),
        "n_samples": n,
        "n_leads": int(arr.shape[0]),
        "duration_s": n / float(file_fs),
        "nan_fraction": nan_fraction,
        "nan_leads": nan_leads,
    }
    return arr, meta


# --------------------------------------------------------------------------- checks


def _check_fs_argument(fs: Any, ctx: ErrorContext) -> float | None:
    """Turn the ``fs`` argument into a positive float or ``None`` (not given)."""
    if fs is None:
        return None
    try:
        value = float(fs)
    except (TypeError, ValueError) as e:
        raise ctx.error(f"`signal_fs` must be a number of Hz, got {fs!r}", hint=_FS_HINT) from e
    if math.isnan(value):
        return None
    if not (math.isfinite(value) and value > 0):
        raise ctx.error(
            f"`signal_fs` must be a positive number of Hz, got {fs!r}",
            hint="correct the `signal_fs` value for this case",
        )
    return value


def _detect_format(p: Path, ctx: ErrorContext) -> tuple[str, Path]:
    """Pick the reader from the file name; return the format and the file to read."""
    suffix = p.suffix.lower()
    if suffix in _SUFFIX_FORMATS:
        if not p.is_file():
            raise ctx.not_found(
                "signal file does not exist", p, hint="check the path in the manifest"
            )
        return _SUFFIX_FORMATS[suffix], p
    header = p.with_name(p.name + ".hea")
    if header.is_file():  # WFDB record given without extension
        return "wfdb", header
    if suffix == ".dat" and p.with_suffix(".hea").is_file():
        return "wfdb", p.with_suffix(".hea")
    if not p.exists():
        raise ctx.not_found(
            "signal file does not exist",
            p,
            hint="check the path in the manifest; a WFDB record needs its .hea file",
        )
    if p.is_file() and has_dicm_preamble(p):
        return "dicom_waveform", p
    raise ctx.error(
        f"unsupported signal file type {suffix or '(no extension)'!r}",
        hint="use a WFDB record (.hea), DICOM waveform (.dcm), EDF (.edf), .npy or .csv",
    )


def _as_leads_by_samples(arr: np.ndarray, ctx: ErrorContext, *, orient: bool) -> np.ndarray:
    """Check dtype and dims; return a ``(leads, samples)`` float64 array.

    ``orient`` applies the rows-versus-columns rule of ``.npy``/``.csv``
    files; the other readers already return ``(leads, samples)``.
    """
    if arr.dtype.kind not in "biuf":
        raise ctx.error(
            f"signal must hold real numbers, got dtype {arr.dtype}",
            hint="save a numeric array (e.g. float32)",
        )
    if arr.ndim == 1:
        arr = arr[None, :]
    elif arr.ndim == 2:
        if orient and arr.shape[0] > arr.shape[1]:
            arr = arr.T
    else:
        raise ctx.error(
            f"signal must be 1-D (samples) or 2-D (leads × samples), got shape {arr.shape}",
            hint="save one recording per file as a 2-D array",
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ctx.error(
            f"signal has no samples (shape {arr.shape})", hint="re-export the recording"
        )
    return np.asarray(arr, dtype=np.float64)


def _repair_missing(
    arr: np.ndarray, names: list[str], ctx: ErrorContext
) -> tuple[np.ndarray, float, list[str]]:
    """Interpolate gaps, zero whole-missing leads; error when nothing is left.

    Args:
        arr: ``(leads, samples)`` float64, may hold NaN/inf.
        names: one name per lead.
        ctx: error context.

    Returns:
        ``(signal, nan_fraction, nan_leads)`` with ``signal`` float32, finite.
    """
    bad = ~np.isfinite(arr)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return arr.astype(np.float32), 0.0, []
    empty = bad.all(axis=1)
    if empty.all():
        raise ctx.error(
            "every sample of every lead is missing (NaN/inf)",
            hint="re-export the recording or leave the `signal` cell empty for this case",
        )
    out = np.where(bad, 0.0, arr)
    idx = np.arange(arr.shape[1])
    for lead in np.flatnonzero(bad.any(axis=1) & ~empty):
        ok = ~bad[lead]
        out[lead, ~ok] = np.interp(idx[~ok], idx[ok], arr[lead, ok])
    nan_leads = [names[i] for i in np.flatnonzero(empty)]
    return out.astype(np.float32), n_bad / bad.size, nan_leads


# -------------------------------------------------------------------------- readers

_Read = tuple[np.ndarray, float, list[str] | None, list[str] | None]


def _read_wfdb(header: Path, ctx: ErrorContext) -> _Read:
    """Read a WFDB record in physical units. Returns ``(leads, samples)``."""
    import wfdb

    record_name = str(header.with_suffix(""))
    try:
        rec = wfdb.rdrecord(record_name, physical=True)
    except FileNotFoundError as e:
        missing = Path(e.filename) if e.filename else header.with_suffix(".dat")
        raise ctx.not_found(
            f"WFDB record is missing a file: {e}",
            missing,
            hint="copy the record's .dat file next to its .hea",
        ) from e
    except Exception as e:
        raise ctx.error(
            f"cannot read WFDB record: {type(e).__name__}: {e}",
            hint="the .hea/.dat pair may be corrupt or truncated; re-export the record",
        ) from e
    if rec.p_signal is None:
        raise ctx.error("WFDB record has no signal data", hint="re-export the record")
    arr = np.asarray(rec.p_signal).T
    names = [str(n) for n in rec.sig_name] if rec.sig_name else None
    units = [str(u) for u in rec.units] if rec.units else None
    return arr, float(rec.fs), names, units


_LEAD_RE = re.compile(r"^\s*lead\s+([^\s(]+)", re.IGNORECASE)


def _dicom_lead_name(channel: Any, i: int) -> str:
    """Short lead name of a DICOM channel: ``"Lead I (Einthoven)"`` → ``"I"``."""
    label = str(channel.get("ChannelLabel", "") or "").strip()
    if not label:
        source = channel.get("ChannelSourceSequence")
        label = str(source[0].get("CodeMeaning", "")).strip() if source else ""
    match = _LEAD_RE.match(label)
    if match:
        return match.group(1)
    return label or f"lead_{i}"


def _read_dicom_waveform(p: Path, ctx: ErrorContext) -> _Read:
    """Read the first multiplex group of a DICOM waveform, scaled by channel sensitivity."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(p)
    except InvalidDicomError as e:
        raise ctx.error(f"not a DICOM file: {e}", hint="export the ECG as a DICOM waveform") from e
    except Exception as e:
        raise ctx.error(
            f"cannot read DICOM file: {type(e).__name__}: {e}",
            hint="the file may be corrupt or truncated; re-export it",
        ) from e
    if not ds.get("WaveformSequence"):
        raise ctx.error(
            "DICOM file has no WaveformSequence (is it an image?)",
            hint="put DICOM images in the `image` column and waveforms in `signal`",
        )
    group = ds.WaveformSequence[0]
    try:
        arr = np.asarray(ds.waveform_array(0)).T
        file_fs = float(group.SamplingFrequency)
    except Exception as e:
        raise ctx.error(
            f"cannot decode DICOM waveform data: {type(e).__name__}: {e}",
            hint="the waveform data may be truncated; re-export it",
        ) from e
    channels = list(group.get("ChannelDefinitionSequence") or [])
    names = [_dicom_lead_name(c, i) for i, c in enumerate(channels)] or None
    units: list[str] | None = []
    for c in channels:
        seq = c.get("ChannelSensitivityUnitsSequence")
        units.append(str(seq[0].get("CodeValue", "")) if seq else "")  # type: ignore[union-attr]
    if not units or len(units) != arr.shape[0]:
        units = None
    return arr, file_fs, names, units


def _read_edf(p: Path, ctx: ErrorContext) -> _Read:
    """Read every signal of an EDF/EDF+/BDF file; they must share one sampling rate."""
    import pyedflib

    try:
        reader = pyedflib.EdfReader(str(p))
    except Exception as e:
        raise ctx.error(
            f"cannot read EDF file: {type(e).__name__}: {e}",
            hint="the file may be corrupt or truncated; re-export it",
        ) from e
    try:
        n = reader.signals_in_file
        names = [str(s).strip() for s in reader.getSignalLabels()]
        rates = [float(reader.getSampleFrequency(i)) for i in range(n)]
        units = [str(reader.getPhysicalDimension(i)).strip() for i in range(n)]
        if n == 0:
            raise ctx.error("EDF file holds no signals", hint="re-export the recording")
        if len(set(rates)) > 1:
            listing = ", ".join(
                f"{name}={rate:g} Hz" for name, rate in zip(names, rates, strict=True)
            )
            raise ctx.error(
                f"EDF channels have different sampling rates ({listing})",
                hint="resample all channels to one rate, or export only the channels that share one",
            )
        try:
            arr = np.stack([reader.readSignal(i) for i in range(n)])
        except Exception as e:
            raise ctx.error(
                f"cannot read EDF samples: {type(e).__name__}: {e}",
                hint="the file may be truncated; re-export it",
            ) from e
    finally:
        reader.close()
    return arr, rates[0], names, units


def _read_npy(p: Path, ctx: ErrorContext) -> tuple[np.ndarray, list[str] | None]:
    """Read a ``.npy`` array without pickle."""
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as e:
        raise ctx.error(
            f"cannot read .npy file: {type(e).__name__}: {e}",
            hint="save a numeric array with numpy.save (object arrays are not loaded)",
        ) from e
    return np.asarray(arr), None


_MISSING_TOKENS = {"", "nan", "na", "n/a", "null"}


def _is_number(token: str) -> bool:
    if token.strip().lower() in _MISSING_TOKENS:
        return True
    try:
        float(token)
    except ValueError:
        return False
    return True


TIME_COLUMNS = frozenset(
    {"time", "t", "timestamp", "time_s", "time (s)", "seconds", "sec", "time_ms", "ms", "sample"}
)
"""Header names (any case) of CSV columns that hold time stamps or sample numbers, not a lead:
they are dropped (the rate comes from ``signal_fs``)."""


def _read_csv(p: Path, ctx: ErrorContext) -> tuple[np.ndarray, list[str] | None]:
    """Read a numeric CSV; a non-numeric first row is a header of lead names (a column named
    as in :data:`TIME_COLUMNS` is time stamps and dropped).

    Empty cells (and ``nan``/``NA``) become NaN, later interpolated; any other
    non-numeric cell is an error naming its column and line.

    Returns:
        ``(values, names)``: with a header, values are ``(leads, samples)``
        and ``names`` the header; without, values are the table as written
        (rows × columns) and ``names`` is ``None``.
    """
    import pandas as pd

    try:
        raw = pd.read_csv(p, header=None, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as e:
        raise ctx.error("CSV file is empty", hint="re-export the recording") from e
    except Exception as e:
        raise ctx.error(
            f"cannot read CSV file: {type(e).__name__}: {e}",
            hint="write one lead per column, comma-separated, optional header row",
        ) from e
    if raw.shape[0] == 0:
        raise ctx.error("CSV file is empty", hint="re-export the recording")
    first = [str(v).strip() for v in raw.iloc[0]]
    has_header = not all(_is_number(v) for v in first)
    names = first if has_header else None
    body = raw.iloc[1:] if has_header else raw
    values = np.empty(body.shape, dtype=np.float64)
    for j in range(body.shape[1]):
        col = body.iloc[:, j].str.strip()
        num = pd.to_numeric(
            col.where(~col.str.lower().isin(_MISSING_TOKENS), "nan"), errors="coerce"
        )
        bad = (num.isna() & ~col.str.lower().isin(_MISSING_TOKENS)).to_numpy()
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            column = names[j] if names else str(j)
            raise ctx.error(
                f"CSV column {column!r} has a non-numeric value {col.iloc[k]!r} "
                f"on line {k + (2 if has_header else 1)}",
                hint="signals must be numbers; leave a cell empty for a missing sample",
            )
        values[:, j] = num.to_numpy(dtype=np.float64)
    if has_header:
        assert names is not None
        leads = [j for j, n in enumerate(names) if n.strip().lower() not in TIME_COLUMNS]
        if not leads:
            raise ctx.error(
                f"CSV columns {names} hold time stamps only, no lead",
                hint="write one lead per column beside (or without) the time column",
            )
        # a header names the columns: they are leads, except a column of time stamps
        return values[:, leads].T, [names[j] for j in leads]
    return values, None
