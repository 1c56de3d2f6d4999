"""On-disk cache of frozen-encoder embeddings.

A frozen encoder gives each case the same embedding every epoch, so it is
computed once and stored, keyed by case, modality, the encoder's fingerprint
(config + weights) and the input's identity (file path, size and modification
time, or the inline text, plus the preprocessing settings). Change any of them
and the entry is simply not found; nothing stale is ever returned.

Layout: ``<root>/<modality>/<encoder fingerprint[:16]>/<key[:2]>/<key>.npy``,
written atomically (temp file, then rename), read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EmbeddingCache", "default_cache_dir", "source_identity"]


def default_cache_dir() -> Path:
    """``$CLINFUSE_CACHE``, else ``~/.cache/clinfuse``."""
    env = os.environ.get("CLINFUSE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clinfuse"


def source_identity(path: str | Path | None = None, text: str | None = None) -> str:
    """What identifies a modality's input: a file's path/size/mtime, or the text's hash."""
    if text is not None:
        return "text:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    if path is None:
        raise ValueError("source_identity needs a path or a text")
    p = Path(path).resolve()
    if p.is_dir():
        parts = []
        for f in sorted(p.iterdir()):
            if f.is_file():
                st = f.stat()
                parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
        return f"dir:{p}:" + hashlib.sha256("|".join(parts).encode()).hexdigest()
    st = p.stat()
    return f"file:{p}:{st.st_size}:{st.st_mtime_ns}"


class EmbeddingCache:
    """Embeddings of one modality under one encoder fingerprint.

    Args:
        root: cache folder.
        modality: the modality.
        fingerprint: the encoder's fingerprint (its config and weights).
        preprocessing: settings that change the encoder's input (e.g. the
            image transform config); part of every key.
    """

    def __init__(
        self, root: str | Path, modality: str, fingerprint: str, preprocessing: Any = None
    ) -> None:
        self.root = Path(root)
        self.modality = modality
        self.fingerprint = fingerprint
        self._prep = json.dumps(preprocessing, sort_keys=True, default=str)
        self.folder = self.root / modality / fingerprint[:16]

    def key(self, case_id: str, source: str) -> str:
        h = hashlib.sha256()
        for part in (self.modality, self.fingerprint, self._prep, case_id, source):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # a damaged entry (e.g. a disk that filled up): recompute it
            return None
        return arr

    def put(self, key: str, value: np.ndarray) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, np.asarray(value, dtype=np.float32), allow_pickle=False)
        os.replace(tmp, path)
