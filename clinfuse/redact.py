"""Notes shown to people carry no identifiers by default.

The review app and the explanation reports show note text (and its token attributions).
When the cohort did not go through ``clinfuse deid`` (its folder has no ``deid_report.json``),
the identifiers found automatically are masked as ``[TYPE]`` tags before anything is shown
or written: dates, phone numbers, e-mails, record numbers, names after titles or labels and
from name dictionaries (:class:`privacy.text.TextDeidentifier` in tag mode), and the patient's
own name, ids and birth date read from the case's DICOM header wherever they appear
(:func:`image_header_context`). Automatic detection misses other names; de-identifying the
cohort stays the way to be sure.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from privacy.text import PatientContext, RedactedTokens, TextDeidentifier

DEID_REPORT = "deid_report.json"
"""What ``clinfuse deid`` writes next to the de-identified manifest (``privacy.cohort.REPORT_NAME``)."""

__all__ = [
    "DEID_REPORT",
    "cohort_is_deidentified",
    "image_header_context",
    "mask_note",
    "mask_note_tokens",
    "note_deidentifier",
    "note_masking",
]


def cohort_is_deidentified(manifest: str | Path | None) -> bool | None:
    """Whether the manifest's folder holds ``clinfuse deid``'s report (None: no manifest)."""
    if manifest is None:
        return None
    return (Path(manifest).parent / DEID_REPORT).is_file()


@lru_cache(maxsize=1)
def note_deidentifier() -> TextDeidentifier:
    """The detector used for display: tag mode, our own recognizers and Faker's name lists.

    presidio's recognizers are left out here: importing presidio costs about 8 s (it loads
    transformers and spaCy), which would land on the first case a reviewer opens, and our own
    recognizers alone reach the same recall on the Safe Harbor test notes
    (``tests/privacy/test_text.py``); ``clinfuse deid`` uses both.
    """
    from privacy.text import TextDeidentifier

    return TextDeidentifier(mode="tag", use_presidio=False)


_HEADER_IDENTITY = {
    "PatientName": "NAME",
    "OtherPatientNames": "NAME",
    "PatientBirthName": "NAME",
    "PatientMotherBirthName": "NAME",
    "PatientID": "MRN",
    "OtherPatientIDs": "MRN",
    "AccessionNumber": "MRN",
    "PatientBirthDate": "DATE",
    "PatientAddress": "ADDRESS",
    "PatientTelephoneNumbers": "PHONE",
}
"""DICOM patient attributes whose values are masked wherever they appear in the case's note."""


def image_header_context(image: str | Path | None) -> PatientContext | None:
    """The patient's identifiers from the case's DICOM header, as a deny-list for its note.

    ``image`` is a DICOM file, a series folder or a zip of one (its first file is read,
    without pixels);
    anything else (NIfTI, PNG, an unreadable file) gives ``None``. Nothing read here is shown.
    """
    if image is None:
        return None
    from pydicom.multival import MultiValue

    from clinfuse.io.image import first_dicom_header
    from privacy.text import PatientContext

    ds = first_dicom_header(image, specific_tags=list(_HEADER_IDENTITY))
    if ds is None:
        return None  # the image tab reports an unreadable image; the note is masked as usual
    deny: dict[str, list[str]] = {}
    for keyword, entity in _HEADER_IDENTITY.items():
        value = ds.get(keyword)
        values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        for v in values:
            text = str(v or "").strip()
            if text:
                deny.setdefault(entity, []).append(text)
    return PatientContext(deny=deny) if deny else None


def note_masking(
    manifest: str | Path | None, image: str | Path | None
) -> tuple[bool, PatientContext | None]:
    """The one rule for notes shown to people: ``(mask?, the patient's known identifiers)``.

    A cohort that came out of ``clinfuse deid`` is shown as stored; any other (or an unknown
    one) is masked, with the patient's identity from the case's DICOM header as a deny-list.
    """
    if cohort_is_deidentified(manifest):
        return False, None
    return True, image_header_context(image)


def mask_note(text: str, context: PatientContext | None = None) -> tuple[str, dict[str, int]]:
    """``text`` with its identifiers replaced by ``[TYPE]``, and how many of each type.

    Args:
        text: the note.
        context: the patient's known identifiers (:func:`image_header_context`), masked
            wherever they appear, with or without a cue.
    """
    result = note_deidentifier().deidentify(text, context)
    return result.text, dict(result.counts)


def mask_note_tokens(
    tokens: list[str], values: list[float], context: PatientContext | None = None
) -> RedactedTokens:
    """Token attributions with the identifiers masked (see :func:`privacy.text.redact_tokens`)."""
    from privacy.text import redact_tokens

    return redact_tokens(tokens, values, note_deidentifier(), context)
