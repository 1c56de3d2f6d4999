"""Tests of clinfuse.io.signal.load_signal on real sample files.

References: pydicom's ``waveform_ecg.dcm`` read directly with
``ds.waveform_array(0)``; a WFDB record written by ``wfdb.wrsamp`` from a
neurokit2 ``ecg_simulate`` ECG; an EDF written by pyedflib; heartpy's
example PPG (100 Hz) saved as .npy/.csv.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from clinfuse.errors import DataFileNotFoundError, ModalityLoadError
from clinfuse.io.signal import load_signal

pydicom = pytest.importorskip("pydicom")
wfdb = pytest.importorskip("wfdb")
pyedflib = pytest.importorskip("pyedflib")

TWELVE_LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


@pytest.fixture(scope="module")
def dicom_path() -> Path:
    from pydicom import examples

    return Path(examples.get_path("waveform"))


@pytest.fixture(scope="module")
def ppg() -> np.ndarray:
    with warnings.catch_warnings():  # heartpy imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        import heartpy

        data, _ = heartpy.load_exampledata(0)
    return np.asarray(data, dtype=np.float64)


@pytest.fixture(scope="module")
def ecg() -> np.ndarray:
    """Two leads, 10 s at 250 Hz, from neurokit2's ECG simulator: (samples, 2)."""
    nk = pytest.importorskip("neurokit2")
    a = nk.ecg_simulate(duration=10, sampling_rate=250, heart_rate=70, random_state=1)
    b = nk.ecg_simulate(duration=10, sampling_rate=250, heart_rate=70, random_state=2)
    return np.stack([a, 0.5 * b], axis=1)


@pytest.fixture(scope="module")
def wfdb_record(tmp_path_factory: pytest.TempPathFactory, ecg: np.ndarray) -> Path:
    folder = tmp_path_factory.mktemp("wfdb")
    wfdb.wrsamp(
        "c007",
        fs=250,
        units=["mV", "mV"],
        sig_name=["II", "V5"],
        p_signal=ecg,
        fmt=["16", "16"],
        comments=["Patient: Jane Roe"],
        write_dir=str(folder),
    )
    return folder / "c007.hea"


def _write_edf(path: Path, signals: list[np.ndarray], rates: list[float]) -> None:
    from pyedflib import highlevel

    headers = []
    for label, rate in zip(["ECG", "PPG", "RESP"], rates, strict=False):
        headers += highlevel.make_signal_headers(
            [label], dimension="mV", sample_frequency=rate, physical_min=-5.0, physical_max=5.0
        )
    header = highlevel.make_header(patientname="John Doe", birthdate="01 jan 1970")
    highlevel.write_edf(
        str(path), [np.ascontiguousarray(s) for s in signals], headers, header=header
    )


# ------------------------------------------------------------------------- DICOM


def test_dicom_waveform_matches_pydicom(dicom_path: Path) -> None:
    ds = pydicom.dcmread(dicom_path)
    reference = ds.waveform_array(0).T  # pydicom's own decoder, sensitivity applied

    x, meta = load_signal(dicom_path, case_id="c001")

    assert x.shape == (12, 10000)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, reference.astype(np.float32))
    assert meta["fs"] == 1000.0
    assert meta["format"] == "dicom_waveform"
    assert meta["lead_names"] == TWELVE_LEADS
    assert meta["units"] == ["uV"] * 12
    assert meta["n_samples"] == 10000
    assert meta["duration_s"] == pytest.approx(10.0)
    assert meta["nan_fraction"] == 0.0
    # no PHI from the header in the meta
    text = repr(meta)
    for phi in (str(ds.PatientID), str(ds.PatientBirthDate)):
        assert phi not in text


def test_dicom_without_extension_is_sniffed(tmp_path: Path, dicom_path: Path) -> None:
    copy = tmp_path / "ecg_export"
    shutil.copy(dicom_path, copy)
    x, meta = load_signal(copy)
    assert meta["format"] == "dicom_waveform"
    assert x.shape == (12, 10000)


# -------------------------------------------------------------------------- WFDB


