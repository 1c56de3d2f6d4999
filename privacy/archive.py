"""DICOM files inside zip archives (how PACS and CD/DVD exports often arrive).

Only the standard library is used. Members are never extracted under their own names: each
DICOM member is written as ``00001.dcm``, ``00002.dcm``, ... in the destination folder (in the
archive's name order), so a crafted name (``../../etc/passwd``, an absolute path) cannot write
outside it. Non-DICOM members (``DICOMDIR``, read-me files, macOS ``__MACOSX`` folders, hidden
files) are skipped: a member is DICOM when it has the ``DICM`` preamble. Archives that would
unpack to more than ``max_bytes`` (a zip bomb), encrypted members and corrupt archives raise
:class:`~privacy.errors.ArchiveError` naming the archive and the member.

>>> files = extract_dicom_zip("study.zip", tmp_dir)  # doctest: +SKIP
>>> [f.name for f in files]  # doctest: +SKIP
['00001.dcm', '00002.dcm']
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from privacy.errors import ArchiveError

__all__ = [
    "MAX_UNZIPPED_BYTES",
    "dicom_members",
    "extract_dicom_zip",
    "is_zip",
    "iter_dicom_members",
]

MAX_UNZIPPED_BYTES = int(os.environ.get("CLINFUSE_MAX_UNZIPPED_BYTES", 16 * 2**30))
"""Largest total size a zip may unpack to (default 16 GiB; ``CLINFUSE_MAX_UNZIPPED_BYTES``)."""

_CHUNK = 1 << 20


def is_zip(path: str | Path) -> bool:
    """Whether ``path`` is a file named ``*.zip`` (its content is checked when it is opened)."""
    p = Path(path)
    return p.suffix.lower() == ".zip" and p.is_file()


@contextmanager
def _open(src: Path) -> Iterator[zipfile.ZipFile]:
    try:
        with zipfile.ZipFile(src) as zf:
            yield zf
    except zipfile.BadZipFile as e:
        raise ArchiveError(
            f"{src}: not a readable zip archive ({e}); re-create it, or unzip it and point "
            "the manifest at the folder"
        ) from e


def _skipped(info: zipfile.ZipInfo) -> bool:
    name = info.filename.replace("\\", "/")
    base = name.rsplit("/", 1)[-1]
    return (
        info.is_dir()
        or not base
        or base.startswith(".")
        or base.upper() == "DICOMDIR"
        or name.startswith("__MACOSX/")
        or "/__MACOSX/" in name
    )


def dicom_members(zf: zipfile.ZipFile, src: Path) -> list[zipfile.ZipInfo]:
    """The archive's DICOM members (``DICM`` preamble), in name order.

    Raises:
        ArchiveError: an encrypted member, or a member that cannot be read.
    """
    found = []
    for info in sorted(zf.infolist(), key=lambda i: i.filename):
        if _skipped(info):
            continue
        if info.flag_bits & 0x1:
            raise ArchiveError(
                f"{src}: member {info.filename!r} is encrypted; export the study without a password"
            )
        try:
            with zf.open(info) as fh:
                head = fh.read(132)
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, OSError) as e:
            raise ArchiveError(f"{src}: member {info.filename!r} cannot be read: {e}") from e
        if len(head) == 132 and head[128:132] == b"DICM":
            found.append(info)
    return found


def iter_dicom_members(src: str | Path) -> Generator[IO[bytes], None, None]:
    """An open binary stream of each DICOM member in turn (closed when the next is asked
    for), for reading headers without extracting
    (``pydicom.dcmread(stream, stop_before_pixels=True)``)."""
    src = Path(src)
    with _open(src) as zf:
        for info in dicom_members(zf, src):
            with zf.open(info) as fh:
                yield fh


def extract_dicom_zip(
    src: str | Path, dest: str | Path, *, max_bytes: int = MAX_UNZIPPED_BYTES
) -> list[Path]:
    """Write the DICOM members of ``src`` into ``dest`` as ``00001.dcm``, ``00002.dcm``, ...

    Args:
        src: the zip archive.
        dest: an existing folder (typically a temporary one).
        max_bytes: refuse archives that unpack to more than this (checked on the declared
            sizes first, then on the bytes actually written).

    Returns:
        The files written (empty when the archive holds no DICOM file).

    Raises:
        ArchiveError: not a zip, encrypted, corrupt, or larger than ``max_bytes``.
    """
    src, dest = Path(src), Path(dest)
    written: list[Path] = []
    with _open(src) as zf:
        members = dicom_members(zf, src)
        declared = sum(i.file_size for i in members)
        if declared > max_bytes:
            raise ArchiveError(
                f"{src}: unpacks to {declared / 2**30:.1f} GiB, more than the "
                f"{max_bytes / 2**30:.1f} GiB allowed; unzip it yourself and point the "
                "manifest at the folder, or raise CLINFUSE_MAX_UNZIPPED_BYTES"
            )
        total = 0
        for n, info in enumerate(members, 1):
            target = dest / f"{n:05d}.dcm"
            try:
                with zf.open(info) as fh, target.open("wb") as out:
                    while chunk := fh.read(_CHUNK):
                        total += len(chunk)
                        if total > max_bytes:
                            raise ArchiveError(
                                f"{src}: unpacks to more than the {max_bytes / 2**30:.1f} GiB "
                                "allowed (its member sizes are understated)"
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError) as e:
                raise ArchiveError(
                    f"{src}: member {info.filename!r} is corrupt ({e}); re-create the archive"
                ) from e
            except OSError as e:
                raise ArchiveError(
                    f"{src}: cannot write member {info.filename!r}: {e.strerror or e}"
                ) from e
            written.append(target)
    return written
