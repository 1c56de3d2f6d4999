"""De-identification of free text (clinical notes) for the HIPAA Safe Harbor identifiers.

Detection combines, offline and without any model download:

* presidio-analyzer with its ``no_op`` NLP engine (no spaCy model) and the predefined
  recognizers that need no network (SSN, IP, phone via ``phonenumbers``, dates, URLs,
  licences, credit cards/IBAN, MAC addresses). Its e-mail recognizer is left out: it
  validates domains with ``tldextract``, which tries to download the public suffix list.
* our own recognizers (:data:`ENTITY_TYPES`): dates in numeric and written forms, ages over
  89, phone and fax numbers, e-mails, SSNs, medical record / account / health-plan /
  licence / vehicle / device numbers after their labels, URLs, IPs, street addresses,
  ZIP codes after a state, places after "lives in" and facility names;
* names from dictionaries (Faker's en_US first and last names) and context rules (titles
  such as "Dr.", labels such as "Patient:", "signed by", relatives, ", MD");
* deny-lists from the structured data of the same patient (names, MRNs, dates, places from
  the DICOM headers and the manifest), matched case-insensitively;
* optionally, a user-supplied detector (e.g. :func:`spacy_detector`, :func:`hf_detector`
  on a local de-identification model).

Replacement is by consistent surrogates (``mode="surrogate"``: the same name of a patient
becomes the same fake name, dates move by the patient's shift in their own format, ages
over 89 become ``90+``, other identifiers become ``[TYPE]`` tags) or by tags only
(``mode="tag"``).

>>> deid = TextDeidentifier(Pseudonymizer(b"0123456789abcdef0123456789abcdef"))  # doctest: +SKIP
>>> ctx = PatientContext(key="P1", shift_days=-30, deny={"NAME": ["Mateo Testpatient"]})
>>> deid.deidentify("Seen 03/14/2021 by Dr. Smith, pt Mateo Testpatient", ctx).text  # doctest: +SKIP
'Seen 02/12/2021 by Dr. Hill, pt Aaron Lowe'
"""

from __future__ import annotations

import bisect
import datetime as _dt
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from privacy.pseudonym import Pseudonymizer

__all__ = [
    "ENTITY_TYPES",
    "PATTERN_TYPES",
    "Detector",
    "PatientContext",
    "RedactedTokens",
    "Span",
    "TextDeidentifier",
    "TextResult",
    "date_variants",
    "hf_detector",
    "international_first_names",
    "redact_tokens",
    "spacy_detector",
]

ENTITY_TYPES: tuple[str, ...] = (
    "NAME",
    "DATE",
    "AGE",
    "PHONE",
    "FAX",
    "EMAIL",
    "SSN",
    "MRN",
    "ACCOUNT",
    "HEALTH_PLAN",
    "LICENSE",
    "VEHICLE",
    "DEVICE",
    "URL",
    "IP",
    "ADDRESS",
    "ZIP",
    "LOCATION",
    "ID",
)
"""Identifier types reported (HIPAA Safe Harbor, 45 CFR 164.514(b)(2))."""

PATTERN_TYPES: frozenset[str] = frozenset(
    {"DATE", "AGE", "PHONE", "FAX", "EMAIL", "SSN", "MRN", "URL", "IP"}
)
"""Types with a regular form, for which recall must be 100 % on the test notes."""


@dataclass(frozen=True)
class Span:
    """One detected identifier: ``text[start:end]`` is of type ``entity``.

    Attributes:
        start, end: character offsets.
        entity: one of :data:`ENTITY_TYPES`.
        score: detector confidence in [0, 1].
        source: which detector found it (``deny``, ``pattern``, ``context``, ``dictionary``,
            ``presidio``, ``external``).
    """

    start: int
    end: int
    entity: str
    score: float = 1.0
    source: str = "pattern"


Detector = Callable[[str], Iterable[Span]]
"""A user-supplied detector: text → spans (e.g. a local NER model)."""


@dataclass
class PatientContext:
    """What is known about the patient a text belongs to.

    Attributes:
        key: the patient's key (a pseudonym or id) for consistent surrogates.
        shift_days: the patient's date shift; ``None`` turns dates into ``[DATE]``.
        deny: entity → original values from structured data (names, MRNs, dates as
            ``YYYYMMDD`` or ``YYYY-MM-DD``, places, phones) that must not survive.
    """

    key: str = ""
    shift_days: int | None = None
    deny: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass
class TextResult:
    """A de-identified text with what was replaced.

    Attributes:
        text: the de-identified text.
        spans: the detected spans (offsets into the *original* text).
        counts: entity → number of replacements.
    """

    text: str
    spans: list[Span]
    counts: Counter[str]


