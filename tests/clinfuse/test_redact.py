"""clinfuse.redact: which cohorts count as de-identified, and the masking used for display."""

from __future__ import annotations

from pathlib import Path

from clinfuse.redact import (
    DEID_REPORT,
    cohort_is_deidentified,
    image_header_context,
    mask_note,
    mask_note_tokens,
    note_masking,
)


def test_a_cohort_is_deidentified_when_clinfuse_deid_wrote_its_report(tmp_path: Path) -> None:
    from privacy.cohort import REPORT_NAME

    assert DEID_REPORT == REPORT_NAME  # the file privacy.cohort writes
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("case_id\nc1\n")
    assert cohort_is_deidentified(None) is None
    assert cohort_is_deidentified(manifest) is False
    (tmp_path / DEID_REPORT).write_text("{}")
    assert cohort_is_deidentified(manifest) is True


def test_mask_note_and_tokens_agree() -> None:
    text = "Patient: Mateo Testpatient   MRN: 07300111   DOS: 03/21/2021. Chest pain."
    masked, counts = mask_note(text)
    assert masked == "Patient: [NAME]   MRN: [MRN]   DOS: [DATE]. Chest pain."
    assert counts == {"NAME": 1, "MRN": 1, "DATE": 1}
    tokens = [text[i : i + 5] for i in range(0, len(text), 5)]
    r = mask_note_tokens(tokens, [1.0] * len(tokens))
    assert "".join(r.tokens) == masked and sum(r.values) == len(tokens)


def test_the_dicom_headers_patient_identity_is_masked_without_any_cue(tmp_path: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(pydicom.examples.get_path("ct"))
    ds.PatientName = "Testpatient^Mateo"
    ds.PatientID = "07300111"
    ds.PatientBirthDate = "19510502"
    series = tmp_path / "series"
    series.mkdir()
    ds.save_as(series / "0001.dcm")
    note = "mateo testpatient walked in; chart 07300111; born 05/02/1951; chest pain."
    plain, _ = mask_note(note)
    assert "testpatient" in plain  # no cue, not in the name lists: the text path alone misses it
    for image in (series / "0001.dcm", series):  # a file or a series folder
        context = image_header_context(image)
        assert context is not None
        masked, counts = mask_note(note, context)
        assert counts == {"NAME": 1, "MRN": 1, "DATE": 1}  # the whole name is one span
        assert masked == "[NAME] walked in; chart [MRN]; born [DATE]; chest pain."
        tokens = [note[i : i + 3] for i in range(0, len(note), 3)]
        assert "".join(mask_note_tokens(tokens, [0.0] * len(tokens), context).tokens) == masked
    # the one rule: masked with this context unless the cohort came out of `clinfuse deid`
    manifest = tmp_path / "manifest.csv"
    mask, context = note_masking(manifest, series)
    assert mask and context is not None and context.deny["MRN"] == ["07300111"]
    assert note_masking(None, None) == (True, None)
    (tmp_path / DEID_REPORT).write_text("{}")
    assert note_masking(manifest, series) == (False, None)
    (tmp_path / "x.nii").write_bytes(b"\x00" * 400)
    assert image_header_context(tmp_path / "x.nii") is None
    assert image_header_context(None) is None
