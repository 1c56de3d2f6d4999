"""DICOM in zip archives (PACS exports): loaded like the folder or file they hold, safely."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pydicom.examples
import pytest
from pydicom.data import get_testdata_file

from clinfuse.errors import ModalityLoadError
from clinfuse.io.image import first_dicom_header, load_image
from privacy.archive import extract_dicom_zip
from privacy.errors import ArchiveError

CT = Path(pydicom.examples.get_path("ct"))
DICOMDIR_TESTS = Path(get_testdata_file("CT_small.dcm", download=False)).parent / "dicomdirtests"
CT_SERIES = DICOMDIR_TESTS / "98892001" / "CT5N"  # 5 slices, files without extension


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary folders of the loader go here, so the test can see they are removed."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def _unpacked(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith("clinfuse-unzip-")]


def _zip_series(dest: Path, files: list[Path], *, extras: bool = True) -> Path:
    """A zip as exports make them: nested folders, a DICOMDIR, a read-me, macOS debris."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, f in enumerate(files):
            zf.write(f, f"EXPORT/PAT1/STUDY/SER{i % 2}/{f.name}")
        if extras:
            zf.write(DICOMDIR_TESTS / "DICOMDIR", "EXPORT/DICOMDIR")
            zf.writestr("EXPORT/README.TXT", "exported by a PACS")
            zf.writestr("__MACOSX/EXPORT/._IM0001", b"\0" * 200)
    return dest


def test_zip_of_a_series_equals_the_folder(tmp_path: Path, private_tmp: Path) -> None:
    archive = _zip_series(tmp_path / "study.zip", sorted(CT_SERIES.iterdir()))
    expected, meta_folder = load_image(CT_SERIES)
    got, meta = load_image(archive, case_id="c1")
    np.testing.assert_array_equal(got, expected)
    assert meta["format"] == "dicom_zip"
    assert meta["spacing"] == meta_folder["spacing"]
    assert meta["slice_order"] == meta_folder["slice_order"] == "position"
    assert _unpacked(private_tmp) == []  # the unpacked copies are gone


def test_zip_of_one_file_equals_the_file(tmp_path: Path) -> None:
    archive = _zip_series(tmp_path / "one.zip", [CT], extras=False)
    expected, _ = load_image(CT)
    got, meta = load_image(archive)
    np.testing.assert_array_equal(got, expected)
    assert meta["format"] == "dicom_zip" and meta["modality"] == "CT"


def test_member_names_cannot_write_outside(tmp_path: Path, private_tmp: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(CT, "../../../evil.dcm")
        zf.writestr("/abs/evil2.txt", "not DICOM")
    dest = tmp_path / "out"
    dest.mkdir()
    files = extract_dicom_zip(archive, dest)
    assert [f.name for f in files] == ["00001.dcm"]
    assert all(f.parent == dest for f in files)
    assert not list(tmp_path.rglob("evil*.dcm"))
    load_image(archive)
    assert _unpacked(private_tmp) == []


def test_header_read_from_the_zip_without_unpacking(tmp_path: Path) -> None:
    archive = _zip_series(tmp_path / "study.zip", sorted(CT_SERIES.iterdir()))
    ds = first_dicom_header(archive)
    first = pydicom.dcmread(sorted(CT_SERIES.iterdir())[0], stop_before_pixels=True)
    assert ds is not None and ds.SOPInstanceUID == first.SOPInstanceUID
    assert "PixelData" not in ds
    assert first_dicom_header(tmp_path / "missing.zip") is None


def test_archive_too_large_is_refused(tmp_path: Path) -> None:
    archive = _zip_series(tmp_path / "study.zip", sorted(CT_SERIES.iterdir()))
    with pytest.raises(ArchiveError, match=r"more than the 0\.0 GiB allowed"):
        extract_dicom_zip(archive, tmp_path, max_bytes=1000)


def test_encrypted_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "locked.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("IM0001", CT.read_bytes())
    # mark the member encrypted, as in a password-protected export (zipfile cannot write one):
    # bit 0 of the flags in the local header (offset 6) and the central directory (offset 8)
    data = bytearray(archive.read_bytes())
    data[6] |= 0x1
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 0x1
    archive.write_bytes(bytes(data))
    with pytest.raises(ModalityLoadError, match="'IM0001' is encrypted") as e:
        load_image(archive, case_id="c7")
    assert "c7" in str(e.value) and "locked.zip" in str(e.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "holds no DICOM file"),
        (b"PK\x03\x04 this is not really a zip", "not a readable zip"),
    ],
)
def test_bad_archives_name_the_case_and_file(tmp_path: Path, content, message) -> None:
    archive = tmp_path / "bad.zip"
    if content is None:
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("notes.txt", "no images here")
    else:
        archive.write_bytes(content)
    with pytest.raises(ModalityLoadError, match=message) as e:
        load_image(archive, case_id="c9")
    assert "c9" in str(e.value) and "bad.zip" in str(e.value)


def test_app_and_note_masking_read_the_zip(tmp_path: Path) -> None:
    """The review app shows a zipped series (with its header's window) and the note masking
    takes the patient's identity from the zipped header."""
    from clinfuse.redact import image_header_context
    from clinfuse.review.imaging import load_display_image

    files = sorted(CT_SERIES.iterdir())
    archive = _zip_series(tmp_path / "study.zip", files)
    shown = load_display_image(archive, case_id="c1")
    folder = load_display_image(CT_SERIES, case_id="c1")
    assert shown.source == "dicom_zip"
    np.testing.assert_array_equal(shown.slices, folder.slices)
    assert shown.info.get("Modality") == "CT" == folder.info.get("Modality")

    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    context = image_header_context(archive)
    assert context is not None
    assert str(header.PatientName) in context.deny["NAME"]