# ----------------------------------------------------------------------------- patterns
_MONTHS = (
    r"Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?"
)
_MONTH_NUM = {
    m: i + 1
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_Y = r"(?P<y>(?:19|20)\d{2})"
_Y2 = r"(?P<y>(?:19|20)\d{2}|\d{2})"
_DATE_PATTERNS: list[tuple[str, str]] = [
    # (pattern, format kind)
    (
        rf"(?<![\d/.-])(?P<m>0?[1-9]|1[0-2])(?P<sep>[/-])(?P<d>0?[1-9]|[12]\d|3[01])(?P=sep){_Y2}(?![\d/])",
        "mdy",
    ),
    (rf"(?<![\d-]){_Y}-(?P<m>0[1-9]|1[0-2])-(?P<d>0[1-9]|[12]\d|3[01])(?!\d)", "iso"),
    (rf"(?<!\d){_Y}/(?P<m>0?[1-9]|1[0-2])/(?P<d>0?[1-9]|[12]\d|3[01])(?![\d/])", "ymd/"),
    (rf"(?<![\d.]){_Y}(?P<m>0[1-9]|1[0-2])(?P<d>0[1-9]|[12]\d|3[01])(?!\d)", "compact"),
    (rf"(?<![\d.])(?P<d>0?[1-9]|[12]\d|3[01])\.(?P<m>0?[1-9]|1[0-2])\.{_Y}(?![\d.])", "dmy."),
    (  # 12-Mar-2021, 12-MAR-21, 12/Mar/2021, 12 Mar 21 (clinical systems' day-month-year)
        rf"(?<![\d/.-])(?P<d>0?[1-9]|[12]\d|3[01])(?P<sep>[-/ ])(?i:(?P<mon>{_MONTHS}))"
        rf"(?P=sep){_Y2}(?![\d/-])",
        "d_mon_y",
    ),
    (
        rf"(?i:\b(?P<mon>{_MONTHS})\.?)\s+(?P<d>[0-3]?\d)(?:st|nd|rd|th)?\b(?:,?\s+{_Y}\b)?",
        "month_d_y",
    ),
    (
        rf"\b(?P<d>[0-3]?\d)(?:st|nd|rd|th)?\s+(?:of\s+)?(?i:(?P<mon>{_MONTHS})\b\.?)(?:,?\s+{_Y}\b)?",
        "d_month_y",
    ),
    (rf"(?i:\b(?P<mon>{_MONTHS})\.?)\s+{_Y}\b", "month_y"),
    (
        r"(?i:\b(?:on|since|from|until|till|dated|DOS:?|seen|admitted|discharged|returned|"
        r"surgery|onset|visit)\s+)(?P<v>(?P<m>0?[1-9]|1[0-2])/(?P<d>0?[1-9]|[12]\d|3[01]))(?![\d/])",
        "md",
    ),
]
_DATE_RES = [(re.compile(p), kind) for p, kind in _DATE_PATTERNS]

_ID_VALUE = r"(?=[A-Za-z/-]*\d)[A-Za-z0-9][A-Za-z0-9/-]{3,}"
_LABEL_TAIL = r"(?:\s*(?:number|num|no\.?|nbr|#|id))?\s*(?:is|of)?\s*[:#=]?\s*"


def _ctx(labels: str, value: str = _ID_VALUE) -> re.Pattern[str]:
    return re.compile(rf"(?i:\b(?:{labels}))(?i:{_LABEL_TAIL})(?P<v>{value})")


_STATES_ABBR = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|"
    "NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR|AS|GU|MP|VI|FM|MH|PW|"
    "AA|AE|AP"
)
_STATES = (
    "Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Georgia|"
    "Hawaii|Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|Massachusetts|"
    "Michigan|Minnesota|Mississippi|Missouri|Montana|Nebraska|Nevada|New Hampshire|New Jersey|"
    "New Mexico|New York|North Carolina|North Dakota|Ohio|Oklahoma|Oregon|Pennsylvania|"
    "Rhode Island|South Carolina|South Dakota|Tennessee|Texas|Utah|Vermont|Virginia|Washington|"
    "West Virginia|Wisconsin|Wyoming"
)
_STREET_SUFFIX = (
    "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Drive|Dr|Lane|Ln|Court|Ct|Way|Place|Pl|Terrace|"
    "Ter|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Square|Sq|Trail|Trl|Alley|Row|Crescent|Loop|Path|"
    "Pike|Plaza|Point|Ridge|Run|Walk|Heights|Hts"
)
try:  # the USPS street suffixes (Faker ships the list); ours are the common abbreviations
    from faker.providers.address.en_US import Provider as _Address

    _STREET_SUFFIX = "|".join(
        sorted({*_STREET_SUFFIX.split("|"), *_Address.street_suffixes}, key=lambda x: (-len(x), x))
    )
except ImportError:  # pragma: no cover - faker is part of the privacy extra
    pass
_UP = "A-ZÀ-ÖØ-ÞĀĂĄĆČĎĐĒĖĘĚĞĪĮİŁŃŇŌŐŒŘŚŞŠŢŤŪŮŰŲŹŻŽ\u0386-\u038f\u0391-\u03a9\u0400-\u042f"
_LO = "a-zß-öø-ÿ\u0100-\u017f\u03ac-\u03ce\u0430-\u045f"
_CAP = rf"[{_UP}](?:'[{_UP}])?[{_LO}][{_UP}{_LO}'’-]*"
_TITLE = r"(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Doctor|Nurse|Sister|Father|Rev)"
_NAME = rf"(?!{_TITLE}\b){_CAP}(?:[ \t]+[A-Z]\.)?(?:[ \t]+{_CAP}){{0,2}}"

