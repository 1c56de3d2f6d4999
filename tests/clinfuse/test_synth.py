"""Tests of clinfuse.synth: the demo cohort in real formats.

Files are read back with pydicom and wfdb directly (not through clinfuse), and the
latent statistics are checked against ``sklearn.metrics.roc_auc_score``.
"""

from __future__ import annotations

import filecmp
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinfuse.errors import ConfigError
from clinfuse.synth import BETA, MARKER_FILE, SITES, simulate_latents, synthesize_cohort

N_CASES = 48
SEED = 5
IMAGE_SIZE = 64
FS = 100
SECONDS = 10.0
MANIFEST_COLUMNS = [
    "case_id",
    "patient_id",
    "label",
    "site",
    "image",
    "note",
    "signal",
    "age",
    "sex",
    "crp",
    "wbc",
    "lactate",
    "heart_rate",
    "sbp",
    "age_band",
]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "demo_cohort.md"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    calls: list[tuple[int, int]] = []
    manifest = synthesize_cohort(
        out, n_cases=N_CASES, seed=SEED, progress=lambda i, n: calls.append((i, n))
    )
    assert manifest == out / "manifest.csv"
    assert calls == [(i, N_CASES) for i in range(1, N_CASES + 1)]
    return out


@pytest.fixture(scope="module")
def manifest(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort / "manifest.csv", keep_default_na=False, na_values=[""])


@pytest.fixture(scope="module")
def truth(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort / "truth.csv").set_index("case_id")


# --------------------------------------------------------------------------- manifest


def test_manifest_satisfies_contract(cohort: Path, manifest: pd.DataFrame) -> None:
    assert list(manifest.columns) == MANIFEST_COLUMNS  # no split column
    assert len(manifest) == N_CASES
    assert manifest["case_id"].is_unique
    assert set(manifest["label"]) == {0, 1}
    assert set(manifest["site"]) <= {s[0] for s in SITES}
    assert set(manifest["sex"].dropna()) <= {"F", "M"}
    # About 10 % of patients have a second encounter.
    counts = manifest["patient_id"].value_counts()
    assert counts.max() == 2
    assert 2 <= (counts == 2).sum() <= 8
    for col in ("image", "note", "signal"):
        for rel in manifest[col].dropna():
            assert not Path(rel).is_absolute()
            assert (cohort / rel).exists(), rel
    assert manifest["signal"].dropna().str.endswith(".hea").all()
    # Labs are partly missing; demographics are not.
    assert manifest[["crp", "wbc", "lactate"]].isna().any().any()
    assert manifest[["age", "sex", "age_band"]].notna().all().all()
    assert set(manifest["age_band"]) <= {"18-39", "40-64", "65-79", "80+"}


def test_missing_cells_match_truth_and_no_case_is_empty(
    manifest: pd.DataFrame, truth: pd.DataFrame
) -> None:
    t = truth.loc[manifest["case_id"]]
    for col in ("image", "note", "signal"):
        assert (manifest[col].isna().to_numpy() == t[f"{col}_missing"].to_numpy()).all()
        assert manifest[col].isna().any(), f"default missingness should drop some {col}"
    assert not t[[f"{m}_missing" for m in ("image", "note", "signal", "tabular")]].all(axis=1).any()
    assert (manifest["label"].to_numpy() == t["label"].to_numpy()).all()


def test_every_written_file_is_named_by_the_manifest(cohort: Path, manifest: pd.DataFrame) -> None:
    named = set(manifest["image"].dropna()) | set(manifest["note"].dropna())
    named |= set(manifest["signal"].dropna())
    named |= {s.removesuffix(".hea") + ".dat" for s in manifest["signal"].dropna()}
    written = {f for f in _all_files(cohort) if f.split("/")[0] in ("images", "notes", "signals")}
    assert written == named
    assert {"manifest.csv", "truth.csv", "README.md", MARKER_FILE} <= set(_all_files(cohort))


def test_truth_is_not_in_manifest(manifest: pd.DataFrame) -> None:
    leaked = [c for c in manifest.columns if c.startswith("e_") or "lesion" in c]
    assert leaked == []


# --------------------------------------------------------------------------- DICOM


def _hu(path: Path) -> tuple[object, np.ndarray]:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path)
    return ds, np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=float)


def test_dicom_files_are_valid_ct(cohort: Path, manifest: pd.DataFrame) -> None:
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    institutions = {s[0]: s[3] for s in SITES}
    sops = set()
    for _, row in manifest.dropna(subset=["image"]).iterrows():
        ds, hu = _hu(cohort / row["image"])
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.SOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "CT"
        assert ds.pixel_array.shape == (IMAGE_SIZE, IMAGE_SIZE)
        assert ds.pixel_array.dtype in (np.int16, np.uint16)
        assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
        assert len(ds.PixelSpacing) == 2 and float(ds.SliceThickness) > 0
        assert len(ds.ImagePositionPatient) == 3 and len(ds.ImageOrientationPatient) == 6
        assert re.fullmatch(r"SYNTH\^PATIENT\d{4}", str(ds.PatientName))
        assert ds.PatientID and ds.PatientBirthDate and ds.StudyDate
        assert ds.InstitutionName == institutions[row["site"]]
        sops.add(ds.SOPInstanceUID)
        # CT-like content: air outside, lungs near -800 HU, soft tissue near 40 HU.
        assert np.median(hu[:3, :3]) < -900
        assert np.percentile(hu, 5) < -700
        assert 0 < np.median(hu[(hu > -300) & (hu < 300)]) < 100
        assert hu.max() > 500  # bone
    assert len(sops) == manifest["image"].notna().sum()


