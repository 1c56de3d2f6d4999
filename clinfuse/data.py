"""From manifest rows to model-ready case dicts, with a presence mask per case.

A loaded case is a dict with fixed keys (STYLE 1)::

    {
      "case_id": "c001", "patient_id": "p001", "label": 1, "split": "train", "site": "site_a",
      "image": (C, H, W) float32 | None,   "image_meta": {...},
      "note": str | None,                  "note_meta": {...},
      "signal": (L, T) float32 | None,     "signal_meta": {...},
      "tabular": (F,) float32 | None,      "tabular_mask": (F,) float32 | None,
      "input_warnings": [str, ...],        # tabular inputs outside the training data
      "present": (M,) bool                 # in the run's modality order, 1 = present and loaded
    }

A modality whose manifest cell is empty is *missing* (present = 0, value None).
A modality whose file is named but cannot be read is a *data error*: the whole
case is excluded and recorded with the reason (never a silent drop, never a
crash halfway through a cohort).

Speed: :meth:`CaseLoader.load_many` can load in worker processes (``workers``),
and a loader given ``persist_dir`` keeps every decoded, preprocessed image on disk
(``.npy`` + JSON metadata, keyed by the file's identity and the transform
settings), so the next run over the same files skips DICOM decoding and resizing.
Like MONAI's ``PersistentDataset``, but without pickle: a cache folder is data,
never code. Inside :func:`shared_decoding` (``clinfuse crossval`` wraps its folds in it)
every loader of the process reuses, from memory, the images and signals another loader
already decoded and preprocessed with the same settings.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse._parallel import _DECODED, PARALLEL_LOAD_MIN_ROWS, ordered_map, scoring_workers
from clinfuse.cache import source_identity
from clinfuse.cohort.manifest import CaseRow, Issue
from clinfuse.config import DataConfig
from clinfuse.errors import ClinFuseError, ConfigError, ModalityLoadError, unwrap_clinfuse_error
from clinfuse.io.note import load_note
from clinfuse.io.tabular import TabularEncoder

__all__ = [
    "PARALLEL_LOAD_MIN_ROWS",
    "SCORING_CHUNK",
    "CaseLoader",
    "DecodedImageStore",
    "LoadedCases",
    "input_shapes",
    "iter_scorable",
    "scoring_workers",
    "shared_decoding",
]


@contextlib.contextmanager
def shared_decoding() -> Iterator[None]:
    """Within the block, loaders reuse decoded, preprocessed images and signals from memory.

    Several loaders over the same files with the same settings — one per fold of a
    cross-validation — then read and preprocess each file once. Each loader gets its own
    copy of the arrays (a run may change its cases), keyed by the file's identity and
    the modality's settings; signals cropped at random positions are not shared. The
    memory holds one copy of every decoded input until the block ends. A block inside
    another shares the outer one's memory (a hyperparameter search's trials).
    """
    token = _DECODED.set(_DECODED.get() if _DECODED.get() is not None else {})
    try:
        yield
    finally:
        _DECODED.reset(token)


def _shared(key: tuple[str, str, str]) -> tuple[Any, Any] | None:
    memo = _DECODED.get()
    if memo is None or key not in memo:
        return None
    value, meta = memo[key]
    return np.array(value, copy=True), copy.deepcopy(meta)


def _share(key: tuple[str, str, str], value: Any, meta: Any) -> None:
    memo = _DECODED.get()
    if memo is not None:
        memo[key] = (np.array(value, copy=True), copy.deepcopy(meta))


class DecodedImageStore:
    """Decoded, preprocessed images on disk, keyed by file identity and transform settings.

    Layout: ``<root>/decoded-image/<settings hash[:16]>/<key[:2]>/<key>.npy`` plus
    ``<key>.json`` (the image metadata), written atomically, read without pickle.
    A changed file (size or modification time) or changed settings simply miss.

    Args:
        root: cache folder (e.g. ``$CLINFUSE_CACHE``).
        settings: the image transform settings (``DataConfig.image`` as a dict).
    """

    def __init__(self, root: str | Path, settings: Any) -> None:
        self._settings = json.dumps(settings, sort_keys=True, default=str)
        digest = hashlib.sha256(self._settings.encode()).hexdigest()
        self.folder = Path(root) / "decoded-image" / digest[:16]

    def _paths(self, source: str) -> tuple[Path, Path]:
        key = hashlib.sha256(f"{self._settings}\x00{source}".encode()).hexdigest()
        base = self.folder / key[:2] / key
        return base.with_suffix(".npy"), base.with_suffix(".json")

    def get(self, source: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The stored ``(array, meta)`` for a source identity, or None."""
        array_path, meta_path = self._paths(source)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            array = np.load(array_path, allow_pickle=False)
        except (OSError, ValueError):  # absent or damaged: decode again
            return None
        return array, meta

    def put(self, source: str, array: np.ndarray, meta: dict[str, Any] | None) -> None:
        """Store ``(array, meta)`` atomically (array first, so meta marks completeness)."""
        array_path, meta_path = self._paths(source)
        array_path.parent.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}.tmp"
        tmp_array = array_path.with_name(f".{array_path.stem}.{tag}.npy")
        np.save(tmp_array, np.asarray(array), allow_pickle=False)
        os.replace(tmp_array, array_path)
        tmp_meta = meta_path.with_name(f".{meta_path.stem}.{tag}.json")
        tmp_meta.write_text(json.dumps(meta or {}, default=_json_safe), encoding="utf-8")
        os.replace(tmp_meta, meta_path)


