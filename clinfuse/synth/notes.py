"""Text templates for the synthetic ED / admission notes of the demo cohort.

A note is assembled from a handful of sections (HPI, PMH, Exam, Assessment/Plan)
in the abbreviated style of real emergency-department notes. What it says about
the outcome comes only from the *findings* (fever, productive cough, crackles,
hypoxia, ...), and which findings are present is decided by the caller from the
note's latent evidence score alone (see :func:`finding_probabilities`). All the
other content (chief-complaint wording for well patients, past history, meds,
social history, heart rate and blood pressure, plan boilerplate) is neutral
filler drawn independently of the outcome.

Personal data in the notes (names, MRNs, dates, phone numbers) is fake: surnames
come from :data:`FAKE_SURNAMES` and phone numbers use the fictional
``555-01xx`` range, so a de-identification test can find every inserted
identifier in ``truth.csv``.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "FAKE_FIRST_NAMES",
    "FAKE_SURNAMES",
    "FINDINGS",
    "Finding",
    "NoteContext",
    "finding_probabilities",
    "render_note",
]


@dataclass(frozen=True)
class Finding:
    """One outcome-related finding a note can mention.

    Args:
        name: short identifier, recorded in ``truth.csv``.
        threshold: latent note evidence at which the finding is present with
            probability 0.5 (see :func:`finding_probabilities`).
        positive: HPI phrasings used when the finding is present.
        negative: HPI phrasings (negations) used when it is absent; empty when
            the finding is an exam finding that the Exam section reports.
    """

    name: str
    threshold: float
    positive: tuple[str, ...]
    negative: tuple[str, ...] = ()


FINDINGS: tuple[Finding, ...] = (
    Finding(
        "dyspnea",
        -0.5,
        ("worsening SOB", "SOB w/ minimal exertion", "increasing dyspnea"),
        ("denies SOB", "no SOB or DOE"),
    ),
    Finding(
        "fever",
        -0.2,
        ("subjective fevers and chills", "febrile at home to 38.9", "fevers and rigors"),
        ("denies fever or chills", "no fevers"),
    ),
    Finding(
        "productive_cough",
        0.0,
        (
            "productive cough w/ yellow sputum",
            "cough productive of green sputum",
            "productive cough",
        ),
        ("no cough", "denies cough"),
    ),
    Finding(
        "pleuritic_pain",
        0.9,
        ("R-sided pleuritic CP", "sharp CP worse w/ deep inspiration"),
        ("no chest pain", "denies CP"),
    ),
    # Exam findings: rendered in the Exam section.
    Finding("tachypnea", 0.5, ("tachypneic",)),
    Finding("crackles", 0.3, ("crackles at the R base", "coarse crackles bilat bases")),
    Finding("hypoxia", 0.8, ("hypoxic on RA, placed on 2L NC",)),
)
"""The findings, in the order they are drawn."""

FINDING_SLOPE = 3.0
"""Steepness of the finding probability in the latent note evidence."""

FAKE_FIRST_NAMES: tuple[str, ...] = (
    "Alex",
    "Jordan",
    "Maria",
    "Samuel",
    "Priya",
    "Chen",
    "Fatima",
    "Oliver",
    "Grace",
    "Mateo",
    "Ingrid",
    "Kwame",
)
FAKE_SURNAMES: tuple[str, ...] = (
    "Synthwell",
    "Testpatient",
    "Fakeley",
    "Mockridge",
    "Sampleton",
    "Demoson",
    "Placeholder",
    "Dummett",
)

_NEUTRAL_CC = (
    "generalized weakness",
    "fatigue",
    "dizziness",
    "fall at home",
    "nausea",
    "malaise",
)
_FINDING_CC = {
    "dyspnea": "shortness of breath",
    "fever": "fever",
    "productive_cough": "cough",
    "pleuritic_pain": "chest pain",
}
_PMH = (
    "HTN",
    "HLD",
    "DM2",
    "GERD",
    "OA",
    "hypothyroidism",
    "CKD stage 3",
    "BPH",
    "depression",
    "obesity",
)
_MEDS = {
    "HTN": "lisinopril",
    "HLD": "atorvastatin",
    "DM2": "metformin",
    "GERD": "omeprazole",
    "OA": "acetaminophen PRN",
    "hypothyroidism": "levothyroxine",
    "CKD stage 3": "amlodipine",
    "BPH": "tamsulosin",
    "depression": "sertraline",
    "obesity": "",
}
_SOCIAL = (
    "Lives w/ spouse, independent in ADLs.",
    "Lives alone, daughter nearby.",
    "Former smoker, quit 10 yrs ago. Occasional EtOH.",
    "Never smoker, no EtOH or drug use.",
    "Retired teacher, lives w/ family.",
    "Works in construction. Social EtOH.",
)
_ROS_NEG = (
    "Denies abd pain, N/V/D.",
    "No dysuria or hematuria.",
    "Denies headache or vision changes.",
    "No leg swelling.",
    "Denies recent travel or sick contacts.",
)
_GEN = ("NAD, A&Ox3", "alert, conversant", "appears comfortable", "pleasant, A&Ox3")
_GEN_ILL = ("appears ill, mildly diaphoretic", "ill-appearing, A&Ox3")
_PLAN_HIGH = (
    "Concern for CAP, r/o sepsis. CXR, BCx x2, lactate, start ceftriaxone + azithro. Admit to medicine.",
    "Likely PNA. Sputum cx, BCx, procalcitonin, empiric abx per protocol. Admit, monitor O2.",
)
_PLAN_MID = (
    "DDx bronchitis vs early PNA. CXR, CBC, BMP. Reassess after results.",
    "Possible LRTI. CXR and labs pending, will reassess; low threshold for abx.",
)
_PLAN_LOW = (
    "Low suspicion for PNA. Supportive care, PO hydration. Likely dc home w/ PCP f/u.",
    "Sx likely viral vs nonspecific. Basic labs, observe, dc if stable.",
)


@dataclass
class NoteContext:
    """Per-case facts a note needs.

    Args:
        age: age in years at the encounter.
        sex: ``"F"`` or ``"M"``.
        findings: names of the present findings (subset of :data:`FINDINGS`).
        patient_name: fake full name (used only when ``include_phi``).
        mrn: fake medical record number.
        encounter_date: date of service.
        include_phi: whether to put identifiers (name, MRN, date, phone) in the note.
        phi: filled by :func:`render_note` with every identifier string inserted.
    """

    age: int
    sex: str
    findings: frozenset[str]
    patient_name: str
    mrn: str
    encounter_date: _dt.date
    include_phi: bool
    phi: list[str] = field(default_factory=list)


def finding_probabilities(e_note: float) -> dict[str, float]:
    """Probability of each finding given the latent note evidence.

    ``p = sigmoid(FINDING_SLOPE * (e_note - threshold))``.

    Args:
        e_note: latent evidence score of the note modality.

    Returns:
        finding name -> probability that the note mentions it as present.
    """
    return {
        f.name: float(1.0 / (1.0 + np.exp(-FINDING_SLOPE * (e_note - f.threshold))))
        for f in FINDINGS
    }


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def render_note(ctx: NoteContext, rng: np.random.Generator) -> str:
    """Write one ED / admission note.

    Args:
        ctx: the case facts; ``ctx.phi`` is filled with the identifiers inserted.
        rng: random generator for the neutral filler (wording, history, vitals).

    Returns:
        The note text (UTF-8 safe, 60–200 words, ending with a newline).
    """
    present = ctx.findings
    n_pos = len(present)
    sex_word = "F" if ctx.sex == "F" else "M"
    lines: list[str] = []

    kind = _pick(rng, ("ED PROVIDER NOTE", "ED NOTE", "ADMISSION H&P"))
    lines.append(kind)
    if ctx.include_phi:
        date = ctx.encounter_date.strftime("%m/%d/%Y")
        phone = f"(617) 555-01{int(rng.integers(100)):02d}"
        lines.append(f"Patient: {ctx.patient_name}   MRN: {ctx.mrn}   DOS: {date}")
        ctx.phi.extend([ctx.patient_name, ctx.mrn, date])
        if rng.random() < 0.5:
            lines.append(f"Contact: daughter at {phone}")
            ctx.phi.append(phone)

    # Chief complaint: follows the first present symptom, else neutral.
    symptom = next((n for n in _FINDING_CC if n in present), None)
    cc = _FINDING_CC[symptom] if symptom else _pick(rng, _NEUTRAL_CC)
    lines.append(f"CC: {cc}")

    n_pmh = int(rng.integers(1, 4))
    pmh = [_PMH[i] for i in sorted(rng.choice(len(_PMH), size=n_pmh, replace=False))]
    days = int(rng.integers(1, 8))
    hpi = [
        f"HPI: {ctx.age}yo {sex_word} w/ hx of {', '.join(pmh)} who presents c/o {cc} "
        f"x {days} day{'s' if days > 1 else ''}."
    ]
    pos_sym = [_pick(rng, f.positive) for f in FINDINGS if f.negative and f.name in present]
    neg_sym = [_pick(rng, f.negative) for f in FINDINGS if f.negative and f.name not in present]
    if pos_sym:
        hpi.append(f"Pt reports {', '.join(pos_sym)}.")
    if neg_sym:
        first, *rest = neg_sym
        hpi.append(first[0].upper() + first[1:] + "".join(f", {s}" for s in rest) + ".")
    hpi.append(_pick(rng, _ROS_NEG))
    if rng.random() < 0.5:
        hpi.append(_pick(rng, _ROS_NEG))
    lines.append(" ".join(dict.fromkeys(hpi)))

    meds = [_MEDS[p] for p in pmh if _MEDS[p]] or ["none"]
    lines.append(f"PMH: {', '.join(pmh)}. Meds: {', '.join(meds)}.")
    lines.append(f"Social: {_pick(rng, _SOCIAL)}")

    # Exam: temperature, RR and SpO2 follow the findings; HR and BP are neutral.
    temp = rng.uniform(38.2, 39.4) if "fever" in present else rng.uniform(36.4, 37.3)
    rr = int(rng.integers(24, 31)) if "tachypnea" in present else int(rng.integers(14, 19))
    spo2 = int(rng.integers(86, 92)) if "hypoxia" in present else int(rng.integers(95, 100))
    hr = int(rng.integers(64, 105))
    sbp = int(rng.integers(105, 150))
    dbp = int(rng.integers(60, 90))
    o2 = "on 2L NC" if "hypoxia" in present else "on RA"
    gen = _pick(rng, _GEN_ILL) if n_pos >= 4 else _pick(rng, _GEN)
    lungs = _pick(rng, FINDINGS[5].positive) if "crackles" in present else "CTAB, no w/r/r"
    if "tachypnea" in present:
        lungs += ", tachypneic w/ mild accessory muscle use"
    lines.append(
        f"Exam: VS T {temp:.1f} HR {hr} BP {sbp}/{dbp} RR {rr} SpO2 {spo2}% {o2}. "
        f"Gen: {gen}. CV: RRR, no m/r/g. Lungs: {lungs}. Abd: soft, NT/ND. Ext: no edema."
    )

    if n_pos >= 4:
        plan = _pick(rng, _PLAN_HIGH)
    elif n_pos >= 2:
        plan = _pick(rng, _PLAN_MID)
    else:
        plan = _pick(rng, _PLAN_LOW)
    lines.append(f"A/P: {ctx.age}yo {sex_word} w/ {cc}. {plan}")
    return "\n".join(lines) + "\n"
