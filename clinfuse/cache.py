"""On-disk cache of frozen-encoder embeddings.

A frozen encoder gives each case the same embedding every epoch, so it is
computed once and stored, keyed by case, modality, the encoder's fingerprint
(config + weights) and the input's identity (file path, size and modification
time, or the inline text, plus the preprocessing settings). Change any of them
and the entry is simply not found; nothing stale is ever returned.

Layout: ``<root>/<modality>/<encoder fingerprint[:16]>/<key[:2]>/<key>.npy``,
written atomically (temp file, then rename), read with ``allow_pickle=False``.

For cohort-scale work (training a fusion head on 100,000 cached cases, Shapley
values over a cohort) :meth:`EmbeddingCache.pack` streams the entries of a cohort
into one ``(N, D)`` float32 ``.npy`` file that :class:`PackedEmbeddings` opens
memory-mapped: batches are read from disk as they are needed, so memory stays flat
as the cohort grows.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EmbeddingCache", "PackedEmbeddings", "default_cache_dir", "source_identity"]


def default_cache_dir() -> Path:
    """``$CLINFUSE_CACHE``, else ``~/.cache/clinfuse``."""
    env = os.environ.get("CLINFUSE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clinfuse"


def source_identity(path: str | Path | None = None, text: str | None = None) -> str:
    """What identifies a modality's input: a file's path/size/mtime, or the text's hash.

    A path that does not exist gets a ``missing:`` identity (never a cache hit), so the
    loader that opens it next raises its own error naming the case and the field.
    """
    if text is not None:
        return "text:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    if path is None:
        raise ValueError("source_identity needs a path or a text")
    p = Path(path).resolve()
    if p.is_dir():
        parts: list[str] = []
        for f in sorted(p.iterdir()):
            if f.is_file():
                st = f.stat()
                parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
        return f"dir:{p}:" + hashlib.sha256("|".join(parts).encode()).hexdigest()
    try:
        st = p.stat()
    except FileNotFoundError:
        return f"missing:{p}"
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

    def pack(
        self, keys: Sequence[str | None], path: str | Path, *, chunk_rows: int = 4096
    ) -> tuple[PackedEmbeddings, np.ndarray]:
        """Stream the entries of ``keys`` into one memory-mapped ``(N, D)`` matrix.

        Args:
            keys: one cache key per row (None for a case without this modality).
            path: the ``.npy`` file to write (atomically).
            chunk_rows: rows gathered in memory before each write.

        Returns:
            ``(packed, found)``: the matrix (zeros where no entry exists) and the
            ``(N,)`` bool mask of rows that had one.

        Raises:
            ValueError: entries of different widths (two encoders mixed in one folder).
        """
        found = np.zeros(len(keys), dtype=bool)
        dim = self._first_width(keys)

        def chunks() -> Iterable[np.ndarray]:
            for start in range(0, len(keys), chunk_rows):
                block = np.zeros((min(chunk_rows, len(keys) - start), dim), np.float32)
                for k, key in enumerate(keys[start : start + chunk_rows]):
                    value = None if key is None else self.get(key)
                    if value is None:
                        continue
                    if value.size != dim:
                        raise ValueError(
                            f"cache entry {str(key)[:12]}… has {value.size} values, expected "
                            f"{dim}: clear {self.folder} and refill it"
                        )
                    block[k] = value.reshape(-1)
                    found[start + k] = True
                yield block

        return PackedEmbeddings.write(path, len(keys), dim, chunks()), found

    def _first_width(self, keys: Sequence[str | None]) -> int:
        for key in keys:
            if key is not None and (value := self.get(key)) is not None:
                return int(value.shape[-1])
        return 1


class PackedEmbeddings:
    """An ``(N, D)`` float32 embedding matrix on disk, opened memory-mapped (read-only).

    Rows are read when indexed, so a cohort of any size costs the memory of the
    batches in use (plus the operating system's page cache, which it can reclaim).

    >>> packed = PackedEmbeddings.write(path, 3, 4, [np.ones((3, 4), np.float32)])  # doctest: +SKIP
    >>> packed[[0, 2]].shape  # doctest: +SKIP
    (2, 4)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.matrix: np.ndarray = np.load(self.path, mmap_mode="r", allow_pickle=False)
        if self.matrix.ndim != 2 or self.matrix.dtype != np.float32:
            raise ValueError(
                f"{self.path} holds a {self.matrix.dtype} array of shape {self.matrix.shape}; "
                "expected an (N, D) float32 matrix written by PackedEmbeddings.write"
            )

    @classmethod
    def write(
        cls, path: str | Path, n_rows: int, dim: int, chunks: Iterable[np.ndarray]
    ) -> PackedEmbeddings:
        """Write ``chunks`` (consecutive row blocks, ``n_rows`` in all) to ``path`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n_rows, dim))
        done = 0
        for block in chunks:
            out[done : done + len(block)] = block
            done += len(block)
        if done != n_rows:
            del out
            tmp.unlink(missing_ok=True)
            raise ValueError(f"wrote {done} rows, expected {n_rows}")
        out.flush()
        del out
        os.replace(tmp, path)
        return cls(path)

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __getitem__(self, index: Any) -> np.ndarray:
        """Rows as an in-memory float32 array (a copy; the file is never written)."""
        return np.array(self.matrix[index], dtype=np.float32)
