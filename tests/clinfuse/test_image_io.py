"""Tests of clinfuse.io.image.load_image on real sample files shipped in pydicom/nibabel wheels."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.examples
import pytest
from nibabel.testing import data_path as nib_data_path
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from clinfuse.errors import DataFileNotFoundError, ModalityLoadError
from clinfuse.io.image import load_image

CT = Path(pydicom.examples.get_path("ct"))
MR = Path(pydicom.examples.get_path("mr"))
US_RGB = Path(pydicom.examples.get_path("rgb_color"))
RTDOSE = Path(get_testdata_file("rtdose.dcm", download=False))
DICOMDIR_TESTS = Path(get_testdata_file("CT_small.dcm", download=False)).parent / "dicomdirtests"
# One CT series of 5 slices, files without extension; InstanceNumber runs opposite to
# the position along the slice normal, so ordering by position is observable.
CT_SERIES = DICOMDIR_TESTS / "98892001" / "CT5N"
# Three MR series (different SeriesInstanceUID) in one folder.
MIXED_SERIES = DICOMDIR_TESTS / "98892003" / "MR2"
# 50 CT objects of one series without pixel data.
NO_PIXELS_SERIES = DICOMDIR_TESTS / "TINY_ALPHA" / "PT000000" / "ST000000" / "SE000000"
ANATOMICAL = Path(nib_data_path) / "anatomical.nii"
EXAMPLE_4D = Path(nib_data_path) / "example4d.nii.gz"

META_KEYS = {
    "format",
    "spatial_shape",
    "spacing",
    "ndim_spatial",
    "n_channels",
    "modality",
    "n_slices",
    "photometric",
    "window",
    "slice_order",
}


def _position_along_normal(ds: pydicom.Dataset) -> float:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    return float(np.asarray(ds.ImagePositionPatient, dtype=float) @ np.cross(iop[:3], iop[3:]))


def test_ct_values_are_hounsfield_units_like_apply_modality_lut() -> None:
    ds = pydicom.dcmread(CT)
    expected = apply_modality_lut(ds.pixel_array, ds)  # (rows, cols), intercept -1024
    array, meta = load_image(CT, case_id="c1")
    assert array.dtype == np.float32
    assert array.shape == (1, 128, 128)
    # (C, X, Y): X runs along columns, so the image is pixel_array transposed.
    np.testing.assert_array_equal(array[0], expected.T)
    # Rescale applied exactly once: raw minimum is 128, HU minimum is 128 - 1024.
    assert array.min() == ds.pixel_array.min() - 1024
    assert meta["format"] == "dicom"
    assert meta["modality"] == "CT"
    assert meta["photometric"] == "MONOCHROME2"
    assert meta["window"] is None
    assert meta["ndim_spatial"] == 2 and meta["n_channels"] == 1 and meta["n_slices"] == 1
    assert meta["spacing"] == pytest.approx((0.661468, 0.661468))
    assert set(meta) == META_KEYS


def test_meta_holds_no_patient_identifiers() -> None:
    ds = pydicom.dcmread(CT)
    _, meta = load_image(CT)
    text = repr(meta)
    for value in (str(ds.PatientName), str(ds.PatientID)):
        assert value and value not in text


def test_mr_window_and_spacing() -> None:
    ds = pydicom.dcmread(MR)
    array, meta = load_image(MR)
    assert array.shape == (1, 64, 64)
    np.testing.assert_array_equal(array[0], ds.pixel_array.T.astype(np.float32))
    assert meta["modality"] == "MR"
    assert meta["window"] == (600.0, 1600.0)
    assert meta["spacing"] == pytest.approx((0.3125, 0.3125))


def test_rgb_ultrasound_has_three_channels() -> None:
    ds = pydicom.dcmread(US_RGB)
    array, meta = load_image(US_RGB)
    rows, cols = ds.Rows, ds.Columns
    assert array.shape == (3, cols, rows)
    np.testing.assert_array_equal(array, np.moveaxis(ds.pixel_array, -1, 0).transpose(0, 2, 1))
    assert meta["modality"] == "US"
    assert meta["photometric"] == "RGB"
    assert meta["n_channels"] == 3


def test_multiframe_file_is_a_volume() -> None:
    ds = pydicom.dcmread(RTDOSE)
    array, meta = load_image(RTDOSE)
    assert int(ds.NumberOfFrames) == 15
    assert array.shape == (1, ds.Columns, ds.Rows, 15)
    np.testing.assert_array_equal(array[0], ds.pixel_array.transpose(2, 1, 0))
    assert meta["ndim_spatial"] == 3 and meta["n_slices"] == 15


def test_dicom_file_without_extension(tmp_path: Path) -> None:
    target = tmp_path / "IM0001"
    shutil.copy(CT, target)
    array, meta = load_image(target)
    reference, _ = load_image(CT)
    assert meta["format"] == "dicom"
    np.testing.assert_array_equal(array, reference)


def test_series_folder_is_sorted_by_position_along_the_normal() -> None:
    files = sorted(CT_SERIES.iterdir())
    volume, meta = load_image(CT_SERIES, case_id="c2")
    assert meta["format"] == "dicom_series"
    assert meta["slice_order"] == "position"
    assert volume.shape == (1, 16, 16, len(files))
    assert meta["n_slices"] == len(files) == 5
    by_position = sorted(files, key=lambda f: _position_along_normal(pydicom.dcmread(f)))
    positions = [_position_along_normal(pydicom.dcmread(f)) for f in by_position]
    assert np.all(np.diff(positions) > 0)
    for k, f in enumerate(by_position):
        slice_k, _ = load_image(f)
        np.testing.assert_array_equal(volume[..., k], slice_k)
    # The position order is the reverse of InstanceNumber here, so this proves that
    # the loader does not use MONAI's InstanceNumber order.
    numbers = [int(pydicom.dcmread(f).InstanceNumber) for f in by_position]
    assert numbers == sorted(numbers, reverse=True)
    assert meta["spacing"] == pytest.approx((0.488281, 0.488281, 2.5))
    assert meta["window"] == (40.0, 400.0)


def test_series_without_positions_falls_back_to_instance_number(tmp_path: Path) -> None:
    for f in CT_SERIES.iterdir():
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient
        ds.save_as(tmp_path / f.name)
    volume, meta = load_image(tmp_path)
    assert meta["slice_order"] == "instance_number"
    by_number = sorted(tmp_path.iterdir(), key=lambda f: int(pydicom.dcmread(f).InstanceNumber))
    for k, f in enumerate(by_number):
        np.testing.assert_array_equal(volume[..., k], load_image(f)[0])


def test_nifti_volume_matches_nibabel() -> None:
    img = nib.load(ANATOMICAL)
    array, meta = load_image(ANATOMICAL)
    assert array.shape == (1, *img.shape)
    np.testing.assert_allclose(array[0], img.get_fdata(), rtol=1e-6)
    assert meta["format"] == "nifti"
    assert meta["spacing"] == pytest.approx(img.header.get_zooms()[:3])
    assert meta["modality"] is None and meta["window"] is None
    assert meta["ndim_spatial"] == 3 and meta["n_slices"] == img.shape[2]


@pytest.mark.parametrize(("suffix", "fmt"), [(".png", "png"), (".jpg", "jpeg")])
def test_grayscale_png_jpeg_has_one_channel(tmp_path: Path, suffix: str, fmt: str) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, size=(20, 30), dtype=np.uint8)  # (H, W)
    path = tmp_path / f"gray{suffix}"
    Image.fromarray(pixels).save(path, quality=100)
    array, meta = load_image(path)
    assert array.shape == (1, 30, 20)
    assert meta["format"] == fmt
    if fmt == "png":  # lossless
        np.testing.assert_array_equal(array[0], pixels.T)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_png_has_three_channels(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, size=(20, 30, len(mode)), dtype=np.uint8)
    path = tmp_path / "colour.png"
    Image.fromarray(pixels, mode=mode).save(path)
    array, meta = load_image(path)
    assert array.shape == (3, 30, 20)
    np.testing.assert_array_equal(array, np.moveaxis(pixels[..., :3], -1, 0).transpose(0, 2, 1))
    assert meta["n_channels"] == 3


def test_import_clinfuse_does_not_import_imaging_libraries() -> None:
    code = (
        "import sys, clinfuse, clinfuse.io.image; "
        "print(sorted(m for m in ('monai', 'pydicom', 'nibabel') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- bad input


def _missing(tmp: Path) -> Path:
    return tmp / "nope.dcm"


def _truncated(tmp: Path) -> Path:
    data = CT.read_bytes()
    path = tmp / "truncated.dcm"
    path.write_bytes(data[: len(data) // 2])
    return path


def _text_as_dcm(tmp: Path) -> Path:
    path = tmp / "notes.dcm"
    path.write_text("this is not a DICOM file\n")
    return path


def _empty_folder(tmp: Path) -> Path:
    path = tmp / "empty_series"
    path.mkdir()
    return path


def _unsupported_extension(tmp: Path) -> Path:
    path = tmp / "scan.bmp"
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path)
    return path


def _zero_rows(tmp: Path) -> Path:
    ds = pydicom.dcmread(CT)
    ds.Rows = 0
    path = tmp / "zero_rows.dcm"
    ds.save_as(path)
    return path


def _no_pixel_data(tmp: Path) -> Path:
    ds = pydicom.dcmread(CT)
    del ds.PixelData
    path = tmp / "no_pixels.dcm"
    ds.save_as(path)
    return path


def _copy_mixed_series(tmp: Path) -> Path:
    return Path(shutil.copytree(MIXED_SERIES, tmp / "mixed_series"))


def _copy_4d_nifti(tmp: Path) -> Path:
    return Path(shutil.copy(EXAMPLE_4D, tmp / "fmri_4d.nii.gz"))


def _folder_without_pixels(tmp: Path) -> Path:
    target = tmp / "no_pixel_series"
    target.mkdir()
    for f in sorted(NO_PIXELS_SERIES.iterdir())[:3]:
        shutil.copy(f, target / f.name)
    return target


BAD_INPUTS: list[tuple[str, Callable[[Path], Path], type[Exception], str]] = [
    ("missing", _missing, DataFileNotFoundError, "not found"),
    ("truncated", _truncated, ModalityLoadError, "truncated"),
    ("text_as_dcm", _text_as_dcm, ModalityLoadError, "not a readable DICOM"),
    ("empty_folder", _empty_folder, ModalityLoadError, "no DICOM files"),
    ("mixed_series", _copy_mixed_series, ModalityLoadError, "3 DICOM series"),
    ("unsupported", _unsupported_extension, ModalityLoadError, "unsupported image format"),
    ("zero_size", _zero_rows, ModalityLoadError, "zero size"),
    ("no_pixels", _no_pixel_data, ModalityLoadError, "no pixel data"),
    ("folder_no_pixels", _folder_without_pixels, ModalityLoadError, "pixel data"),
    ("nifti_4d", _copy_4d_nifti, ModalityLoadError, "4-D"),
]


@pytest.mark.parametrize(
    ("name", "make", "error", "reason"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_raises_a_clear_error(
    tmp_path: Path,
    name: str,
    make: Callable[[Path], Path],
    error: type[Exception],
    reason: str,
) -> None:
    path = make(tmp_path)
    with pytest.raises(error) as info:
        load_image(path, case_id=f"case-{name}", field="image")
    message = str(info.value)
    assert f"case-{name}" in message
    assert path.name in message
    assert "'image'" in message
    assert reason in message
    assert info.value.hint  # says what to do


def test_mixed_series_error_lists_each_series() -> None:
    with pytest.raises(ModalityLoadError) as info:
        load_image(MIXED_SERIES, case_id="c9")
    assert str(info.value).count("series number") == 3


def test_truncated_file_error_keeps_the_library_cause(tmp_path: Path) -> None:
    with pytest.raises(ModalityLoadError) as info:
        load_image(_truncated(tmp_path), case_id="c3")
    assert info.value.__cause__ is not None
