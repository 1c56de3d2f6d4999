"""Synthetic demo cohort: manifest + DICOM CT + ED notes + WFDB ECG + tabular values.

The generating process (documented precisely in ``docs/demo_cohort.md``):

1. Patients get a site, sex and birth date; about 10 % of them have two encounters
   (cases). Each case's outcome is ``y ~ Bernoulli(prevalence[site])``.
2. Each modality ``m`` gets a latent evidence score
   ``e_m = BETA[m] * (2 y - 1) + N(0, 1)``, independent across modalities given ``y``;
   ``BETA[m] = 0`` for a modality listed in ``uninformative``.
3. Each modality's content is rendered from its own ``e_m`` and from neutral
   randomness only: the CT lesion from ``e_image``, the findings of the note from
   ``e_note``, heart rate / ST depression / irregular rhythm of the ECG from
   ``e_signal``, and the labs and triage vitals from ``e_tabular``.
4. Image, note and signal files are dropped completely at random (default
   12 % / 10 % / 15 %), lab cells are partly NaN, and no case loses every modality.

:func:`simulate_latents` runs steps 1, 2 and the missingness draw without writing
files (fast, for statistical checks); :func:`synthesize_cohort` renders and writes
everything.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinfuse.errors import ConfigError
from clinfuse.synth.notes import FINDINGS, NoteContext, finding_probabilities, render_note

__all__ = [
    "BETA",
    "DEFAULT_MISSING",
    "MARKER_FILE",
    "SITES",
    "TABULAR_COLUMNS",
    "simulate_latents",
    "synthesize_cohort",
]

SYNTH_MODALITIES: tuple[str, ...] = ("image", "note", "signal", "tabular")

BETA: dict[str, float] = {"image": 0.50, "note": 0.47, "signal": 0.45, "tabular": 0.42}
"""Effect of the outcome on each modality's latent evidence.

``e_m = BETA[m] * (2 y - 1) + N(0, 1)`` gives a latent AUROC of ``Phi(sqrt(2) * BETA[m])``
(0.76 / 0.75 / 0.74 / 0.72) and, for the sum of all four, ``Phi(sqrt(2 * sum BETA**2))``
≈ 0.90.
"""

SITES: tuple[tuple[str, float, float, str], ...] = (
    ("site_a", 0.40, 0.20, "SYNTHETIC GENERAL HOSPITAL A"),
    ("site_b", 0.35, 0.35, "SYNTHETIC UNIVERSITY MEDICAL CENTER B"),
    ("site_c", 0.25, 0.50, "SYNTHETIC COMMUNITY HOSPITAL C"),
)
"""(site, share of patients, outcome prevalence, institution name in DICOM headers)."""

DEFAULT_MISSING: dict[str, float] = {"image": 0.12, "note": 0.10, "signal": 0.15, "tabular": 0.0}
"""Probability that a case's whole modality is missing (completely at random)."""

LAB_NAN_RATE: dict[str, float] = {
    "crp": 0.05,
    "wbc": 0.03,
    "lactate": 0.15,
    "heart_rate": 0.02,
    "sbp": 0.02,
}
"""Probability that one tabular cell is NaN (on top of a whole-tabular drop)."""

TABULAR_COLUMNS: tuple[str, ...] = ("age", "sex", "crp", "wbc", "lactate", "heart_rate", "sbp")
"""Tabular feature columns of the manifest (``age_band`` is a subgroup column)."""

REPEAT_FRACTION = 0.10
"""Share of patients with a second encounter."""

PHI_NOTE_RATE = 0.4
"""Share of notes that carry (fake) identifiers."""

MARKER_FILE = ".clinfuse_synth.json"
"""File that marks a folder as synth output (which may then be overwritten)."""

_STREAMS = {"image": 1, "note": 2, "signal": 3, "tabular": 4, "phi": 5}
_LEAD_GAINS: dict[str, float] = {
    "I": 0.7,
    "II": 1.0,
    "III": 0.45,
    "aVR": -0.8,
    "aVL": 0.3,
    "aVF": 0.7,
    "V1": -0.45,
    "V2": 0.6,
    "V3": 0.9,
    "V4": 1.1,
    "V5": 1.0,
    "V6": 0.8,
}
_PIXEL_SPACING_MM_AT_64 = 5.5
_SLICE_THICKNESS_MM = 5.0
_N_VOLUME_SLICES = 8


# --------------------------------------------------------------------------- latents


def _check_modalities(names: Sequence[str] | Mapping[str, Any], what: str) -> None:
    unknown = sorted(set(names) - set(SYNTH_MODALITIES))
    if unknown:
        raise ConfigError(
            f"unknown modality {unknown} in {what}; expected some of {list(SYNTH_MODALITIES)}",
            field=what,
        )


def _missing_rates(missing: float | Mapping[str, float] | None) -> dict[str, float]:
    rates = dict(DEFAULT_MISSING)
    if missing is None:
        return rates
    if isinstance(missing, Mapping):
        _check_modalities(missing, "missing")
        rates.update({k: float(v) for k, v in missing.items()})
    else:
        for m in ("image", "note", "signal"):
            rates[m] = float(missing)
    for m, r in rates.items():
        if not 0.0 <= r <= 1.0:
            raise ConfigError(
                f"missing rate of {m!r} is {r}; expected a probability in [0, 1]",
                field="missing",
            )
    return rates


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


