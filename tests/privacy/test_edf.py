"""EDF/EDF+/BDF+ de-identification: header fields blanked, annotation texts scrubbed, every
sample kept; files written by pyedflib and read back by pyedflib."""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privacy.edf import EdfError, annotation_texts, deidentify_edf, header_identifiers, parse_layout
from privacy.pseudonym import Pseudonymizer

pyedflib = pytest.importorskip("pyedflib")

SECRET = b"test-secret-0123456789abcdef-0123456789"
ANNOTATIONS = [
    (1.5, 2.0, "Testpatient asleep"),
    (3.0, -1.0, "lights off"),
    (5.0, -1.0, "tech called 617-555-0101 on 03/14/2021"),
    (7.25, 0.5, "MRN 07300111 arousal"),
]


def _write(path: Path, *, plus: bool = True, bdf: bool = False, seconds: int = 10) -> np.ndarray:
    """A 2-channel recording (100 Hz) with the patient's identifiers in the header and notes."""
    kinds = {
        (True, False): pyedflib.FILETYPE_EDFPLUS,
        (True, True): pyedflib.FILETYPE_BDFPLUS,
        (False, False): pyedflib.FILETYPE_EDF,
    }
    dmax = 8388607 if bdf else 32767
    x = np.stack([np.sin(np.arange(100 * seconds) / (7 + i)) * 50 for i in range(2)])
    with warnings.catch_warnings():  # pyedflib warns about spaces in header entries
        warnings.simplefilter("ignore")
        w = pyedflib.EdfWriter(str(path), 2, file_type=kinds[(plus, bdf)])
        w.setPatientName("Mateo_Testpatient")
        w.setPatientCode("07300111")
        w.setBirthdate(datetime.date(1951, 5, 2))
        w.setTechnician("Jane_Doe")
        w.setSignalHeaders(
            [
                {
                    "label": f"ECG{i}",
                    "dimension": "uV",
                    "sample_frequency": 100,
                    "physical_max": 100.0,
                    "physical_min": -100.0,
                    "digital_max": dmax,
                    "digital_min": -dmax - 1,
                }
                for i in range(2)
            ]
        )
        w.writeSamples(list(x))
        if plus:
            for onset, duration, text in ANNOTATIONS:
                w.writeAnnotation(onset, duration, text)
        w.close()
    return x


def _scrubber():
    from privacy.text import PatientContext, TextDeidentifier

    deid = TextDeidentifier(mode="tag", use_presidio=False)
    ctx = PatientContext(deny={"NAME": ["Mateo Testpatient"], "MRN": ["07300111"]})
    return lambda text: deid.deidentify(text, ctx).text


@pytest.mark.parametrize("bdf", [False, True], ids=["edf+", "bdf+"])
def test_annotations_scrubbed_header_blanked_samples_kept(tmp_path: Path, bdf: bool) -> None:
    src = tmp_path / ("a.bdf" if bdf else "a.edf")
    _write(src, bdf=bdf)
    data = src.read_bytes()
    layout = parse_layout(data)
    assert layout.sample_bytes == (3 if bdf else 2) and len(layout.annotation_signals) == 1
    assert annotation_texts(data) == [t for _, _, t in ANNOTATIONS]

    result = deidentify_edf(data, _scrubber())
    assert len(result.data) == len(data)
    assert (result.annotations, result.changed, result.replaced_whole) == (4, 3, 0)
    out = tmp_path / ("b.bdf" if bdf else "b.edf")
    out.write_bytes(result.data)
    before, after = pyedflib.EdfReader(str(src)), pyedflib.EdfReader(str(out))
    onsets, durations, texts = after.readAnnotations()
    assert list(texts) == [
        "[NAME] asleep",
        "lights off",
        "tech called [PHONE] on [DATE]",
        "MRN [MRN] arousal",
    ]
    ref_onsets, ref_durations, _ = before.readAnnotations()
    np.testing.assert_array_equal(onsets, ref_onsets)
    np.testing.assert_array_equal(durations, ref_durations)
    for i in range(2):
        np.testing.assert_array_equal(
            after.readSignal(i, digital=True), before.readSignal(i, digital=True)
        )
    assert {after.getPatientName(), after.getPatientCode(), after.getTechnician()} <= {"", "X"}
    assert after.getStartdatetime().year == 1985
    head = result.data[:256].decode("latin-1")
    for secret in ("Testpatient", "07300111", "Jane", "MAY-1951"):
        assert secret not in head
    assert set(header_identifiers(result.data)) == set()  # nothing left to find


