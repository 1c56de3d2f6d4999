"""Exception types of :mod:`privacy`.

:mod:`privacy` never imports :mod:`clinfuse`, so it has its own exception tree. Every
error a user can cause is a :class:`PrivacyError`; each subclass also derives from the
matching built-in (``ValueError``, ``FileNotFoundError``) so callers that catch built-ins
keep working. A front end (the ``clinfuse deid`` command) maps them to exit code 1.

Messages name the file or field, say what was expected and what came, and what to do.
"""

from __future__ import annotations

__all__ = [
    "ArchiveError",
    "DPError",
    "DeidError",
    "DicomDeidError",
    "FederatedError",
    "NoteEncodingError",
    "OutputFolderError",
    "PrivacyError",
    "ResidualRiskError",
    "SecretKeyError",
    "SiteDataError",
]


class PrivacyError(Exception):
    """Base class of every error :mod:`privacy` raises for bad input or usage."""


class DeidError(PrivacyError, ValueError):
    """De-identification cannot proceed (bad input, bad option, unsafe result)."""


class SecretKeyError(DeidError):
    """The pseudonymisation secret is missing, empty or too short.

    Keyed pseudonyms without a secret are reversible (anyone can hash a known MRN), so
    de-identification refuses to run.
    """


class OutputFolderError(DeidError):
    """The output folder is unsafe: inside the input, holding the input, or not empty."""


class DicomDeidError(DeidError):
    """A DICOM file cannot be read or de-identified."""


class ArchiveError(DeidError):
    """A zip archive of DICOM files cannot be used (corrupt, encrypted, too large)."""


class NoteEncodingError(DeidError, UnicodeError):
    """A note is not text in the expected encoding."""


class ResidualRiskError(DeidError):
    """An original identifying value was found in the de-identified output."""


class FederatedError(PrivacyError, RuntimeError):
    """Federated training cannot go on (too few sites answered, a strategy misused).

    Attributes:
        parameters: the last global model (the one before the failed round), when the
            error ends a run; callers can keep it instead of losing the rounds already done.
        history: what was recorded up to the failure (a ``privacy.federated.simulation.History``),
            when the error ends a simulation.
    """

    def __init__(self, message: str, *, parameters: object = None, history: object = None):
        super().__init__(message)
        self.parameters = parameters
        self.history = history


class SiteDataError(PrivacyError, ValueError):
    """A site's data cannot be used as asked (a missing class, fewer cases than a batch)."""


class DPError(PrivacyError, ValueError):
    """Differential privacy cannot be set up as asked (an unreachable ε, a bad δ)."""
