"""Exception types of clinfuse.

Every error a user can cause is a :class:`ClinFuseError`. Each subclass also
derives from the matching built-in (``ValueError``, ``FileNotFoundError``) so
callers that catch built-ins keep working. The CLI turns any of them into a
one-line message and exit code 1.

Messages name the case, the file and the field, say what was expected and
what came, and what to do:

>>> raise ModalityLoadError("cannot read DICOM: truncated pixel data",
...     case_id="c001", field="image", path="img/c001.dcm",
...     hint="re-export the file from PACS")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ClinFuseError",
    "CohortError",
    "ConfigError",
    "DataFileNotFoundError",
    "ModalityLoadError",
]


class ClinFuseError(Exception):
    """Base class of every error clinfuse raises for bad input or usage.

    Args:
        message: what went wrong (what was expected, what came).
        case_id: the case the problem belongs to, if any.
        field: the manifest column or config field, if any.
        path: the file concerned, if any.
        hint: what the user should do about it.
    """

    def __init__(
        self,
        message: str,
        *,
        case_id: str | None = None,
        field: str | None = None,
        path: str | Path | None = None,
        hint: str | None = None,
    ) -> None:
        self.reason = message
        self.case_id = case_id
        self.field = field
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.case_id is not None:
            where.append(f"case {self.case_id!r}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        if self.path is not None:
            where.append(f"file {self.path}")
        text = (", ".join(where) + ": " if where else "") + self.reason
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(ClinFuseError, ValueError):
    """A configuration value is unknown, inconsistent or out of range."""


class CohortError(ClinFuseError, ValueError):
    """The cohort manifest as a whole is invalid (columns, ids, splits, labels)."""


class ModalityLoadError(ClinFuseError, ValueError):
    """One case's modality file could not be read or has unusable content."""


class DataFileNotFoundError(ModalityLoadError, FileNotFoundError):
    """A file named in the manifest does not exist."""


def unwrap_clinfuse_error(exc: BaseException) -> ClinFuseError | None:
    """The :class:`ClinFuseError` behind ``exc``, if any.

    MONAI's ``Compose`` and ``Dataset`` wrap errors raised inside transforms in
    ``RuntimeError("applying transform ...")``; this follows ``__cause__`` /
    ``__context__`` to the user-facing error underneath.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ClinFuseError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
