"""Output folders that appear only when complete: written under a hidden temporary name
next to the target, then renamed (a rename within one file system is atomic); and the JSON
files such folders hold, read back with an error that names the file."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "assembled_from_sites",
    "atomic_folder",
    "publish",
    "read_json_object",
    "temp_sibling",
    "write_text_atomic",
]


def temp_sibling(out: Path, tag: str = "tmp") -> Path:
    """A hidden, unique path next to ``out`` (same file system, so renames are atomic)."""
    return out.parent / f".{out.name}.{tag}-{uuid.uuid4().hex[:8]}"


def publish(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing what was there."""
    if out.exists():
        old = temp_sibling(out, "old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; published as ``out`` when the block ends
    normally, removed when it raises."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    tmp.mkdir()
    try:
        yield tmp
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` next to ``path`` and rename it into place (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_json_object(path: Path, what: str, *, hint: str | None = None) -> dict[str, Any]:
    """``path`` parsed as a JSON object.

    Raises:
        ConfigError: it cannot be read (``cannot read WHAT: …``) or is not a JSON object;
            the error names ``path`` and carries ``hint``.
    """
    from clinfuse.errors import ConfigError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {what}: {e}", path=path, hint=hint) from e
    if not isinstance(data, dict):
        raise ConfigError(f"{what} is not a JSON object", path=path, hint=hint)
    return data


def assembled_from_sites(run: Path) -> bool:
    """Whether ``run`` was assembled on a federation's coordinator (``clinfuse
    flower-assemble``; its ``run.json``: federated, not evaluated): it holds the model but
    no case, not even validation logits.

    Raises:
        ConfigError: an unreadable ``run.json``.
    """
    path = Path(run) / "run.json"
    if not path.is_file():
        return False
    info = read_json_object(path, "the run's run.json")
    return bool(info.get("federated")) and info.get("evaluated") is False
