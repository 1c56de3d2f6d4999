"""DICOM de-identification: the PS3.15 Annex E Basic Application Level Confidentiality Profile.

The profile's rule table (tag → action code ``D``, ``Z``, ``X``, ``U`` or a combination such
as ``X/Z/D``) is not typed here: :func:`load_profile_table` reads it from the maintained copy
in the ``dicom-anonymizer`` package (``dicomanonymizer.dicom_anonymization_databases``,
default ``dicomfields_2026c``). The actions themselves are implemented here because the
package's own ones do not fit a cohort: it writes removed dates as ``00010101``, draws random
UIDs, and keeps a process-wide UID cache. Here:

* ``X`` removes the attribute, ``Z`` empties it, ``D`` replaces it with a keyed dummy
  (HMAC of the value, so it is consistent across files), ``U`` replaces a UID with
  ``2.25.<HMAC>`` (the same input UID → the same output UID under one key, so series,
  studies and references still link), ``K`` keeps it. Combined codes take the most
  protective choice that keeps the IOD valid: ``X/Z``, ``Z/D`` and ``X/Z/D`` → ``Z``;
  ``X/D`` → ``X``; ``X/Z/U*`` → ``U`` for UIDs and sequences, else ``Z``.
* Free text inside structured content (an SR TEXT item's TextValue), which the table does not
  list because it covers the Content Sequence as a whole (``D``), is replaced by a dummy
  (or cleaned with 113104) — never kept verbatim.
* Rules apply at every nesting level (inside sequence items too). A sequence with ``X`` is
  removed, with ``Z`` emptied, with ``D``/``U``/``K`` (or not in the table) cleaned item by
  item.
* Private attributes are removed unless they are on the "retain safe private" list.
* Options (DICOM code in brackets): Retain Longitudinal Temporal Information with Modified
  Dates [113107] shifts every date by the patient's keyed shift (birth dates stay empty);
  Retain Patient Characteristics [113108] keeps sex, age (capped at 90Y), size, weight...;
  Retain Device Identity [113109]; Retain Institution Identity [113112]; Retain Safe
  Private [113111]; Clean Pixel Data [113101] when a pixel-cleaning callable is given;
  Clean Descriptors [113105] keeps descriptions, comments, labels and protocol names with
  their text passed through a cleaner (the note de-identifier) instead of removing them;
  Clean Structured Content [113104] keeps the free text of SR content items and the
  acquisition context, cleaned the same way. The
  attribute lists of the options follow the option columns of PS3.15 Table E.1-1, which the
  upstream table does not carry; tests check each name is a profile attribute.
* The output is marked: PatientIdentityRemoved (0012,0062) = ``YES``,
  DeidentificationMethod (0012,0063), DeidentificationMethodCodeSequence (0012,0064) with
  113100 plus the option codes, LongitudinalTemporalInformationModified (0028,0303).
* Pixel data is not touched unless a pixel-cleaning step is given (Clean Pixel Data
  [113101], :mod:`privacy.pixels`): then it runs on files flagged BurnedInAnnotation = ``YES``
  and on the modalities that usually carry burned-in text (ultrasound, secondary capture,
  photographs, documents); a file it cannot clean is quarantined. Without it, a file with
  BurnedInAnnotation = ``YES`` is quarantined (not written).

>>> from privacy.pseudonym import Pseudonymizer
>>> deid = DicomDeidentifier(Pseudonymizer(b"0123456789abcdef0123456789abcdef"))
>>> result = deid.deidentify_file("in.dcm", "out.dcm", patient_key="P1")  # doctest: +SKIP
>>> result.status, result.actions["X"]  # doctest: +SKIP
('deidentified', 17)
"""

from __future__ import annotations

import copy
import datetime as _dt
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from privacy.errors import DicomDeidError
from privacy.pseudonym import Pseudonymizer

__all__ = [
    "DEFAULT_TABLE",
    "DEVICE_IDENTITY_KEYWORDS",
    "INSTITUTION_IDENTITY_KEYWORDS",
    "OPTION_CODES",
    "PATIENT_CHARACTERISTICS_KEYWORDS",
    "STRUCTURED_CONTENT_KEYWORDS",
    "DicomDeidentifier",
    "DicomOptions",
    "DicomResult",
    "Identifier",
    "ProfileTable",
    "deny_list",
    "dicom_identifiers",
    "dicom_text_values",
    "load_profile_table",
    "read_dicom",
    "resolve_action",
]

DEFAULT_TABLE = "dicomfields_2026c"
"""The dicom-anonymizer rule table used by default (PS3.15 2026c)."""

OPTION_CODES: dict[str, str] = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113104": "Clean Structured Content Option",
    "113105": "Clean Descriptors Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113109": "Retain Device Identity Option",
    "113111": "Retain Safe Private Option",
    "113112": "Retain Institution Identity Option",
}
"""DCM code → code meaning for the profile and the options this module implements."""

PATIENT_CHARACTERISTICS_KEYWORDS: frozenset[str] = frozenset(
    {
        "PatientSex",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "EthnicGroup",
        "SmokingStatus",
        "PregnancyStatus",
        "PatientSexNeutered",
    }
)
"""Kept by Retain Patient Characteristics [113108] (PS3.15 Table E.1-1 option column)."""

