"""Pieces every file loader shares: where an error happened, and DICOM detection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clinfuse.errors import DataFileNotFoundError, ModalityLoadError

__all__ = ["ErrorContext", "has_dicm_preamble"]


@dataclass(frozen=True)
class ErrorContext:
    """Where a problem is: the case, the manifest field and the file given."""

    case_id: str | None
    field: str
    path: Path

    def error(
        self,
        message: str,
        hint: str | None = None,
        *,
        path: Path | None = None,
        cls: type[ModalityLoadError] = ModalityLoadError,
    ) -> ModalityLoadError:
        """A :class:`ModalityLoadError` (or ``cls``) naming the case, field and file."""
        return cls(
            message,
            case_id=self.case_id,
            field=self.field,
            path=self.path if path is None else path,
            hint=hint,
        )

    def not_found(self, message: str, path: Path, hint: str | None = None) -> ModalityLoadError:
        """A :class:`DataFileNotFoundError` for ``path``."""
        return self.error(message, hint, path=path, cls=DataFileNotFoundError)


def has_dicm_preamble(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"
