"""Clean Pixel Data [113101]: burned-in text removed from DICOM pixels (privacy.pixels).

Every check reads the pixels back with OCR: before cleaning the planted (or real) text is
read — so the test can fail — and afterwards it is not, while pixels away from text are
byte-equal. Needs the Tesseract engine (``apt-get install tesseract-ocr``; ``make test``
installs it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from privacy.dicom import DicomDeidentifier, DicomOptions
from privacy.pixels import (
    Box,
    PixelCleaner,
    PixelCleaningError,
    TesseractOCR,
    load_region_rules,
    read_frames,
)
from privacy.pseudonym import Pseudonymizer

SECRET = b"test-secret-0123456789abcdef-0123456789"

pytestmark = pytest.mark.skipif(
    shutil.which("tesseract") is None,
    reason="the Tesseract OCR engine is not installed (apt-get install tesseract-ocr)",
)

NAME, MRN, DOB = "Doe^Jane", "4455667", "19610314"
PLANTED_IDS = ("DOE", "JANE", MRN, "1961")
BANNER_ROWS, LEFT_COLUMNS = 50, 120


def _burned_ultrasound(
    path: Path, *, seed: int = 0, name: str = NAME, mrn: str = MRN
) -> np.ndarray:
    """An RGB ultrasound-like DICOM: a speckled sector, the patient's name, MRN and birth date
    in a white banner, and gain/depth in yellow on the left — as scanners burn them in."""
    from PIL import Image, ImageDraw, ImageFont
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    rows, cols = 300, 400
    img = np.zeros((rows, cols, 3), np.uint8)
    yy, xx = np.mgrid[0:rows, 0:cols]
    sector = ((xx - 200) ** 2 + (yy - 40) ** 2 < 230**2) & (yy > 70) & (abs(xx - 200) < yy - 40)
    speckle = gaussian_filter(rng.gamma(2.0, 30.0, size=(rows, cols)), 1.5)
    img[sector] = np.clip(speckle[sector], 0, 150).astype(np.uint8)[:, None]
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=15)
    last, first = name.upper().split("^")
    draw.text((8, 6), f"{last}^{first}   MRN {mrn}", fill=(255, 255, 255), font=font)
    draw.text((8, 26), "DOB 03/14/1961", fill=(255, 255, 255), font=font)
    draw.text((8, 120), "GAIN 50 dB", fill=(230, 230, 60), font=font)
    draw.text((8, 140), "DEPTH 12 cm", fill=(230, 230, 60), font=font)
    arr = np.asarray(pil)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.4.{seed}.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"1.2.3.4.{seed}.2", f"1.2.3.4.{seed}.3"
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "US", "ACME Medical", "Sono 1"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = name, mrn, DOB
    ds.StudyDate = "20240105"
    ds.BurnedInAnnotation = "YES"
    ds.set_pixel_data(arr, "RGB", 8)
    ds.save_as(path, enforce_file_format=True)
    return arr


@pytest.fixture(scope="module")
def ocr() -> TesseractOCR:
    """The reference reading: Tesseract at scales the cleaner does not use."""
    return TesseractOCR(scales=(5,))


def _read(ocr: TesseractOCR, arr: np.ndarray) -> list[tuple[str, float]]:
    """Words read in a frame, as rendered and with its bright pixels only."""
    gray = arr.max(axis=-1) if arr.ndim == 3 else arr
    gray = ((gray - gray.min()) * (255.0 / max(1, np.ptp(gray)))).astype(np.uint8)
    words = ocr(gray) + ocr(np.where(gray >= 160, 255, 0).astype(np.uint8))
    return [(w.text.upper(), w.confidence) for w in words]


def _found(words: list[tuple[str, float]], needle: str) -> bool:
    return any(needle.upper() in text for text, _ in words)


@pytest.fixture(scope="module")
def burned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("px") / "burned.dcm"
    return path, _burned_ultrasound(path)


def test_all_text_mode_removes_every_word_and_keeps_other_pixels(burned, ocr) -> None:
    path, original = burned
    before = _read(ocr, original)
    assert all(_found(before, s) for s in (MRN, "1961", "GAIN", "DEPTH")), before

    ds = pydicom.dcmread(path)
    report = PixelCleaner("all-text")(ds)
    cleaned = ds.pixel_array
    after = _read(ocr, cleaned)
    for needle in (*PLANTED_IDS, "GAIN", "DEPTH", "MRN", "DOB"):
        assert not _found(after, needle), (needle, after)
    changed = (cleaned != original).any(axis=-1)
    assert (cleaned[changed] == 0).all()  # masked pixels are black
    text_area = np.zeros(changed.shape, bool)
    text_area[:BANNER_ROWS] = True
    text_area[100:170, :LEFT_COLUMNS] = True
    # nearly every changed pixel is in the text areas (OCR may take a speckle for a word)
    assert changed[~text_area].mean() < 0.01
    assert report.masked_fraction < 0.15 and report.boxes >= 4
    assert ds.BurnedInAnnotation == "NO" and ds.PhotometricInterpretation == "RGB"

    again = pydicom.dcmread(path)
    PixelCleaner("all-text")(again)
    assert np.array_equal(again.pixel_array, cleaned)  # deterministic


def test_identifiers_mode_keeps_clinical_annotations(burned, ocr) -> None:
    path, _ = burned
    ds = pydicom.dcmread(path)
    PixelCleaner("identifiers")(ds)
    after = _read(ocr, ds.pixel_array)
    for needle in PLANTED_IDS:
        assert not _found(after, needle), (needle, after)
    assert _found(after, "GAIN") and _found(after, "DEPTH")


def test_deidentifier_cleans_pixels_and_marks_113101(burned, ocr, tmp_path: Path) -> None:
    path, _ = burned
    deid = DicomDeidentifier(Pseudonymizer(SECRET), DicomOptions(clean_pixel_data=PixelCleaner()))
    res = deid.deidentify_file(path, tmp_path / "out.dcm", patient_key="P1")
    assert res.status == "deidentified"
    assert res.to_dict()["pixels"]["mode"] == "all-text"
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert "113101" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert out.BurnedInAnnotation == "NO" and str(out.PatientName) != NAME
    assert not any(_found(_read(ocr, out.pixel_array), s) for s in PLANTED_IDS)
    # a CT is not an ultrasound and is not flagged: its pixels are left alone
    ct = tmp_path / "ct.dcm"
    shutil.copy(pydicom.examples.get_path("ct"), ct)
    assert deid.deidentify_file(ct, tmp_path / "ct_out.dcm").pixels == {}
    assert np.array_equal(
        pydicom.dcmread(tmp_path / "ct_out.dcm").pixel_array, pydicom.examples.ct.pixel_array
    )


@pytest.mark.parametrize("name", ["examples_rgb_color.dcm", "examples_palette.dcm"])
def test_real_ultrasound_text_removed(name: str, ocr) -> None:
    """pydicom's ultrasound samples carry real burned-in text (institution, dates, settings)."""
    ds = pydicom.dcmread(pydicom.data.get_testdata_file(name))
    original, _ = read_frames(ds)
    clear = {
        t for t, c in _read(ocr, original[0]) if c >= 90 and sum(ch.isalnum() for ch in t) >= 3
    }
    assert len(clear) >= 3, clear
    report = PixelCleaner("all-text")(ds)
    after = {t for t, _ in _read(ocr, read_frames(ds)[0][0])}
    assert not clear & after, clear & after
    assert report.masked_fraction < 0.2