DEVICE_IDENTITY_KEYWORDS: frozenset[str] = frozenset(
    {
        "DeviceSerialNumber",
        "DeviceUID",
        "DeviceDescription",
        "DeviceLabel",
        "DeviceAlternateIdentifier",
        "ManufacturerDeviceIdentifier",
        "StationName",
        "PerformedStationName",
        "DetectorID",
        "PlateID",
        "GantryID",
        "CassetteID",
        "GeneratorID",
        "SourceSerialNumber",
        "UDISequence",
    }
)
"""Kept by Retain Device Identity [113109] (PS3.15 Table E.1-1 option column)."""

CLEAN_DESCRIPTOR_KEYWORDS: frozenset[str] = frozenset(
    {
        "AcquisitionComments",
        "AcquisitionDeviceProcessingDescription",
        "AcquisitionFieldOfViewLabel",
        "AcquisitionProtocolDescription",
        "AdditionalPatientHistory",
        "AdmittingDiagnosesCodeSequence",
        "AdmittingDiagnosesDescription",
        "Allergies",
        "AnnotationGroupDescription",
        "AnnotationGroupLabel",
        "BeamDescription",
        "BolusDescription",
        "ClinicalTrialSeriesDescription",
        "ClinicalTrialTimePointDescription",
        "CommentsOnRadiationDose",
        "CommentsOnThePerformedProcedureStep",
        "CompensatorDescription",
        "ConceptualVolumeCombinationDescription",
        "ConceptualVolumeDescription",
        "ContainerDescription",
        "ContrastBolusAgent",
        "ContributionDescription",
        "DecompositionDescription",
        "DerivationDescription",
        "DeviceSettingDescription",
        "DischargeDiagnosisDescription",
        "DisplacementReferenceLabel",
        "DoseReferenceDescription",
        "EntityDescription",
        "EntityLabel",
        "EntityLongLabel",
        "EntityName",
        "EquipmentFrameOfReferenceDescription",
        "FilterLookupTableDescription",
        "FixationDeviceDescription",
        "FractionGroupDescription",
        "FractionationNotes",
        "FrameComments",
        "IdentifyingComments",
        "ImageComments",
        "ImagingServiceRequestComments",
        "Impressions",
        "InterlockDescription",
        "InterlockOriginDescription",
        "InterpretationDiagnosisDescription",
        "InterpretationText",
        "LabelText",
        "LongDeviceDescription",
        "MakerNote",
        "MedicalAlerts",
        "MultienergyAcquisitionDescription",
        "Occupation",
        "PatientComments",
        "PatientSetupPhotoDescription",
        "PatientState",
        "PatientTreatmentPreparationMethodDescription",
        "PatientTreatmentPreparationProcedureParameterDescription",
        "PerformedProcedureStepDescription",
        "PositionAcquisitionTemplateDescription",
        "PositionAcquisitionTemplateName",
        "PrescriptionDescription",
        "PrescriptionNotes",
        "PrescriptionNotesSequence",
        "PriorTreatmentDoseDescription",
        "ProtocolName",
        "PyramidDescription",
        "PyramidLabel",
        "ROIDescription",
        "ROIGenerationDescription",
        "ROIName",
        "ROIObservationDescription",
        "ROIObservationLabel",
        "RTPhysicianIntentNarrative",
        "RTPlanDescription",
        "RTPlanLabel",
        "RTPlanName",
        "RTPrescriptionLabel",
        "RTToleranceSetLabel",
        "RTTreatmentApproachLabel",
        "RadiationDoseIdentificationLabel",
        "RadiationDoseInVivoMeasurementLabel",
        "RadiationGenerationModeDescription",
        "RadiationGenerationModeLabel",
        "ReasonForOmissionDescription",
        "ReasonForRequestedProcedureCodeSequence",
        "ReasonForStudy",
        "ReasonForSuperseding",
        "ReasonForTheAttributeModification",
        "ReasonForTheImagingServiceRequest",
        "ReasonForTheRequestedProcedure",
        "ReasonForVisit",
        "ReasonForVisitCodeSequence",
        "RequestAttributesSequence",
        "RequestedContrastAgent",
        "RequestedProcedureComments",
        "RequestedProcedureDescription",
        "RequestedSeriesDescription",
        "RespiratoryMotionCompensationTechniqueDescription",
        "ResultsComments",
        "ScheduledProcedureStepDescription",
        "SelectorLOValue",
        "SelectorLTValue",
        "SelectorSHValue",
        "SelectorSTValue",
        "SelectorUTValue",
        "SeriesDescription",
        "ServiceEpisodeDescription",
        "SetupTechniqueDescription",
        "ShieldingDeviceDescription",
        "SpecimenDetailedDescription",
        "SpecimenShortDescription",
        "StructureSetDescription",
        "StructureSetLabel",
        "StructureSetName",
        "StudyComments",
        "StudyDescription",
        "TreatmentPositionGroupLabel",
        "TreatmentSite",
        "TreatmentSites",
        "TreatmentTechniqueNotes",
        "TreatmentToleranceViolationDescription",
        "UserContentLabel",
        "UserContentLongLabel",
        "VisitComments",
        "WaveformFilterDescription",
    }
)
"""Cleaned, not removed, by Clean Descriptors [113105]: the attributes with ``C`` in that
option's column of PS3.15 Table E.1-1 (descriptions, comments, labels, protocol and series
names; 125 attributes, the 2024 edition of the table)."""

