"""clinfuse.redact: which cohorts count as de-identified, and the masking used for display."""

from __future__ import annotations

from pathlib import Path

from clinfuse.redact import DEID_REPORT, cohort_is_deidentified, mask_note, mask_note_tokens


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