# (entity, compiled pattern, score); group "v" is the identifier when present
_PATTERNS: list[tuple[str, re.Pattern[str], float]] = [
    (
        "EMAIL",
        re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
        1.0,
    ),
    (
        "URL",
        re.compile(r"(?i:\b(?:https?://|ftp://|www\.))[^\s<>\"')\]]+[^\s<>\"')\].,;:!?]"),
        1.0,
    ),
    (
        "URL",
        re.compile(
            r"(?i:\b[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)*\.(?:com|org|net|edu|gov|io|info|health|"
            r"us|uk|de|fr|ca|au|co)\b(?:/[^\s<>\"')\]]*[^\s<>\"')\].,;:!?])?)"
        ),
        0.9,
    ),
    (
        "IP",
        re.compile(
            r"(?<![\d.])(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}(?!\d|\.\d)"
        ),
        1.0,
    ),
    (
        "IP",
        re.compile(
            r"(?i)(?<![\w:])(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}(?![\w:])|(?<![\w:])(?:[0-9a-f]{1,4}:){1,6}:(?:[0-9a-f]{1,4}:){0,5}[0-9a-f]{1,4}(?![\w:])"
        ),
        0.9,
    ),
    ("SSN", re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])"), 1.0),
    ("SSN", _ctx(r"SSN|SS#|social security", r"\d{3}[- ]?\d{2}[- ]?\d{4}"), 1.0),
    (
        "FAX",
        re.compile(
            r"(?i:\bfax(?:\s*(?:number|no\.?|#))?\s*[:#]?\s*)(?P<v>(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4})"
        ),
        1.0,
    ),
    (
        "PHONE",
        re.compile(
            r"(?<![\w-])(?:\+?1[\s.-]?)?(?:\(\d{3}\)[\s.-]?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?:\s*(?:x|ext\.?)\s*\d{1,5})?(?![\w-])"
        ),
        1.0,
    ),
    (
        "PHONE",
        re.compile(
            r"(?i:\b(?:phone|tel|telephone|call|cell|mobile|pager|beeper|ph|contact|reached at)\b\.?\s*(?:#|no\.?|number)?\s*[:#]?\s*(?:at\s+)?)(?P<v>\d{3}[\s.-]\d{4})(?![\w-])"
        ),
        1.0,
    ),
    (
        "MRN",
        _ctx(
            r"MRN|MR|medical record|med(?:ical)? rec|chart|hospital|unit|patient id|pt id|EMPI|MPI|record"
        ),
        1.0,
    ),
    (
        "HEALTH_PLAN",
        _ctx(
            r"member|policy|subscriber|health plan|insurance|beneficiary|medicare|medicaid|HICN|MBI|plan|group"
        ),
        1.0,
    ),
    ("ACCOUNT", _ctx(r"account|acct|a/c|billing|FIN|encounter|visit|invoice|claim|bank"), 1.0),
    (
        "VEHICLE",
        _ctx(
            r"license plate|licence plate|plate|tag|VIN|vehicle",
            r"(?-i:(?=[A-Z -]*\d)[A-Z0-9]{1,8}(?:[ -][A-Z0-9]{1,8})?)(?![A-Za-z0-9])",
        ),
        1.0,
    ),
    (
        "LICENSE",
        _ctx(r"driver'?s licen[cs]e|licen[cs]e|lic|DL|DEA|NPI|certificate|cert|passport"),
        1.0,
    ),
    (
        "DEVICE",
        _ctx(r"serial|S/N|SN|device|UDI|implant|pacemaker|defibrillator|pump|lot|model"),
        1.0,
    ),
    ("ID", _ctx(r"ID|identifier|identification"), 1.0),
    (
        "VEHICLE",
        re.compile(
            r"\b(?=[A-HJ-NPR-Z0-9]*\d)(?=[A-HJ-NPR-Z0-9]*[A-HJ-NPR-Z])[A-HJ-NPR-Z0-9]{17}\b"
        ),
        0.8,
    ),
    ("DEVICE", re.compile(r"\(01\)\d{14}(?:\(\d{2}\)[A-Za-z0-9]+)*"), 1.0),
    (
        "AGE",
        re.compile(
            r"(?<![\d.])(?<!T )(?<!T: )(?<!Temp )(?<!temp )(?<!Tmax )"
            r"(?P<v>9\d|1[0-4]\d)(?=\s*(?:-\s*)?(?:yo\b|y/o|y\.o\.|yrs?\b|years?\b|year-old|-year|yr-old|M\b|F\b))"
        ),
        1.0,
    ),
    # "age 93", "aged 93", "Age: 93", PhysioNet's "<age>: 93", "at the age of 93", "turned 91"
    (
        "AGE",
        re.compile(
            r"(?i:\b(?:age|aged|at\s+the\s+age\s+of|turned|turns|turning)\b>?:?\s*)"
            r"(?P<v>9\d|1[0-4]\d)\b"
        ),
        1.0,
    ),
    (  # spelled out: "ninety-three years old", "one hundred and one-year-old"
        "AGE",
        re.compile(
            r"(?i:\b(?P<v>ninety(?:[- ](?:one|two|three|four|five|six|seven|eight|nine))?"
            r"|(?:a|one)[- ]hundred(?:[- ](?:and[- ])?[a-z]+)?)(?=[- ](?:years?|yr)\b|[- ]year-old))"
        ),
        1.0,
    ),
    (
        "ADDRESS",
        re.compile(
            rf"\b\d{{1,6}}[A-Z]?[ \t]+(?:[NSEW]\.?[ \t]+)?(?:[A-Z0-9][A-Za-z0-9'-]*\.?[ \t]+){{1,4}}(?:{_STREET_SUFFIX})\b\.?"
            r"(?:,?[ \t]*(?:Apt|Apartment|Unit|Suite|Ste|Room|Rm|Fl|Floor|#)\.?[ \t]*#?[A-Za-z0-9-]+)?"
        ),
        1.0,
    ),
    ("ADDRESS", re.compile(r"(?i:\bP\.?\s?O\.?\s*Box\s+\d+)"), 1.0),
    (
        "LOCATION",
        re.compile(rf"(?P<v>{_CAP}(?:[ \t]+{_CAP}){{0,2}}),[ \t]*(?:{_STATES_ABBR}|{_STATES})\b"),
        0.9,
    ),
    (
        "ZIP",
        re.compile(rf"\b(?:{_STATES_ABBR}|{_STATES})\.?,?[ \t]+(?P<v>\d{{5}}(?:-\d{{4}})?)\b"),
        1.0,
    ),
    (
        "ZIP",
        re.compile(
            r"(?i:\b(?:zip|zip code|postal code|zipcode)\s*[:#]?\s*)(?P<v>\d{5}(?:-\d{4})?)\b"
        ),
        1.0,
    ),
    (
        "LOCATION",
        re.compile(
            rf"(?i:\b(?:lives|living|resides|residing|resident|moved|born|transferred|home|visiting|"
            rf"works|worked|employed)\s+(?:in|of|to|from|at)\s+(?:the\s+)?)(?P<v>{_CAP}(?:[ \t]+{_CAP}){{0,3}})"
        ),
        0.9,
    ),
    (
        "LOCATION",
        re.compile(
            rf"(?P<v>(?:{_CAP}[ \t]+){{1,4}}(?:Hospital|Medical Center|Clinic|Health Center|"
            r"Nursing Home|Rehabilitation Center|Rehab Center|Hospice|Infirmary|Health System))\b"
        ),
        0.9,
    ),
    # --- names by context
    (
        "NAME",
        re.compile(rf"(?i:\b{_TITLE}\b\.?)[ \t]+(?P<v>{_NAME})"),
        1.0,
    ),
    (
        "NAME",
        re.compile(
            r"(?i:\b(?:patient|pt|name|patient name|attending|resident|intern|fellow|physician|"
            r"provider|pcp|surgeon|cardiologist|oncologist|nurse|signed|signed by|seen by|"
            r"dictated by|transcribed by|cosigned by|reviewed by|referred by|referring|"
            r"contact|emergency contact|daughter|son|wife|husband|spouse|partner|mother|"
            r"father|sister|brother|niece|nephew|guardian|caregiver|friend|nok|poa|"
            r"accompanied by|discussed with|spoke with|cc)\b\s*(?:name)?\s*[:,-]?)[ \t]+"
            rf"(?P<v>{_NAME})"
        ),
        0.9,
    ),
    (
        "NAME",
        re.compile(
            rf"(?P<v>{_NAME}),?[ \t]+(?:MD|M\.D\.|DO|D\.O\.|RN|NP|PA-C|PA|PhD|MBBS|CNP|APRN|LPN|MSW|LCSW)\b"
        ),
        1.0,
    ),
]