def test_header_identifiers_of_edfplus_and_plain_edf(tmp_path: Path) -> None:
    _write(tmp_path / "a.edf")
    found = set(header_identifiers((tmp_path / "a.edf").read_bytes()))
    assert {
        ("id", "EDF patient code", "07300111"),
        ("date", "EDF birthdate", "19510502"),
        ("name", "EDF patient name", "Mateo Testpatient"),
        ("name_part", "EDF patient name", "Testpatient"),
        ("name", "EDF technician", "Jane Doe"),
    } <= found
    assert any(kind == "date" and field == "EDF start date" for kind, field, _ in found)
    plain = bytearray((tmp_path / "a.edf").read_bytes())
    plain[8:88] = b"Mateo Testpatient 02.05.51".ljust(80)
    plain[192:236] = b" " * 44  # not EDF+: the patient field is free text, taken whole
    found = set(header_identifiers(bytes(plain)))
    assert ("name", "EDF patient", "Mateo Testpatient 02.05.51") in found
    assert not any(kind == "name_part" for kind, _, _ in found)


def test_no_room_replaces_changed_annotations_by_x(tmp_path: Path) -> None:
    src = tmp_path / "a.edf"
    _write(src)
    data = src.read_bytes()
    result = deidentify_edf(data, lambda t: t + " " + "[NAME]" * 200 if "Testpatient" in t else t)
    out = tmp_path / "b.edf"
    out.write_bytes(result.data)
    texts = list(pyedflib.EdfReader(str(out)).readAnnotations()[2])
    assert result.replaced_whole == 1 and texts[0] == "X" and texts[1] == "lights off"


def test_plain_edf_and_bad_files(tmp_path: Path) -> None:
    src = tmp_path / "a.edf"
    _write(src, plus=False)
    data = src.read_bytes()
    assert parse_layout(data).annotation_signals == ()
    result = deidentify_edf(data, _scrubber())
    assert result.annotations == 0 and result.data[256:] == data[256:]
    with pytest.raises(EdfError, match="fewer than the 256"):
        parse_layout(data[:100])
    with pytest.raises(EdfError, match="truncated"):
        parse_layout(data[:-10])
    bad = bytearray(data)
    bad[252:256] = b"ab  "
    with pytest.raises(EdfError, match="number of signals"):
        parse_layout(bytes(bad))


def test_garbage_in_the_annotation_signal_is_an_error_not_a_silent_rewrite(tmp_path: Path) -> None:
    src = tmp_path / "a.edf"
    _write(src)
    data = bytearray(src.read_bytes())
    layout = parse_layout(bytes(data))
    start, _ = layout.slots(layout.annotation_signals[0])[0]
    data[start : start + 4] = b"zz\x14\x00"
    with pytest.raises(EdfError, match="not EDF\\+ time-stamped annotation lists"):
        deidentify_edf(bytes(data), _scrubber())


def test_cohort_with_edfplus_signals(tmp_path: Path) -> None:
    """Through deidentify_cohort: the header's identifiers join the patient's deny-list (the
    annotation's name is found without any cue) and the residual-risk scan reads annotations."""
    from privacy.cohort import _file_texts, deidentify_cohort

    cohort = tmp_path / "c"
    (cohort / "sig").mkdir(parents=True)
    _write(cohort / "sig" / "a.edf")
    frame = pd.DataFrame(
        {"case_id": ["A1"], "patient_id": ["PX"], "signal": ["sig/a.edf"], "label": ["1"]}
    )
    result = deidentify_cohort(frame, cohort, tmp_path / "out", Pseudonymizer(SECRET))
    out = pd.read_csv(result.manifest_path, dtype=str)
    path = result.out_dir / out.loc[0, "signal"]
    texts = list(pyedflib.EdfReader(str(path)).readAnnotations()[2])
    assert texts[0].endswith(" asleep") and texts[1] == "lights off"  # a surrogate name
    assert all("Testpatient" not in t and "07300111" not in t for t in texts)
    assert "lights off" in _file_texts(path)  # the residual-risk scan reads annotations
    report = result.report
    status = next(
        f["status"]
        for f in report["files"].values()
        if isinstance(f, dict) and f.get("column") == "signal"
    )
    assert "4 annotations scrubbed" in status