def test_multiframe_jpeg_cleaned_on_every_frame() -> None:
    """A 30-frame YBR JPEG cine: decoded, the same boxes masked on every frame, written as
    uncompressed RGB with its frames."""
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("examples_ybr_color.dcm"))
    original, _ = read_frames(ds)
    report = PixelCleaner("all-text")(ds)
    out, photometric = read_frames(ds)
    assert photometric == "RGB" and out.shape == original.shape and report.frames == 30
    assert not ds.file_meta.TransferSyntaxUID.is_compressed
    union = (out != original).any(axis=-1).any(axis=0)  # pixels changed in any frame
    assert 0 < union.mean() < 0.2
    assert (out[:, union] == 0).all()  # one mask, applied to every frame
    assert np.array_equal(out[:, ~union], original[:, ~union])


def test_region_rules_mask_exactly_their_boxes(burned, tmp_path: Path) -> None:
    path, original = burned
    rules_file = tmp_path / "layouts.toml"
    rules_file.write_text(
        '[[rule]]\nname = "ACME banner"\n'
        'match = { Modality = "US", Manufacturer = "acme*", Rows = "300" }\n'
        "boxes = [[0, 0, 400, 46]]\n"
    )
    rules = load_region_rules(rules_file)
    ds = pydicom.dcmread(path)
    report = PixelCleaner("regions", rules=rules, margin=0)(ds)
    cleaned = ds.pixel_array
    assert report.rule_names == ["ACME banner"] and report.passes == 0
    assert (cleaned[:46] == 0).all() and np.array_equal(cleaned[46:], original[46:])

    other = pydicom.dcmread(path)
    other.Manufacturer = "Other Corp"
    with pytest.raises(PixelCleaningError, match=r"no region rule matches.*Other Corp"):
        PixelCleaner("regions", rules=rules)(other)
    deid = DicomDeidentifier(
        Pseudonymizer(SECRET), DicomOptions(clean_pixel_data=PixelCleaner("regions", rules=rules))
    )
    other.save_as(tmp_path / "other.dcm")
    res = deid.deidentify_file(tmp_path / "other.dcm", tmp_path / "other_out.dcm")
    assert res.status == "quarantined" and "no region rule" in res.reason
    assert not (tmp_path / "other_out.dcm").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rule]]\nmatch = { Modality = 'US' }\nboxes = [[0, 0, 10]]\n", "rule 1.*left, top"),
        ("[[rule]]\nmatch = { Modalty = 'US' }\nboxes = [[0, 0, 10, 10]]\n", "unknown DICOM"),
        ("[[rule]]\nname = 'x'\nboxes = [[0, 0, 10, 10]]\n", r"rule 1 \(x\).*'match'"),
        ("rule = 3\n", "no rules"),
        ("[[rule\n", "not a valid rules file"),
    ],
)
def test_bad_rules_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "rules.toml"
    f.write_text(text)
    with pytest.raises(PixelCleaningError, match=message):
        load_region_rules(f)


