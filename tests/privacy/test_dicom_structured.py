"""Structured content (SR content items, acquisition context): free text never survives
verbatim; Clean Structured Content [113104] keeps it with its identifiers scrubbed."""

from __future__ import annotations

import copy

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from privacy.dicom import DicomDeidentifier, DicomOptions
from privacy.pseudonym import Pseudonymizer

SECRET = b"test-secret-0123456789abcdef-0123456789"
PLANTED = "Patient John Smith (MRN 7654321) seen on 03/14/2020 for follow-up."


def _text_items(ds: Dataset) -> list[Dataset]:
    return [
        item
        for elem in ds.iterall()
        if elem.keyword in ("ContentSequence", "AcquisitionContextSequence")
        for item in elem.value
        if "TextValue" in item
    ]


@pytest.fixture
def sr() -> Dataset:
    """pydicom's SR test document with one more TEXT item holding identifiers, and an
    acquisition context item with free text."""
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("test-SR.dcm"))
    planted = copy.deepcopy(_text_items(ds)[0])
    planted.TextValue = PLANTED
    planted.pop("ContentSequence", None)  # a leaf item
    ds.ContentSequence.append(planted)
    context = copy.deepcopy(planted)
    context.TextValue = "Operator note: John Smith positioned supine"
    ds.AcquisitionContextSequence = Sequence([context])
    return ds


def test_basic_profile_replaces_every_text_value(sr: Dataset) -> None:
    originals = {str(i.TextValue) for i in _text_items(sr)}
    n_items = sum(1 for e in sr.ContentSequence if "ValueType" in e)
    out, res = DicomDeidentifier(Pseudonymizer(SECRET)).deidentify_dataset(sr)
    texts = [str(i.TextValue) for i in _text_items(out)]
    assert len(texts) >= 5 and all(t.startswith("DEID ") for t in texts)
    assert not set(texts) & originals
    assert "AcquisitionContextSequence" in out and len(out.AcquisitionContextSequence) == 0
    # the tree of content items is kept: value types and concept codes
    assert sum(1 for e in out.ContentSequence if "ValueType" in e) == n_items
    coded = [("ConceptNameCodeSequence" in e) for e in sr.ContentSequence]
    assert [("ConceptNameCodeSequence" in e) for e in out.ContentSequence] == coded
    assert res.attributes["TextValue"] == "D"
    assert "113104" not in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]


def test_clean_structured_content_keeps_text_without_identifiers(sr: Dataset) -> None:
    originals = [str(i.TextValue) for i in _text_items(sr)]
    basic, _ = DicomDeidentifier(Pseudonymizer(SECRET)).deidentify_dataset(sr)
    deid = DicomDeidentifier(
        Pseudonymizer(SECRET),
        DicomOptions(clean_structured_content=True, retain_longitudinal=True),
    )
    out, res = deid.deidentify_dataset(sr, patient_key="P1")
    texts = [str(i.TextValue) for i in _text_items(out)]
    assert len(texts) == len(_text_items(basic)) + 1  # the acquisition context is kept
    # text without identifiers passes unchanged; identifiers are gone
    plain = [t for t in originals if "John" not in t]
    assert len(plain) >= 5 and all(t in texts for t in plain)
    joined = "\n".join(texts)
    for value in ("John", "Smith", "7654321", "03/14/2020"):
        assert value not in joined
    assert "for follow-up" in joined and "positioned supine" in joined
    assert res.attributes["TextValue"] == "C"
    assert "113104" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    # names and UIDs inside the content tree are still handled by the profile
    names = [str(e.value) for e in out.iterall() if e.VR == "PN" and e.value]
    assert names and all(n.startswith("DEID^") for n in names)
    uids = [str(e.value) for e in sr.iterall() if e.keyword == "UID"]
    assert uids and not set(uids) & {str(e.value) for e in out.iterall() if e.keyword == "UID"}