def test_lesion_is_brighter_than_its_surroundings(cohort: Path, truth: pd.DataFrame) -> None:
    rows = truth[truth["lesion_present"].astype(str) == "True"]
    assert len(rows) >= 5
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    for cid, t in rows.iterrows():
        _, hu = _hu(cohort / "images" / f"{cid}.dcm")
        d = np.hypot(yy - t["lesion_row"], xx - t["lesion_col"])
        r = t["lesion_radius_px"]
        disc = hu[d <= max(r - 1.0, 1.0)].mean()
        ring = hu[(d >= r + 1.5) & (d <= r + 3.5)].mean()
        assert disc - ring > 0.5 * t["lesion_contrast_hu"], cid
        assert 60 <= t["lesion_contrast_hu"] <= 120


def test_lesion_tracks_image_evidence(truth: pd.DataFrame) -> None:
    t = truth[truth["image_missing"] == False]  # noqa: E712
    present = t["lesion_present"].astype(str) == "True"
    assert t.loc[present, "e_image"].mean() > t.loc[~present, "e_image"].mean() + 0.5


def test_volume_series(tmp_path: Path) -> None:
    import pydicom

    out = tmp_path / "vol"
    synthesize_cohort(out, n_cases=6, seed=1, volumes=True, image_size=48, missing=0.0)
    m = pd.read_csv(out / "manifest.csv")
    t = pd.read_csv(out / "truth.csv").set_index("case_id")
    yy, xx = np.mgrid[0:48, 0:48]
    for cid, rel in zip(m["case_id"], m["image"], strict=True):
        folder = out / rel
        assert folder.is_dir()
        slices = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
        assert len(slices) == 8
        assert len({s.SeriesInstanceUID for s in slices}) == 1
        assert len({s.SOPInstanceUID for s in slices}) == 8
        slices.sort(key=lambda s: int(s.InstanceNumber))
        z = [float(s.ImagePositionPatient[2]) for s in slices]
        assert np.allclose(np.diff(z), float(slices[0].SliceThickness))
        if str(t.loc[cid, "lesion_present"]) == "True":
            from pydicom.pixels import apply_modality_lut

            k = int(t.loc[cid, "lesion_slice"])
            hu = apply_modality_lut(slices[k].pixel_array, slices[k])
            d = np.hypot(yy - t.loc[cid, "lesion_row"], xx - t.loc[cid, "lesion_col"])
            r = t.loc[cid, "lesion_radius_px"]
            assert hu[d <= max(r - 1, 1)].mean() > hu[(d >= r + 1.5) & (d <= r + 3.5)].mean()


# --------------------------------------------------------------------------- WFDB


def test_wfdb_records_read_back(cohort: Path, manifest: pd.DataFrame, truth: pd.DataFrame) -> None:
    import wfdb
    from scipy.signal import find_peaks

    paths = manifest.dropna(subset=["signal"])
    assert len(paths) > 0
    for cid, rel in zip(paths["case_id"], paths["signal"], strict=True):
        rec = wfdb.rdrecord(str(cohort / rel).removesuffix(".hea"))
        assert rec.fs == FS
        assert rec.n_sig == 2 and rec.sig_name == ["I", "II"]
        assert rec.sig_len == int(FS * SECONDS)
        assert rec.units == ["mV", "mV"]
        assert rec.fmt == ["16", "16"]
        lead2 = rec.p_signal[:, 1]
        assert 0.5 < np.ptp(lead2) < 5.0  # millivolt-scale ECG
        # The waveform carries the heart rate recorded in truth.csv (regular rhythms).
        if truth.loc[cid, "ecg_irregular"] in (False, "False"):
            # QRS complexes have by far the steepest slopes of the beat.
            slope = np.abs(np.diff(lead2))
            peaks, _ = find_peaks(slope, height=0.4 * slope.max(), distance=int(0.25 * FS))
            hr = 60.0 * FS / np.median(np.diff(peaks))
            assert abs(hr - truth.loc[cid, "ecg_heart_rate"]) < 0.12 * hr, cid


# --------------------------------------------------------------------------- notes