DRIFT_CENTRE = _dt.date(2021, 1, 1)
"""The date at which a drifting cohort's event rate equals its sites' (``drift``)."""


def _check_shift(shift: tuple[_dt.date | str, float] | None) -> tuple[int | None, float]:
    """``shift`` as (ordinal day, odds ratio); a ConfigError naming what is wrong."""
    if shift is None:
        return None, 1.0
    when, ratio = shift
    try:
        day = _dt.date.fromisoformat(str(when)) if not isinstance(when, _dt.date) else when
    except ValueError:
        raise ConfigError(
            f"shift date {when!r} is not a date; write it as YYYY-MM-DD", field="shift_date"
        ) from None
    if not float(ratio) > 0:
        raise ConfigError(
            f"shift odds ratio must be positive, got {ratio!r} (2 doubles the odds)",
            field="shift_odds",
        )
    return day.toordinal(), float(ratio)


def simulate_latents(
    n_cases: int,
    seed: int = 0,
    *,
    uninformative: Sequence[str] = (),
    missing: float | Mapping[str, float] | None = None,
    drift: float = 0.0,
    shift: tuple[_dt.date | str, float] | None = None,
) -> pd.DataFrame:
    """Draw the cohort structure and the latent variables, without writing files.

    This is the first, file-free stage of :func:`synthesize_cohort` (which calls it
    with the same arguments), so statistics measured here hold for written cohorts.

    Args:
        n_cases: number of cases (encounters), ≥ 1.
        seed: random seed; the same seed gives the same table.
        uninformative: modalities whose evidence ignores the outcome (``BETA = 0``).
        missing: whole-modality missing rate; a float sets image, note and signal,
            a dict sets the named modalities; ``None`` uses :data:`DEFAULT_MISSING`.
        drift: yearly change of the outcome's log odds over the encounter dates (centred
            on :data:`DRIFT_CENTRE`; 0, the default, draws the same table as before it
            existed): a cohort whose event rate moves away from any model's risks over time.
        shift: ``(date, odds_ratio)``: from that encounter date on, the odds of the outcome
            are ``odds_ratio`` times what they were (a sudden change, as a new assay or
            coding rule would bring; None, the default, changes nothing).

    Returns:
        One row per case with ``case_id``, ``patient_id``, ``patient_index``,
        ``encounter`` (1 or 2), ``site``, ``label``, ``sex``, ``birth_date``,
        ``encounter_date``, ``age``, ``e_image``, ``e_note``, ``e_signal``,
        ``e_tabular`` and ``<modality>_missing`` (bool) for each modality.

    >>> lat = simulate_latents(100, seed=1)
    >>> sorted(set(lat["label"].tolist()))
    [0, 1]
    """
    if isinstance(n_cases, bool) or not isinstance(n_cases, int | np.integer) or n_cases < 1:
        raise ConfigError(f"n_cases must be a positive integer, got {n_cases!r}", field="n_cases")
    _check_modalities(uninformative, "uninformative")
    rates = _missing_rates(missing)
    shift_day, shift_odds = _check_shift(shift)
    rng = np.random.default_rng([int(seed), 0])
    n = int(n_cases)

    # Patients and encounters.
    n_patients = max(1, round(n / (1.0 + REPEAT_FRACTION)))
    n_repeat = n - n_patients
    repeaters = rng.choice(n_patients, size=n_repeat, replace=False)
    owner = np.concatenate([np.arange(n_patients), repeaters])
    encounter = np.concatenate([np.ones(n_patients, int), np.full(n_repeat, 2)])
    order = rng.permutation(n)
    owner, encounter = owner[order], encounter[order]
    # Number patients in order of first appearance; keep first encounter first.
    first_seen: dict[int, int] = {}
    for p in owner:
        first_seen.setdefault(int(p), len(first_seen))
    pnum = np.array([first_seen[int(p)] for p in owner])
    seen: set[int] = set()
    for i, p in enumerate(pnum):
        encounter[i] = 2 if int(p) in seen else 1
        seen.add(int(p))

    site_names = [s[0] for s in SITES]
    site_share = np.array([s[1] for s in SITES])
    prevalence = np.array([s[2] for s in SITES])
    p_site = rng.choice(len(SITES), size=n_patients, p=site_share / site_share.sum())
    p_female = rng.random(n_patients) < 0.5
    # Age and sex weakly related: women 3 years older on average.
    p_age = np.clip(rng.normal(58.0, 17.0, n_patients) + 3.0 * p_female, 18, 92)
    base = _dt.date(2019, 1, 1).toordinal()
    p_first_day = base + rng.integers(0, 5 * 365 - 700, n_patients)
    p_birth_day = p_first_day - (p_age * 365.25).astype(int) - rng.integers(0, 365, n_patients)
    gap = rng.integers(30, 700, n)

    site_idx = p_site[pnum]
    day = p_first_day[pnum] + np.where(encounter == 2, gap, 0)
    chance = prevalence[site_idx]
    if drift:
        years = (day - DRIFT_CENTRE.toordinal()) / 365.25
        lp = np.log(chance / (1 - chance)) + float(drift) * years
        chance = 1 / (1 + np.exp(-lp))
    if shift_day is not None:
        odds = chance / (1 - chance) * np.where(day >= shift_day, shift_odds, 1.0)
        chance = odds / (1 + odds)
    label = (rng.random(n) < chance).astype(int)
    birth = p_birth_day[pnum]
    enc_date = [_dt.date.fromordinal(int(d)) for d in day]
    birth_date = [_dt.date.fromordinal(int(d)) for d in birth]
    age = [_age_on(b, d) for b, d in zip(birth_date, enc_date, strict=True)]

    width = max(4, len(str(n)))
    df = pd.DataFrame(
        {
            "case_id": [f"case{i + 1:0{width}d}" for i in range(n)],
            "patient_id": [f"PT{p + 1:0{width}d}" for p in pnum],
            "patient_index": pnum + 1,
            "encounter": encounter,
            "site": [site_names[s] for s in site_idx],
            "label": label,
            "sex": np.where(p_female[pnum], "F", "M"),
            "birth_date": birth_date,
            "encounter_date": enc_date,
            "age": age,
        }
    )
    sign = 2.0 * label - 1.0
    for m in SYNTH_MODALITIES:
        beta = 0.0 if m in uninformative else BETA[m]
        df[f"e_{m}"] = beta * sign + rng.standard_normal(n)

    drop = np.column_stack([rng.random(n) < rates[m] for m in SYNTH_MODALITIES])
    rescue = rng.integers(0, len(SYNTH_MODALITIES), n)
    all_gone = drop.all(axis=1)
    drop[all_gone, rescue[all_gone]] = False
    for j, m in enumerate(SYNTH_MODALITIES):
        df[f"{m}_missing"] = drop[:, j]
    return df