def test_wfdb_round_trip_within_adc_quantization(wfdb_record: Path, ecg: np.ndarray) -> None:
    header = wfdb.rdheader(str(wfdb_record.with_suffix("")))
    step = 1.0 / np.asarray(header.adc_gain)  # one ADC unit in mV, per lead

    for path in (wfdb_record, wfdb_record.with_suffix("")):  # .hea or bare record name
        x, meta = load_signal(path, case_id="c007")
        assert x.shape == (2, 2500)
        assert meta["format"] == "wfdb"
        assert meta["fs"] == 250.0
        assert meta["lead_names"] == ["II", "V5"]
        assert meta["units"] == ["mV", "mV"]
        err = np.abs(x - ecg.T).max(axis=1)
        assert np.all(err <= step * 0.5 + 1e-6), (err, step)
        assert "Jane Roe" not in repr(meta)


def test_wfdb_missing_dat_is_file_not_found(tmp_path: Path, wfdb_record: Path) -> None:
    shutil.copy(wfdb_record, tmp_path / wfdb_record.name)  # header only
    with pytest.raises(DataFileNotFoundError) as info:
        load_signal(tmp_path / wfdb_record.name, case_id="c007")
    assert "c007" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_manifest_fs_must_agree_with_file(wfdb_record: Path) -> None:
    _, meta = load_signal(wfdb_record, fs=250.0)  # agreeing value is fine
    assert meta["fs"] == 250.0
    load_signal(wfdb_record, fs=float("nan"))  # empty manifest cell = not given
    with pytest.raises(ModalityLoadError, match="500 Hz"):
        load_signal(wfdb_record, fs=500.0, case_id="c007")


# --------------------------------------------------------------------------- EDF


def test_edf_round_trip(tmp_path: Path, ecg: np.ndarray) -> None:
    path = tmp_path / "c010.edf"
    signals = [ecg[:, 0], ecg[:, 1]]
    _write_edf(path, signals, [250, 250])

    x, meta = load_signal(path, case_id="c010")

    assert x.shape == (2, 2500)
    assert meta["format"] == "edf"
    assert meta["fs"] == 250.0
    assert meta["lead_names"] == ["ECG", "PPG"]
    assert meta["units"] == ["mV", "mV"]
    step = 10.0 / 65535  # physical range / digital range
    np.testing.assert_allclose(x, ecg.T, atol=step)
    assert "John Doe" not in repr(meta)


def test_edf_mixed_rates_names_channels(tmp_path: Path, ecg: np.ndarray) -> None:
    path = tmp_path / "c011.edf"
    _write_edf(path, [ecg[:, 0], ecg[::2, 1]], [250, 125])
    with pytest.raises(ModalityLoadError) as info:
        load_signal(path, case_id="c011")
    msg = str(info.value)
    assert "ECG=250 Hz" in msg and "PPG=125 Hz" in msg
    assert "resample" in msg and "c011" in msg and "c011.edf" in msg


# ------------------------------------------------------------------- npy and csv


def test_npy_ppg_orientations(tmp_path: Path, ppg: np.ndarray) -> None:
    n = ppg.size
    cases = {
        "one.npy": (ppg, (1, n)),
        "samples_leads.npy": (np.stack([ppg, -ppg], axis=1), (2, n)),
        "leads_samples.npy": (np.stack([ppg, -ppg], axis=0), (2, n)),
    }
    for name, (arr, shape) in cases.items():
        np.save(tmp_path / name, arr.astype(np.float32))
        x, meta = load_signal(tmp_path / name, fs=100, case_id="p1")
        assert x.shape == shape, name
        np.testing.assert_array_equal(x[0], ppg.astype(np.float32))
        assert meta["format"] == "npy"
        assert meta["fs"] == 100.0
        assert meta["units"] is None
        assert meta["duration_s"] == pytest.approx(n / 100)
        assert meta["lead_names"] == [f"lead_{i}" for i in range(shape[0])]


def test_csv_with_and_without_header(tmp_path: Path, ppg: np.ndarray) -> None:
    both = np.stack([ppg, ppg / 2], axis=1)
    np.savetxt(tmp_path / "h.csv", both, delimiter=",", header="PPG,PPG_half", comments="")
    np.savetxt(tmp_path / "n.csv", both, delimiter=",")
    np.savetxt(tmp_path / "one.csv", ppg, delimiter=",")

    x, meta = load_signal(tmp_path / "h.csv", fs=100)
    assert x.shape == (2, ppg.size)
    assert meta["lead_names"] == ["PPG", "PPG_half"]
    assert meta["format"] == "csv"
    np.testing.assert_allclose(x, both.T, rtol=1e-6)

    x, meta = load_signal(tmp_path / "n.csv", fs=100)
    assert x.shape == (2, ppg.size)
    assert meta["lead_names"] == ["lead_0", "lead_1"]

    x, _ = load_signal(tmp_path / "one.csv", fs=100)
    assert x.shape == (1, ppg.size)


