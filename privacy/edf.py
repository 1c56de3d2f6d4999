"""De-identification of EDF/EDF+ and BDF/BDF+ files, byte for byte.

An EDF file is a 256-byte header, 256 bytes per signal, then data records; identifiers live in
the header (patient and recording fields, start date) and, in EDF+/BDF+, in the free text of the
``EDF Annotations`` signal: time-stamped annotation lists (TALs) such as
``+30.5\\x15 2.0\\x14Patient John Smith asleep\\x14\\x00``. :func:`deidentify_edf` blanks the
header fields the EDF+ way (``X``) with the anonymous start date ``01.01.85``, passes each
annotation text through a scrubber (the note de-identifier with the patient's deny-list and
date shift) and writes the TALs back into the same bytes; onsets and durations are relative to
the start and are kept, and so is every sample of every other signal. A record whose scrubbed
annotations no longer fit its slot gets its changed annotations replaced by ``X``.

Reference: Kemp & Olivan, "European data format 'plus' (EDF+)", Clin Neurophysiol 2003
(https://www.edfplus.info/specs/edfplus.html); BDF uses 3-byte samples and the version bytes
``\\xffBIOSEMI``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "EdfDeidResult",
    "EdfError",
    "EdfLayout",
    "annotation_texts",
    "deidentify_edf",
    "header_identifiers",
    "parse_layout",
]

ANNOTATION_LABEL = "EDF Annotations"
BDF_ANNOTATION_LABEL = "BDF Annotations"
ANONYMOUS_START_DATE = b"01.01.85"
_TAL = re.compile(rb"([+-]\d+(?:\.\d*)?)(\x15[^\x14]*)?\x14((?:[^\x14\x00]*\x14)*)\x00")


class EdfError(ValueError):
    """The bytes are not an EDF/BDF file this module can read (the message says which part)."""


@dataclass(frozen=True)
class EdfLayout:
    """Where things are in an EDF/BDF file.

    Attributes:
        header_bytes: 256 × (number of signals + 1).
        n_records: data records in the file.
        sample_bytes: 2 (EDF) or 3 (BDF).
        samples: samples per record of each signal.
        annotation_signals: indices of the annotation signals.
    """

    header_bytes: int
    n_records: int
    sample_bytes: int
    samples: tuple[int, ...]
    annotation_signals: tuple[int, ...]

    @property
    def record_bytes(self) -> int:
        return self.sample_bytes * sum(self.samples)

    def slots(self, signal: int) -> list[tuple[int, int]]:
        """``(start, end)`` byte offsets of ``signal`` in each data record."""
        before = self.sample_bytes * sum(self.samples[:signal])
        size = self.sample_bytes * self.samples[signal]
        starts = (self.header_bytes + r * self.record_bytes + before for r in range(self.n_records))
        return [(start, start + size) for start in starts]


def _int_field(data: bytes, start: int, end: int, what: str) -> int:
    raw = data[start:end].decode("ascii", errors="replace").strip()
    try:
        return int(raw)
    except ValueError:
        raise EdfError(f"the {what} field (bytes {start}–{end}) is {raw!r}, not a number") from None


def parse_layout(data: bytes) -> EdfLayout:
    """The layout of an EDF/EDF+/BDF/BDF+ file from its header.

    Raises:
        EdfError: the header is short or its numbers do not describe the file's size.
    """
    if len(data) < 256:
        raise EdfError(f"the file has {len(data)} bytes, fewer than the 256 of an EDF header")
    sample_bytes = 3 if data[:8] == b"\xffBIOSEMI" else 2
    ns = _int_field(data, 252, 256, "number of signals")
    header_bytes = 256 * (ns + 1)
    if ns < 1 or len(data) < header_bytes:
        raise EdfError(f"the header declares {ns} signals but the file is {len(data)} bytes long")
    labels = [data[256 + 16 * i : 256 + 16 * (i + 1)].decode("latin-1").strip() for i in range(ns)]
    at = 256 + ns * (16 + 80 + 8 + 8 + 8 + 8 + 8 + 80)
    samples = tuple(
        _int_field(data, at + 8 * i, at + 8 * (i + 1), f"samples per record of signal {i + 1}")
        for i in range(ns)
    )
    n_records = _int_field(data, 236, 244, "number of data records")
    record_bytes = sample_bytes * sum(samples)
    if n_records < 0:  # -1: unknown (a recording still being written); infer from the size
        n_records = (len(data) - header_bytes) // max(record_bytes, 1)
    if header_bytes + n_records * record_bytes > len(data):
        raise EdfError(
            f"the header declares {n_records} records of {record_bytes} bytes but the file "
            f"holds only {len(data) - header_bytes} bytes of data: it is truncated"
        )
    annotations = tuple(
        i for i, label in enumerate(labels) if label in (ANNOTATION_LABEL, BDF_ANNOTATION_LABEL)
    )
    return EdfLayout(header_bytes, n_records, sample_bytes, samples, annotations)


_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def _edfplus_date(value: str) -> str | None:
    """``02-MAY-1951`` → ``19510502`` (None if it is not such a date)."""
    m = re.fullmatch(r"(\d{2})-([A-Za-z]{3})-(\d{4})", value)
    if not m or m.group(2).upper() not in _MONTHS:
        return None
    return f"{m.group(3)}{_MONTHS.index(m.group(2).upper()) + 1:02d}{m.group(1)}"


def header_identifiers(data: bytes) -> list[tuple[str, str, str]]:
    """The identifying values in an EDF/BDF header, as ``(kind, field, value)``.

    EDF+/BDF+ headers have subfields (patient: code, sex, birthdate, name; recording:
    start date, admin code, technician, equipment; ``X`` = unknown; ``_`` for spaces); a plain
    EDF patient field is free text and is taken whole, as a name. The start date
    (``dd.mm.yy``; years 85–99 are 19xx) is a date. Kinds: ``name``, ``name_part``, ``id``,
    ``date`` (``YYYYMMDD``).
    """
    if len(data) < 256:
        return []
    text = data[:256].decode("latin-1")
    patient, recording, start = text[8:88].strip(), text[88:168].strip(), text[168:176]
    found: list[tuple[str, str, str]] = []

    def name(value: str, field: str, *, parts: bool = True) -> None:
        value = value.replace("_", " ").strip()
        if value and value.upper() != "X":
            found.append(("name", field, value))
            words = [p for p in re.split(r"[\s,^]+", value) if len(p) >= 2] if parts else []
            found.extend(("name_part", field, p) for p in words if len(words) > 1)

    if text[192:196] in ("EDF+", "BDF+"):
        sub = patient.split(" ")
        if sub and sub[0].upper() != "X":
            found.append(("id", "EDF patient code", sub[0]))
        if len(sub) > 2 and (birth := _edfplus_date(sub[2])):
            found.append(("date", "EDF birthdate", birth))
        if len(sub) > 3:
            name(" ".join(sub[3:]), "EDF patient name")
        rec = recording.split(" ")
        if len(rec) > 1 and rec[0] == "Startdate" and (day := _edfplus_date(rec[1])):
            found.append(("date", "EDF recording start", day))
        if len(rec) > 2 and rec[2].upper() != "X":
            found.append(("id", "EDF admin code", rec[2]))
        if len(rec) > 3:
            name(rec[3], "EDF technician")
    else:  # free text: the whole patient field (its words may be anything, so not one by one)
        name(patient, "EDF patient", parts=False)
    m = re.fullmatch(r"(\d{2})\.(\d{2})\.(\d{2})", start)
    if m and start != ANONYMOUS_START_DATE.decode():
        century = "19" if int(m.group(3)) >= 85 else "20"
        found.append(("date", "EDF start date", f"{century}{m.group(3)}{m.group(2)}{m.group(1)}"))
    return found


def _tals(slot: bytes, where: int) -> list[tuple[bytes, bytes, list[str]]]:
    """(onset, ``\\x15duration`` or b"", annotation texts) of each TAL in one record's slot.

    Raises:
        EdfError: the slot holds bytes that are not TALs (nothing is rewritten then).
    """
    body = slot.rstrip(b"\x00") + b"\x00"
    out, pos = [], 0
    for m in _TAL.finditer(body):
        if m.start() != pos:
            break
        texts = [t.decode("utf-8", errors="replace") for t in m.group(3).split(b"\x14")[:-1]]
        out.append((m.group(1), m.group(2) or b"", texts))
        pos = m.end()
    if pos != len(body) and body != b"\x00":
        raise EdfError(
            f"the annotation signal at byte {where + pos} holds bytes that are not EDF+ "
            "time-stamped annotation lists"
        )
    return out


def _pack(tals: list[tuple[bytes, bytes, list[str]]]) -> bytes:
    return b"".join(
        onset + duration + b"\x14" + b"".join(t.encode("utf-8") + b"\x14" for t in texts) + b"\x00"
        for onset, duration, texts in tals
    )


def annotation_texts(data: bytes) -> list[str]:
    """Every annotation text of an EDF+/BDF+ file (none for plain EDF).

    Raises:
        EdfError: the file cannot be parsed.
    """
    layout = parse_layout(data)
    return [
        text
        for signal in layout.annotation_signals
        for start, end in layout.slots(signal)
        for _onset, _duration, texts in _tals(data[start:end], start)
        for text in texts
        if text
    ]


@dataclass
class EdfDeidResult:
    """A de-identified EDF file and what changed.

    Attributes:
        data: the new file's bytes (same length as the input).
        annotations: annotation texts seen.
        changed: annotation texts the scrubber changed.
        replaced_whole: changed texts replaced by ``X`` because the record had no room.
    """

    data: bytes
    annotations: int = 0
    changed: int = 0
    replaced_whole: int = 0


def deidentify_edf(data: bytes, scrub: Callable[[str], str]) -> EdfDeidResult:
    """Blank the header identifiers and scrub every annotation text of an EDF/BDF file.

    Args:
        data: the file's bytes.
        scrub: text → de-identified text, applied to each annotation text.

    Raises:
        EdfError: the file cannot be parsed (see :func:`parse_layout`).
    """
    layout = parse_layout(data)
    out = bytearray(data)
    # patient: code, sex, birthdate, name; recording: start date, admin code, technician, equipment
    out[8:88] = b"X X X X".ljust(80)
    out[88:168] = b"Startdate X X X X".ljust(80)
    out[168:176] = ANONYMOUS_START_DATE
    seen = n_changed = replaced_whole = 0
    for signal in layout.annotation_signals:
        for start, end in layout.slots(signal):
            new_tals: list[tuple[bytes, bytes, list[str]]] = []
            changed: list[tuple[int, int]] = []  # (TAL, text) positions
            for onset, duration, texts in _tals(data[start:end], start):
                new = [scrub(t) if t else t for t in texts]
                seen += sum(1 for t in texts if t)
                changed += [
                    (len(new_tals), i)
                    for i, (a, b) in enumerate(zip(texts, new, strict=True))
                    if a != b
                ]
                new_tals.append((onset, duration, new))
            if not changed:
                continue  # the record's bytes stay as they are
            packed = _pack(new_tals)
            if len(packed) > end - start:  # the tags are longer than what they replace
                for k, i in changed:
                    new_tals[k][2][i] = "X"
                replaced_whole += len(changed)
                packed = _pack(new_tals)
            if len(packed) > end - start:
                raise EdfError(
                    f"the annotations of the record at byte {start} do not fit their slot "
                    "even with every changed text replaced by 'X'"
                )
            n_changed += len(changed)
            out[start:end] = packed.ljust(end - start, b"\x00")
    return EdfDeidResult(bytes(out), seen, n_changed, replaced_whole)