# Words that are names in the dictionaries but far more often ordinary or clinical words.
_NAME_STOPWORDS = frozenset(
    [
        "will",
        "may",
        "june",
        "april",
        "august",
        "mark",
        "grace",
        "hope",
        "faith",
        "joy",
        "rose",
        "art",
        "chase",
        "hunter",
        "dawn",
        "ruby",
        "crystal",
        "amber",
        "jack",
        "frank",
        "guy",
        "major",
        "lane",
        "page",
        "reed",
        "gene",
        "sky",
        "brook",
        "bill",
        "rich",
        "pat",
        "sue",
        "don",
        "ray",
        "dee",
        "lee",
        "carol",
        "christian",
        "summer",
        "autumn",
        "star",
        "royal",
        "king",
        "price",
        "young",
        "hill",
        "long",
        "rice",
        "bell",
        "cash",
        "gray",
        "green",
        "brown",
        "white",
        "black",
        "stone",
        "wood",
        "lake",
        "best",
        "good",
        "love",
        "key",
        "day",
        "case",
        "cross",
        "ball",
        "bass",
        "banks",
        "bird",
        "bond",
        "booth",
        "bush",
        "cook",
        "fox",
        "glass",
        "gross",
        "hall",
        "hood",
        "horn",
        "house",
        "hunt",
        "kidd",
        "lamb",
        "miles",
        "moss",
        "nash",
        "page",
        "park",
        "parks",
        "payne",
        "pope",
        "post",
        "rich",
        "ross",
        "rush",
        "salt",
        "shaw",
        "short",
        "small",
        "snow",
        "strong",
        "sweet",
        "tate",
        "vance",
        "wall",
        "ward",
        "walker",
        "waters",
        "webb",
        "wells",
        "west",
        "wise",
        "wolf",
        "woods",
        "young",
        "cole",
        "colon",
        "haley",
        "holt",
        "ewing",
        "best",
        "day",
        "lowe",
        "moon",
        "rivers",
        "lyons",
        "meadows",
        "patient",
        "reports",
        "denies",
        "normal",
        "acute",
        "chronic",
        "history",
        "exam",
        "general",
        "heart",
        "lungs",
        "abdomen",
        "skin",
        "head",
        "neck",
        "chest",
        "back",
        "pain",
        "plan",
        "assessment",
        "impression",
        "vitals",
        "labs",
        "imaging",
        "note",
        "notes",
        "signed",
        "date",
        "time",
        "left",
        "right",
        "bilateral",
        "anterior",
        "posterior",
        "temp",
        "pulse",
        "patient",
        "cardiology",
        "radiology",
        "clinic",
        "hospital",
        "emergency",
        "medicine",
        "surgery",
        "nurse",
        "doctor",
        "admission",
        "discharge",
        "room",
        "unit",
        "ward",
        "floor",
        "follow",
        "hospitalist",
        "morning",
        "evening",
        "night",
        "today",
        "tomorrow",
        "yesterday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "january",
        "february",
        "march",
        "july",
        "september",
        "october",
        "november",
        "december",
        "allergies",
        "medications",
        "meds",
        "social",
        "family",
        "review",
        "systems",
    ]
)


@lru_cache(maxsize=1)
def _name_dictionaries() -> tuple[frozenset[str], frozenset[str], tuple[str, ...], tuple[str, ...]]:
    """(first names, last names, surrogate first names, surrogate last names) from Faker."""
    try:
        from faker.providers.person.en_US import Provider as _Person
    except ImportError:  # pragma: no cover - faker is a dependency of the privacy extra
        return frozenset(), frozenset(), ("Alex", "Sam", "Robin"), ("Doe", "Roe", "Moe")
    first = tuple(sorted({*_Person.first_names_female, *_Person.first_names_male}))
    last = tuple(sorted(_Person.last_names))
    return (
        frozenset(n.lower() for n in first),
        frozenset(n.lower() for n in last),
        first,
        last,
    )


# Capitalized words that are first names in some language but in notes far more often
# eponyms, places or calendar words ("Graves disease", "Murphy sign", "General Hospital").
_EPONYMS = frozenset(
    [
        "addison",
        "alzheimer",
        "apgar",
        "babinski",
        "barrett",
        "bell",
        "brudzinski",
        "chvostek",
        "crohn",
        "cushing",
        "doppler",
        "down",
        "easter",
        "foley",
        "general",
        "glasgow",
        "graves",
        "hashimoto",
        "hodgkin",
        "holter",
        "horner",
        "kaposi",
        "kawasaki",
        "kernig",
        "marfan",
        "mercy",
        "murphy",
        "parkinson",
        "phalen",
        "raynaud",
        "reiter",
        "romberg",
        "saint",
        "sunday",
        "swan",
        "tinel",
        "trousseau",
        "turner",
        "virchow",
        "whipple",
        "wilson",
    ]
)

