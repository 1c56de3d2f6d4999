"""Tests of clinfuse.transforms.image on real sample files and small seeded arrays."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydantic
import pydicom
import pydicom.examples
import pytest
from monai.transforms import Resize
from pydicom.data import get_testdata_file

from clinfuse.errors import ModalityLoadError
from clinfuse.io.image import load_image
from clinfuse.transforms.image import (
    WINDOW_PRESETS,
    EnsureChannelsd,
    ImageTransformConfig,
    LoadClinicalImaged,
    SelectSliced,
    Window,
    Windowd,
    build_image_transforms,
)

CT = Path(pydicom.examples.get_path("ct"))
MR = Path(pydicom.examples.get_path("mr"))
US_RGB = Path(pydicom.examples.get_path("rgb_color"))
CT_SERIES = (
    Path(get_testdata_file("CT_small.dcm", download=False)).parent
    / "dicomdirtests"
    / "98892001"
    / "CT5N"
)


def _case(image: object, meta: dict | None = None, case_id: str = "c1") -> dict:
    d = {"case_id": case_id, "image": image}
    if meta is not None:
        d["image_meta"] = meta
    return d


# ----------------------------------------------------------------------------- window


@pytest.mark.parametrize("preset", sorted(WINDOW_PRESETS))
def test_window_maps_edges_to_zero_and_one_exactly(preset: str) -> None:
    center, width = WINDOW_PRESETS[preset]
    lo, hi = center - width / 2, center + width / 2
    img = np.array([[lo, hi, center, lo - 500, hi + 500]], dtype=np.float32)
    out = Window(center, width)(img)
    assert out.dtype == np.float32
    assert out[0, 0] == 0.0
    assert out[0, 1] == 1.0
    assert out[0, 2] == pytest.approx(0.5)
    assert out[0, 3] == 0.0 and out[0, 4] == 1.0  # clipped


def test_windowd_dicom_uses_the_files_window() -> None:
    array, meta = load_image(MR)  # WindowCenter 600, WindowWidth 1600
    out = Windowd("image", window="dicom")(_case(array, meta))
    np.testing.assert_allclose(out["image"], np.clip((array - (600 - 800)) / 1600, 0, 1), atol=1e-6)
    assert out["image_meta"]["window_applied"] == (600.0, 1600.0)
    assert "window_applied" not in meta  # input meta not mutated


def test_windowd_dicom_without_window_names_the_case() -> None:
    array, meta = load_image(CT)  # CT_small has no WindowCenter
    with pytest.raises(ModalityLoadError, match="case 'c7'"):
        Windowd("image", window="dicom")(_case(array, meta, case_id="c7"))


# ----------------------------------------------------------------------------- pipeline


def test_pipeline_output_shape_dtype_and_zscore() -> None:
    cfg = ImageTransformConfig(spatial_size=(32, 48), window="ct_soft_tissue")
    out = build_image_transforms(cfg)(_case(CT))
    image = out["image"]
    assert isinstance(image, np.ndarray)
    assert image.dtype == np.float32
    assert image.shape == (1, 32, 48)
    assert image.mean() == pytest.approx(0.0, abs=1e-5)
    assert image.std() == pytest.approx(1.0, abs=1e-3)
    assert out["image_meta"]["modality"] == "CT"
    assert out["image_meta"]["window_applied"] == (40.0, 400.0)


def test_pipeline_minmax_and_3d_output() -> None:
    cfg = ImageTransformConfig(spatial_size=(8, 8, 6), ndim=3, normalize="minmax")
    out = build_image_transforms(cfg)(_case(CT_SERIES))
    assert out["image"].shape == (1, 8, 8, 6)
    assert out["image"].min() == pytest.approx(0.0) and out["image"].max() == pytest.approx(1.0)


def test_series_with_2d_config_takes_the_middle_slice() -> None:
    volume, _ = load_image(CT_SERIES)  # (1, 16, 16, 5)
    cfg = ImageTransformConfig(spatial_size=(16, 16), normalize="none")
    out = build_image_transforms(cfg)(_case(CT_SERIES))
    assert out["image_meta"]["slice_index"] == 2
    np.testing.assert_allclose(out["image"], volume[..., 2], rtol=1e-5, atol=1e-3)
    # and it is not another slice
    assert not np.allclose(out["image"], volume[..., 1], atol=1e-3)


def test_2d_image_with_3d_config_names_the_case() -> None:
    cfg = ImageTransformConfig(spatial_size=(8, 8, 8), ndim=3)
    with pytest.raises(ModalityLoadError) as info:
        build_image_transforms(cfg)(_case(CT, case_id="c42"))
    assert "c42" in str(info.value) and "2-D" in str(info.value)


def test_rgb_is_averaged_to_one_channel_or_kept() -> None:
    array, meta = load_image(US_RGB)
    out = EnsureChannelsd("image", channels=1)(_case(array, meta))
    np.testing.assert_allclose(out["image"], array.mean(axis=0, keepdims=True), rtol=1e-6)
    kept = build_image_transforms(ImageTransformConfig(channels=None), load=False)(
        _case(array, meta)
    )
    assert kept["image"].shape == (3, 64, 64)
    gray, gmeta = load_image(MR)
    three = EnsureChannelsd("image", channels=3)(_case(gray, gmeta))["image"]
    assert three.shape == (3, 64, 64)
    np.testing.assert_array_equal(three[0], three[2])


def test_resize_is_anti_aliased_when_reducing() -> None:
    # 1-pixel checkerboard: pure high frequency. Reduced 64 -> 10 it should blur to ~0.5.
    board = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)[None]
    cfg = ImageTransformConfig(spatial_size=(10, 10), normalize="none")
    out = build_image_transforms(cfg, load=False)(_case(board, {}))["image"]
    aliased = np.asarray(Resize((10, 10), mode="bilinear", anti_aliasing=False)(board))
    assert aliased.std() > 0.1  # the check below is meaningful
    assert out.std() < 0.05
    assert out.mean() == pytest.approx(0.5, abs=0.05)


def test_missing_modality_is_left_untouched_and_input_not_mutated() -> None:
    t = build_image_transforms(ImageTransformConfig(window="ct_lung"))
    missing = {"case_id": "c5", "image": None}
    assert t(missing) == {"case_id": "c5", "image": None}

    array, meta = load_image(CT)
    data = _case(array, meta)
    before = copy.deepcopy(data)
    build_image_transforms(ImageTransformConfig(window="ct_lung"), load=False)(data)
    np.testing.assert_array_equal(data["image"], before["image"])
    assert data["image_meta"] == before["image_meta"]


def test_load_transform_reads_path_and_sets_meta() -> None:
    data = {"case_id": "c1", "image": str(CT), "other": None}
    out = LoadClinicalImaged(["image", "other"])(data)
    assert out["image"].shape == (1, 128, 128)
    assert out["image_meta"]["format"] == "dicom"
    assert out["other"] is None and "other_meta" not in out
    assert data["image"] == str(CT)


def test_load_transform_error_names_case_and_file(tmp_path: Path) -> None:
    with pytest.raises(ModalityLoadError) as info:
        LoadClinicalImaged("image")(_case(tmp_path / "gone.dcm", case_id="c77"))
    assert "c77" in str(info.value) and "gone.dcm" in str(info.value)


def test_select_sliced_passes_through_matching_ndim() -> None:
    array, meta = load_image(CT)
    out = SelectSliced("image", ndim=2)(_case(array, meta))
    np.testing.assert_array_equal(out["image"], array)
    assert "slice_index" not in out["image_meta"]


# ----------------------------------------------------------------------------- config


def test_config_defaults_and_round_trip() -> None:
    cfg = ImageTransformConfig()
    assert cfg.spatial_size == (64, 64)
    assert cfg.window is None and cfg.normalize == "zscore"
    assert cfg.channels == 1 and cfg.ndim == 2
    custom = ImageTransformConfig(spatial_size=(8, 8, 8), ndim=3, window=(40, 400))
    assert ImageTransformConfig.model_validate_json(custom.model_dump_json()) == custom


@pytest.mark.parametrize(
    "kwargs",
    [
        {"spatial_size": (64, 64, 64)},  # 3 ints with ndim=2
        {"spatial_size": (0, 64)},
        {"window": "ct_liver"},
        {"window": (40, 0)},
        {"normalize": "robust"},
        {"channels": 0},
        {"ndim": 4, "spatial_size": (4, 4, 4, 4)},
        {"unknown_field": 1},
    ],
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        ImageTransformConfig(**kwargs)


def test_pipeline_raises_clinfuse_errors_unwrapped(tmp_path: Path) -> None:
    # MONAI's Compose wraps step errors in RuntimeError; the clinfuse pipeline must not.
    data = CT.read_bytes()
    broken = tmp_path / "cut.dcm"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModalityLoadError) as info:
        build_image_transforms(ImageTransformConfig())(_case(broken, case_id="c8"))
    assert "c8" in str(info.value) and "cut.dcm" in str(info.value)
    assert info.value.__cause__ is not None  # the pydicom/MONAI error is kept
    assert not isinstance(info.value.__cause__, ModalityLoadError)