def test_csv_header_fixes_orientation_for_short_tables(tmp_path: Path) -> None:
    # 2 samples of 3 named leads: rows < columns, but the header says columns are leads
    (tmp_path / "short.csv").write_text("a,b,c\n1,2,3\n4,5,6\n")
    x, meta = load_signal(tmp_path / "short.csv", fs=1)
    assert meta["lead_names"] == ["a", "b", "c"]
    np.testing.assert_array_equal(x, [[1, 4], [2, 5], [3, 6]])


def test_csv_time_column_is_not_a_lead(tmp_path: Path) -> None:
    (tmp_path / "timed.csv").write_text("Time,ecg\n0.00,1\n0.01,2\n0.02,3\n")
    x, meta = load_signal(tmp_path / "timed.csv", fs=100)
    assert meta["lead_names"] == ["ecg"]
    np.testing.assert_array_equal(x, [[1, 2, 3]])
    (tmp_path / "only.csv").write_text("time\n0\n1\n")
    with pytest.raises(ModalityLoadError, match="time stamps only"):
        load_signal(tmp_path / "only.csv", fs=1)


def test_partial_nan_is_interpolated_and_nan_lead_zeroed(tmp_path: Path) -> None:
    t = np.arange(100, dtype=np.float64)
    arr = np.stack([t.copy(), 2 * t, np.full(100, np.nan)])
    arr[0, 10:20] = np.nan
    arr[1, :5] = np.nan  # leading gap: nearest valid value
    arr[1, 50] = np.inf  # inf counts as missing
    np.save(tmp_path / "gaps.npy", arr)

    x, meta = load_signal(tmp_path / "gaps.npy", fs=50)

    np.testing.assert_allclose(x[0], t)  # linear ramp interpolated exactly
    np.testing.assert_allclose(x[1, :5], 10.0)
    assert x[1, 50] == pytest.approx(100.0)
    assert np.all(x[2] == 0)
    assert np.isfinite(x).all()
    assert meta["nan_leads"] == ["lead_2"]
    assert meta["nan_fraction"] == pytest.approx((10 + 5 + 1 + 100) / 300)


def test_empty_csv_cells_are_missing_samples(tmp_path: Path) -> None:
    (tmp_path / "holes2.csv").write_text("II,V1\n0,1\n,1\n2,1\n3,1\n")
    x, meta = load_signal(tmp_path / "holes2.csv", fs=1)
    np.testing.assert_allclose(x[0], [0, 1, 2, 3])
    assert meta["nan_fraction"] == pytest.approx(1 / 8)


# ------------------------------------------------------------------- bad inputs


def _missing(tmp: Path, dicom: Path) -> tuple[Path, float | None]:
    return tmp / "case_bad.npy", 100.0


def _missing_record(tmp: Path, dicom: Path) -> tuple[Path, float | None]:
    return tmp / "case_bad", None


def _no_fs(tmp: Path, dicom: Path) -> tuple[Path, float | None]:
    np.save(tmp / "case_bad.npy", np.zeros(100))
    return tmp / "case_bad.npy", None


def _zero_fs(tmp: Path, dicom: Path) -> tuple[Path, float | None]:
    np.save(tmp / "case_bad.npy", np.zeros(100))
    return tmp / "case_bad.npy", 0.0


def _negative_fs(tmp: Path, dicom: Path) -> tuple[Path, float | None]:
    np.savetxt(tmp / "case_bad.csv", np.zeros(100))
    return tmp / "case_bad.csv", -250.0


def _unsupported(tmp: Path, dicom: Path) -> tuple[Path, float | None]:
    (tmp / "case_bad.txt").write_text("1\n2\n")
    return tmp / "case_bad.txt", 100.0


def _ndim3(tmp: Path, dicom: Path) -> tuple[Path, float | None]:
    np.save(tmp / "case_bad.npy", np.zeros((2, 3, 100)))
    return tmp / "case_bad.npy", 100.0


def _zero_samples(tmp: Path, dicom: Path) -> tuple[Path, float | None]:
    np.save(tmp / "case_bad.npy", np.zeros((0, 3)))
    return tmp / "case_bad.npy", 100.0


def _all_nan(tmp: Path, dicom: Path) -> tuple[Path, float | None]:
    np.save(tmp / "case_bad.npy", np.full((2, 100), np.nan))
    return tmp / "case_bad.npy", 100.0