def test_notes_are_utf8_and_mention_findings(
    cohort: Path, manifest: pd.DataFrame, truth: pd.DataFrame
) -> None:
    rows = manifest.dropna(subset=["note"])
    n_phi = 0
    for cid, rel in zip(rows["case_id"], rows["note"], strict=True):
        text = (cohort / rel).read_bytes().decode("utf-8")
        lower = text.lower()
        words = len(text.split())
        assert 60 <= words <= 200, (cid, words)
        for section in ("HPI:", "PMH:", "Exam:", "A/P:"):
            assert section in text
        findings = str(truth.loc[cid, "note_findings"]).split(";")
        assert ("crackles" in text) == ("crackles" in findings)
        assert ("CTAB" in text) == ("crackles" not in findings)
        assert ("denies fever" in lower or "no fevers" in lower) == ("fever" not in findings)
        phi = truth.loc[cid, "note_phi"]
        if isinstance(phi, str) and phi:
            n_phi += 1
            for item in phi.split("|"):
                assert item in text
    assert 0 < n_phi < len(rows)


# --------------------------------------------------------------------------- determinism


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_same_seed_is_byte_identical_and_seeds_differ(tmp_path: Path) -> None:
    a = synthesize_cohort(tmp_path / "a", n_cases=12, seed=11).parent
    b = synthesize_cohort(tmp_path / "b", n_cases=12, seed=11).parent
    c = synthesize_cohort(tmp_path / "c", n_cases=12, seed=12).parent
    files = _all_files(a)
    assert files == _all_files(b)
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert mismatch == [] and errors == []
    assert (a / "manifest.csv").read_bytes() != (c / "manifest.csv").read_bytes()
    import pydicom

    img_a = sorted((a / "images").glob("*.dcm"))[0]
    img_c = sorted((c / "images").glob("*.dcm"))[0]
    assert pydicom.dcmread(img_a).StudyInstanceUID != pydicom.dcmread(img_c).StudyInstanceUID


# --------------------------------------------------------------------------- target folder


def test_refuses_foreign_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        synthesize_cohort(out, n_cases=5)
    assert _all_files(out) == ["precious.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_overwrites_previous_synth_output_and_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "c"
    out.mkdir()
    synthesize_cohort(out, n_cases=5, seed=0)
    assert (out / MARKER_FILE).is_file()
    synthesize_cohort(out, n_cases=7, seed=1)
    assert len(pd.read_csv(out / "manifest.csv")) == 7
    assert len(list((out / "notes").iterdir())) <= 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temp folders left


def test_failure_leaves_no_half_cohort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clinfuse.synth.generator as gen

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(gen, "_render_signal", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        synthesize_cohort(tmp_path / "c", n_cases=10, missing=0.0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"uninformative": ["ecg"]},
        {"missing": {"image": 1.5}},
        {"missing": {"xray": 0.1}},
        {"n_cases": 0},
        {"image_size": 8},
        {"n_leads": 13},
    ],
)
def test_bad_arguments_raise_config_error(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        synthesize_cohort(tmp_path / "c", **{"n_cases": 5, **kwargs})
    assert not (tmp_path / "c").exists()


# --------------------------------------------------------------------------- statistics


def _aurocs(lat: pd.DataFrame) -> tuple[dict[str, float], float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    cols = ["e_image", "e_note", "e_signal", "e_tabular"]
    single = {c: roc_auc_score(lat["label"], lat[c]) for c in cols}
    half = len(lat) // 2
    train, test = lat.iloc[:half], lat.iloc[half:]
    lr = LogisticRegression().fit(train[cols], train["label"])
    fused = roc_auc_score(test["label"], lr.predict_proba(test[cols])[:, 1])
    return single, fused


def test_latent_evidence_auroc_per_modality_and_fused() -> None:
    lat = simulate_latents(4000, seed=0)
    single, fused = _aurocs(lat)
    for name, auc in single.items():
        assert 0.65 <= auc <= 0.85, (name, auc)
    assert fused >= max(single.values()) + 0.05
    assert 0.85 <= fused <= 0.93


def test_uninformative_modality_has_chance_auroc() -> None:
    lat = simulate_latents(4000, seed=0, uninformative=["tabular"])
    single, _ = _aurocs(lat)
    assert abs(single["e_tabular"] - 0.5) <= 0.05
    assert single["e_image"] >= 0.65


def test_latent_structure_sites_missingness_and_repeats() -> None:
    lat = simulate_latents(4000, seed=2)
    prev = lat.groupby("site")["label"].mean()
    for name, _, p, _ in SITES:
        assert abs(prev[name] - p) < 0.05
    assert 0.09 <= lat["image_missing"].mean() <= 0.15
    assert 0.07 <= lat["note_missing"].mean() <= 0.13
    assert 0.12 <= lat["signal_missing"].mean() <= 0.18
    n_pat = lat["patient_id"].nunique()
    assert 0.08 <= (len(lat) - n_pat) / n_pat <= 0.12
    # A patient keeps site and sex across encounters.
    assert (lat.groupby("patient_id")[["site", "sex"]].nunique() == 1).all().all()
    # Forcing every modality missing still leaves exactly one per case.
    forced = simulate_latents(500, seed=2, missing={m: 1.0 for m in BETA})
    miss = forced[[f"{m}_missing" for m in BETA]]
    assert (miss.sum(axis=1) == 3).all()


def test_docs_describe_the_constants() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for m, b in BETA.items():
        assert re.search(rf"\b{m}\b.*{b:.2f}", text), m
    for name, _, p, _ in SITES:
        assert re.search(rf"{name}.*{p:.2f}", text), name