# Words that end an eponym, a place or an institution rather than a person's name.
_NOT_SURNAMES = frozenset(
    [
        "disease",
        "syndrome",
        "sign",
        "signs",
        "palsy",
        "test",
        "score",
        "scale",
        "criteria",
        "maneuver",
        "manoeuvre",
        "reflex",
        "phenomenon",
        "procedure",
        "catheter",
        "tube",
        "lymphoma",
        "sarcoma",
        "hospital",
        "clinic",
        "center",
        "centre",
        "department",
        "unit",
        "ward",
        "street",
        "road",
        "avenue",
        "institute",
        "university",
        "county",
        "college",
    ]
)

_LATIN_NAME = re.compile(rf"[{_UP}][{_LO}'’-]+")


@lru_cache(maxsize=4)
def international_first_names(exclude: tuple[str, ...] = ()) -> frozenset[str]:
    """Lower-case first names in Latin script from every locale Faker ships (about 20,000,
    from some 60 languages), less names that are mostly clinical or calendar words.

    They find a name with no cue around it (``neighbour Jüri Tamm``) when followed by a
    capitalized word: see :meth:`TextDeidentifier.analyze`.

    Args:
        exclude: locale prefixes to leave out (``("de", "fr")``), e.g. to measure how
            names of languages missing from the lists are found.
    """
    import importlib
    import pkgutil

    try:
        import faker.providers.person as person
    except ImportError:  # pragma: no cover - faker is a dependency of the privacy extra
        return frozenset()
    names: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        if any(module.name == e or module.name.startswith(f"{e}_") for e in exclude):
            continue
        provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        for attr in ("first_names", "first_names_female", "first_names_male"):
            values = provider.__dict__.get(attr, ())
            if isinstance(values, (dict, tuple, list, set, frozenset)):
                names.update(n.lower() for n in values if _LATIN_NAME.fullmatch(n))
    return frozenset(names - _EPONYMS - _NAME_STOPWORDS)