INSTITUTION_IDENTITY_KEYWORDS: frozenset[str] = frozenset(
    {
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "InstitutionCodeSequence",
        "InstitutionalDepartmentTypeCodeSequence",
    }
)
"""Kept by Retain Institution Identity [113112] (PS3.15 Table E.1-1 option column)."""

Action = Literal["X", "Z", "D", "U", "K", "C"]

_CATEGORY_CODE = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
_FREE_TEXT_VRS = ("UT", "LT", "ST")
"""Value representations of free text (inside structured content: never kept verbatim)."""

STRUCTURED_CONTENT_KEYWORDS: frozenset[str] = frozenset(
    {"ContentSequence", "AcquisitionContextSequence"}
)
"""Sequences of structured content (SR content items, acquisition context): their free text
is replaced by a dummy under the Basic Profile, cleaned under Clean Structured Content."""

_TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "AS", "UR", "DA", "DT", "TM"}
_BULK_KEYWORDS = {"PixelData", "FloatPixelData", "DoubleFloatPixelData", "WaveformData"}
_META_REMOVE = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)
_DATE8 = re.compile(r"(\d{4})(\d{2})(\d{2})")
_ID_KEYWORD = re.compile(r"(ID|IDs|Number|Numbers|Identifier|Locator)$")
_PLACE_KEYWORDS = {
    "InstitutionName",
    "InstitutionAddress",
    "PatientAddress",
    "PersonAddress",
    "ReferringPhysicianAddress",
    "RegionOfResidence",
    "PatientTelephoneNumbers",
    "PersonTelephoneNumbers",
    "ReferringPhysicianTelephoneNumbers",
    "InstitutionalDepartmentName",
}


@dataclass(frozen=True)
class ProfileTable:
    """The Basic Profile rule table: exact tags and masked (repeating-group) rules.

    Attributes:
        version: the dicom-anonymizer table module name.
        exact: tag (int) → action code, e.g. ``0x00100010 → "Z"``.
        masked: ``(group, element, group_mask, element_mask, code)`` for rules such as
            Curve Data ``(50xx,xxxx)`` and Overlay Data ``(60xx,3000)``.
    """

    version: str
    exact: dict[int, str]
    masked: tuple[tuple[int, int, int, int, str], ...]

    def code(self, tag: int) -> str | None:
        """The profile action code for ``tag``, or ``None`` when the profile does not list it."""
        hit = self.exact.get(int(tag))
        if hit is not None:
            return hit
        group, elem = int(tag) >> 16, int(tag) & 0xFFFF
        for g, e, gm, em, code in self.masked:
            if group & gm == g & gm and elem & em == e & em:
                return code
        return None

    def keywords(self) -> dict[str, str]:
        """Keyword → code for the exact rules whose tag pydicom knows."""
        out = {}
        for tag, code in self.exact.items():
            kw = keyword_for_tag(tag)
            if kw:
                out[kw] = code
        return out

    def __len__(self) -> int:
        return len(self.exact) + len(self.masked)


@lru_cache(maxsize=4)
def load_profile_table(version: str = DEFAULT_TABLE) -> ProfileTable:
    """Read the PS3.15 Annex E rule table from the ``dicom-anonymizer`` package.

    Args:
        version: the table module, e.g. ``"dicomfields_2026c"``.

    Raises:
        DicomDeidError: dicom-anonymizer is not installed or has no such table.
    """
    try:
        from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
    except ImportError as e:
        raise DicomDeidError(
            "DICOM de-identification needs the package dicom-anonymizer; "
            "install it with: pip install 'clinfuse[privacy]'"
        ) from e
    try:
        tables = dicom_anonymization_database_selector(version)
    except ValueError as e:
        raise DicomDeidError(
            f"dicom-anonymizer has no rule table {version!r}; use {DEFAULT_TABLE!r}"
        ) from e
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, code in _CATEGORY_CODE.items():
        for entry in tables[category]:
            if len(entry) == 2:
                exact[(int(entry[0]) << 16) | int(entry[1])] = code
            else:
                g, el, gm, em = (int(x) for x in entry)
                masked.append((g, el, gm, em, code))
    return ProfileTable(version=version, exact=exact, masked=tuple(masked))


_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
"""SOP Class UID prefix of the Secondary Capture images (single- and multi-frame)."""


