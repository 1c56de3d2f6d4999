"""Identifiers a QA pass found surviving de-identification, each now removed.

Names in other scripts and with accents, day-month-year dates as clinical systems print them,
ages over 89 in PhysioNet headers and prose, DICOM attributes the profile's table does not
list, and a large burned-in name on a small ultrasound frame.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pydicom.examples
import pytest

from privacy.dicom import DicomDeidentifier, DicomOptions, Identifier
from privacy.pseudonym import Pseudonymizer
from privacy.text import PatientContext, TextDeidentifier, date_variants

SECRET = b"test-secret-0123456789abcdef-0123456789"


@pytest.fixture(scope="module")
def surrogate() -> TextDeidentifier:
    return TextDeidentifier(Pseudonymizer(SECRET), use_presidio=False)


@pytest.mark.parametrize(
    "name",
    ["Wójcik^Zofia", "Größmann^Jürgen", "Szczepański^Bartłomiej", "Παπαδοπούλου^Ελένη",
     "Иванова^Светлана"],
)  # fmt: skip
def test_names_of_any_script_are_replaced_whole(surrogate, name) -> None:
    last, first = name.split("^")
    ctx = PatientContext(key="P1", shift_days=-30, deny={"NAME": [name]})
    out = surrogate.deidentify(f"Seen today: {first} {last}, alert.", ctx).text
    assert first not in out and last not in out
    fragments = {p for n in (first, last) for p in re.findall(r"[^\W\d_]{3,}", n)}
    assert not any(f in out for f in fragments), out
    assert out.startswith("Seen today: ") and out.endswith(", alert.")


def test_cyrillic_name_after_a_title_is_found(surrogate) -> None:
    out = surrogate.deidentify("Signed by Dr. Иван Петров.", PatientContext(key="P1")).text
    assert "Иван" not in out and "Петров" not in out


@pytest.mark.parametrize(
    ("text", "shifted"),
    [
        ("CT done 12-Mar-2021.", "CT done 02-Dec-2020."),
        ("ordered 10-MAR-2021", "ordered 30-NOV-2020"),
        ("seen 12 Mar 21 in clinic", "seen 02 Dec 20 in clinic"),
        ("on 5/Jan/2020", "on 27/Sep/2019"),
    ],
)
def test_day_month_year_dates_are_shifted(surrogate, text, shifted) -> None:
    ctx = PatientContext(key="P1", shift_days=-100)
    assert surrogate.deidentify(text, ctx).text == shifted


def test_a_date_without_year_shifts_as_the_same_date_with_one(surrogate) -> None:
    ctx = PatientContext(key="P1", shift_days=-200)
    out = surrogate.deidentify("Seen March 3rd; CT on 3 March 2021.", ctx).text
    assert out == "Seen August 15; CT on 15 August 2020."


def test_deny_list_forms_of_a_date_include_day_month_year() -> None:
    forms = date_variants("20210312")
    assert {"12-Mar-2021", "12 Mar 2021", "12/03/2021"} <= set(forms)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# <age>: 93 <sex>: F", "# <age>: 90+ <sex>: F"),
        ("She turned 91 last week.", "She turned 90+ last week."),
        ("A ninety-three years old man.", "A 90+ years old man."),
        ("At the age of 97, she moved.", "At the age of 90+, she moved."),
        ("aged 45, temp 99 F", "aged 45, temp 99 F"),
    ],
)
def test_ages_over_89_are_aggregated(surrogate, text, expected) -> None:
    assert surrogate.deidentify(text, PatientContext(key="P1")).text == expected


def test_attributes_the_table_does_not_list_are_not_kept_as_they_are(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom.examples.get_path("ct"))
    ds.add_new(0x00100033, "LO", "19310704")  # PatientBirthDateInAlternativeCalendar
    ds.add_new(0x00142006, "PN", "Pfannenstiel^Hildegard")  # EvaluatorName
    ds.add_new(0x00140102, "DA", "20210312")  # SecondaryReviewDate
    ds.add_new(0x00400400, "LT", "call Mrs Quillfeather")  # CommentsOnTheScheduledProcedureStep
    ds.add_new(0x60000022, "LO", "Kowalczyk overlay")  # OverlayDescription
    ds.save_as(tmp_path / "in.dcm")
    for longitudinal in (False, True):
        deid = DicomDeidentifier(
            Pseudonymizer(SECRET), DicomOptions(retain_longitudinal=longitudinal)
        )
        out = tmp_path / f"out_{longitudinal}.dcm"
        assert deid.deidentify_file(tmp_path / "in.dcm", out).status == "deidentified"
        written = pydicom.dcmread(out)
        for tag in (0x00100033, 0x00142006, 0x00400400, 0x60000022):
            assert tag not in written, hex(tag)
        if longitudinal:
            assert written[0x00140102].value not in ("", "20210312")  # shifted
        else:
            assert 0x00140102 not in written
        text = " ".join(str(e.value) for e in written.iterall() if e.VR != "SQ")
        for planted in ("19310704", "Pfannenstiel", "Quillfeather", "Kowalczyk"):
            assert planted not in text


def test_residual_scan_searches_names_in_any_script(tmp_path: Path) -> None:
    from privacy.cohort import residual_risk_scan

    (tmp_path / "note.txt").write_text("Η ασθενής Ελένη Παπαδοπούλου.\n", encoding="utf-8")
    (tmp_path / "manifest.csv").write_text("case_id\nc1\n")
    found = residual_risk_scan(
        tmp_path,
        {"p1": [Identifier("name", "PatientName", "Παπαδοπούλου^Ελένη")]},
        {"note.txt": "p1"},
        manifest_rel="manifest.csv",
        manifest_patients=["p1"],
        pseudonymizer=Pseudonymizer(SECRET),
    )
    assert [h["file"] for h in found["hits"]] == ["note.txt"]


def test_a_large_clearly_read_word_is_masked_in_all_text_mode() -> None:
    """A 27-pixel banner name on a 240-row frame (taller than a tenth of the rows) read with
    confidence 88 is masked; a tall low-confidence "word" (anatomy) is not."""
    from privacy.pixels import Box, OCRWord, PixelCleaner

    ds = pydicom.dcmread(pydicom.examples.get_path("rgb_color"))  # 240 x 320 ultrasound
    name_box, blob_box = Box(20, 10, 120, 27), Box(100, 120, 80, 60)

    def ocr(image: np.ndarray) -> list[OCRWord]:
        words = []
        if image[12:35, 25:125].max() > 0:
            words.append(OCRWord("WOJCIK", 88.0, name_box, (1, 1, 1)))
        if image[125:175, 105:175].max() > 0:
            words.append(OCRWord("Ae", 30.0, blob_box, (1, 2, 1)))
        return words

    report = PixelCleaner("all-text", ocr=ocr)(ds)
    pixels = ds.pixel_array
    assert report.boxes >= 1
    assert pixels[12:35, 25:125].max() == 0  # the name is masked
    assert pixels[125:175, 105:175].max() > 0  # the anatomy is not


def test_a_vendor_named_as_institution_is_not_searched() -> None:
    """pydicom's MR_small names TOSHIBA as institution and TOSHIBA_MEC as manufacturer; the
    kept manufacturer must not make the residual scan refuse the file."""
    import pydicom.data

    from privacy.dicom import dicom_identifiers

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))
    assert (str(ds.InstitutionName), str(ds.Manufacturer)) == ("TOSHIBA", "TOSHIBA_MEC")
    values = {i.value for i in dicom_identifiers(ds)}
    assert "TOSHIBA" not in values
    ds.InstitutionName = "St Elsewhere General"
    assert "St Elsewhere General" in {i.value for i in dicom_identifiers(ds)}


def test_a_series_folder_s_dicomdir_is_not_copied(tmp_path: Path) -> None:
    """A DICOMDIR indexes the original file names (which the copy renames) and names
    folders by patient: it is left out, as the image reader leaves it out."""
    import shutil

    from privacy.cohort import _dicom_files

    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(pydicom.examples.get_path("ct"), study / "0001.dcm")
    shutil.copy(pydicom.data.get_testdata_file("DICOMDIR"), study / "DICOMDIR")
    assert [p.name for p in _dicom_files(study)] == ["0001.dcm"]