@lru_cache(maxsize=1)
def _presidio_analyzer() -> Any:
    """A presidio ``AnalyzerEngine`` with the no-op NLP engine and offline recognizers only."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        DateRecognizer,
        IbanRecognizer,
        IpRecognizer,
        MacAddressRecognizer,
        MedicalLicenseRecognizer,
        PhoneRecognizer,
        UrlRecognizer,
        UsLicenseRecognizer,
        UsSsnRecognizer,
    )

    engine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "no_op"}])
    engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    for rec in (
        CreditCardRecognizer(),
        DateRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        MacAddressRecognizer(),
        MedicalLicenseRecognizer(),
        PhoneRecognizer(supported_regions=("US", "UK", "DE", "FR", "CA")),
        UrlRecognizer(),
        UsLicenseRecognizer(),
        UsSsnRecognizer(),
    ):
        registry.add_recognizer(rec)
    return AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])


_PRESIDIO_MAP = {
    "US_SSN": "SSN",
    "IP_ADDRESS": "IP",
    "PHONE_NUMBER": "PHONE",
    "DATE_TIME": "DATE",
    "URL": "URL",
    "US_DRIVER_LICENSE": "LICENSE",
    "MEDICAL_LICENSE": "LICENSE",
    "CREDIT_CARD": "ACCOUNT",
    "IBAN_CODE": "ACCOUNT",
    "MAC_ADDRESS": "DEVICE",
}


def date_variants(value: str) -> list[str]:
    """Textual forms of a date given as ``YYYYMMDD`` or ``YYYY-MM-DD`` (for deny-lists).

    >>> date_variants("20210315")[:3]
    ['20210315', '2021-03-15', '03/15/2021']
    """
    digits = re.sub(r"\D", "", value)
    if len(digits) != 8:
        return [value]
    try:
        d = _dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return [value]
    return [
        d.strftime("%Y%m%d"),
        d.strftime("%Y-%m-%d"),
        d.strftime("%m/%d/%Y"),
        f"{d.month}/{d.day}/{d.year}",
        d.strftime("%m/%d/%y"),
        d.strftime("%d.%m.%Y"),
        d.strftime("%Y/%m/%d"),
        d.strftime("%B %d, %Y").replace(" 0", " "),
        d.strftime("%b %d, %Y").replace(" 0", " "),
        f"{d.day} {d.strftime('%B')} {d.year}",
        f"{d.day} {d.strftime('%b')} {d.year}",
        d.strftime("%d-%b-%Y"),
        d.strftime("%d-%b-%y"),
        d.strftime("%d/%m/%Y"),
    ]


@lru_cache(maxsize=4096)
def _deny_regex(form: str) -> re.Pattern[str]:
    """A case-insensitive whole-word regex for one deny-list form."""
    return re.compile(_deny_pattern(form), re.IGNORECASE)


def _loose_in(form: str, lower: str) -> bool:
    """Whether every token of ``form`` occurs in ``lower`` (separators may differ)."""
    return all(t.lower() in lower for t in re.split(r"[\s^,]+", form) if t)


def _deny_pattern(value: str) -> str:
    parts = [re.escape(p) for p in re.split(r"[\s^,]+", value.strip()) if p]
    body = r"[\s^,]+".join(parts)
    return rf"(?<![^\W_]){body}(?![^\W_])"  # not inside a word of any script


class TextDeidentifier:
    """Detect and replace Safe Harbor identifiers in free text.

    Args:
        pseudonymizer: keyed pseudonymizer for surrogate names; ``None`` → tags only.
        mode: ``"surrogate"`` (fake names, shifted dates, ``[TYPE]`` for the rest) or
            ``"tag"`` (``[TYPE]`` for everything).
        use_presidio: add presidio-analyzer's offline recognizers (no NLP model).
        use_dictionaries: detect names from first/last-name dictionaries.
        detectors: extra detectors (e.g. :func:`spacy_detector`, :func:`hf_detector`).
        presidio_threshold: minimum presidio score kept.
        forbidden_surrogates: values never used as surrogates (e.g. every real name of
            the cohort), so a surrogate cannot collide with a real identifier.
    """

    def __init__(
        self,
        pseudonymizer: Pseudonymizer | None = None,
        *,
        mode: Literal["surrogate", "tag"] = "surrogate",
        use_presidio: bool = True,
        use_dictionaries: bool = True,
        detectors: Sequence[Detector] = (),
        presidio_threshold: float = 0.4,
        forbidden_surrogates: Iterable[str] = (),
    ) -> None:
        if mode not in ("surrogate", "tag"):
            raise ValueError(f"mode must be 'surrogate' or 'tag', got {mode!r}")
        if mode == "surrogate" and pseudonymizer is None:
            raise ValueError("mode='surrogate' needs a pseudonymizer (or use mode='tag')")
        self.pseudonymizer = pseudonymizer
        self.mode = mode
        self.use_presidio = use_presidio
        self.use_dictionaries = use_dictionaries
        self.detectors = list(detectors)
        self.presidio_threshold = presidio_threshold
        self.forbidden_surrogates = {s.lower() for s in forbidden_surrogates}

    # ------------------------------------------------------------------ detection
    def analyze(self, text: str, context: PatientContext | None = None) -> list[Span]:
        """Every identifier span in ``text``, overlaps resolved (longest, then strongest)."""
        spans: list[Span] = []
        spans += self._deny_spans(text, context)
        spans += self._pattern_spans(text)
        spans += self._date_spans(text)
        if self.use_dictionaries:
            spans += self._dictionary_spans(text)
        if self.use_presidio:
            spans += self._presidio_spans(text)
        for det in self.detectors:
            spans += [Span(s.start, s.end, s.entity, s.score, "external") for s in det(text)]
        return _resolve(spans)

    def _deny_spans(self, text: str, context: PatientContext | None) -> list[Span]:
        if context is None:
            return []
        out = []
        lower = text.lower()
        for entity, values in context.deny.items():
            forms: set[str] = set()
            for raw in values:
                if raw is None or not str(raw).strip():
                    continue
                forms.update(date_variants(str(raw)) if entity == "DATE" else [str(raw)])
                if entity == "NAME":
                    parts = [p for p in re.split(r"[\s^,]+", str(raw)) if len(p) >= 3]
                    forms.update([*parts, " ".join(reversed(parts))])
            for form in sorted(f for f in forms if len(f.strip()) >= 3):
                if form.lower() not in lower and not _loose_in(form, lower):
                    continue  # cheap pre-check before compiling anything
                for m in _deny_regex(form).finditer(text):
                    out.append(Span(m.start(), m.end(), entity, 1.0, "deny"))
        return out

    def _pattern_spans(self, text: str) -> list[Span]:
        out = []
        for entity, pattern, score in _PATTERNS:
            for m in pattern.finditer(text):
                start, end = (m.start("v"), m.end("v")) if "v" in pattern.groupindex else m.span()
                if start < 0 or end <= start:
                    continue
                src = "context" if "v" in pattern.groupindex else "pattern"
                out.append(Span(start, end, entity, score, src))
        return out

    def _date_spans(self, text: str) -> list[Span]:
        out = []
        for pattern, _kind in _DATE_RES:
            for m in pattern.finditer(text):
                start, end = (m.start("v"), m.end("v")) if "v" in pattern.groupindex else m.span()
                if _parse_date(text[start:end]) is None:
                    continue
                out.append(Span(start, end, "DATE", 1.0, "pattern"))
        return out

    def _dictionary_spans(self, text: str) -> list[Span]:
        first, last, _, _ = _name_dictionaries()
        world = international_first_names()
        out = []
        tokens = list(re.finditer(rf"[{_UP}][{_LO}][{_UP}{_LO}'’-]*", text))
        for i, tok in enumerate(tokens):
            word = tok.group(0).lower()
            if word in _NAME_STOPWORDS:
                continue
            if word not in first:
                # a first name of another language (or a hyphenated pair of them): only with
                # capitalized words after it (a second first name, the surname)
                if all(part in world or part in first for part in word.split("-")):
                    end = tok.end()
                    for nxt in tokens[i + 1 : i + 3]:
                        nword = nxt.group(0).lower()
                        if (
                            not re.fullmatch(r"[ \t]+", text[end : nxt.start()])
                            or nword in _NAME_STOPWORDS
                            or nword in _NOT_SURNAMES
                        ):
                            break
                        end = nxt.end()
                    if end > tok.end():
                        out.append(Span(tok.start(), end, "NAME", 0.7, "dictionary"))
                continue
            end = tok.end()
            if i + 1 < len(tokens):
                nxt = tokens[i + 1]
                gap = text[tok.end() : nxt.start()]
                nword = nxt.group(0).lower()
                if re.fullmatch(r"[ \t]+(?:[A-Z]\.[ \t]+)?", gap) and nword not in _NAME_STOPWORDS:
                    end = nxt.end()
            if end == tok.end():
                # a lone first name: only when it is not the first word of a sentence/line
                before = text[max(0, tok.start() - 2) : tok.start()]
                if tok.start() == 0 or re.search(r"(?:[.!?:]\s|\n)$|^\n?$", before):
                    continue
            score = 0.85 if end > tok.end() else 0.6
            out.append(Span(tok.start(), end, "NAME", score, "dictionary"))
        # "Lastname, Firstname" and "Firstname Lastname" where the last name is in the dictionary
        for m in re.finditer(rf"\b({_CAP}),[ \t]+({_CAP})\b", text):
            a, b = m.group(1).lower(), m.group(2).lower()
            if a in last and b in first and a not in _NAME_STOPWORDS:
                out.append(Span(m.start(), m.end(), "NAME", 0.85, "dictionary"))
        return out

    def _presidio_spans(self, text: str) -> list[Span]:
        analyzer = _presidio_analyzer()
        out = []
        for r in analyzer.analyze(text=text, language="en"):
            entity = _PRESIDIO_MAP.get(r.entity_type)
            if entity is None or r.score < self.presidio_threshold:
                continue
            chunk = text[r.start : r.end]
            if entity == "DATE" and _parse_date(chunk) is None:
                continue  # presidio's DATE_TIME also matches times and bare years
            if entity == "PHONE" and len(re.sub(r"\D", "", chunk)) < 10:
                continue
            out.append(Span(r.start, r.end, entity, float(r.score), "presidio"))
        return out

    # --------------------------------------------------------------- replacement
    def deidentify(self, text: str, context: PatientContext | None = None) -> TextResult:
        """Replace every detected identifier; returns the new text, spans and counts."""
        spans = self.analyze(text, context)
        ctx = context or PatientContext()
        pieces: list[str] = []
        pos = 0
        counts: Counter[str] = Counter()
        name_map: dict[str, str] = {}
        for s in spans:
            pieces.append(text[pos : s.start])
            pieces.append(self._replacement(text[s.start : s.end], s.entity, ctx, name_map))
            counts[s.entity] += 1
            pos = s.end
        pieces.append(text[pos:])
        return TextResult("".join(pieces), spans, counts)

    def _replacement(
        self, original: str, entity: str, ctx: PatientContext, name_map: dict[str, str]
    ) -> str:
        if self.mode == "tag" or self.pseudonymizer is None:
            return f"[{entity}]"
        if entity == "DATE" and ctx.shift_days is not None:
            shifted = _shift_date(original, ctx.shift_days)
            return shifted if shifted is not None else "[DATE]"
        if entity == "AGE":
            return "90+"
        if entity == "NAME":
            return re.sub(  # letters of any script: Wójcik, Größmann, Παπαδοπούλου
                r"[^\W\d_](?:[^\W\d_]|['’-])+",
                lambda m: self._surrogate_token(m.group(0), ctx.key, name_map),
                original,
            )
        return f"[{entity}]"

    def _surrogate_token(self, token: str, key: str, name_map: dict[str, str]) -> str:
        assert self.pseudonymizer is not None  # checked by the caller
        low = token.lower()
        if low in name_map:
            return name_map[low]
        first, _, first_pool, last_pool = _name_dictionaries()
        pool = first_pool if low in first else last_pool
        i = 0
        while True:
            pick = self.pseudonymizer.choice(f"{key}\x1f{low}\x1f{i}", "text.name", list(pool))
            if pick.lower() not in self.forbidden_surrogates and pick.lower() != low:
                break
            i += 1
            if i > 50:  # every candidate forbidden: fall back to a tag
                pick = "[NAME]"
                break
        if token.isupper():
            pick = pick.upper()
        name_map[low] = pick
        return pick


@dataclass
class RedactedTokens:
    """Token attributions with the identifiers masked (:func:`redact_tokens`).

    Attributes:
        tokens: the new tokens; ``"".join(tokens)`` is the text with each identifier
            replaced by ``[TYPE]``.
        values: one attribution per new token; a masked group carries the sum of the
            attributions of the tokens it replaced, so the total is unchanged.
        counts: entity → number of identifiers masked.
    """

    tokens: list[str]
    values: list[float]
    counts: Counter[str]


def redact_tokens(
    tokens: Sequence[str],
    values: Sequence[float],
    deidentifier: TextDeidentifier | None = None,
    context: PatientContext | None = None,
) -> RedactedTokens:
    """Mask the identifiers in a tokenised text that carries one value per token.

    For showing token attributions (SHAP over a note) without the identifiers in it: the
    tokens, joined, must give the text (as ``shap.maskers.Text`` returns them, whitespace
    included). The identifiers are detected on the joined text; the tokens each identifier
    touches become one token: the text before the identifier in its first token, ``[TYPE]``,
    the text after it in its last token. Tokens touching two identifiers merge both.

    Args:
        tokens: the token strings.
        values: one attribution per token.
        deidentifier: the detector (default: ``TextDeidentifier(mode="tag")``).
        context: the patient's structured identifiers, if known.

    Raises:
        ValueError: ``tokens`` and ``values`` differ in length.
    """
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} values: give one value per token")
    deid = deidentifier or TextDeidentifier(mode="tag")
    toks = [str(t) for t in tokens]
    text = "".join(toks)
    ends = list(itertools.accumulate(len(t) for t in toks))
    starts = [e - len(t) for e, t in zip(ends, toks, strict=True)]
    # group the tokens each span touches; groups sharing a token merge
    groups: list[tuple[int, int, list[Span]]] = []  # (first token, last token, spans)
    for span in deid.analyze(text, context):
        first = bisect.bisect_right(ends, span.start)
        last = bisect.bisect_left(starts, span.end) - 1
        if first > last:
            continue
        if groups and first <= groups[-1][1]:
            g_first, g_last, g_spans = groups[-1]
            groups[-1] = (g_first, max(g_last, last), [*g_spans, span])
        else:
            groups.append((first, last, [span]))
    out_tokens: list[str] = []
    out_values: list[float] = []
    counts: Counter[str] = Counter()
    i = 0
    for first, last, spans in groups:
        out_tokens += toks[i:first]
        out_values += [float(v) for v in values[i:first]]
        pos, piece = starts[first], []
        for span in spans:
            piece += [text[pos : span.start], f"[{span.entity}]"]
            pos = span.end
            counts[span.entity] += 1
        piece.append(text[pos : ends[last]])
        out_tokens.append("".join(piece))
        out_values.append(float(sum(float(v) for v in values[first : last + 1])))
        i = last + 1
    out_tokens += toks[i:]
    out_values += [float(v) for v in values[i:]]
    return RedactedTokens(out_tokens, out_values, counts)


def _resolve(spans: list[Span]) -> list[Span]:
    """Drop overlapping spans: keep the longest, then the highest score, then deny > pattern."""
    priority = {
        "deny": 5,
        "context": 4,
        "pattern": 3,
        "external": 2,
        "presidio": 1,
        "dictionary": 0,
    }
    ordered = sorted(
        spans, key=lambda s: (-(s.end - s.start), -s.score, -priority.get(s.source, 0), s.start)
    )
    taken: list[Span] = []
    for s in ordered:
        if s.end <= s.start:
            continue
        if all(s.end <= t.start or s.start >= t.end for t in taken):
            taken.append(s)
    return sorted(taken, key=lambda s: s.start)


def _parse_date(chunk: str) -> tuple[_dt.date, str, re.Match[str]] | None:
    """Parse a date string found by the patterns: (date, kind, match) or ``None``."""
    for pattern, kind in _DATE_RES:
        m = (
            pattern.fullmatch(chunk)
            if kind != "md"
            else re.fullmatch(r"(?P<m>0?[1-9]|1[0-2])/(?P<d>0?[1-9]|[12]\d|3[01])", chunk)
        )
        if not m:
            continue
        gd = m.groupdict()
        try:
            month = _MONTH_NUM[gd["mon"][:3].lower()] if gd.get("mon") else int(gd["m"])
            day = int(gd["d"]) if gd.get("d") else 1
            year_s = gd.get("y")
            if year_s is None:  # a common year, as most years are (Feb 29 needs a leap one)
                year = 2000 if (month, day) == (2, 29) else 2001
            else:
                year = int(year_s)
                if len(year_s) == 2:
                    year += 2000 if year < 50 else 1900
            return _dt.date(year, month, day), kind, m
        except (ValueError, KeyError):
            return None
    return None


def _shift_date(chunk: str, days: int) -> str | None:
    """``chunk`` moved by ``days``, written in the same format; ``None`` if not parseable."""
    parsed = _parse_date(chunk)
    if parsed is None:
        return None
    d, kind, m = parsed
    gd = m.groupdict()
    new = d + _dt.timedelta(days=days)
    if kind == "mdy":
        sep = gd["sep"]
        y = f"{new.year:04d}" if len(gd["y"]) == 4 else f"{new.year % 100:02d}"
        mm = f"{new.month:02d}" if len(gd["m"]) == 2 else str(new.month)
        dd = f"{new.day:02d}" if len(gd["d"]) == 2 else str(new.day)
        return f"{mm}{sep}{dd}{sep}{y}"
    if kind == "iso":
        return new.strftime("%Y-%m-%d")
    if kind == "ymd/":
        return new.strftime("%Y/%m/%d")
    if kind == "compact":
        return new.strftime("%Y%m%d")
    if kind == "dmy.":
        return new.strftime("%d.%m.%Y")
    if kind == "md":
        return f"{new.month}/{new.day}"
    mon = gd.get("mon") or ""
    full = len(mon) > 3 and mon.lower() != "sept"
    month_name = new.strftime("%B" if full else "%b")
    if kind == "d_mon_y":
        if mon.isupper():
            month_name = month_name.upper()
        y = f"{new.year:04d}" if len(gd["y"]) == 4 else f"{new.year % 100:02d}"
        dd = f"{new.day:02d}" if len(gd["d"]) == 2 else str(new.day)
        return f"{dd}{gd['sep']}{month_name}{gd['sep']}{y}"
    if kind == "month_d_y":
        return f"{month_name} {new.day}" + (f", {new.year}" if gd.get("y") else "")
    if kind == "d_month_y":
        return f"{new.day} {month_name}" + (f" {new.year}" if gd.get("y") else "")
    if kind == "month_y":
        return f"{month_name} {new.year}"
    return None


# ---------------------------------------------------------------- optional NER models
def spacy_detector(model: str, label_map: Mapping[str, str] | None = None) -> Detector:
    """A detector from a locally installed spaCy pipeline (a package name or a folder).

    Nothing is downloaded: the model must already be installed or on disk.

    Args:
        model: spaCy model name or path.
        label_map: NER label → entity type (default: PERSON→NAME, GPE/LOC/FAC→LOCATION,
            DATE→DATE, ORG→LOCATION).
    """
    import spacy

    nlp = spacy.load(model)
    mapping = dict(
        label_map
        or {
            "PERSON": "NAME",
            "GPE": "LOCATION",
            "LOC": "LOCATION",
            "FAC": "LOCATION",
            "ORG": "LOCATION",
        }
    )

    def detect(text: str) -> list[Span]:
        return [
            Span(e.start_char, e.end_char, mapping[e.label_], 0.8, "external")
            for e in nlp(text).ents
            if e.label_ in mapping
        ]

    return detect


def hf_detector(model_path: str, label_map: Mapping[str, str] | None = None) -> Detector:
    """A detector from a local Hugging Face token-classification model (e.g. a de-id model).

    Loaded with ``local_files_only=True``: nothing is downloaded.

    Args:
        model_path: a folder with the model and tokenizer.
        label_map: model entity group → entity type (default maps common de-id labels such as
            ``PATIENT``, ``DOCTOR``, ``PER`` → NAME; ``LOC``, ``HOSPITAL``, ``CITY`` → LOCATION).
    """
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    # loaded here, not by name inside pipeline(): its own hub lookup would not stay offline
    model = AutoModelForTokenClassification.from_pretrained(model_path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    ner = pipeline(
        "token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple"
    )
    mapping = dict(
        label_map
        or {
            "PER": "NAME",
            "PERSON": "NAME",
            "PATIENT": "NAME",
            "DOCTOR": "NAME",
            "STAFF": "NAME",
            "NAME": "NAME",
            "LOC": "LOCATION",
            "LOCATION": "LOCATION",
            "HOSPITAL": "LOCATION",
            "CITY": "LOCATION",
            "STREET": "ADDRESS",
            "DATE": "DATE",
            "AGE": "AGE",
            "PHONE": "PHONE",
            "ID": "ID",
        }
    )

    def detect(text: str) -> list[Span]:
        out = []
        for r in ner(text):
            label = str(r.get("entity_group", "")).upper()
            if label in mapping:
                out.append(
                    Span(
                        int(r["start"]),
                        int(r["end"]),
                        mapping[label],
                        float(r["score"]),
                        "external",
                    )
                )
        return out

    return detect