@dataclass(frozen=True)
class DicomOptions:
    """Profile options (PS3.15 Annex E); the default is the Basic Profile alone.

    Attributes:
        retain_longitudinal: [113107] shift dates by the patient's keyed shift instead of
            removing them; times are kept. Birth dates are still emptied.
        retain_patient_characteristics: [113108] keep
            :data:`PATIENT_CHARACTERISTICS_KEYWORDS` (ages ≥ 90 become ``090Y``).
        retain_device_identity: [113109] keep :data:`DEVICE_IDENTITY_KEYWORDS`.
        retain_institution_identity: [113112] keep :data:`INSTITUTION_IDENTITY_KEYWORDS`.
        clean_descriptors: [113105] keep :data:`CLEAN_DESCRIPTOR_KEYWORDS` (series and study
            descriptions, protocol names, comments, ...) with their text passed through a
            cleaner (the note de-identifier; see :meth:`DicomDeidentifier.deidentify_dataset`)
            instead of removing them; their code sequences keep their items, which the
            profile processes as usual; binary values are removed.
        clean_structured_content: [113104] keep the structured content (SR content items,
            :data:`STRUCTURED_CONTENT_KEYWORDS`) with the free text of its items (an SR TEXT
            item's TextValue) passed through the text cleaner, and keep the acquisition context
            (emptied otherwise); names, dates and UIDs in the items follow the profile as
            everywhere. Without it, that free text is replaced by a dummy.
        safe_private: [113111] private attributes to keep, as ``(creator, element)`` pairs
            where ``element`` is the low byte of the element number (``0x10``–``0xFF``);
            empty = remove every private attribute.
        clean_pixel_data: [113101] a callable that removes burned-in text from a dataset in
            place (e.g. :class:`privacy.pixels.PixelCleaner`); it may return a report with a
            ``to_dict()`` and raise :class:`privacy.pixels.PixelCleaningError` to quarantine
            the file. Without it, files with BurnedInAnnotation = YES are quarantined.
        pixel_modalities: with ``clean_pixel_data``, files of these modalities (and every
            Secondary Capture) are cleaned whatever their BurnedInAnnotation says — the
            attribute is optional and often absent where text is burned in.
        table_version: the dicom-anonymizer rule table.
    """

    retain_longitudinal: bool = False
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    clean_descriptors: bool = False
    clean_structured_content: bool = False
    safe_private: frozenset[tuple[str, int]] = frozenset()
    clean_pixel_data: Callable[[Dataset], object] | None = None
    pixel_modalities: tuple[str, ...] = ("US", "OT", "XC", "ES", "GM", "DOC")
    table_version: str = DEFAULT_TABLE

    def retained_keywords(self) -> frozenset[str]:
        """Keywords kept unchanged (``K``) because of the chosen options."""
        keep: set[str] = set()
        if self.retain_patient_characteristics:
            keep |= PATIENT_CHARACTERISTICS_KEYWORDS
        if self.retain_device_identity:
            keep |= DEVICE_IDENTITY_KEYWORDS
        if self.retain_institution_identity:
            keep |= INSTITUTION_IDENTITY_KEYWORDS
        return frozenset(keep)

    def needs_pixel_cleaning(self, ds: Dataset) -> bool:
        """Whether the pixel-cleaning step applies to ``ds`` (see ``pixel_modalities``)."""
        if self.clean_pixel_data is None or "PixelData" not in ds:
            return False
        if str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
            return True
        if str(ds.get("Modality", "") or "").strip().upper() in self.pixel_modalities:
            return True
        return str(ds.get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE)

    def codes(self) -> list[str]:
        """The DCM codes for DeidentificationMethodCodeSequence: 113100 plus the options."""
        codes = ["113100"]
        if self.clean_pixel_data is not None:
            codes.append("113101")
        if self.clean_structured_content:
            codes.append("113104")
        if self.clean_descriptors:
            codes.append("113105")
        if self.retain_longitudinal:
            codes.append("113107")
        if self.retain_patient_characteristics:
            codes.append("113108")
        if self.retain_device_identity:
            codes.append("113109")
        if self.safe_private:
            codes.append("113111")
        if self.retain_institution_identity:
            codes.append("113112")
        return codes


@dataclass(frozen=True)
class Identifier:
    """An identifying value known from structured data, for the residual-risk scan.

    Attributes:
        kind: ``name`` (a whole name), ``name_part`` (one component of a name), ``id``,
            ``date``, ``place`` or ``phone``.
        source: where it came from (a DICOM keyword or a manifest column).
        value: the original value (never written to a report).
    """

    kind: str
    source: str
    value: str