def test_undecodable_pixels_quarantine_the_file(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    frame = bytearray(ds.PixelData)
    frame[40:400] = b"\x00" * 360  # breaks the JPEG stream inside its headers
    ds.PixelData = bytes(frame)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(tmp_path / "bad.dcm")
    deid = DicomDeidentifier(Pseudonymizer(SECRET), DicomOptions(clean_pixel_data=PixelCleaner()))
    res = deid.deidentify_file(tmp_path / "bad.dcm", tmp_path / "out.dcm")
    assert res.status == "quarantined" and "cannot decode the pixel data" in res.reason
    assert not (tmp_path / "out.dcm").exists()


def test_missing_tesseract_is_a_clear_error() -> None:
    with pytest.raises(PixelCleaningError, match="apt-get install tesseract-ocr"):
        TesseractOCR(cmd="/nonexistent/tesseract")


def test_text_still_read_after_the_last_pass_quarantines() -> None:
    """An OCR engine that keeps reading a word (as if masking missed it) ends in an error."""
    from privacy.pixels import OCRWord

    moving = iter(range(0, 200, 20))

    def stubborn(image: np.ndarray) -> list[OCRWord]:
        return [OCRWord("SMITH", 95.0, Box(next(moving), 0, 10, 10), (1, 1, 1))]

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("examples_rgb_color.dcm"))
    with pytest.raises(PixelCleaningError, match=r"still read .* after 2 cleaning"):
        PixelCleaner("all-text", ocr=stubborn, max_passes=2)(ds)


def test_cohort_deid_with_pixel_cleaning(tmp_path: Path, ocr) -> None:
    """``clinfuse deid --clean-pixels all-text``: the burned-in ultrasound of a case comes out
    cleaned (and reported), the CT of the other case untouched."""
    from typer.testing import CliRunner

    from clinfuse.cli import app

    cohort = tmp_path / "cohort"
    (cohort / "img").mkdir(parents=True)
    _burned_ultrasound(cohort / "img" / "us.dcm")
    shutil.copy(pydicom.examples.get_path("ct"), cohort / "img" / "ct.dcm")
    pd.DataFrame(
        {
            "case_id": ["c1", "c2"],
            "patient_id": ["p1", "p2"],
            "label": [1, 0],
            "image": ["img/us.dcm", "img/ct.dcm"],
        }
    ).to_csv(cohort / "manifest.csv", index=False)
    key = tmp_path / "site.key"
    key.write_bytes(SECRET)
    out = tmp_path / "deid"
    runner = CliRunner()
    args = ["deid", str(cohort), "--out", str(out), "--secret-file", str(key)]
    res = runner.invoke(app, [*args, "--clean-pixels", "all-text"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "deid_report.json").read_text())
    cleaned_files = [f for f, e in report["files"].items() if "pixels" in e]
    assert len(report["files"]) == 2 and len(cleaned_files) == 1  # the CT is left alone
    us_out = cleaned_files[0]
    assert report["files"][us_out]["pixels"]["mode"] == "all-text"
    assert report["counts"]["dicom"]["pixels_cleaned"] == 1
    cleaned = pydicom.dcmread(out / us_out).pixel_array
    assert not any(_found(_read(ocr, cleaned), s) for s in PLANTED_IDS)

    bad = runner.invoke(app, [*args, "--overwrite", "--clean-pixels", "everything"])
    assert bad.exit_code != 0 and "all-text" in str(bad.exception)  # the CLI prints it
