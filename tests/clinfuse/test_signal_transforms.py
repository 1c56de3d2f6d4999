"""Tests of clinfuse.transforms.signal: array transforms, dict wrappers, pipeline.

References: a pure sine's FFT peak (resampling); power of known tones
measured by projection before/after filtering (band-pass); numpy mean/std
(z-score); ``ds.waveform_array(0)`` of pydicom's example ECG (pipeline).
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from clinfuse.errors import DataFileNotFoundError, ModalityLoadError
from clinfuse.transforms.signal import (
    BandpassFilter,
    BandpassFilterd,
    CleanECG,
    CropOrPad,
    CropOrPadd,
    LoadSignald,
    NormalizeLeads,
    NormalizeLeadsd,
    RandCropOrPadd,
    Resample,
    Resampled,
    SelectLeads,
    SelectLeadsd,
    SignalTransformConfig,
    bandpass_filter,
    build_signal_transforms,
    crop_or_pad,
    resample_signal,
    zscore_leads,
)

pydicom = importlib.import_module("pydicom")


@pytest.fixture(scope="module")
def dicom_path() -> Path:
    from pydicom import examples

    return Path(examples.get_path("waveform"))


def _meta(fs: float, n: int, leads: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "fs": fs,
        "n_samples": n,
        "duration_s": n / fs,
        "lead_names": [f"lead_{i}" for i in range(leads)],
        "units": ["mV"] * leads,
        "path": "x.npy",
        **extra,
    }


def _tone_power(x: np.ndarray, fs: float, freq: float) -> float:
    """Power of ``freq`` in ``x`` by least-squares projection on sin/cos."""
    t = np.arange(x.size) / fs
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
    return float((coef**2).sum() / 2)


# ---------------------------------------------------------------------- resampling


@pytest.mark.parametrize(("fs", "target"), [(500.0, 100.0), (360.0, 100.0), (128.0, 250.0)])
def test_resample_preserves_frequency_and_duration(fs: float, target: float) -> None:
    t = np.arange(int(10 * fs)) / fs
    x = np.stack([np.sin(2 * np.pi * 5.0 * t), 0.5 * np.sin(2 * np.pi * 12.0 * t)])
    y, new_fs = resample_signal(x, fs, target)

    assert new_fs == pytest.approx(target)
    assert y.shape == (2, round(10 * target))
    assert y.dtype == np.float32
    for lead, freq in ((0, 5.0), (1, 12.0)):
        spectrum = np.abs(np.fft.rfft(y[lead]))
        peak = np.fft.rfftfreq(y.shape[1], 1 / new_fs)[spectrum.argmax()]
        assert peak == pytest.approx(freq, abs=0.1)
    # amplitude kept away from the edges
    assert np.abs(y[0, 50:-50]).max() == pytest.approx(1.0, abs=0.02)


def test_resample_transform_updates_meta_without_mutating() -> None:
    x = np.random.default_rng(0).normal(size=(3, 5000)).astype(np.float32)
    meta = _meta(500.0, 5000, 3)
    x0, meta0 = x.copy(), copy.deepcopy(meta)

    y, out = Resample(100.0)(x, meta)

    assert y.shape == (3, 1000)
    assert out["fs"] == 100.0 and out["fs_original"] == 500.0
    assert out["n_samples"] == 1000 and out["duration_s"] == pytest.approx(10.0)
    np.testing.assert_array_equal(x, x0)
    assert meta == meta0


# ------------------------------------------------------------------------ filtering


def test_bandpass_removes_wander_and_mains_keeps_qrs_band() -> None:
    fs = 250.0
    t = np.arange(int(20 * fs)) / fs
    wander = 2.0 * np.sin(2 * np.pi * 0.1 * t)
    keep = np.sin(2 * np.pi * 10.0 * t)
    mains = 0.5 * np.sin(2 * np.pi * 60.0 * t)
    x = (wander + keep + mains)[None, :]

    y, edges = bandpass_filter(x, fs, 0.5, 40.0, order=4)

    assert edges == (0.5, 40.0)
    inner = slice(int(2 * fs), int(-2 * fs))  # away from filtfilt edge effects
    before, after = x[0, inner], y[0, inner].astype(np.float64)
    ratio = {f: _tone_power(after, fs, f) / _tone_power(before, fs, f) for f in (0.1, 10.0, 60.0)}
    assert ratio[10.0] == pytest.approx(1.0, abs=0.02)
    assert ratio[0.1] < 1e-3
    assert ratio[60.0] < 5e-3  # 4th-order Butterworth at 40 Hz, applied forward and back
    # zero phase: the kept tone is not shifted
    assert np.corrcoef(after, keep[inner])[0, 1] > 0.999


def test_bandpass_clamps_upper_edge_below_nyquist() -> None:
    fs = 50.0
    x = np.random.default_rng(1).normal(size=(2, 500))
    y, out = BandpassFilter(0.5, 40.0)(x, _meta(fs, 500, 2))
    assert out["bandpass_hz"] == (0.5, pytest.approx(0.95 * 25.0))
    assert np.isfinite(y).all() and y.shape == (2, 500)


def test_bandpass_handles_signal_shorter_than_default_padding() -> None:
    y, _ = bandpass_filter(np.random.default_rng(2).normal(size=(1, 20)), 100.0, 0.5, 40.0)
    assert y.shape == (1, 20) and np.isfinite(y).all()


def test_clean_ecg_removes_baseline_wander() -> None:
    nk = importlib.import_module("neurokit2")
    fs = 250.0
    ecg = nk.ecg_simulate(duration=10, sampling_rate=int(fs), heart_rate=70, random_state=3)
    t = np.arange(ecg.size) / fs
    wander = 1.5 * np.sin(2 * np.pi * 0.15 * t)
    y, out = CleanECG("neurokit")((ecg + wander)[None, :], _meta(fs, ecg.size))
    inner = slice(500, -500)
    assert _tone_power(y[0, inner].astype(float), fs, 0.15) < 0.01 * _tone_power(
        wander[inner], fs, 0.15
    )
    assert out["ecg_clean"] == "neurokit"


# ------------------------------------------------------------------- crop and pad


def test_crop_center_start_and_pad_mask() -> None:
    x = np.arange(10, dtype=np.float32)[None, :]

    y, mask, start = crop_or_pad(x, 4, "center")
    np.testing.assert_array_equal(y[0], [3, 4, 5, 6])
    assert mask.all() and start == 0

    y, _, _ = crop_or_pad(x, 4, "start")
    np.testing.assert_array_equal(y[0], [0, 1, 2, 3])

    y, mask, start = crop_or_pad(x, 14, "center")
    assert y.shape == (1, 14) and start == 2
    np.testing.assert_array_equal(y[0, 2:12], x[0])
    np.testing.assert_array_equal(mask, [False] * 2 + [True] * 10 + [False] * 2)
    assert np.all(y[0, ~mask] == 0)

    y, mask, start = crop_or_pad(x, 14, "start")
    assert start == 0 and mask[:10].all() and not mask[10:].any()


def test_random_crop_is_seeded_and_in_range() -> None:
    x = np.arange(1000, dtype=np.float32)[None, :]
    a = CropOrPad(100, "random").set_random_state(7)
    b = CropOrPad(100, "random").set_random_state(7)
    firsts = [a(x, _meta(100.0, 1000))[0][0, 0] for _ in range(5)]
    assert firsts == [b(x, _meta(100.0, 1000))[0][0, 0] for _ in range(5)]
    assert len(set(firsts)) > 1
    for f in firsts:  # every window is a contiguous slice of the input
        assert 0 <= f <= 900


def test_crop_or_pad_records_validity_in_meta() -> None:
    y, out = CropOrPad(1000)(np.ones((2, 600)), _meta(100.0, 600, 2))
    assert y.shape == (2, 1000)
    assert out["n_valid"] == 600 and out["valid_start"] == 200
    assert out["valid_mask"].dtype == bool and out["valid_mask"].sum() == 600
    assert out["n_samples"] == 1000 and out["duration_s"] == pytest.approx(10.0)


# ------------------------------------------------------------------ normalization


def test_zscore_per_lead_against_numpy(dicom_path: Path) -> None:
    x = pydicom.dcmread(dicom_path).waveform_array(0).T
    y = zscore_leads(x).astype(np.float64)  # float32 result; check stats in float64
    np.testing.assert_allclose(y.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=1), 1, atol=1e-5)
    expected = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_zscore_flat_lead_and_padding_stay_zero() -> None:
    rng = np.random.default_rng(4)
    x = np.stack([rng.normal(5, 3, 100), np.full(100, 7.0)])
    mask = np.zeros(100, dtype=bool)
    mask[10:90] = True
    x[:, ~mask] = 0.0  # padding

    y, _ = NormalizeLeads()(x, _meta(100.0, 100, 2, valid_mask=mask))

    assert np.isfinite(y).all()
    assert np.all(y[1] == 0)  # flat lead: no division by zero
    assert np.all(y[:, ~mask] == 0)  # padding stays zero
    assert y[0, mask].mean() == pytest.approx(0, abs=1e-6)
    assert y[0, mask].std() == pytest.approx(1, abs=1e-5)


# ------------------------------------------------------------------ lead selection


def test_select_leads_by_name_and_count() -> None:
    x = np.arange(12, dtype=np.float32)[:, None] * np.ones((12, 5), dtype=np.float32)
    names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    meta = _meta(100.0, 5, 12, lead_names=names, units=[f"u{i}" for i in range(12)])

    y, out = SelectLeads(lead_names=["v5", "II"])(x, meta)
    np.testing.assert_array_equal(y[:, 0], [10, 1])
    assert out["lead_names"] == ["V5", "II"] and out["units"] == ["u10", "u1"]

    y, out = SelectLeads(n_leads=3)(x, meta)
    assert y.shape == (3, 5) and out["lead_names"] == ["I", "II", "III"] and out["n_leads"] == 3


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"n_leads": 3}, "n_leads=3"), ({"lead_names": ["I", "V9"]}, "V9")],
)
def test_select_leads_errors_name_case_and_file(kwargs: dict, needle: str) -> None:
    meta = _meta(100.0, 5, 2, lead_names=["I", "II"], path="/data/c9.hea")
    with pytest.raises(ModalityLoadError) as info:
        SelectLeads(**kwargs)(np.zeros((2, 5)), meta, case_id="c9")
    msg = str(info.value)
    assert needle in msg and "c9" in msg and "c9.hea" in msg


# ------------------------------------------------------------- dictionary wrappers


def test_dict_transforms_copy_and_skip_missing() -> None:
    x = np.random.default_rng(5).normal(size=(2, 2000)).astype(np.float32)
    data = {"case_id": "c1", "signal": x, "signal_meta": _meta(200.0, 2000, 2), "label": 1}
    frozen = copy.deepcopy(data)
    chain = [
        SelectLeadsd("signal", n_leads=1),
        Resampled("signal", target_fs=100.0),
        BandpassFilterd("signal", low=0.5, high=40.0),
        CropOrPadd("signal", length=1500),
        NormalizeLeadsd("signal"),
    ]
    d = data
    for t in chain:
        d = t(d)
    assert d["signal"].shape == (1, 1500) and d["signal"].dtype == np.float32
    assert d["signal_meta"]["fs"] == 100.0 and d["signal_meta"]["n_valid"] == 1000
    assert d["label"] == 1
    # input untouched
    np.testing.assert_array_equal(data["signal"], frozen["signal"])
    assert data["signal_meta"] == frozen["signal_meta"]
    assert data.keys() == frozen.keys()

    missing = {"case_id": "c2", "signal": None}
    for t in chain:
        assert t(missing) == {"case_id": "c2", "signal": None}
    with pytest.raises(KeyError):
        Resampled("signal", target_fs=100.0)({"case_id": "c3"})
    assert Resampled("signal", 100.0, allow_missing_keys=True)({"case_id": "c3"}) == {
        "case_id": "c3"
    }


def test_dict_transform_without_meta_is_a_clear_error() -> None:
    with pytest.raises(ModalityLoadError, match="signal_meta"):
        Resampled("signal", 100.0)({"case_id": "c4", "signal": np.zeros((1, 10))})


def test_load_signald_reads_fs_column_and_treats_blank_as_missing(tmp_path: Path) -> None:
    np.save(tmp_path / "c5.npy", np.zeros((300, 2)))
    d = LoadSignald("signal")(
        {"case_id": "c5", "signal": str(tmp_path / "c5.npy"), "signal_fs": 50}
    )
    assert d["signal"].shape == (2, 300) and d["signal_meta"]["fs"] == 50.0
    for blank in (None, "", float("nan")):
        out = LoadSignald("signal")({"case_id": "c6", "signal": blank})
        assert out["signal"] is None and "signal_meta" not in out


# ------------------------------------------------------------------------ pipeline


def test_pipeline_on_dicom_ecg(dicom_path: Path) -> None:
    cfg = SignalTransformConfig(n_leads=12)
    out = build_signal_transforms(cfg)({"case_id": "c001", "signal": str(dicom_path)})
    x, meta = out["signal"], out["signal_meta"]
    assert x.shape == (12, 1000) and x.dtype == np.float32
    assert meta["fs"] == 100.0 and meta["fs_original"] == 1000.0
    assert meta["valid_mask"].all()
    np.testing.assert_allclose(x.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=1), 1, atol=1e-4)
    # the pipeline equals the array transforms composed by hand
    ref = pydicom.dcmread(dicom_path).waveform_array(0).T
    ref, fs = resample_signal(ref, 1000.0, 100.0)
    ref, _ = bandpass_filter(ref, fs, 0.5, 40.0)
    ref = zscore_leads(crop_or_pad(ref, 1000)[0])
    np.testing.assert_allclose(x, ref, atol=1e-4)


def test_pipeline_pads_short_ppg_and_crops_long_ppg(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():  # heartpy imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        import heartpy

        ppg, _ = heartpy.load_exampledata(0)  # 100 Hz, 24.83 s
    np.save(tmp_path / "long.npy", np.asarray(ppg))
    np.save(tmp_path / "short.npy", np.asarray(ppg)[:600])
    tf = build_signal_transforms(SignalTransformConfig(target_fs=50.0, duration_s=10.0))

    long = tf({"case_id": "p1", "signal": str(tmp_path / "long.npy"), "signal_fs": 100.0})
    short = tf({"case_id": "p2", "signal": str(tmp_path / "short.npy"), "signal_fs": 100.0})

    assert long["signal"].shape == short["signal"].shape == (1, 500)
    assert long["signal_meta"]["n_valid"] == 500
    mask = short["signal_meta"]["valid_mask"]
    assert short["signal_meta"]["n_valid"] == 300 == mask.sum()
    assert np.all(short["signal"][0, ~mask] == 0)
    assert short["signal"][0, mask].std() == pytest.approx(1, abs=1e-4)


def test_pipeline_random_crop_is_reproducible(dicom_path: Path) -> None:
    cfg = SignalTransformConfig(crop="random", duration_s=2.0, normalize="none", bandpass=None)
    a = build_signal_transforms(cfg)
    b = build_signal_transforms(cfg)
    a.set_random_state(3)
    b.set_random_state(3)
    d = {"case_id": "c1", "signal": str(dicom_path)}
    xa = [a(d)["signal"] for _ in range(3)]
    xb = [b(d)["signal"] for _ in range(3)]
    for u, v in zip(xa, xb, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(xa[0], xa[1])
    assert isinstance(a.transforms[-1], RandCropOrPadd)


def test_pipeline_raises_clinfuse_errors_not_monai_runtime_errors(tmp_path: Path) -> None:
    tf = build_signal_transforms(SignalTransformConfig())
    with pytest.raises(DataFileNotFoundError) as info:
        tf({"case_id": "c404", "signal": str(tmp_path / "c404.hea")})
    assert "c404" in str(info.value)
    assert tf({"case_id": "c0", "signal": None})["signal"] is None


def test_pipeline_without_load(tmp_path: Path) -> None:
    tf = build_signal_transforms(SignalTransformConfig(bandpass=None), load=False)
    d = {"case_id": "c1", "signal": np.ones((1, 2000)), "signal_meta": _meta(200.0, 2000)}
    out = tf(d)
    assert out["signal"].shape == (1, 1000)
    assert np.all(out["signal"] == 0)  # flat lead after z-score


# -------------------------------------------------------------------------- config


def test_config_defaults_and_validation() -> None:
    cfg = SignalTransformConfig()
    assert (cfg.target_fs, cfg.duration_s, cfg.bandpass) == (100.0, 10.0, (0.5, 40.0))
    assert (cfg.crop, cfg.normalize, cfg.n_leads, cfg.lead_names) == (
        "center",
        "zscore",
        None,
        None,
    )
    assert cfg.n_samples == 1000
    assert SignalTransformConfig.model_validate(cfg.model_dump()) == cfg
    for bad in (
        {"target_fs": 0},
        {"bandpass": (40.0, 0.5)},
        {"bandpass": (60.0, 80.0)},  # low edge above Nyquist of 100 Hz
        {"crop": "middle"},
        {"n_leads": 2, "lead_names": ["I"]},
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            SignalTransformConfig(**bad)
    for field in SignalTransformConfig.model_fields.values():
        assert field.description