def _object_npy(tmp: Path, dicom: Path) -> tuple[Path, float | None]:
    np.save(tmp / "case_bad.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return tmp / "case_bad.npy", 100.0


def _text_csv(tmp: Path, dicom: Path) -> tuple[Path, float | None]:
    (tmp / "case_bad.csv").write_text("II\n1\n2\nabc\n4\n")
    return tmp / "case_bad.csv", 100.0


def _truncated_dicom(tmp: Path, dicom: Path) -> tuple[Path, float | None]:
    data = dicom.read_bytes()
    (tmp / "case_bad.dcm").write_bytes(data[: len(data) // 2])
    return tmp / "case_bad.dcm", None


def _dicom_image(tmp: Path, dicom: Path) -> tuple[Path, float | None]:
    from pydicom import examples

    shutil.copy(examples.get_path("ct"), tmp / "case_bad.dcm")
    return tmp / "case_bad.dcm", None


def _garbage_edf(tmp: Path, dicom: Path) -> tuple[Path, float | None]:
    (tmp / "case_bad.edf").write_bytes(b"0" * 300)
    return tmp / "case_bad.edf", None


def _truncated_wfdb(tmp: Path, dicom: Path) -> tuple[Path, float | None]:
    sig = np.sin(np.linspace(0, 20, 1000))[:, None] * [1.0, 2.0]
    wfdb.wrsamp("case_bad", fs=100, units=["mV"] * 2, sig_name=["I", "II"], p_signal=sig,
                fmt=["16", "16"], write_dir=str(tmp))  # fmt: skip
    dat = tmp / "case_bad.dat"
    dat.write_bytes(dat.read_bytes()[:1001])
    return tmp / "case_bad.hea", None


BAD_INPUTS: list[tuple[str, Callable[[Path, Path], tuple[Path, float | None]], type]] = [
    ("missing file", _missing, DataFileNotFoundError),
    ("missing WFDB record", _missing_record, DataFileNotFoundError),
    ("npy without fs", _no_fs, ModalityLoadError),
    ("zero fs", _zero_fs, ModalityLoadError),
    ("negative fs", _negative_fs, ModalityLoadError),
    ("unsupported extension", _unsupported, ModalityLoadError),
    ("3-D array", _ndim3, ModalityLoadError),
    ("zero samples", _zero_samples, ModalityLoadError),
    ("all NaN", _all_nan, ModalityLoadError),
    ("object npy", _object_npy, ModalityLoadError),
    ("text in csv", _text_csv, ModalityLoadError),
    ("truncated DICOM", _truncated_dicom, ModalityLoadError),
    ("DICOM image, no waveform", _dicom_image, ModalityLoadError),
    ("garbage EDF", _garbage_edf, ModalityLoadError),
    ("truncated WFDB .dat", _truncated_wfdb, ModalityLoadError),
]


@pytest.mark.parametrize(
    ("make", "exc"), [(m, e) for _, m, e in BAD_INPUTS], ids=[n for n, _, _ in BAD_INPUTS]
)
def test_bad_inputs_raise_named_errors(
    tmp_path: Path, dicom_path: Path, make: Callable, exc: type
) -> None:
    path, fs = make(tmp_path, dicom_path)
    with pytest.raises(exc) as info:
        load_signal(path, fs=fs, case_id="case-042", field="signal")
    err = info.value
    msg = str(err)
    assert "case-042" in msg
    assert "case_bad" in msg  # the file name
    assert "'signal'" in msg  # the field
    assert err.hint  # says what to do
    if exc is ModalityLoadError:
        assert not isinstance(err, DataFileNotFoundError)


def test_missing_fs_hint_names_manifest_column(tmp_path: Path) -> None:
    path, fs = _no_fs(tmp_path, tmp_path)
    with pytest.raises(ModalityLoadError, match="add a `signal_fs` column"):
        load_signal(path, fs=fs, case_id="c1")


def test_library_errors_are_chained(tmp_path: Path, dicom_path: Path) -> None:
    path, _ = _truncated_dicom(tmp_path, dicom_path)
    with pytest.raises(ModalityLoadError) as info:
        load_signal(path, case_id="c1")
    assert info.value.__cause__ is not None


def test_import_clinfuse_does_not_load_readers() -> None:
    import subprocess
    import sys

    code = (
        "import sys, clinfuse, clinfuse.io.signal; "
        "print(sorted(m for m in ('wfdb','pydicom','pyedflib','monai','neurokit2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
