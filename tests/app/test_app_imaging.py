"""Image display: DICOM modality + VOI LUT through pydicom, presets, overlay axes, no PHI."""

from __future__ import annotations

import numpy as np
import pydicom
import pydicom.examples
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from clinfuse.errors import DataFileNotFoundError, ModalityLoadError
from clinfuse.review.imaging import (
    SAFE_TAGS,
    heatmap_for_slice,
    heatmap_overlay,
    load_display_image,
    render_slice,
)


def _expected(ds, window=None):
    arr = apply_modality_lut(ds.pixel_array, ds).astype(float)
    if window is not None:
        ds = ds.copy()
        ds.WindowCenter, ds.WindowWidth = window
        if "VOILUTSequence" in ds:
            del ds.VOILUTSequence
    out = apply_voi_lut(arr, ds)
    bits = ds.BitsStored
    lo, hi = (
        (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2**bits - 1)
    )
    lo, hi = sorted(
        (lo * ds.RescaleSlope + ds.RescaleIntercept, hi * ds.RescaleSlope + ds.RescaleIntercept)
    )
    return np.clip(np.round((out - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)


def test_file_window_and_presets_follow_pydicom_luts(tmp_path):
    ds = pydicom.dcmread(pydicom.examples.get_path("ct"))
    ds.WindowCenter, ds.WindowWidth = 40, 400
    path = tmp_path / "ct.dcm"
    ds.save_as(path)
    img = load_display_image(path, case_id="c1")
    assert img.has_file_voi and img.default_window == (40.0, 400.0)
    np.testing.assert_array_equal(render_slice(img), _expected(ds))
    np.testing.assert_array_equal(
        render_slice(img, window=(-600, 1500)), _expected(ds, (-600, 1500))
    )
    hu = apply_modality_lut(ds.pixel_array, ds)
    shown = render_slice(img, window=(40, 400))
    assert (shown[hu <= 40 - 200] == 0).all() and (shown[hu > 40 + 200] == 255).all()


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(pydicom.examples.get_path("ct"))
    ds.WindowCenter, ds.WindowWidth = 40, 400
    mono2 = render_slice(_saved(ds, tmp_path / "a.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    mono1 = render_slice(_saved(ds, tmp_path / "b.dcm"))
    np.testing.assert_array_equal(mono1, 255 - mono2)


def _saved(ds, path):
    ds.save_as(path)
    return load_display_image(path)


def test_display_metadata_holds_no_phi(review_run):
    import pandas as pd

    m = pd.read_csv(review_run["manifest"])
    first = m[m["image"].notna()].iloc[0]
    path = f"{review_run['root']}/cohort/{first['image']}"
    ds = pydicom.dcmread(path)
    img = load_display_image(path)
    assert set(img.info) <= set(SAFE_TAGS)
    text = repr(img.info) + repr(img.voi_ds)
    for tag in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "InstitutionName",
        "AccessionNumber",
    ):
        value = str(ds.get(tag, ""))
        assert value and value not in text


def test_corrupt_and_missing_images_raise_clinfuse_errors(tmp_path):
    good = pydicom.examples.get_path("ct")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(good.read_bytes()[:400])
    with pytest.raises(ModalityLoadError, match=r"bad\.dcm"):
        load_display_image(bad, case_id="c9")
    with pytest.raises(DataFileNotFoundError):
        load_display_image(tmp_path / "nothing.dcm")


def test_heatmap_is_transposed_onto_rows_and_columns():
    heat = np.zeros((8, 4))  # MONAI (X=columns, Y=rows)
    heat[6, 1] = 1.0  # column 6, row 1
    plane = heatmap_for_slice(heat, 0, 1, (4, 8))
    assert np.unravel_index(np.argmax(plane), plane.shape) == (1, 6)
    rgb = heatmap_overlay(np.full((4, 8), 100, np.uint8), plane, alpha=1.0)
    assert tuple(rgb[1, 6]) == (255, 0, 0)
    neg = heatmap_overlay(np.full((4, 8), 100, np.uint8), -plane, alpha=1.0)
    assert tuple(neg[1, 6]) == (0, 0, 255)
    # a 2-D heat map on a volume belongs to the middle slice only
    assert heatmap_for_slice(heat, 2, 5, (4, 8)) is not None
    assert heatmap_for_slice(heat, 0, 5, (4, 8)) is None
