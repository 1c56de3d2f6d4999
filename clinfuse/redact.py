"""Notes shown to people carry no identifiers by default.

The review app and the explanation reports show note text (and its token attributions).
When the cohort did not go through ``clinfuse deid`` (its folder has no ``deid_report.json``),
the identifiers found automatically are masked as ``[TYPE]`` tags before anything is shown
or written: dates, phone numbers, e-mails, record numbers, names after titles or labels and
from name dictionaries (:class:`privacy.text.TextDeidentifier` in tag mode). Automatic
detection misses some names; de-identifying the cohort stays the way to be sure.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from privacy.text import RedactedTokens, TextDeidentifier

DEID_REPORT = "deid_report.json"
"""What ``clinfuse deid`` writes next to the de-identified manifest (``privacy.cohort.REPORT_NAME``)."""

__all__ = [
    "DEID_REPORT",
    "cohort_is_deidentified",
    "mask_note",
    "mask_note_tokens",
    "note_deidentifier",
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


def mask_note(text: str) -> tuple[str, dict[str, int]]:
    """``text`` with its identifiers replaced by ``[TYPE]``, and how many of each type."""
    result = note_deidentifier().deidentify(text)
    return result.text, dict(result.counts)


def mask_note_tokens(tokens: list[str], values: list[float]) -> RedactedTokens:
    """Token attributions with the identifiers masked (see :func:`privacy.text.redact_tokens`)."""
    from privacy.text import redact_tokens

    return redact_tokens(tokens, values, note_deidentifier())