def _json_safe(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


_WORKER_LOADER: CaseLoader | None = None


def _init_worker(loader: CaseLoader) -> None:
    global _WORKER_LOADER
    _WORKER_LOADER = loader
    import torch

    torch.set_num_threads(1)  # the processes are the parallelism


def _load_in_worker(row: CaseRow) -> tuple[dict[str, Any] | None, Issue | None]:
    assert _WORKER_LOADER is not None  # set by _init_worker
    return _WORKER_LOADER.try_load(row)


@dataclass
class LoadedCases:
    """Cases that loaded, and the ones excluded with their reasons."""

    cases: list[dict[str, Any]] = field(default_factory=list)
    excluded: list[Issue] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def case_ids(self) -> list[str]:
        return [c["case_id"] for c in self.cases]


class CaseLoader:
    """Loads and preprocesses cases for a fixed list of modalities.

    Args:
        config: data settings (transforms of each modality).
        modalities: the run's modalities, in mask order.
        tabular: a fitted :class:`TabularEncoder` (required when ``"tabular"``
            is among ``modalities``).
        persist_dir: keep decoded, preprocessed images here (see
            :class:`DecodedImageStore`); None = decode every time.
    """

    def __init__(
        self,
        config: DataConfig,
        modalities: Sequence[str],
        tabular: TabularEncoder | None = None,
        *,
        persist_dir: str | Path | None = None,
    ) -> None:
        self.config = config
        self.images = (
            None
            if persist_dir is None
            else DecodedImageStore(persist_dir, config.image.model_dump(mode="json"))
        )
        self.modalities = list(modalities)
        self._settings = {
            name: json.dumps(getattr(config, name).model_dump(mode="json"), sort_keys=True)
            for name in ("image", "signal")
        }
        if "tabular" in self.modalities and tabular is None:
            raise ConfigError(
                "tabular modality needs a fitted TabularEncoder", field="tabular_columns"
            )
        self.tabular = tabular
        self._image_tf: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self._signal_tf: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        if "image" in self.modalities:
            from clinfuse.transforms.image import build_image_transforms

            self._image_tf = build_image_transforms(config.image)
        if "signal" in self.modalities:
            from clinfuse.transforms.signal import build_signal_transforms

            self._signal_tf = build_signal_transforms(config.signal)

    def load(self, row: CaseRow) -> dict[str, Any]:
        """Load one case.

        Raises:
            ClinFuseError: a named file cannot be read or has unusable content.
        """
        case: dict[str, Any] = {
            "case_id": row.case_id,
            "patient_id": row.patient_id,
            "label": row.label,
            "split": row.split,
            "site": row.site,
        }
        present = np.zeros(len(self.modalities), dtype=bool)
        sources: dict[str, str] = {}
        for i, m in enumerate(self.modalities):
            if m == "image":
                case["image"], case["image_meta"] = None, None
                if row.image is not None:
                    sources["image"] = source_identity(row.image)
                    case["image"], case["image_meta"] = self._image(row, sources["image"])
                    present[i] = True
            elif m == "note":
                case["note"], case["note_meta"] = None, None
                if row.note is not None:
                    case["note"], case["note_meta"] = load_note(row.note, case_id=row.case_id)
                    sources["note"] = source_identity(text=case["note"])
                    present[i] = True
                elif row.note_text is not None:
                    case["note"], case["note_meta"] = load_note(
                        text=row.note_text, case_id=row.case_id, field="note_text"
                    )
                    sources["note"] = source_identity(text=case["note"])
                    present[i] = True
            elif m == "signal":
                case["signal"], case["signal_meta"] = None, None
                if row.signal is not None:
                    sources["signal"] = source_identity(row.signal) + f":fs={row.signal_fs}"
                    case["signal"], case["signal_meta"] = self._signal(row, sources["signal"])
                    present[i] = True
            elif m == "tabular":
                fields, present[i], sources["tabular"] = self.tabular_fields(row)
                case.update(fields)
            else:  # pragma: no cover - guarded by DataConfig validation
                raise ConfigError(f"unknown modality {m!r}", field="modalities")
        case["present"] = present
        case["sources"] = sources
        return case

    def tabular_fields(self, row: CaseRow) -> tuple[dict[str, Any], bool, str]:
        """A row's tabular values through this loader's encoder.

        Returns:
            ``(fields, present, source)``: ``fields`` holds ``tabular`` and
            ``tabular_mask`` (None when no value is known) and ``input_warnings``;
            ``source`` is the values' identity for the embedding cache.

        Raises:
            ClinFuseError: a value cannot be read as a number.
        """
        assert self.tabular is not None
        values, mask = self.tabular.transform_row(row.extra, case_id=row.case_id)
        present = bool(mask.any())
        fields: dict[str, Any] = {
            "tabular": values if present else None,
            "tabular_mask": mask if present else None,
            "input_warnings": self.tabular.check_row(row.extra),
        }
        source = "values:" + hashlib.sha256(values.tobytes() + mask.tobytes()).hexdigest()
        return fields, present, source

    def _image(self, row: CaseRow, source: str) -> tuple[np.ndarray, dict[str, Any] | None]:
        """The decoded, preprocessed image: from memory (:func:`shared_decoding`) or the
        store when they have it, else decoded."""
        key = ("image", self._settings["image"], source)
        if (shared := _shared(key)) is not None:
            return shared
        if self.images is not None and (hit := self.images.get(source)) is not None:
            _share(key, *hit)
            return hit
        assert self._image_tf is not None
        out = self._image_tf({"case_id": row.case_id, "image": str(row.image)})
        image, meta = out["image"], out.get("image_meta")
        if self.images is not None:
            self.images.put(source, np.asarray(image), meta)
        _share(key, image, meta)
        return image, meta

    def _signal(self, row: CaseRow, source: str) -> tuple[Any, Any]:
        """The read, preprocessed signal (from memory inside :func:`shared_decoding`,
        unless it is cropped at a random position)."""
        key = ("signal", self._settings["signal"], source)
        random_crop = self.config.signal.crop == "random"
        if not random_crop and (shared := _shared(key)) is not None:
            return shared
        assert self._signal_tf is not None
        out = self._signal_tf(
            {"case_id": row.case_id, "signal": str(row.signal), "signal_fs": row.signal_fs}
        )
        signal, meta = out["signal"], out.get("signal_meta")
        if not random_crop:
            _share(key, signal, meta)
        return signal, meta

    def try_load(self, row: CaseRow) -> tuple[dict[str, Any] | None, Issue | None]:
        """``(case, None)``, or ``(None, issue)`` when the case must be excluded."""
        try:
            try:
                case = self.load(row)
            except RuntimeError as wrapped:  # MONAI wraps transform errors
                inner = unwrap_clinfuse_error(wrapped)
                if inner is None:
                    raise
                raise inner from wrapped
        except ClinFuseError as e:
            reason = e.reason + (f" ({e.hint})" if e.hint else "")
            return None, Issue(row.case_id, e.field or "?", reason, path=e.path)
        if not case["present"].any():
            return None, Issue(
                row.case_id,
                "modalities",
                f"no usable modality among {self.modalities}; nothing to predict from",
            )
        return case, None

    def iter_load(
        self,
        rows: Sequence[CaseRow],
        progress: Callable[[int, int], None] | None = None,
        *,
        workers: int = 0,
    ) -> Iterator[tuple[CaseRow, dict[str, Any] | None, Issue | None]]:
        """Yield ``(row, case, None)`` or ``(row, None, issue)`` for each row, in order.

        Args:
            workers: processes that load in parallel (0 or 1 = in this process).
                Workers are forked (where the platform allows), so they share the
                loader without pickling it.
        """
        total = len(rows)
        if workers > 1 and total > 1:  # workers share this loader through _init_worker
            results = ordered_map(
                _load_in_worker, rows, workers, initializer=_init_worker, initargs=(self,)
            )
        else:
            results = map(self.try_load, rows)
        for k, (row, (case, issue)) in enumerate(zip(rows, results, strict=True)):
            yield row, case, issue
            if progress is not None:
                progress(k + 1, total)

    def load_many(
        self,
        rows: Sequence[CaseRow],
        progress: Callable[[int, int], None] | None = None,
        *,
        workers: int = 0,
    ) -> LoadedCases:
        """Load every row; bad cases are excluded and recorded, never raised.

        Args:
            workers: processes that load in parallel (0 = in this process).
        """
        out = LoadedCases()
        for _, case, issue in self.iter_load(rows, progress, workers=workers):
            if case is not None:
                out.cases.append(case)
            else:
                assert issue is not None
                out.excluded.append(issue)
        return out


SCORING_CHUNK = 1024
"""Cases loaded, scored and released at a time by :func:`iter_scorable`."""


def iter_scorable(
    loader: CaseLoader,
    cohort: Any,
    progress: Callable[[int, int], None] | None = None,
    *,
    workers: int | str = "auto",
    chunk_size: int | None = None,
    require_cases: bool = True,
) -> Iterator[LoadedCases]:
    """A checked cohort's cases in chunks of ``chunk_size`` manifest rows (default
    :data:`SCORING_CHUNK`), each loaded only
    when the caller asks for it — so scoring holds one chunk of decoded inputs at a time and
    its memory does not grow with the cohort.

    The first chunk's ``excluded`` starts with the manifest's own exclusions; every chunk's
    lists the cases of its rows that failed to load. ``progress(done, total)`` counts rows
    over the whole cohort.

    Raises:
        CohortError: (after the last chunk) no case could be loaded, unless
            ``require_cases`` is False.
        ConfigError: ``chunk_size`` < 1 or a bad ``workers``.
    """
    from clinfuse.errors import CohortError

    chunk_size = SCORING_CHUNK if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise ConfigError(f"chunk_size is {chunk_size}; use 1 or more", field="chunk_size")
    rows = list(cohort.rows)
    total = len(rows)
    count = scoring_workers(workers, total)
    n_loaded, n_failed = 0, 0
    for start in range(0, total, chunk_size):
        part = rows[start : start + chunk_size]
        offset = None if progress is None else (lambda d, _t, s=start: progress(s + d, total))
        loaded = loader.load_many(part, progress=offset, workers=min(count, len(part)))
        n_loaded += len(loaded.cases)
        n_failed += len(loaded.excluded)
        if start == 0:
            loaded.excluded[:0] = list(cohort.excluded)
        yield loaded
    if not n_loaded and require_cases:
        raise CohortError(
            f"no case of the cohort could be loaded ({len(cohort.excluded) + n_failed} exclusions)",
            path=cohort.manifest_path,
            hint="run `clinfuse validate` on the manifest",
        )


def check_signal_shapes(cases: Sequence[dict[str, Any]]) -> None:
    """All loaded signals of a run must share a lead count (the encoder's input width).

    Raises:
        ModalityLoadError: naming the first case that differs from the majority.
    """
    shapes = [(c["case_id"], c["signal"].shape[0]) for c in cases if c.get("signal") is not None]
    if not shapes:
        return
    counts: dict[int, int] = {}
    for _, n in shapes:
        counts[n] = counts.get(n, 0) + 1
    if len(counts) > 1:
        common = max(counts, key=lambda k: counts[k])
        odd = next(cid for cid, n in shapes if n != common)
        raise ModalityLoadError(
            f"signals have different lead counts {sorted(counts)}; most have {common}",
            case_id=odd,
            field="signal",
            hint=f"set data.signal.n_leads (e.g. {min(counts)}) or data.signal.lead_names in the config",
        )


def input_shapes(cases: Sequence[dict[str, Any]], tabular: Any = None) -> dict[str, int]:
    """What the encoders' first layers need: image channels, signal leads, tabular features.

    Read from the first case that has each modality (``check_signal_shapes`` has made
    them agree); ``tabular`` is the fitted :class:`~clinfuse.io.tabular.TabularEncoder`.
    """
    shapes: dict[str, int] = {}
    image = next((c["image"] for c in cases if c.get("image") is not None), None)
    if image is not None:
        shapes["image_channels"] = int(image.shape[0])
    signal = next((c["signal"] for c in cases if c.get("signal") is not None), None)
    if signal is not None:
        shapes["signal_leads"] = int(signal.shape[0])
    if tabular is not None:
        shapes["tabular_features"] = int(tabular.n_features)
    return shapes
