"""De-identification: DICOM profile speed against the reference package, a whole cohort,
and burned-in text removal.

* ``dicom_files_per_s``: :class:`privacy.dicom.DicomDeidentifier` on every readable DICOM
  file that ships with pydicom (in memory, a fresh copy per file), side by side with
  ``dicomanonymizer.anonymize_dataset`` — the package whose rule table clinfuse reads — on the
  same datasets in the same process (baseline). clinfuse does more per file (keyed UIDs and
  dummies, date shifts, the identifier list for the residual-risk scan, the marking
  attributes), so the ratio says what that costs.
* ``cohort_cases_per_s``: ``clinfuse deid`` on a synthetic cohort (DICOM, notes, WFDB,
  manifest, residual-risk scan), wall time per case; the first de-identification of the
  process, so it pays the note de-identifier's start-up (presidio) as a one-off run does.
* ``cohort_workers_cases_per_s``: the same cohort with ``workers=2`` (cases in two worker
  processes) against ``workers=1`` (baseline), both after that first run; the outputs are
  compared file by file (``identical_output``).
* ``pixel_seconds_per_image``: Clean Pixel Data (OCR, ``all-text``) on pydicom's three
  ultrasound samples, with the OCR readings of a pass run in parallel (one Tesseract process
  per core) against one at a time (baseline).
* ``pixel_cohort_seconds_per_image``: a 4-case cohort of ultrasound images (the RGB and
  the 30-frame YBR samples, twice) de-identified with ``all-text`` pixel cleaning,
  ``workers=2`` (one case per worker, one Tesseract process each) against ``workers=1``
  (baseline: one case at a time, its OCR readings in parallel).
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import warnings
from pathlib import Path

from benchmarks._common import Context, log, synth_cohort, timer

SECRET = b"benchmark-secret-0123456789abcdef"


def _pydicom_datasets() -> list:
    """pydicom's test files that both clinfuse and dicom-anonymizer process (the collection
    holds deliberately malformed files; those are named on stderr and left out)."""
    import pydicom
    from dicomanonymizer import anonymize_dataset
    from pydicom.data import get_testdata_files

    from privacy.dicom import DicomDeidentifier
    from privacy.pseudonym import Pseudonymizer

    deid = DicomDeidentifier(Pseudonymizer(SECRET))
    usable, skipped = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in sorted(get_testdata_files("*.dcm")):
            try:
                ds = pydicom.dcmread(f)
                deid.deidentify_dataset(ds, patient_key="P")
                anonymize_dataset(copy.deepcopy(ds))
            except Exception as e:  # noqa: BLE001 - any failure leaves the file out, named
                skipped.append(f"{Path(f).name} ({type(e).__name__})")
            else:
                usable.append(ds)
    if skipped:
        log(f"deid: {len(skipped)} sample file(s) left out: {', '.join(skipped)}")
    return usable


def _dicom_speed(ctx: Context) -> None:
    from dicomanonymizer import anonymize_dataset

    from privacy.dicom import DicomDeidentifier, DicomOptions
    from privacy.pseudonym import Pseudonymizer

    datasets = _pydicom_datasets()
    repeats = 1 if ctx.quick else 5
    deid = DicomDeidentifier(Pseudonymizer(SECRET), DicomOptions(retain_longitudinal=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with timer() as t:
            for _ in range(repeats):
                for ds in datasets:
                    deid.deidentify_dataset(ds, patient_key="P")  # works on a copy
        ours = t()
        with timer() as t:
            for _ in range(repeats):
                for ds in datasets:
                    anonymize_dataset(copy.deepcopy(ds))  # a copy, as DicomDeidentifier makes
        base = t()
    n = len(datasets) * repeats
    ctx.emit(
        "deid",
        "dicom_files_per_s",
        n / ours,
        "files/s",
        config={
            "files": len(datasets),
            "repeats": repeats,
            "baseline": "dicomanonymizer.anonymize_dataset (same rule table)",
        },
        baseline=n / base,
    )


def _cohort_speed(ctx: Context) -> None:
    import pandas as pd

    from privacy.cohort import CohortSpec, deidentify_cohort
    from privacy.pseudonym import Pseudonymizer

    n = 40 if ctx.quick else 400
    manifest_path = synth_cohort(ctx, n, image_size=64, signal_fs=250, n_leads=3, seed=5)
    cohort = manifest_path.parent
    manifest = pd.read_csv(manifest_path, dtype=str)
    out = ctx.workdir / "deid-out"
    shutil.rmtree(out, ignore_errors=True)
    with timer() as t:
        result = deidentify_cohort(
            manifest, cohort, out, Pseudonymizer(SECRET), CohortSpec(age_columns=("age",))
        )
    wall = t()
    ctx.emit(
        "deid",
        "cohort_cases_per_s",
        n / wall,
        "cases/s",
        config={"cases": n, "files_written": result.report["n_files_written"]},
        wall_s=round(wall, 2),
    )

    walls: dict[int, float] = {}
    trees: dict[int, dict[str, str]] = {}
    for workers in (1, 2):
        out_w = ctx.workdir / f"deid-out-{workers}"
        shutil.rmtree(out_w, ignore_errors=True)
        with timer() as t:
            deidentify_cohort(
                manifest,
                cohort,
                out_w,
                Pseudonymizer(SECRET),
                CohortSpec(age_columns=("age",)),
                workers=workers,
            )
        walls[workers] = t()
        trees[workers] = _tree_hashes(out_w)
    ctx.emit(
        "deid",
        "cohort_workers_cases_per_s",
        n / walls[2],
        "cases/s",
        config={
            "cases": n,
            "workers": 2,
            "baseline": "workers=1 in the same process (both after a first run)",
        },
        baseline=n / walls[1],
        wall_s=round(walls[2], 2),
        baseline_wall_s=round(walls[1], 2),
        identical_output=trees[1] == trees[2],
    )


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _pixel_speed(ctx: Context) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    from privacy.pixels import PixelCleaner, TesseractOCR

    if shutil.which("tesseract") is None:
        log("deid: tesseract not installed; pixel cleaning skipped")
        return
    names = ["examples_rgb_color.dcm", "examples_palette.dcm", "examples_ybr_color.dcm"]
    files = [Path(get_testdata_file(n)) for n in names]
    seconds: dict[str, float] = {}
    for label, workers in (("parallel", None), ("sequential", 1)):
        cleaner = PixelCleaner("all-text", ocr=TesseractOCR(workers=workers))
        with timer() as t:
            for f in files:
                cleaner(pydicom.dcmread(f))
        seconds[label] = t() / len(files)
    ctx.emit(
        "deid",
        "pixel_seconds_per_image",
        seconds["parallel"],
        "s",
        config={"images": names, "mode": "all-text", "baseline": "OCR readings one at a time"},
        baseline=seconds["sequential"],
        higher_is_better=False,
    )


def _pixel_cohort_speed(ctx: Context) -> None:
    import pandas as pd
    from pydicom.data import get_testdata_file

    from privacy.cohort import CohortSpec, deidentify_cohort
    from privacy.dicom import DicomOptions
    from privacy.pixels import PixelCleaner
    from privacy.pseudonym import Pseudonymizer

    if shutil.which("tesseract") is None:
        log("deid: tesseract not installed; pixel cleaning of a cohort skipped")
        return
    # the palette sample is left out: its patient name, "OB", is a word that stays in the
    # de-identified headers, so the residual-risk scan (rightly) refuses to publish the cohort
    names = ["examples_rgb_color.dcm", "examples_ybr_color.dcm"] * 2
    cohort = ctx.workdir / "deid-us-cohort"
    (cohort / "img").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        shutil.copy(get_testdata_file(name), cohort / "img" / f"us{i + 1}.dcm")
    manifest = pd.DataFrame(
        {
            "case_id": [f"u{i + 1}" for i in range(len(names))],
            "patient_id": [f"q{i + 1}" for i in range(len(names))],
            "image": [f"img/us{i + 1}.dcm" for i in range(len(names))],
        }
    )
    walls: dict[int, float] = {}
    trees: dict[int, dict[str, str]] = {}
    for workers in (1, 2):
        out = ctx.workdir / f"deid-us-out-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        options = DicomOptions(retain_longitudinal=True, clean_pixel_data=PixelCleaner("all-text"))
        with timer() as t:
            result = deidentify_cohort(
                manifest,
                cohort,
                out,
                Pseudonymizer(SECRET),
                CohortSpec(),
                dicom_options=options,
                workers=workers,
            )
        walls[workers] = t()
        trees[workers] = _tree_hashes(out)
        assert result.report["counts"]["dicom"].get("pixels_cleaned") == len(names)
    ctx.emit(
        "deid",
        "pixel_cohort_seconds_per_image",
        walls[2] / len(names),
        "s",
        config={
            "images": names,
            "mode": "all-text",
            "workers": 2,
            "baseline": "workers=1 (one image at a time, its OCR readings in parallel)",
        },
        baseline=walls[1] / len(names),
        higher_is_better=False,
        identical_output=trees[1] == trees[2],
    )


def run(ctx: Context) -> None:
    _dicom_speed(ctx)
    _cohort_speed(ctx)
    _pixel_speed(ctx)
    _pixel_cohort_speed(ctx)
