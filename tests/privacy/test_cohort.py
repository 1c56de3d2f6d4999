"""A whole synthetic cohort de-identified: validation, determinism, bad input, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from privacy.cohort import REPORT_NAME, CohortSpec, check_output_folder, deidentify_cohort
from privacy.errors import OutputFolderError, ResidualRiskError
from privacy.pseudonym import Pseudonymizer

SECRET = b"test-secret-0123456789abcdef-0123456789"
OTHER = b"another-secret-9876543210fedcba-98765432"
SPEC = CohortSpec(age_columns=("age",))


def _run(cohort: Path, out: Path, secret: bytes = SECRET, **kw):
    manifest = pd.read_csv(cohort / "manifest.csv", dtype=str)
    return deidentify_cohort(manifest, cohort, out, Pseudonymizer(secret), SPEC, **kw)


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def deid_out(synth_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("deid") / "out"
    return _run(synth_cohort, out)


def test_output_validates_and_loads(deid_out) -> None:
    from clinfuse.cohort import validate_cohort
    from clinfuse.io.image import load_image

    report = validate_cohort(deid_out.manifest_path)
    assert report.errors == [], report.errors[:5]
    frame = pd.read_csv(deid_out.manifest_path, dtype=str)
    assert report.presence["image"] == frame["image"].notna().sum() > 0
    img, _ = load_image(deid_out.out_dir / frame["image"].dropna().iloc[0])
    assert img.ndim >= 3


def test_report_content(deid_out, synth_cohort: Path) -> None:
    report = json.loads((deid_out.out_dir / REPORT_NAME).read_text())
    assert report["residual_risk"]["ok"] and report["residual_risk"]["hits"] == []
    assert report["residual_risk"]["n_values_checked"] > 50
    assert report["counts"]["dicom"]["name"] > 0 and report["counts"]["text"]["NAME"] > 0
    assert report["dicom_profile"]["codes"] == ["113100", "113107"]
    assert report["n_files_not_copied"] == 0
    text = (deid_out.out_dir / REPORT_NAME).read_text()
    original = pd.read_csv(synth_cohort / "manifest.csv", dtype=str)
    for value in [*original["case_id"], *original["patient_id"]]:
        assert value not in text  # no original id in the report
    assert SECRET.decode() not in text


def test_no_original_identifier_in_any_output(deid_out, synth_cohort: Path) -> None:
    truth = pd.read_csv(synth_cohort / "truth.csv", dtype=str)
    secrets = {v for cell in truth["note_phi"].dropna() for v in cell.split("|")}
    original = pd.read_csv(synth_cohort / "manifest.csv", dtype=str)
    secrets |= set(original["case_id"]) | set(original["patient_id"])
    for img in sorted((synth_cohort / "images").glob("*.dcm")):
        ds = pydicom.dcmread(img, stop_before_pixels=True)
        secrets |= {
            str(ds.PatientName),
            ds.PatientID,
            ds.AccessionNumber,
            ds.PatientBirthDate,
            ds.StudyDate,
        }
    blob = "\n".join(
        p.read_bytes().decode("latin-1")
        for p in deid_out.out_dir.rglob("*")
        if p.is_file() and p.suffix != ".dat"
    )
    leaked = sorted(s for s in secrets if s and s in blob)
    assert not leaked


def test_dicom_links_kept_and_marked(deid_out) -> None:
    frame = pd.read_csv(deid_out.manifest_path, dtype=str)
    by_patient: dict[str, set[str]] = {}
    for _, row in frame.dropna(subset=["image"]).iterrows():
        ds = pydicom.dcmread(deid_out.out_dir / row["image"], stop_before_pixels=True)
        assert ds.PatientID == row["patient_id"] and ds.PatientIdentityRemoved == "YES"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        by_patient.setdefault(row["patient_id"], set()).add(ds.PatientID)
    assert all(len(v) == 1 for v in by_patient.values())


def test_ages_over_89_capped(deid_out, synth_cohort: Path) -> None:
    frame = pd.read_csv(deid_out.manifest_path)
    assert frame["age"].max() <= 90


def test_same_key_identical_other_key_different(
    deid_out, synth_cohort: Path, tmp_path: Path
) -> None:
    again = _run(synth_cohort, tmp_path / "again")
    assert _tree(again.out_dir) == _tree(deid_out.out_dir)
    other = _run(synth_cohort, tmp_path / "other", secret=OTHER)
    a = pd.read_csv(deid_out.manifest_path, dtype=str)
    b = pd.read_csv(other.manifest_path, dtype=str)
    assert not set(a["case_id"]) & set(b["case_id"])
    assert not set(a["patient_id"]) & set(b["patient_id"])


@pytest.fixture
def broken_cohort(synth_cohort: Path, tmp_path: Path) -> Path:
    cohort = tmp_path / "broken"
    shutil.copytree(synth_cohort, cohort)
    frame = pd.read_csv(cohort / "manifest.csv", dtype=str)
    img = cohort / frame["image"].dropna().iloc[0]
    img.write_bytes(b"not a dicom file at all")
    note = cohort / frame["note"].dropna().iloc[0]
    note.write_bytes("Patient: Zoë Müller seen today".encode("utf-16"))
    return cohort


def test_bad_files_listed_not_copied(broken_cohort: Path, tmp_path: Path) -> None:
    from clinfuse.cohort import validate_cohort

    result = _run(broken_cohort, tmp_path / "out")
    statuses = sorted((p["column"], p["status"]) for p in result.problems)
    assert statuses == [("image", "error"), ("note", "error")]
    assert any("not UTF-8" in p["reason"] or "utf-8" in p["reason"] for p in result.problems)
    report = json.loads((result.out_dir / REPORT_NAME).read_text())
    assert report["n_files_not_copied"] == 2
    assert str(broken_cohort) not in json.dumps(report)  # original paths stay out
    frame = pd.read_csv(result.manifest_path, dtype=str)
    assert (
        frame["image"].isna().sum()
        == 1 + pd.read_csv(broken_cohort / "manifest.csv")["image"].isna().sum()
    )
    assert validate_cohort(result.manifest_path).errors == []


def test_output_folder_checks(synth_cohort: Path, tmp_path: Path) -> None:
    with pytest.raises(OutputFolderError, match="inside the input"):
        check_output_folder(synth_cohort, synth_cohort / "deid")
    with pytest.raises(OutputFolderError, match="inside the input"):
        check_output_folder(synth_cohort, synth_cohort)
    with pytest.raises(OutputFolderError, match="contains the input"):
        check_output_folder(synth_cohort, synth_cohort.parent)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(OutputFolderError, match="not empty"):
        check_output_folder(synth_cohort, busy)
    assert check_output_folder(synth_cohort, busy, overwrite=True) == busy.resolve()


def test_overwrite_replaces_content(synth_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(OutputFolderError):
        _run(synth_cohort, out)
    assert (out / "stale.txt").exists()
    _run(synth_cohort, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / REPORT_NAME).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_residual_identifier_is_an_error(synth_cohort: Path, tmp_path: Path) -> None:
    cohort = tmp_path / "leaky"
    shutil.copytree(synth_cohort, cohort)
    frame = pd.read_csv(cohort / "manifest.csv", dtype=str)
    first_img = frame["image"].dropna().index[0]
    mrn = pydicom.dcmread(cohort / frame.loc[first_img, "image"], stop_before_pixels=True).PatientID
    frame["hospital_number"] = ""
    frame.loc[first_img, "hospital_number"] = mrn  # an undeclared column holding the MRN
    frame.to_csv(cohort / "manifest.csv", index=False)
    out = tmp_path / "out"
    with pytest.raises(ResidualRiskError, match="nothing was published"):
        _run(cohort, out)
    assert sorted(p.name for p in out.iterdir()) == [REPORT_NAME]
    hits = json.loads((out / REPORT_NAME).read_text())["residual_risk"]["hits"]
    assert hits and hits[0]["file"] == "manifest.csv" and hits[0]["source"] == "PatientID"
    assert mrn not in (out / REPORT_NAME).read_text()


def test_cli_command(synth_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    from clinfuse.deid_cli import DEID_EPILOG, deid, deid_cohort
    from clinfuse.errors import ConfigError

    app = typer.Typer()
    app.command(name="deid", epilog=DEID_EPILOG)(deid)
    app.command(name="noop")(lambda: None)
    key = tmp_path / "site.key"
    key.write_text(SECRET.decode() + "\n")
    runner = CliRunner()
    res = runner.invoke(
        app, ["deid", str(synth_cohort), "--out", str(tmp_path / "o"), "--secret-file", str(key)]
    )
    assert res.exit_code == 0, res.output
    assert "residual-risk check" in res.output
    assert "Examples" in runner.invoke(app, ["deid", "--help"]).output
    monkeypatch.delenv("CLINFUSE_DEID_SECRET", raising=False)
    with pytest.raises(ConfigError, match="no secret"):
        deid_cohort(synth_cohort, tmp_path / "o2")
    with pytest.raises(ConfigError, match="not empty"):
        deid_cohort(synth_cohort, tmp_path / "o", secret_file=key)


def test_privacy_never_imports_clinfuse() -> None:
    import subprocess
    import sys

    code = (
        "import sys, privacy.cohort, privacy.dicom, privacy.text, privacy.pseudonym, "
        "privacy.suppression; bad = [m for m in sys.modules if m.split('.')[0] in "
        "('clinfuse', 'app')]; print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    for path in Path(__file__).resolve().parents[2].joinpath("privacy").glob("*.py"):
        text = path.read_text()
        assert "import clinfuse" not in text and "from clinfuse" not in text, path


def test_generic_columns_waveform_inline_text_dates(tmp_path: Path) -> None:
    # a hand-made manifest: DICOM waveform in the signal column, inline text, a date
    # column and an extra id column, all declared through CohortSpec
    cohort = tmp_path / "c"
    (cohort / "img").mkdir(parents=True)
    shutil.copy(pydicom.examples.get_path("ct"), cohort / "img" / "a.dcm")
    shutil.copy(pydicom.examples.get_path("waveform"), cohort / "img" / "ecg.dcm")
    frame = pd.DataFrame(
        {
            "case_id": ["A1", "A2"],
            "patient_id": ["PX", "PX"],
            "encounter": ["ENC-778812", "ENC-778813"],
            "admit": ["2021-03-15", "2021-04-01"],
            "image": ["img/a.dcm", ""],
            "signal": ["", "img/ecg.dcm"],
            "note_text": ["Seen by Dr. Hernandez on 03/15/2021.", "Call 617-555-0100."],
        }
    )
    spec = CohortSpec(id_columns=("encounter",), date_columns=("admit",))
    p = Pseudonymizer(SECRET)
    result = deidentify_cohort(frame, cohort, tmp_path / "out", p, spec)
    out = pd.read_csv(result.manifest_path, dtype=str)
    shift = p.date_shift_days("PX")
    expect = (pd.Timestamp("2021-03-15") + pd.Timedelta(days=shift)).strftime("%Y-%m-%d")
    assert out.loc[0, "admit"] == expect
    assert out["patient_id"].nunique() == 1 and out.loc[0, "encounter"] != "ENC-778812"
    assert (
        "Hernandez" not in out.loc[0, "note_text"] and "03/15/2021" not in out.loc[0, "note_text"]
    )
    assert "[PHONE]" in out.loc[1, "note_text"]
    ecg = pydicom.dcmread(result.out_dir / out.loc[1, "signal"])
    orig = pydicom.dcmread(pydicom.examples.get_path("waveform"))
    assert ecg.PatientIdentityRemoved == "YES" and ecg.PatientID == out.loc[1, "patient_id"]
    assert (ecg.waveform_array(0) == orig.waveform_array(0)).all()


def test_retained_attributes_are_not_residual_hits(synth_cohort: Path, tmp_path: Path) -> None:
    from privacy.dicom import DicomOptions

    opts = DicomOptions(retain_longitudinal=True, retain_institution_identity=True)
    result = _run(synth_cohort, tmp_path / "out", dicom_options=opts)
    assert result.report["residual_risk"]["ok"]
    frame = pd.read_csv(result.manifest_path, dtype=str)
    ds = pydicom.dcmread(result.out_dir / frame["image"].dropna().iloc[0], stop_before_pixels=True)
    assert ds.InstitutionName.startswith("SYNTHETIC")  # kept on purpose, not an error


def test_clean_descriptors_keep_the_synthetic_descriptions(
    synth_cohort: Path, tmp_path: Path
) -> None:
    """`clinfuse deid --clean-descriptors`: descriptions kept, residual-risk scan still clean."""
    from clinfuse.deid_cli import deid_cohort

    key = tmp_path / "site.key"
    key.write_text(SECRET.decode() + "\n")
    result = deid_cohort(synth_cohort, tmp_path / "out", secret_file=key, clean_descriptors=True)
    out = pd.read_csv(result.manifest_path, dtype=str)
    image = next(p for p in out["image"].dropna())
    ds = pydicom.dcmread(result.out_dir / image)
    assert ds.StudyDescription == "CT CHEST W CONTRAST (SYNTHETIC)"
    assert ds.SeriesDescription == "AXIAL 5MM"
    assert "113105" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert result.report["residual_risk"]["ok"] and result.report["residual_risk"]["hits"] == []


def test_zipped_series_is_deidentified_into_a_folder(synth_cohort: Path, tmp_path: Path) -> None:
    """An image cell holding a zip (a PACS export): its DICOM files come out de-identified as a
    series folder, and its header's identifiers reach the note's deny-list (a cue-less,
    dictionary-less name of the patient is masked); a corrupt zip is listed, not copied."""
    import zipfile

    cohort = tmp_path / "cohort"
    shutil.copytree(synth_cohort, cohort)
    manifest = pd.read_csv(cohort / "manifest.csv", dtype=str)
    first, second = manifest.index[:2]
    src = cohort / manifest.loc[first, "image"]
    ds = pydicom.dcmread(src)
    ds.PatientName = "Blorvanth^Xqzzyl"
    ds.save_as(tmp_path / "IM0001", enforce_file_format=True)
    with zipfile.ZipFile(cohort / "images" / "export.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(tmp_path / "IM0001", "EXPORT/SER1/IM0001")
        zf.writestr("EXPORT/README.TXT", "PACS export")
    manifest.loc[first, "image"] = "images/export.zip"
    note = cohort / manifest.loc[first, "note"]
    note.write_text(note.read_text() + "\nseen today with xqzzyl blorvanth at the bedside.\n")
    (cohort / "images" / "broken.zip").write_bytes(b"PK\x03\x04 truncated")
    manifest.loc[second, "image"] = "images/broken.zip"
    manifest.to_csv(cohort / "manifest.csv", index=False)

    result = _run(cohort, tmp_path / "out")
    out = result.out_dir
    frame = pd.read_csv(result.manifest_path, dtype=str)
    cell = frame.loc[first, "image"]
    files = sorted((out / cell).iterdir())
    assert (out / cell).is_dir() and len(files) == 1
    written = pydicom.dcmread(files[0])
    assert (
        str(written.PatientName) != "Blorvanth^Xqzzyl" and written.PatientIdentityRemoved == "YES"
    )
    assert written.pixel_array.tobytes() == ds.pixel_array.tobytes()
    notes = (out / frame.loc[first, "note"]).read_text().lower()
    assert "blorvanth" not in notes and "xqzzyl" not in notes and "bedside" in notes
    assert pd.isna(frame.loc[second, "image"])
    report = json.loads((out / REPORT_NAME).read_text())
    assert [e["status"] for e in report["not_copied"]] == ["error"]
    assert "not a readable zip" in report["not_copied"][0]["reason"]
    assert "broken.zip" not in json.dumps(report["not_copied"])  # paths stay on the console


def test_a_date_shift_never_turns_a_later_date_into_an_earlier_original(tmp_path: Path) -> None:
    """Two visits of a patient exactly as far apart as the patient's keyed shift: shifting
    the later date would write the earlier original date — which the residual-risk scan
    rightly finds. The shift moves to the next keyed candidate instead."""
    natural = Pseudonymizer(SECRET).date_shift_days("PX")
    first = pd.Timestamp("2021-03-15")
    later = first - pd.Timedelta(days=natural)  # later + natural == first
    cohort = tmp_path / "c"
    cohort.mkdir()
    frame = pd.DataFrame(
        {
            "case_id": ["A1", "A2"],
            "patient_id": ["PX", "PX"],
            "admit": [first.strftime("%Y-%m-%d"), later.strftime("%Y-%m-%d")],
            "note_text": ["Seen today.", "Seen again."],
        }
    )
    p = Pseudonymizer(SECRET)
    result = deidentify_cohort(
        frame, cohort, tmp_path / "out", p, CohortSpec(date_columns=("admit",))
    )
    assert result.report["residual_risk"]["ok"]
    shift = p.date_shift_days("PX")
    assert shift != natural and -365 <= shift <= -1
    out = pd.read_csv(result.manifest_path, dtype=str)
    assert list(out["admit"]) == [
        (d + pd.Timedelta(days=shift)).strftime("%Y-%m-%d") for d in (first, later)
    ]
    assert first.strftime("%Y-%m-%d") not in set(out["admit"])
    # another patient's shift is untouched
    assert p.date_shift_days("PY") == Pseudonymizer(SECRET).date_shift_days("PY")
