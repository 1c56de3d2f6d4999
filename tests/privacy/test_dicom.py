"""PS3.15 Annex E Basic Profile on every DICOM file that ships with pydicom (and deid-data).

The rule table comes from dicom-anonymizer (``dicomfields_2026c``); the checks below are
the profile's own definitions: X attributes gone, Z attributes empty, D and U values
changed, U replacements consistent across files, private attributes gone, pixel data and
readability unchanged.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset

from privacy.dicom import (
    CLEAN_DESCRIPTOR_KEYWORDS,
    DEVICE_IDENTITY_KEYWORDS,
    INSTITUTION_IDENTITY_KEYWORDS,
    PATIENT_CHARACTERISTICS_KEYWORDS,
    DicomDeidentifier,
    DicomOptions,
    load_profile_table,
    read_dicom,
    resolve_action,
)
from privacy.errors import DicomDeidError
from privacy.pseudonym import Pseudonymizer

SECRET = b"test-secret-0123456789abcdef-0123456789"

# pydicom's test files are malformed on purpose (invalid UIDs, odd VRs): pydicom warns
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _pydicom_files() -> list[Path]:
    root = Path(pydicom.data.__file__).parent / "test_files"
    out = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        try:
            read_dicom(p)
        except DicomDeidError:
            continue
        out.append(p)
    return out


def _deid_data_files() -> list[Path]:
    import deid_data  # the dev extra installs it: its fake-PHI DICOMs are part of the check

    root = Path(deid_data.__file__).parent / "data"
    return sorted(p for p in root.rglob("*.dcm"))


def _values_by_tag(ds: Dataset) -> dict[int, list[object]]:
    out: dict[int, list[object]] = defaultdict(list)
    for elem in ds.iterall():
        out[int(elem.tag)].append(elem)
    return out


def _same_value(a: object, b: object) -> bool:
    return str(a) == str(b)


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory):
    """Every readable test file de-identified once with one key (Basic Profile only)."""
    deid = DicomDeidentifier(Pseudonymizer(SECRET))
    out_dir = tmp_path_factory.mktemp("dicom_out")
    results = []
    files = _pydicom_files() + _deid_data_files()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, src in enumerate(files):
            dst = out_dir / f"{i:03d}.dcm"
            res = deid.deidentify_file(src, dst)
            results.append((src, dst, res))
    return results


def test_enough_files_were_checked(processed) -> None:
    n_ok = sum(r.status == "deidentified" for _, _, r in processed)
    assert n_ok >= 60, f"only {n_ok} readable DICOM files found in pydicom's test data"


def test_profile_actions_on_every_file(processed) -> None:
    table = load_profile_table()
    uid_map: dict[str, str] = {}
    problems: list[str] = []
    for src, dst, res in processed:
        if res.status != "deidentified":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            orig = pydicom.dcmread(src, force=True)
            out = pydicom.dcmread(dst, force=True)
        before, after = _values_by_tag(orig), _values_by_tag(out)
        for tag, elems in before.items():
            code = table.code(tag)
            if code is None or tag in (0x00120062, 0x00120063, 0x00120064, 0x00280303):
                continue
            action = resolve_action(code, elems[0].VR)
            outs = after.get(tag, [])
            name = f"{src.name} ({tag:08X} {elems[0].keyword}, {code})"
            if action == "X" and outs:
                problems.append(f"{name}: X attribute still present")
            if action == "Z" and any(not e.is_empty for e in outs):
                problems.append(f"{name}: Z attribute not empty")
            originals = {str(e.value) for e in elems if not e.is_empty and e.VR != "SQ"}
            kept = {str(e.value) for e in outs if not e.is_empty and e.VR != "SQ"} & originals
            if action in ("X", "Z", "D", "U") and kept:
                problems.append(f"{name}: original value kept")
            if action == "U" and tag in orig and tag in out and orig[tag].VR == "UI":
                # top level only: nested copies may sit in removed sequences
                a_vals, b_vals = orig[tag].value, out[tag].value
                pairs = zip(
                    a_vals if orig[tag].VM > 1 else [a_vals],
                    b_vals if out[tag].VM > 1 else [b_vals],
                    strict=True,
                )
                for a, b in pairs:
                    if uid_map.setdefault(str(a), str(b)) != str(b):
                        problems.append(f"{name}: UID {a} mapped inconsistently")
        if any(e.tag.is_private for e in out.iterall()):
            problems.append(f"{src.name}: private attribute left")
        if out.get("PatientIdentityRemoved") != "YES":
            problems.append(f"{src.name}: PatientIdentityRemoved not YES")
        codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
        if codes != ["113100"] or out.LongitudinalTemporalInformationModified != "REMOVED":
            problems.append(f"{src.name}: marking attributes wrong: {codes}")
        if "PixelData" in orig and orig.PixelData != out.PixelData:
            problems.append(f"{src.name}: pixel data changed")
    assert not problems, "\n".join(problems[:40])
    assert len(uid_map) > 50


def test_pixel_arrays_identical_where_decodable(processed) -> None:
    compared = 0
    for src, dst, res in processed:
        if res.status != "deidentified":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            orig = pydicom.dcmread(src, force=True)
            if "PixelData" not in orig:
                continue
            try:
                a = orig.pixel_array
            except Exception:  # noqa: BLE001 - no decoder for this transfer syntax here
                continue
            b = pydicom.dcmread(dst).pixel_array
        np.testing.assert_array_equal(a, b, err_msg=src.name)
        compared += 1
    assert compared >= 30


def test_same_uid_same_replacement_across_files() -> None:
    # the dicomdirtests tree holds series whose files share Study/Series UIDs
    deid = DicomDeidentifier(Pseudonymizer(SECRET))
    root = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"
    studies: dict[str, set[str]] = defaultdict(set)
    for f in sorted(p for p in root.rglob("*") if p.is_file() and "DICOMDIR" not in p.name):
        try:
            ds = read_dicom(f)
        except DicomDeidError:
            continue
        out, _ = deid.deidentify_dataset(ds)
        studies[str(ds.StudyInstanceUID)].add(str(out.StudyInstanceUID))
    assert len(studies) >= 2
    assert all(len(v) == 1 for v in studies.values())
    assert len({next(iter(v)) for v in studies.values()}) == len(studies)


def test_burned_in_annotation_quarantined(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom.examples.get_path("ct"))
    ds.BurnedInAnnotation = "YES"
    src = tmp_path / "burned.dcm"
    ds.save_as(src)
    deid = DicomDeidentifier(Pseudonymizer(SECRET))
    res = deid.deidentify_file(src, tmp_path / "out.dcm")
    assert res.status == "quarantined" and "BurnedInAnnotation" in res.reason
    assert not (tmp_path / "out.dcm").exists()
    # with a pixel-cleaning step it goes through and is marked with 113101
    cleaned = DicomDeidentifier(
        Pseudonymizer(SECRET), DicomOptions(clean_pixel_data=lambda d: None)
    ).deidentify_file(src, tmp_path / "out.dcm")
    assert cleaned.status == "deidentified"
    codes = [
        i.CodeValue
        for i in pydicom.dcmread(tmp_path / "out.dcm").DeidentificationMethodCodeSequence
    ]
    assert "113101" in codes


def test_deid_data_burned_in_files_quarantined(processed) -> None:
    burned = []
    for src, _, res in processed:
        if "deid_data" not in str(src):
            continue
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            burned.append(res.status)
    assert burned and set(burned) == {"quarantined"}


def test_retain_longitudinal_shifts_dates_by_patient_shift() -> None:
    p = Pseudonymizer(SECRET)
    ds = pydicom.dcmread(pydicom.examples.get_path("ct"))
    ds.PatientBirthDate = "19600102"
    out, _ = DicomDeidentifier(p, DicomOptions(retain_longitudinal=True)).deidentify_dataset(
        ds, patient_key="P1", patient_pseudonym="PSEUDO1"
    )
    import datetime as dt

    shift = p.date_shift_days("P1")
    expect = (dt.date(2004, 1, 19) + dt.timedelta(days=shift)).strftime("%Y%m%d")
    assert ds.StudyDate == "20040119" and out.StudyDate == expect
    assert out.StudyTime == ds.StudyTime  # times kept with modified dates
    assert out.PatientBirthDate == ""  # birth date still emptied
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert out.PatientID == "PSEUDO1" and str(out.PatientName) == "PSEUDO1"
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert ds.PatientID != "PSEUDO1"  # the input is not modified


def test_retain_options_keep_their_attributes() -> None:
    ds = pydicom.dcmread(pydicom.examples.get_path("ct"))
    ds.PatientAge = "093Y"
    ds.PatientSex = "F"
    ds.StationName = "CT01"
    ds.InstitutionName = "General Hospital"
    opts = DicomOptions(
        retain_patient_characteristics=True,
        retain_device_identity=True,
        retain_institution_identity=True,
    )
    out, _ = DicomDeidentifier(Pseudonymizer(SECRET), opts).deidentify_dataset(ds)
    assert out.PatientAge == "090Y" and out.PatientSex == "F"
    assert out.StationName == "CT01" and out.InstitutionName == "General Hospital"
    base, _ = DicomDeidentifier(Pseudonymizer(SECRET)).deidentify_dataset(ds)
    assert "PatientAge" not in base and base.PatientSex == "" and base.StationName == ""


def test_option_keywords_are_profile_attributes() -> None:
    keywords = load_profile_table().keywords()
    listed = (
        PATIENT_CHARACTERISTICS_KEYWORDS
        | DEVICE_IDENTITY_KEYWORDS
        | INSTITUTION_IDENTITY_KEYWORDS
        | CLEAN_DESCRIPTOR_KEYWORDS
    )
    missing = sorted(k for k in listed if k not in keywords)
    assert not missing, f"option attributes not in the PS3.15 table: {missing}"


def test_clean_descriptors_keep_descriptions_with_identifiers_scrubbed() -> None:
    ds = pydicom.dcmread(pydicom.examples.get_path("ct"))
    ds.StudyDescription = "CT HEAD W/O CONTRAST"
    ds.SeriesDescription = "Head 5mm for Dr. Hernandez 03/14/2021"
    ds.ProtocolName = "Routine Head"
    ds.ImageComments = "MRN 07300111 repeat scan"
    ds.AdditionalPatientHistory = "Mateo Testpatient fell at home"
    reason = Dataset()
    reason.CodeValue, reason.CodingSchemeDesignator, reason.CodeMeaning = "R51", "I10", "Headache"
    ds.ReasonForVisitCodeSequence = [reason]
    p = Pseudonymizer(SECRET)
    base, _ = DicomDeidentifier(p).deidentify_dataset(ds)
    for kw in ("StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments"):
        assert kw not in base or base.get(kw) in ("", None), kw  # the Basic Profile: X or Z

    opts = DicomOptions(clean_descriptors=True)
    out, result = DicomDeidentifier(p, opts).deidentify_dataset(ds)  # default cleaner: tags
    assert out.StudyDescription == "CT HEAD W/O CONTRAST" and out.ProtocolName == "Routine Head"
    assert out.SeriesDescription == "Head 5mm for Dr. [NAME] [DATE]"
    assert out.ImageComments == "MRN [MRN] repeat scan"
    assert out.ReasonForVisitCodeSequence[0].CodeMeaning == "Headache"
    assert result.attributes["SeriesDescription"] == "C"
    assert "113105" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    # a patient-specific cleaner (what `clinfuse deid --clean-descriptors` passes): deny-list
    from privacy.text import PatientContext, TextDeidentifier

    deid = TextDeidentifier(mode="tag", use_presidio=False)
    ctx = PatientContext(deny={"NAME": ["Mateo Testpatient"]})
    out, _ = DicomDeidentifier(p, opts).deidentify_dataset(
        ds, clean_text=lambda t: deid.deidentify(t, ctx).text
    )
    assert out.AdditionalPatientHistory == "[NAME] fell at home"


def test_clean_descriptors_change_no_real_description_of_pydicoms_files() -> None:
    """No false positives: the descriptor values of pydicom's test files pass unchanged."""
    opts = DicomOptions(clean_descriptors=True)
    deid = DicomDeidentifier(Pseudonymizer(SECRET), opts)
    seen = 0
    for path in _pydicom_files():
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        before = {
            e.keyword: e.value
            for e in ds
            if e.keyword in CLEAN_DESCRIPTOR_KEYWORDS and e.VR != "SQ" and not e.is_empty
        }
        if not before:
            continue
        out, _ = deid.deidentify_dataset(ds)
        for kw, value in before.items():
            if out[kw].VR not in ("OB", "UN"):
                assert out[kw].value == value, (path.name, kw)
                seen += 1
    assert seen >= 20


