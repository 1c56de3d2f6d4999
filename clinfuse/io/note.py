"""Clinical note loading: a UTF-8 text file or inline text from the manifest.

Tokenization happens in the note encoder, not here: the loader returns the
text exactly as written (line endings normalised to ``\\n``, a UTF-8 byte
order mark removed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clinfuse.errors import DataFileNotFoundError, ModalityLoadError

__all__ = ["MAX_NOTE_BYTES", "load_note"]

MAX_NOTE_BYTES = 5_000_000
"""Largest note file accepted (5 MB of text is far beyond any clinical note)."""


def load_note(
    path: str | Path | None = None,
    text: str | None = None,
    *,
    case_id: str | None = None,
    field: str = "note",
) -> tuple[str, dict[str, Any]]:
    """Read one note.

    Args:
        path: a UTF-8 text file; or
        text: the note itself (the manifest's ``note_text`` column).
        case_id: the case, for error messages.
        field: the manifest column, for error messages.

    Returns:
        The text and its metadata: ``format`` (``"text_file"`` or
        ``"inline"``), ``n_chars``, ``n_words``.

    Raises:
        DataFileNotFoundError: the file does not exist.
        ModalityLoadError: not UTF-8, empty, too large, or neither argument given.
    """
    if (path is None) == (text is None):
        raise ModalityLoadError(
            "give exactly one of a note file or inline note text", case_id=case_id, field=field
        )
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise DataFileNotFoundError(
                "note file not found",
                case_id=case_id,
                field=field,
                path=path,
                hint="fix the path in the manifest or leave the cell empty if the case has no note",
            )
        if path.is_dir():
            raise ModalityLoadError(
                "note path is a folder, expected a UTF-8 text file",
                case_id=case_id,
                field=field,
                path=path,
            )
        size = path.stat().st_size
        if size > MAX_NOTE_BYTES:
            raise ModalityLoadError(
                f"note file is {size / 1e6:.1f} MB, larger than the {MAX_NOTE_BYTES / 1e6:.0f} MB limit",
                case_id=case_id,
                field=field,
                path=path,
                hint="is this really a text note?",
            )
        raw = path.read_bytes()
        try:
            content = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ModalityLoadError(
                f"note is not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start})",
                case_id=case_id,
                field=field,
                path=path,
                hint="convert it, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`",
            ) from e
        fmt = "text_file"
    else:
        content = str(text)
        fmt = "inline"
    content = content.replace("\r\n", "\n").replace("\r", "\n")
    if "\x00" in content:
        raise ModalityLoadError(
            "note contains NUL bytes; it looks like a binary file, not text",
            case_id=case_id,
            field=field,
            path=path,
        )
    if not content.strip():
        raise ModalityLoadError(
            "note is empty",
            case_id=case_id,
            field=field,
            path=path,
            hint="leave the manifest cell empty if the case has no note",
        )
    meta = {"format": fmt, "n_chars": len(content), "n_words": len(content.split())}
    return content, meta