@dataclass
class DicomResult:
    """What :class:`DicomDeidentifier` did to one dataset.

    Attributes:
        status: ``deidentified`` or ``quarantined`` (not written).
        reason: why it was quarantined (empty otherwise).
        actions: action code → number of attributes it was applied to (``private``
            counts removed private attributes).
        attributes: keyword (or tag) → the action applied (first seen, any nesting level).
        categories: identifier type (``name``, ``id``, ``date``, ``uid``, ``place``,
            ``private``, ``other``) → number of attributes removed, emptied or replaced.
        identifiers: identifying values found in the original (for the residual-risk scan).
        pixels: what the pixel-cleaning step reported (empty when it did not run).
    """

    status: Literal["deidentified", "quarantined"] = "deidentified"
    reason: str = ""
    actions: Counter[str] = field(default_factory=Counter)
    attributes: dict[str, str] = field(default_factory=dict)
    categories: Counter[str] = field(default_factory=Counter)
    identifiers: list[Identifier] = field(default_factory=list)
    pixels: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no original values)."""
        return {
            "status": self.status,
            "reason": self.reason,
            "actions": dict(sorted(self.actions.items())),
            "categories": dict(sorted(self.categories.items())),
            "attributes": dict(sorted(self.attributes.items())),
            **({"pixels": self.pixels} if self.pixels else {}),
        }


def resolve_action(code: str, vr: str) -> Action:
    """The single action applied for a (possibly combined) profile code.

    ``X/Z``, ``Z/D`` and ``X/Z/D`` empty the attribute (same information as removal, and a
    Type 2 attribute stays present); ``X/D`` removes it; ``X/Z/U*`` replaces UIDs (and
    cleans sequences, whose UIDs are then replaced) and empties anything else.
    """
    if code in ("X", "Z", "D", "U", "K", "C"):
        return code  # type: ignore[return-value]
    if code in ("X/Z", "Z/D", "X/Z/D"):
        return "Z"
    if code == "X/D":
        return "X"
    if code == "X/Z/U*":
        return "U" if vr in ("UI", "SQ") else "Z"
    raise ValueError(f"unknown PS3.15 action code {code!r}")


def _name(tag: BaseTag) -> str:
    return keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"


def _category(elem: DataElement, keyword: str) -> str:
    if elem.tag.is_private:
        return "private"
    if elem.VR == "PN":
        return "name"
    if elem.VR in ("DA", "DT", "TM"):
        return "date"
    if elem.VR == "UI":
        return "uid"
    if keyword in _PLACE_KEYWORDS:
        return "place"
    if _ID_KEYWORD.search(keyword):
        return "id"
    return "other"


def _shift_date_text(text: str, days: int) -> str | None:
    """Shift every YYYYMMDD in ``text`` by ``days``; ``None`` if a date is invalid."""
    failed = False

    def repl(m: re.Match[str]) -> str:
        nonlocal failed
        try:
            d = _dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            failed = True
            return m.group(0)
        return (d + _dt.timedelta(days=days)).strftime("%Y%m%d")

    out = _DATE8.sub(repl, text)
    if failed or not _DATE8.search(text):
        return None
    return out


class DicomDeidentifier:
    """Apply the Basic Profile (with options) to pydicom datasets and files.

    Args:
        pseudonymizer: the keyed pseudonymizer (UIDs, dummies, date shifts).
        options: profile options; default: Basic Profile only.

    Raises:
        DicomDeidError: the rule table cannot be loaded.
    """

    def __init__(self, pseudonymizer: Pseudonymizer, options: DicomOptions | None = None) -> None:
        self.pseudonymizer = pseudonymizer
        self.options = options or DicomOptions()
        self.table = load_profile_table(self.options.table_version)
        self._retained = self.options.retained_keywords()

    # ------------------------------------------------------------------ public
    def deidentify_dataset(
        self,
        ds: Dataset,
        *,
        patient_key: str | None = None,
        patient_pseudonym: str | None = None,
        inplace: bool = False,
        clean_text: Callable[[str], str] | None = None,
    ) -> tuple[Dataset, DicomResult]:
        """De-identify one dataset.

        Args:
            ds: the dataset (not modified unless ``inplace``).
            patient_key: the key of the patient's date shift (a manifest patient id);
                default: the dataset's original PatientID.
            patient_pseudonym: written to PatientID and PatientName (so de-identified
                files of one patient still group); default: both emptied.
            inplace: modify ``ds`` itself instead of a copy.
            clean_text: with ``clean_descriptors``, text → cleaned text for the descriptor
                attributes (e.g. the note de-identifier with the patient's deny-list and date
                shift); default: the note de-identifier in tag mode without patient context.

        Returns:
            ``(dataset, result)``. When ``result.status == "quarantined"`` the returned
            dataset is the untouched input and must not be released.
        """
        result = DicomResult()
        result.identifiers = dicom_identifiers(ds, self.table, self._retained)
        burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
        if burned == "YES" and self.options.clean_pixel_data is None:
            result.status = "quarantined"
            result.reason = (
                "BurnedInAnnotation is YES: the pixels may show identifying text; "
                "not copied (clean the pixels first, or supply a pixel-cleaning step)"
            )
            return ds, result
        out = ds if inplace else copy.deepcopy(ds)
        if self.options.clean_pixel_data is not None and self.options.needs_pixel_cleaning(out):
            from privacy.pixels import PixelCleaningError

            try:
                report = self.options.clean_pixel_data(out)
            except PixelCleaningError as e:
                result.status = "quarantined"
                result.reason = f"pixel cleaning failed: {e}; not copied"
                return ds, result
            result.actions["clean_pixel_data"] += 1
            to_dict = getattr(report, "to_dict", None)
            result.pixels = to_dict() if callable(to_dict) else {}
        if patient_key is None:
            patient_key = str(ds.get("PatientID", "") or "")
        shift = self.pseudonymizer.date_shift_days(patient_key)
        clean = None
        if self.options.clean_descriptors or self.options.clean_structured_content:
            clean = clean_text or _default_text_cleaner()
        self._walk(out, result, shift, clean)
        self._file_meta(out)
        if patient_pseudonym is not None:
            out.PatientID = patient_pseudonym
            out.PatientName = patient_pseudonym
            result.attributes["PatientID"] = "D"
            result.attributes["PatientName"] = "D"
        self._mark(out)
        return out, result

    def deidentify_file(
        self,
        src: str | Path,
        dst: str | Path,
        *,
        patient_key: str | None = None,
        patient_pseudonym: str | None = None,
        clean_text: Callable[[str], str] | None = None,
    ) -> DicomResult:
        """Read ``src``, de-identify it, and write ``dst`` (unless quarantined).

        Raises:
            DicomDeidError: ``src`` is not a readable DICOM file.
        """
        ds = read_dicom(src)
        out, result = self.deidentify_dataset(
            ds,
            patient_key=patient_key,
            patient_pseudonym=patient_pseudonym,
            inplace=True,
            clean_text=clean_text,
        )
        if result.status == "deidentified":
            dst = Path(dst)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                out.save_as(dst)
            except (ValueError, TypeError, OSError) as e:
                raise DicomDeidError(f"{src}: cannot write the de-identified copy: {e}") from e
        return result

    # ----------------------------------------------------------------- internals
    def _walk(
        self,
        ds: Dataset,
        result: DicomResult,
        shift: int,
        clean: Callable[[str], str] | None,
        structured: bool = False,
    ) -> None:
        """Apply the profile to ``ds``; ``structured``: ``ds`` is an item of structured
        content (SR content items, acquisition context), whose free text the table does not
        list attribute by attribute."""
        private_kept = self._safe_private_tags(ds) if self.options.safe_private else set()
        for tag in list(ds.keys()):
            elem = ds[tag]
            keyword = _name(elem.tag)
            if elem.tag.is_private:
                if int(elem.tag) in private_kept:
                    self._record(result, keyword, "K", elem)
                else:
                    del ds[tag]
                    result.actions["private"] += 1
                    result.categories["private"] += 1
                continue
            if elem.tag.group == 0x0002:
                continue  # file meta is handled separately
            if elem.tag.element == 0:
                del ds[tag]  # retired group length: stale once attributes are removed
                continue
            if (
                clean is not None
                and self.options.clean_descriptors
                and keyword in CLEAN_DESCRIPTOR_KEYWORDS
            ):
                self._clean_descriptor(ds, elem, result, shift, clean, keyword, structured)
                continue
            code = self.table.code(int(elem.tag))
            inner = structured or keyword in STRUCTURED_CONTENT_KEYWORDS  # for its items
            if inner and elem.VR == "SQ" and self.options.clean_structured_content:
                code = "C"  # kept and walked, whatever the table says (e.g. X/Z)
            if code is None:
                if structured and elem.VR in _FREE_TEXT_VRS and not elem.is_empty:
                    self._structured_text(elem, result, shift, clean, keyword)
                elif elem.VR == "SQ":
                    for item in elem.value or []:
                        self._walk(item, result, shift, clean, inner)
                elif (unlisted := self._unlisted_action(elem)) is not None:
                    self._apply(ds, elem, unlisted, result, shift, keyword, clean, inner)
                    result.actions[f"unlisted_{unlisted}"] += 1
                continue
            action = self._choose(code, elem, keyword)
            self._apply(ds, elem, action, result, shift, keyword, clean, inner)

    def _structured_text(
        self,
        elem: DataElement,
        result: DicomResult,
        shift: int,
        clean: Callable[[str], str] | None,
        keyword: str,
    ) -> None:
        """Free text of structured content (e.g. an SR TEXT item's TextValue): cleaned with
        Clean Structured Content [113104], else replaced by a dummy (the content tree is D)."""
        if self.options.clean_structured_content and clean is not None:
            elem.value = clean(str(elem.value))
            self._record(result, keyword, "C", elem)
        else:
            elem.value = self._dummy(elem)
            self._record(result, keyword, "D", elem)

    def _unlisted_action(self, elem: DataElement) -> Action | None:
        """What to do with an attribute the profile's table does not list (newer or rarer
        attributes, e.g. EvaluatorName, PatientBirthDateInAlternativeCalendar): kept unless
        it can only hold identifying content — a person's name, a date or time, free text,
        anything of the Patient module (group 0010) or an overlay's text — which is removed
        (dates shifted instead under Retain Longitudinal Temporal Information)."""
        vr, group = elem.VR, elem.tag.group
        if elem.is_empty:
            return None
        if vr in ("DA", "DT"):
            return "C" if self.options.retain_longitudinal else "X"
        if vr == "TM":
            return "K" if self.options.retain_longitudinal else "X"
        if vr == "PN" or vr in _FREE_TEXT_VRS or group == 0x0010:
            return "X"
        if 0x6000 <= group <= 0x60FF and vr in ("LO", "SH", "LT", "ST", "UT"):
            return "X"
        return None

    def _choose(self, code: str, elem: DataElement, keyword: str) -> Action:
        if keyword in self._retained:
            return "K"
        if (
            self.options.retain_longitudinal
            and elem.VR in ("DA", "DT", "TM")
            and "BirthDate" not in keyword
            and "BirthTime" not in keyword
        ):
            return "K" if elem.VR == "TM" else "C"
        action = resolve_action(code, elem.VR)
        if action == "D" and elem.VR == "UI":
            return "U"
        return action

    def _apply(
        self,
        ds: Dataset,
        elem: DataElement,
        action: Action,
        result: DicomResult,
        shift: int,
        keyword: str,
        clean: Callable[[str], str] | None,
        structured: bool = False,
    ) -> None:
        if action == "X":
            del ds[elem.tag]
        elif action == "Z":
            elem.value = [] if elem.VR == "SQ" else ("" if elem.VR in _TEXT_VRS else None)
        elif action in ("D", "U", "K", "C") and elem.VR == "SQ":
            for item in elem.value or []:
                self._walk(item, result, shift, clean, structured)
        elif action == "U":
            self._replace_uid(elem)
        elif action == "D":
            elem.value = self._dummy(elem)
        elif action == "C":
            raw = elem.value if isinstance(elem.value, list | MultiValue) else [elem.value]
            texts = [str(v or "") for v in raw]
            shifted = [_shift_date_text(t, shift) if t else "" for t in texts]
            if any(v is None for v in shifted):  # unparseable date: empty it, never leak it
                elem.value = ""
                action = "Z"
            else:
                elem.value = shifted if len(shifted) > 1 else shifted[0]
        elif action == "K" and keyword == "PatientAge":
            elem.value = _cap_age(str(elem.value or ""))
        self._record(result, keyword, action, elem)

    def _clean_descriptor(
        self,
        ds: Dataset,
        elem: DataElement,
        result: DicomResult,
        shift: int,
        clean: Callable[[str], str],
        keyword: str,
        structured: bool = False,
    ) -> None:
        """Clean Descriptors [113105]: text cleaned, sequences walked, binary removed."""
        if elem.VR == "SQ":
            for item in elem.value or []:
                self._walk(item, result, shift, clean, structured)
        elif elem.VR in _TEXT_VRS and not elem.is_empty:
            raw = elem.value if isinstance(elem.value, list | MultiValue) else [elem.value]
            texts = [clean(str(v or "")) if v else "" for v in raw]
            elem.value = texts if len(texts) > 1 else texts[0]
        elif not elem.is_empty:  # binary (OB): cannot be cleaned, so removed
            del ds[elem.tag]
            self._record(result, keyword, "X", elem)
            return
        self._record(result, keyword, "C", elem)

    def _record(self, result: DicomResult, keyword: str, action: str, elem: DataElement) -> None:
        result.actions[action] += 1
        result.attributes.setdefault(keyword, action)
        if action != "K":
            result.categories[_category(elem, keyword)] += 1

    def _replace_uid(self, elem: DataElement) -> None:
        if elem.VR != "UI" or elem.value in (None, ""):
            if elem.VR != "UI" and not elem.is_empty:
                elem.value = "" if elem.VR in _TEXT_VRS else None
            return
        if isinstance(elem.value, str):
            elem.value = self.pseudonymizer.uid(elem.value)
        else:
            elem.value = [self.pseudonymizer.uid(v) for v in elem.value]

    def _dummy(self, elem: DataElement) -> Any:
        vr = elem.VR
        original = str(elem.value) if elem.value is not None else ""
        code = self.pseudonymizer.pseudonym(original, f"dicom.D.{int(elem.tag):08X}", length=10)
        if vr == "PN":
            return f"DEID^{code}"
        if vr in ("AE", "CS", "SH"):
            return code
        if vr in ("LO", "LT", "ST", "UT", "UC"):
            return f"DEID {code}"
        if vr == "DA":
            return "19000101"
        if vr == "DT":
            return "19000101000000"
        if vr == "TM":
            return "000000"
        if vr == "AS":
            return "000Y"
        if vr == "UR":
            return "http://deid.invalid"
        if vr in ("DS", "IS"):
            return "0"
        if vr in ("FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"):
            return 0
        if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
            return b"\x00\x00"
        return None

    def _safe_private_tags(self, ds: Dataset) -> set[int]:
        keep: set[int] = set()
        creators: dict[tuple[int, int], str] = {}
        for elem in ds:
            if elem.tag.is_private_creator:
                creators[(elem.tag.group, elem.tag.element)] = str(elem.value).strip()
        for elem in ds:
            if not elem.tag.is_private or elem.tag.is_private_creator:
                continue
            block = elem.tag.element >> 8
            creator = creators.get((elem.tag.group, block))
            if creator is not None and (creator, elem.tag.element & 0xFF) in (
                self.options.safe_private
            ):
                keep.add(int(elem.tag))
                keep.add(int(Tag(elem.tag.group, block)))
        return keep

    def _file_meta(self, ds: Dataset) -> None:
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            return
        for tag in _META_REMOVE:
            if tag in meta:
                del meta[tag]
        if "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    def _mark(self, ds: Dataset) -> None:
        codes = self.options.codes()
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = [
            "PS3.15 E Basic Profile" + ("+options" if len(codes) > 1 else ""),
            f"rule table {self.table.version} (dicom-anonymizer)",
            "privacy.dicom (clinfuse)",
        ]
        items = []
        for c in codes:
            item = Dataset()
            item.CodeValue = c
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = OPTION_CODES[c]
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = (
            "MODIFIED" if self.options.retain_longitudinal else "REMOVED"
        )


@lru_cache(maxsize=1)
def _default_text_cleaner() -> Callable[[str], str]:
    """The note de-identifier in tag mode, without patient context (Clean Descriptors)."""
    from privacy.text import TextDeidentifier

    deid = TextDeidentifier(mode="tag", use_presidio=False)
    return lambda text: deid.deidentify(text).text


def _cap_age(value: str) -> str:
    m = re.fullmatch(r"(\d{3})Y", value.strip())
    if m and int(m.group(1)) >= 90:
        return "090Y"
    return value


def read_dicom(path: str | Path) -> Dataset:
    """Read a DICOM file completely (pixel data included), or raise :class:`DicomDeidError`."""
    path = Path(path)
    try:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            # a bare dataset without preamble/file meta is still DICOM if it holds a SOP
            # class or instance UID; anything else (text, JSON, archives) is not
            with warnings.catch_warnings():  # pydicom warns about every garbage "tag"
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True)
                tags = set(ds.keys())
            if not tags & {0x00080016, 0x00080018}:
                raise InvalidDicomError("no DICOM preamble and no SOP Class/Instance UID") from None
        # touch every element so a truncated file fails here, not after half the output
        for _ in ds.iterall():
            pass
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise DicomDeidError(
            f"{path}: not a readable DICOM file ({type(e).__name__}: {e}); "
            "it is listed in the report and not copied: re-export it from the archive"
        ) from e
    return ds


def deny_list(identifiers: Iterable[Identifier]) -> dict[str, list[str]]:
    """Identifiers as a text de-identifier deny-list: entity (``NAME``, ``MRN``, ``DATE``,
    ``LOCATION``, ``PHONE``) → the distinct values (see :class:`privacy.text.PatientContext`)."""
    entity = {"name": "NAME", "name_part": "NAME", "id": "MRN", "date": "DATE"}
    entity |= {"place": "LOCATION", "phone": "PHONE"}
    deny: dict[str, set[str]] = {}
    for ident in identifiers:
        deny.setdefault(entity[ident.kind], set()).add(ident.value)
    return {k: sorted(v) for k, v in deny.items()}


def dicom_identifiers(
    ds: Dataset,
    table: ProfileTable | None = None,
    retained: Iterable[str] = (),
) -> list[Identifier]:
    """Identifying values of a dataset, for the residual-risk scan.

    Names (every PN attribute the profile lists, whole and by component), ids (profile
    attributes whose keyword ends in ID/Number/Identifier/Locator and whose value holds a
    digit), places and phone numbers, and dates (DA, and the date part of DT). Values the
    options keep on purpose (``retained``) and short values (< 4 characters) are skipped.
    """
    table = table or load_profile_table()
    keep = set(retained)
    found: dict[tuple[str, str, str], Identifier] = {}

    def add(kind: str, source: str, value: str) -> None:
        value = value.strip()
        if len(value) >= 4:
            found.setdefault((kind, source, value), Identifier(kind, source, value))

    # a vendor's name in InstitutionName (pydicom's MR_small: "TOSHIBA", made by
    # "TOSHIBA_MEC") identifies nobody, and Manufacturer keeps it: searching it would refuse
    # every such file
    vendors = {
        str(ds.get(k, "")).strip().lower() for k in ("Manufacturer", "ManufacturerModelName")
    }
    vendors.discard("")
    for elem in ds.iterall():
        if elem.tag.is_private or elem.VR == "SQ" or elem.is_empty:
            continue
        keyword = keyword_for_tag(elem.tag) or ""
        if keyword in _BULK_KEYWORDS or keyword in keep:
            continue
        code = table.code(int(elem.tag))
        if code is None or code == "K":
            continue
        values = elem.value if isinstance(elem.value, list | tuple) else [elem.value]
        for v in values:
            if v is None:
                continue
            text = str(v)
            if elem.VR == "PN":
                add("name", keyword, text)
                for part in re.split(r"[\^=]+", text):
                    if len(part.strip()) >= 3 and part.strip().upper() not in ("MD", "PHD", "DR"):
                        add("name_part", keyword, part)
            elif elem.VR in ("DA", "DT"):
                m = _DATE8.match(text)
                if m and text[:8] not in ("00010101", "19000101"):
                    add("date", keyword, text[:8])
            elif keyword in _PLACE_KEYWORDS:
                said = re.compile(rf"(?<![^\W_]){re.escape(text.strip())}(?![^\W_])", re.I)
                if not any(said.search(v) for v in vendors):
                    add("phone" if "Telephone" in keyword else "place", keyword, text)
            elif (
                elem.VR in ("LO", "SH", "UC", "LT", "ST")
                and _ID_KEYWORD.search(keyword)
                and re.search(r"\d", text)
            ):
                add("id", keyword, text)
    return list(found.values())


def dicom_text_values(ds: Dataset) -> list[str]:
    """Every non-bulk value of a dataset as text (file meta and nested items included)."""
    out: list[str] = []
    datasets: list[Dataset] = [ds]
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        datasets.append(meta)
    for d in datasets:
        for elem in d.iterall():
            kw = keyword_for_tag(elem.tag) or ""
            if elem.VR == "SQ" or kw in _BULK_KEYWORDS or elem.is_empty:
                continue
            if elem.VR in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
                if elem.tag.group in (0x6000,) or (elem.tag.group & 0xFF00) == 0x6000:
                    continue  # overlay bit planes
                raw = elem.value if isinstance(elem.value, bytes) else b""
                out.append(raw.decode("latin-1"))
                continue
            out.append(str(elem.value))
    return out