def test_table_is_read_from_dicom_anonymizer() -> None:
    from dicomanonymizer.simpledicomanonymizer import initialize_actions

    upstream = initialize_actions("dicomfields_2026c")
    table = load_profile_table("dicomfields_2026c")
    assert len(table) == len(upstream) > 600
    assert table.code(0x00100010) == "Z"  # PatientName
    assert table.code(0x00101010) == "X"  # PatientAge
    assert table.code(0x0020000D) == "U"  # StudyInstanceUID
    assert table.code(0x50001234) == "X"  # Curve Data (50xx,xxxx)
    for code in set(table.exact.values()):
        for vr in ("LO", "UI", "SQ", "DA"):
            assert resolve_action(code, vr) in ("X", "Z", "D", "U")


def test_matches_dicom_anonymizer_reference_on_removed_attributes() -> None:
    # reference: dicom-anonymizer's own anonymize_dataset with the same table. Every
    # attribute it deletes must be gone or empty here too.
    from dicomanonymizer.simpledicomanonymizer import anonymize_dataset, initialize_actions

    deid = DicomDeidentifier(Pseudonymizer(SECRET))
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "waveform_ecg.dcm"):
        ds = pydicom.dcmread(pydicom.data.get_testdata_file(name, download=False))
        ref = ds.copy()
        anonymize_dataset(ref, base_rules_gen=lambda: initialize_actions("dicomfields_2026c"))
        ours, _ = deid.deidentify_dataset(ds)
        gone = {int(e.tag) for e in ds.iterall()} - {int(e.tag) for e in ref.iterall()}
        for tag in gone:
            for e in ours.iterall():
                assert int(e.tag) != tag or e.is_empty, f"{name}: {e.keyword} kept"


def test_safe_private_retained_others_removed() -> None:
    ds = pydicom.dcmread(pydicom.examples.get_path("ct"))
    block = ds.private_block(0x0009, "SAFE CREATOR", create=True)
    block.add_new(0x01, "LO", "safe value")
    block.add_new(0x02, "LO", "unsafe value")
    opts = DicomOptions(safe_private=frozenset({("SAFE CREATOR", 0x01)}))
    out, _ = DicomDeidentifier(Pseudonymizer(SECRET), opts).deidentify_dataset(ds)
    private = [e for e in out if e.tag.is_private]
    assert {str(e.value) for e in private} == {"SAFE CREATOR", "safe value"}
    assert "113111" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]


def test_unreadable_dicom_raises_with_path(tmp_path: Path) -> None:
    bad = tmp_path / "broken.dcm"
    bad.write_text("this is not DICOM")
    with pytest.raises(DicomDeidError, match=r"broken\.dcm"):
        DicomDeidentifier(Pseudonymizer(SECRET)).deidentify_file(bad, tmp_path / "o.dcm")
    assert not (tmp_path / "o.dcm").exists()