def _age_on(birth: _dt.date, day: _dt.date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _age_band(age: float) -> str:
    if age < 40:
        return "18-39"
    if age < 65:
        return "40-64"
    if age < 80:
        return "65-79"
    return "80+"


def _case_rng(seed: int, index: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index) + 1, _STREAMS[stream]])


# --------------------------------------------------------------------------- image


def _ct_slice(
    size: int, anatomy: dict[str, float], rng: np.random.Generator, z: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One axial chest-like CT slice in HU, with soft-tissue and bone masks.

    Args:
        size: rows = columns.
        anatomy: per-case shape parameters (body and lung semi-axes, offsets).
        rng: noise generator.
        z: slice offset in [-1, 1]; lungs grow slightly with z.

    Returns:
        ``hu: (size, size) float``, ``soft: (size, size) bool`` (plain soft tissue),
        ``bone: (size, size) bool``.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    u = (xx + 0.5) / size - 0.5 - anatomy["dx"]
    v = (yy + 0.5) / size - 0.5 - anatomy["dy"]
    ax, ay = anatomy["body_ax"], anatomy["body_ay"]
    r_body = np.sqrt((u / ax) ** 2 + (v / ay) ** 2)
    body = r_body <= 1.0
    fat = body & (r_body > 0.9)
    hu = np.full((size, size), -1000.0)
    hu[body] = 40.0
    hu[fat] = -100.0
    lung_scale = 1.0 + 0.06 * z
    lax, lay = anatomy["lung_ax"] * lung_scale, anatomy["lung_ay"] * lung_scale
    lungs = np.zeros_like(body)
    for side in (-1.0, 1.0):
        lungs |= ((u - side * anatomy["lung_dx"]) / lax) ** 2 + ((v - 0.01) / lay) ** 2 <= 1.0
    hu[lungs] = -800.0 + 40.0 * rng.standard_normal(int(lungs.sum()))
    # Ribs: bone segments on a ring just inside the fat layer; spine posteriorly.
    theta = np.arctan2(v / ay, u / ax)
    ribs = (r_body > 0.8) & (r_body <= 0.87) & (np.cos(9.0 * theta + anatomy["rib_phase"]) > 0.2)
    spine = (u / 0.055) ** 2 + ((v - 0.75 * ay) / 0.055) ** 2 <= 1.0
    cortex = spine & ((u / 0.04) ** 2 + ((v - 0.75 * ay) / 0.04) ** 2 > 1.0)
    bone = ribs | spine
    hu[ribs] = 700.0
    hu[spine] = 250.0
    hu[cortex] = 900.0
    soft = body & ~fat & ~lungs & ~bone
    hu += 12.0 * rng.standard_normal(hu.shape)
    return hu, soft, bone


def _lesion_disc(size: int, row: float, col: float, radius: float) -> np.ndarray:
    """Lesion profile: 1 inside, gaussian (erf) edge of 0.7 px, 0 outside."""
    from scipy.special import erfc

    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    d = np.sqrt((yy - row) ** 2 + (xx - col) ** 2)
    return 0.5 * erfc((d - radius) / (0.7 * np.sqrt(2.0)))


def _render_image(
    e: float, rng: np.random.Generator, size: int, n_slices: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """CT slice(s) whose lesion depends on the image evidence ``e``.

    Returns:
        ``hu: (n_slices, size, size) float`` and the lesion truth.
    """
    from scipy.ndimage import distance_transform_edt

    anatomy = {
        "dx": rng.normal(0.0, 0.01),
        "dy": rng.normal(0.0, 0.01),
        "body_ax": rng.uniform(0.40, 0.45),
        "body_ay": rng.uniform(0.30, 0.34),
        "lung_ax": rng.uniform(0.09, 0.11),
        "lung_ay": rng.uniform(0.14, 0.17),
        "lung_dx": rng.uniform(0.19, 0.21),
        "rib_phase": rng.uniform(0.0, 2 * np.pi),
    }
    present = bool(rng.random() < _sigmoid(4.0 * (e + 0.2)))
    radius = float(np.clip(0.05 + 0.012 * (e - 0.3) + rng.normal(0, 0.004), 0.035, 0.075)) * size
    contrast = float(np.clip(85.0 + 20.0 * (e - 0.3) + rng.normal(0, 5.0), 60.0, 120.0))
    centre = (n_slices - 1) / 2.0
    zs = [(k - centre) / max(centre, 1.0) for k in range(n_slices)]
    slices, softs, bones = zip(*(_ct_slice(size, anatomy, rng, z) for z in zs), strict=True)
    hu = np.stack(slices)
    truth: dict[str, Any] = {
        "lesion_present": present,
        "lesion_row": np.nan,
        "lesion_col": np.nan,
        "lesion_radius_px": np.nan,
        "lesion_contrast_hu": np.nan,
        "lesion_slice": np.nan,
    }
    if not present:
        return hu, truth
    k0 = n_slices // 2
    soft, bone = softs[k0], bones[k0]
    d_soft = distance_transform_edt(soft)
    d_bone = distance_transform_edt(~bone)
    valid = (d_soft >= radius + 1.5) & (d_bone >= radius + 5.0)
    if not valid.any():
        room = np.minimum(d_soft - 1.5, d_bone - 5.0)
        radius = float(max(1.5, room.max()))
        valid = room >= room.max() - 1e-9
    cand = np.argwhere(valid)
    row, col = (float(c) for c in cand[int(rng.integers(len(cand)))])
    row += rng.uniform(-0.3, 0.3)
    col += rng.uniform(-0.3, 0.3)
    spacing = _PIXEL_SPACING_MM_AT_64 * 64 / size
    for k in range(n_slices):
        dz_px = (k - k0) * _SLICE_THICKNESS_MM / spacing
        r_k = radius**2 - dz_px**2
        if r_k > 0.25:
            hu[k] += contrast * _lesion_disc(size, row, col, float(np.sqrt(r_k)))
    truth.update(
        lesion_row=round(row, 2),
        lesion_col=round(col, 2),
        lesion_radius_px=round(radius, 2),
        lesion_contrast_hu=round(contrast, 1),
        lesion_slice=k0,
    )
    return hu, truth


def _write_dicom_series(
    folder_or_file: Path,
    hu: np.ndarray,
    *,
    seed: int,
    row: Mapping[str, Any],
    institution: str,
    as_series: bool,
) -> None:
    """Write ``hu: (S, H, W)`` as CT Image Storage files (one file, or a series folder)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        UID,
        CTImageStorage,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    cid = str(row["case_id"])

    def uid(*parts: str) -> UID:
        return generate_uid(entropy_srcs=["clinfuse-synth", str(seed), cid, *parts])

    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    n_slices, size = hu.shape[0], hu.shape[1]
    spacing = round(_PIXEL_SPACING_MM_AT_64 * 64 / size, 4)
    date = row["encounter_date"].strftime("%Y%m%d")
    pidx = int(row["patient_index"])
    z0 = -150.0 - 2.5 * (int(row["patient_index"]) % 7)
    stored = (np.clip(np.rint(hu), -1024, 3071) + 1024).astype(np.int16)
    if as_series:
        folder_or_file.mkdir(parents=True)
    for k in range(n_slices):
        sop_uid = uid("sop", str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{8 + pidx % 12:02d}{pidx % 60:02d}00"
        ds.AccessionNumber = f"ACC{pidx:06d}{int(row['encounter'])}"
        ds.Modality = "CT"
        ds.Manufacturer = "clinfuse synth"
        ds.InstitutionName = institution
        ds.ReferringPhysicianName = "SYNTH^REFERRER"
        ds.StudyDescription = "CT CHEST W CONTRAST (SYNTHETIC)"
        ds.SeriesDescription = "AXIAL 5MM"
        ds.PatientName = f"SYNTH^PATIENT{pidx:04d}"
        ds.PatientID = _mrn(pidx)
        ds.PatientBirthDate = row["birth_date"].strftime("%Y%m%d")
        ds.PatientSex = str(row["sex"])
        ds.PatientAge = f"{int(row['age']):03d}Y"
        ds.BurnedInAnnotation = "NO"
        ds.KVP = 120
        ds.SliceThickness = _SLICE_THICKNESS_MM
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = f"{pidx:04d}"
        ds.SeriesNumber = 2
        ds.InstanceNumber = k + 1
        z = round(z0 + k * _SLICE_THICKNESS_MM, 2)
        corner = round(-spacing * (size - 1) / 2, 4)  # centre of the first pixel
        ds.ImagePositionPatient = [corner, corner, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_uid
        ds.SliceLocation = z
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [spacing, spacing]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.PixelData = stored[k].tobytes()
        path = folder_or_file / f"slice{k + 1:03d}.dcm" if as_series else folder_or_file
        ds.save_as(path, enforce_file_format=True)


def _mrn(patient_index: int) -> str:
    return f"{7300000 + patient_index * 37:08d}"


# --------------------------------------------------------------------------- signal


@functools.lru_cache(maxsize=1)
def _ecg_template() -> tuple[np.ndarray, np.ndarray]:
    """One averaged PQRST beat from neurokit2's ECGSYN model at 60 bpm.

    Returns:
        ``t: (K,)`` seconds relative to the R peak (−0.35 … 0.65) and ``beat: (K,)`` mV.
    """
    import neurokit2 as nk
    from scipy.signal import find_peaks

    fs = 500
    ecg = np.asarray(
        nk.ecg_simulate(
            duration=12,
            sampling_rate=fs,
            heart_rate=60,
            heart_rate_std=1,
            method="ecgsyn",
            noise=0.0,
            random_state=7,
        ),
        dtype=float,
    )
    peaks, _ = find_peaks(ecg, height=0.6 * ecg.max(), distance=int(0.5 * fs))
    pre, post = int(0.35 * fs), int(0.65 * fs)
    beats = [ecg[p - pre : p + post] for p in peaks if p - pre >= 0 and p + post <= len(ecg)]
    beat = np.mean(beats, axis=0)
    beat -= np.median(beat[: int(0.1 * fs)])
    taper = np.ones_like(beat)
    ramp = int(0.03 * fs)
    taper[:ramp] = np.linspace(0, 1, ramp)
    taper[-ramp:] = np.linspace(1, 0, ramp)
    t = (np.arange(len(beat)) - pre) / fs
    return t, beat * taper


def _render_signal(
    e: float, rng: np.random.Generator, fs: int, seconds: float, leads: Sequence[str]
) -> tuple[np.ndarray, dict[str, Any]]:
    """ECG leads whose rate, ST segment and rhythm depend on the signal evidence ``e``.

    Returns:
        ``sig: (T, L) float`` in mV and the signal truth.
    """
    t_tpl, tpl = _ecg_template()
    n = round(seconds * fs)
    t = np.arange(n) / fs
    hr = float(np.clip(76.0 + 13.0 * e + rng.normal(0, 5.0), 45.0, 165.0))
    st = float(-np.clip(0.07 * e + rng.normal(0, 0.01), 0.0, 0.3))
    irregular = bool(rng.random() < _sigmoid(2.5 * (e - 1.5)))
    rr_mean = 60.0 / hr
    n_beats = int(np.ceil((seconds + 1.0) / (rr_mean * 0.6))) + 2
    jitter = 0.18 if irregular else 0.03
    rr = rr_mean * np.clip(1.0 + jitter * rng.standard_normal(n_beats), 0.5, 1.8)
    r_times = rng.uniform(0.05, rr_mean) + np.concatenate([[0.0], np.cumsum(rr[:-1])])
    beat_sum = np.zeros(n)
    for r_t, rr_i in zip(r_times, rr, strict=True):
        if r_t > seconds + 0.5:
            break
        lo, hi = np.searchsorted(t, [r_t - 0.45, r_t + 0.9])
        if hi <= lo:
            continue
        rel = t[lo:hi] - r_t
        c = float(np.clip(np.sqrt(rr_i), 0.55, 1.25))
        cp = float(np.clip(rr_i**0.3, 0.75, 1.1))
        warped = np.where(
            rel > 0.06,
            0.06 + (rel - 0.06) / c,
            np.where(rel < -0.05, -0.05 + (rel + 0.05) / cp, rel),
        )
        wave = np.interp(warped, t_tpl, tpl, left=0.0, right=0.0)
        if irregular:  # no P waves in an irregular rhythm
            wave = np.where(warped < -0.06, 0.0, wave)
        st_shape = _sigmoid((rel - 0.05) / 0.01) * _sigmoid((0.05 + 0.2 * c - rel) / 0.025)
        beat_sum[lo:hi] += wave + st * st_shape
    if irregular:  # fibrillatory baseline
        beat_sum += 0.04 * np.sin(2 * np.pi * rng.uniform(4.0, 7.0) * t + rng.uniform(0, 6.3))
    sig = np.empty((n, len(leads)))
    for j, lead in enumerate(leads):
        gain = _LEAD_GAINS.get(lead, 1.0)
        wander = rng.uniform(0.03, 0.15) * np.sin(
            2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 2 * np.pi)
        )
        sig[:, j] = gain * beat_sum + wander + 0.02 * rng.standard_normal(n)
    truth = {
        "ecg_heart_rate": round(hr, 1),
        "ecg_st_deviation_mv": round(st, 3) + 0.0,  # no "-0.0" in truth.csv
        "ecg_irregular": irregular,
    }
    return sig, truth


def _lead_names(n_leads: int) -> list[str]:
    names = list(_LEAD_GAINS)
    if n_leads <= 2:
        return ["I", "II"][:n_leads]
    return names[:n_leads]


# --------------------------------------------------------------------------- tabular


def _render_tabular(e: float, rng: np.random.Generator) -> dict[str, float]:
    """Labs and triage vitals from the tabular evidence ``e`` (before NaN cells)."""
    z = rng.standard_normal(5)
    return {
        "crp": round(float(np.exp(2.5 + 0.7 * e + 0.35 * z[0])), 1),
        "wbc": round(float(np.clip(9.5 + 2.5 * e + 1.2 * z[1], 1.5, 40.0)), 1),
        "lactate": round(float(np.exp(0.3 + 0.25 * e + 0.2 * z[2])), 1),
        "heart_rate": float(round(np.clip(88.0 + 9.0 * e + 8.0 * z[3], 40, 180))),
        "sbp": float(round(np.clip(125.0 - 8.0 * e + 12.0 * z[4], 70, 210))),
    }


# --------------------------------------------------------------------------- writer


def _prepare_target(out: Path) -> None:
    """Raise ConfigError unless ``out`` may be (re)written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(
            "output path exists and is not a folder",
            path=out,
            hint="choose a new folder for the synthetic cohort",
        )
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER_FILE).is_file():
        raise ConfigError(
            "output folder is not empty and is not a previous synth cohort; refusing to overwrite it",
            path=out,
            hint="choose a new or empty folder, or delete this one yourself",
        )


def synthesize_cohort(
    out: str | Path,
    n_cases: int = 400,
    seed: int = 0,
    *,
    uninformative: Sequence[str] = (),
    image_size: int = 64,
    signal_fs: int = 100,
    signal_seconds: float = 10.0,
    n_leads: int = 2,
    missing: float | dict[str, float] | None = None,
    volumes: bool = False,
    progress: Callable[[int, int], None] | None = None,
    encounter_dates: bool = False,
    drift: float = 0.0,
    shift: tuple[_dt.date | str, float] | None = None,
) -> Path:
    """Write a synthetic multimodal demo cohort in real file formats.

    Layout under ``out``: ``manifest.csv``, ``images/<case_id>.dcm`` (or a folder
    of slices with ``volumes=True``), ``notes/<case_id>.txt``,
    ``signals/<case_id>.hea/.dat``, ``truth.csv`` (latent variables, not for
    training) and ``README.md``. The cohort is built in a temporary folder next to
    ``out`` and renamed into place, so an interrupted run never leaves a cohort that
    looks complete. The same arguments give byte-identical files.

    Args:
        out: target folder; must be absent, empty, or a previous synth output.
        n_cases: number of cases (encounters).
        seed: random seed (also seeds the DICOM UIDs).
        uninformative: modalities whose content is independent of the outcome.
        image_size: CT rows = columns (≥ 32).
        signal_fs: ECG sampling rate in Hz (≥ 50).
        signal_seconds: ECG length in seconds (≥ 2).
        n_leads: number of ECG leads (1–12; I, II, III, aVR, ...).
        missing: whole-modality missing rates (see :func:`simulate_latents`).
        volumes: write each image as a folder of 8 slices of one CT series.
        progress: called as ``progress(done, total)`` after each case.
        encounter_dates: add the manifest column ``encounter_date`` (ISO dates, 2019–2023,
            the dates the notes and DICOM studies carry): a date for ``clinfuse evaluate
            --time-column``, and for ``clinfuse deid --date-columns`` to shift.
        drift: the outcome's log odds change by this much per year of encounter date
            (:func:`simulate_latents`); implies ``encounter_dates``.
        shift: ``(date, odds_ratio)``: a sudden change of the outcome's odds from that
            encounter date on (:func:`simulate_latents`); implies ``encounter_dates``.

    Returns:
        Path of ``out/manifest.csv``.

    Raises:
        ConfigError: bad argument, or ``out`` is a non-empty folder that synth
            did not write.

    >>> manifest = synthesize_cohort("demo_cohort", n_cases=40, seed=0)  # doctest: +SKIP
    """
    given = Path(out)
    out = given.resolve()
    if image_size < 32:
        raise ConfigError(f"image_size must be ≥ 32, got {image_size}", field="image_size")
    if signal_fs < 50:
        raise ConfigError(f"signal_fs must be ≥ 50 Hz, got {signal_fs}", field="signal_fs")
    if signal_seconds < 2:
        raise ConfigError(
            f"signal_seconds must be ≥ 2, got {signal_seconds}", field="signal_seconds"
        )
    if not 1 <= n_leads <= len(_LEAD_GAINS):
        raise ConfigError(f"n_leads must be in 1..12, got {n_leads}", field="n_leads")
    _prepare_target(out)
    lat = simulate_latents(
        n_cases,
        seed,
        uninformative=uninformative,
        missing=missing,
        drift=float(drift),
        shift=shift,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cohort is an ordinary folder
    try:
        _write_cohort(
            tmp,
            lat,
            seed=int(seed),
            uninformative=tuple(uninformative),
            image_size=int(image_size),
            signal_fs=int(signal_fs),
            signal_seconds=float(signal_seconds),
            n_leads=int(n_leads),
            rates=_missing_rates(missing),
            volumes=volumes,
            progress=progress,
            dated=(
                {"drift": float(drift)}
                | ({"shift": [str(shift[0]), float(shift[1])]} if shift else {})
                if encounter_dates or drift or shift
                else None
            ),
        )
        _prepare_target(out)  # re-check: the folder may have changed meanwhile
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "cohort")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return given / "manifest.csv"


def _write_cohort(
    root: Path,
    lat: pd.DataFrame,
    *,
    seed: int,
    uninformative: tuple[str, ...],
    image_size: int,
    signal_fs: int,
    signal_seconds: float,
    n_leads: int,
    rates: dict[str, float],
    volumes: bool,
    progress: Callable[[int, int], None] | None,
    dated: dict[str, Any] | None = None,
) -> None:
    import wfdb

    for sub in ("images", "notes", "signals"):
        (root / sub).mkdir()
    institutions = {s[0]: s[3] for s in SITES}
    leads = _lead_names(n_leads)
    n_slices = _N_VOLUME_SLICES if volumes else 1
    rows: list[dict[str, Any]] = []
    truths: list[dict[str, Any]] = []
    total = len(lat)
    for i, r in enumerate(lat.to_dict(orient="records")):
        cid = str(r["case_id"])
        rec: dict[str, Any] = {
            "case_id": cid,
            "patient_id": r["patient_id"],
            "label": int(r["label"]),
            "site": r["site"],
            "encounter_date": str(r["encounter_date"]),
            "image": "",
            "note": "",
            "signal": "",
        }
        truth: dict[str, Any] = {
            "case_id": cid,
            "patient_id": r["patient_id"],
            "label": int(r["label"]),
            "site": r["site"],
            **{f"e_{m}": round(float(r[f"e_{m}"]), 6) for m in SYNTH_MODALITIES},
            **{f"{m}_missing": bool(r[f"{m}_missing"]) for m in SYNTH_MODALITIES},
        }
        dropped = [m for m in SYNTH_MODALITIES if r[f"{m}_missing"]]
        truth["dropped"] = ";".join(dropped)

        # Image.
        img_truth: dict[str, Any] = {}
        if not r["image_missing"]:
            hu, img_truth = _render_image(
                float(r["e_image"]), _case_rng(seed, i, "image"), image_size, n_slices
            )
            rel = f"images/{cid}" if volumes else f"images/{cid}.dcm"
            _write_dicom_series(
                root / rel,
                hu,
                seed=seed,
                row=r,
                institution=institutions[str(r["site"])],
                as_series=volumes,
            )
            rec["image"] = rel
        truth.update(
            {
                k: img_truth.get(k, np.nan)
                for k in (
                    "lesion_present",
                    "lesion_row",
                    "lesion_col",
                    "lesion_radius_px",
                    "lesion_contrast_hu",
                    "lesion_slice",
                )
            }
        )

        # Note.
        findings: list[str] = []
        phi: list[str] = []
        if not r["note_missing"]:
            nrng = _case_rng(seed, i, "note")
            probs = finding_probabilities(float(r["e_note"]))
            findings = [f.name for f in FINDINGS if nrng.random() < probs[f.name]]
            prng = _case_rng(seed, i, "phi")
            pidx = int(r["patient_index"])
            ctx = NoteContext(
                age=int(r["age"]),
                sex=str(r["sex"]),
                findings=frozenset(findings),
                patient_name=_fake_name(pidx),
                mrn=_mrn(pidx),
                encounter_date=r["encounter_date"],
                include_phi=bool(prng.random() < PHI_NOTE_RATE),
            )
            text = render_note(ctx, nrng)
            phi = ctx.phi
            rel = f"notes/{cid}.txt"
            (root / rel).write_text(text, encoding="utf-8")
            rec["note"] = rel
        truth["note_findings"] = ";".join(findings)
        truth["note_phi"] = "|".join(phi)

        # Signal.
        sig_truth: dict[str, Any] = {}
        if not r["signal_missing"]:
            sig, sig_truth = _render_signal(
                float(r["e_signal"]), _case_rng(seed, i, "signal"), signal_fs, signal_seconds, leads
            )
            wfdb.wrsamp(
                cid,
                fs=signal_fs,
                units=["mV"] * len(leads),
                sig_name=leads,
                p_signal=sig,
                fmt=["16"] * len(leads),
                adc_gain=[1000.0] * len(leads),  # 1 µV resolution, as in PTB-XL
                baseline=[0] * len(leads),
                comments=["synthetic ECG (clinfuse synth)"],
                write_dir=str(root / "signals"),
            )
            rec["signal"] = f"signals/{cid}.hea"
        for k in ("ecg_heart_rate", "ecg_st_deviation_mv", "ecg_irregular"):
            truth[k] = sig_truth.get(k, np.nan)

        # Tabular.
        trng = _case_rng(seed, i, "tabular")
        tab = _render_tabular(float(r["e_tabular"]), trng)
        nan_draw = trng.random(len(LAB_NAN_RATE))
        for (col, p), u in zip(LAB_NAN_RATE.items(), nan_draw, strict=True):
            if u < p:
                tab[col] = np.nan
        if r["tabular_missing"]:
            rec.update({c: np.nan for c in TABULAR_COLUMNS})
            rec["age_band"] = ""
        else:
            rec.update({"age": int(r["age"]), "sex": r["sex"], **tab})
            rec["age_band"] = _age_band(int(r["age"]))
        rows.append(rec)
        truths.append(truth)
        if progress is not None:
            progress(i + 1, total)

    manifest = pd.DataFrame(rows)
    for col in ("age", "heart_rate", "sbp"):
        manifest[col] = pd.array(manifest[col], dtype="Int64")
    manifest = manifest[
        [
            "case_id",
            "patient_id",
            "label",
            "site",
            *(["encounter_date"] if dated is not None else []),
            "image",
            "note",
            "signal",
            *TABULAR_COLUMNS,
            "age_band",
        ]
    ]
    manifest.to_csv(root / "manifest.csv", index=False, lineterminator="\n")
    pd.DataFrame(truths).to_csv(root / "truth.csv", index=False, lineterminator="\n")
    params = {
        "generator": "clinfuse.synth",
        "n_cases": len(lat),
        "seed": seed,
        "uninformative": list(uninformative),
        "image_size": image_size,
        "signal_fs": signal_fs,
        "signal_seconds": signal_seconds,
        "n_leads": n_leads,
        "missing": rates,
        "volumes": volumes,
        "beta": {m: (0.0 if m in uninformative else BETA[m]) for m in SYNTH_MODALITIES},
    }
    if dated is not None:  # only then: a default cohort's files stay byte-identical
        params |= {"encounter_dates": True} | dated
    (root / "README.md").write_text(_readme(params), encoding="utf-8")
    (root / MARKER_FILE).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")


def _fake_name(patient_index: int) -> str:
    from clinfuse.synth.notes import FAKE_FIRST_NAMES, FAKE_SURNAMES

    first = FAKE_FIRST_NAMES[(patient_index * 7) % len(FAKE_FIRST_NAMES)]
    last = FAKE_SURNAMES[(patient_index * 3) % len(FAKE_SURNAMES)]
    return f"{first} {last}"


def _readme(params: dict[str, Any]) -> str:
    beta = ", ".join(f"{m} {b:.2f}" for m, b in params["beta"].items())
    miss = ", ".join(f"{m} {r:.0%}" for m, r in params["missing"].items())
    sites = ", ".join(f"{s} (prevalence {p:.2f})" for s, _, p, _ in SITES)
    return f"""# Synthetic demo cohort (clinfuse synth)

**All data here is synthetic.** Names, MRNs, dates and phone numbers are fake and
exist only to exercise de-identification.

Generated by `clinfuse.synth.synthesize_cohort` with n_cases={params["n_cases"]},
seed={params["seed"]}, image_size={params["image_size"]},
signal_fs={params["signal_fs"]} Hz, signal_seconds={params["signal_seconds"]},
n_leads={params["n_leads"]}, volumes={params["volumes"]},
uninformative={params["uninformative"]}.

## Generating process
- Sites: {sites}; outcome `label` ~ Bernoulli(site prevalence).
  About 10 % of patients have two encounters (same `patient_id`).
- Each modality m has a latent evidence e_m = beta_m * (2*label - 1) + N(0, 1),
  independent across modalities given the label; beta: {beta}.
- `images/`: DICOM CT slices (HU = stored - 1024); a round soft-tissue lesion
  (+60..120 HU) whose presence, size and contrast grow with e_image.
- `notes/`: ED/admission notes; findings (fever, productive cough, dyspnea,
  pleuritic pain, crackles, tachypnea, hypoxia) are mentioned with probabilities
  that grow with e_note; everything else is neutral filler.
- `signals/`: WFDB ECG records (mV); heart rate, ST depression and an irregular
  rhythm grow with e_signal.
- Tabular columns `crp`, `wbc`, `lactate`, `heart_rate`, `sbp` follow e_tabular;
  `age`, `sex` are demographics independent of the label; `age_band` is a subgroup column.
- Whole modalities missing completely at random: {miss}; some lab cells are NaN;
  no case loses every modality.
- `truth.csv` holds the latent variables (e_m, lesion position, findings, drop
  flags); it is for checking explanations, never for training.

See `docs/demo_cohort.md` in the clinfuse repository for the exact process.
"""
