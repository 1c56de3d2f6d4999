"""Physiological-signal transforms: array operations and MONAI dictionary wrappers.

Three layers, as in MONAI:

1. pure functions on ``(leads, samples)`` arrays (:func:`resample_signal`,
   :func:`bandpass_filter`, :func:`crop_or_pad`, :func:`zscore_leads`, …);
2. array transforms that carry the metadata along: ``t(signal, meta) ->
   (signal, new_meta)`` (:class:`Resample`, :class:`BandpassFilter`,
   :class:`CropOrPad`, :class:`NormalizeLeads`, :class:`SelectLeads`,
   :class:`CleanECG`); they never mutate their inputs;
3. dictionary transforms subclassing :class:`monai.transforms.MapTransform`
   (``LoadSignald``, ``Resampled``, ``BandpassFilterd``, ``CropOrPadd``,
   ``RandCropOrPadd``, ``NormalizeLeadsd``, ``SelectLeadsd``, ``CleanECGd``).

Dictionary convention: the signal is at ``d[key]`` (``(leads, samples)``
float32) and its metadata at ``d[f"{key}_meta"]`` (see
:func:`clinfuse.io.signal.load_signal`; transforms need at least ``fs``
there). A key whose value is ``None`` is a missing modality: every
transform leaves it alone. Transforms return a new dict and new meta dict.

After :func:`build_signal_transforms`, ``d[key]`` is float32
``(n_leads, round(target_fs * duration_s))`` and the meta holds
``valid_mask`` (bool, one per sample; ``False`` where zeros were padded),
``n_valid`` and ``valid_start``, so padding is never mistaken for data.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from scipy import signal as sps

from clinfuse.config import SignalTransformConfig
from clinfuse.errors import ConfigError, ModalityLoadError
from clinfuse.io.signal import load_signal
from clinfuse.transforms.base import ClinicalCompose

__all__ = [
    "MAX_UPSAMPLING",
    "BandpassFilter",
    "BandpassFilterd",
    "CleanECG",
    "CleanECGd",
    "CropOrPad",
    "CropOrPadd",
    "LoadSignald",
    "NormalizeLeads",
    "NormalizeLeadsd",
    "RandCropOrPadd",
    "Resample",
    "Resampled",
    "SelectLeads",
    "SelectLeadsd",
    "SignalCompose",
    "SignalTransformConfig",
    "bandpass_filter",
    "build_signal_transforms",
    "crop_or_pad",
    "resample_signal",
    "zscore_leads",
]

Meta = dict[str, Any]


# --------------------------------------------------------------------- pure functions


def _as_2d(x: Any) -> np.ndarray:
    """View any array-like as ``(leads, samples)`` float64 (1-D → one lead)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"signal must be (leads, samples), got shape {arr.shape}")
    return arr


def resample_signal(x: np.ndarray, fs: float, target_fs: float) -> tuple[np.ndarray, float]:
    """Polyphase resampling (``scipy.signal.resample_poly``).

    The ratio ``target_fs / fs`` is approximated by a fraction ``up/down``
    with ``down <= 1000``; the rate actually reached is returned.

    Args:
        x: ``(leads, samples)`` or ``(samples,)``.
        fs: current rate (Hz).
        target_fs: wanted rate (Hz).

    Returns:
        ``(y, new_fs)``: ``y`` float32 ``(leads, ceil(samples * up / down))``.
    """
    arr = _as_2d(x)
    ratio = Fraction(target_fs / fs).limit_denominator(1000)
    if ratio == 1:
        return arr.astype(np.float32), float(fs)
    if ratio <= 0:
        raise ValueError(f"cannot resample from {fs} Hz to {target_fs} Hz")
    y = sps.resample_poly(arr, ratio.numerator, ratio.denominator, axis=-1, padtype="line")
    return y.astype(np.float32), float(fs) * ratio.numerator / ratio.denominator


@functools.lru_cache(maxsize=64)
def _butter_sos(order: int, low: float, high: float, fs: float) -> np.ndarray:
    """The filter's second-order sections, designed once per setting (``butter`` costs ~3 ms)."""
    if low > 0:
        sos = sps.butter(order, [low, high], btype="bandpass", fs=fs, output="sos")
    else:
        sos = sps.butter(order, high, btype="lowpass", fs=fs, output="sos")
    return sos


def bandpass_filter(
    x: np.ndarray, fs: float, low: float, high: float, order: int = 4
) -> tuple[np.ndarray, tuple[float, float]]:
    """Zero-phase Butterworth band-pass (``butter(output="sos")`` + ``sosfiltfilt``).

    ``high`` is clamped to 0.95 × Nyquist; ``low <= 0`` gives a low-pass only.

    Args:
        x: ``(leads, samples)`` or ``(samples,)``.
        fs: sampling rate (Hz).
        low: lower edge (Hz).
        high: upper edge (Hz).
        order: Butterworth order.

    Returns:
        ``(y, (low, high))``: ``y`` float32 ``(leads, samples)`` and the edges used.

    Raises:
        ValueError: ``low`` is not below the (clamped) upper edge.
    """
    arr = _as_2d(x)
    nyq = fs / 2.0
    high = min(float(high), 0.95 * nyq)
    if low >= high:
        raise ValueError(f"band-pass low edge {low} Hz is not below {high:g} Hz at fs={fs:g} Hz")
    sos = _butter_sos(int(order), float(low), high, float(fs)).copy()  # scipy wants it writable
    # sosfiltfilt's default edge padding; shortened for very short signals
    ntaps = 2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    padlen = min(3 * ntaps, arr.shape[1] - 1)
    y = sps.sosfiltfilt(sos, arr, axis=-1, padlen=padlen)
    return y.astype(np.float32), (float(low), high)


def crop_or_pad(
    x: np.ndarray,
    length: int,
    mode: Literal["center", "start", "random"] = "center",
    rng: np.random.RandomState | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Crop or zero-pad the sample axis to ``length``.

    Cropping keeps the centre, the start, or a random window. Padding puts
    the signal in the middle (``center``), at the start (``start``) or at a
    random offset (``random``).

    Args:
        x: ``(leads, samples)`` or ``(samples,)``.
        length: samples wanted.
        mode: ``"center"``, ``"start"`` or ``"random"``.
        rng: random state for ``"random"``; a fresh unseeded one if ``None``.

    Returns:
        ``(y, valid_mask, valid_start)``: ``y`` float32 ``(leads, length)``;
        ``valid_mask`` bool ``(length,)``, ``True`` on real samples;
        ``valid_start`` the index of the first real sample.
    """
    arr = _as_2d(x)
    n = arr.shape[1]
    mask = np.zeros(length, dtype=bool)
    if n >= length:
        slack = n - length
        offset = _offset(slack, mode, rng)
        mask[:] = True
        return arr[:, offset : offset + length].astype(np.float32), mask, 0
    offset = _offset(length - n, mode, rng)
    y = np.zeros((arr.shape[0], length), dtype=np.float32)
    y[:, offset : offset + n] = arr
    mask[offset : offset + n] = True
    return y, mask, offset


def _offset(slack: int, mode: str, rng: np.random.RandomState | None) -> int:
    if mode == "start" or slack == 0:
        return 0
    if mode == "center":
        return slack // 2
    if mode == "random":
        return int((rng or np.random.RandomState()).randint(0, slack + 1))
    raise ValueError(f"crop mode must be 'center', 'start' or 'random', got {mode!r}")


def zscore_leads(
    x: np.ndarray, valid_mask: np.ndarray | None = None, eps: float = 1e-8
) -> np.ndarray:
    """Per-lead z-score over the valid samples; padding and flat leads become 0.

    Args:
        x: ``(leads, samples)`` or ``(samples,)``.
        valid_mask: bool ``(samples,)``; statistics use only ``True`` samples
            and ``False`` samples are set to 0. ``None``: all valid.
        eps: a lead whose standard deviation is ``<= eps`` is flat: zeros.

    Returns:
        float32 ``(leads, samples)``, mean 0 and std 1 per non-flat lead over
        the valid samples.
    """
    arr = _as_2d(x)
    valid = np.ones(arr.shape[1], dtype=bool) if valid_mask is None else np.asarray(valid_mask)
    out = np.zeros_like(arr)
    if not valid.any():
        return out.astype(np.float32)
    part = arr[:, valid]
    mean = part.mean(axis=1, keepdims=True)
    std = part.std(axis=1, keepdims=True)
    flat = std[:, 0] <= eps
    scale = np.where(std > eps, std, 1.0)
    z = (part - mean) / scale
    z[flat] = 0.0
    out[:, valid] = z
    return out.astype(np.float32)


# ------------------------------------------------------------------- array transforms


def _with_length(meta: Mapping[str, Any], n: int, fs: float | None = None) -> Meta:
    """Copy ``meta`` with ``n_samples``/``duration_s`` (and ``fs``) updated."""
    out = dict(meta)
    if fs is not None:
        out["fs"] = float(fs)
    out["n_samples"] = int(n)
    if out.get("fs"):
        out["duration_s"] = n / float(out["fs"])
    return out


def _fs_of(meta: Mapping[str, Any], case_id: str | None, field: str) -> float:
    fs = meta.get("fs")
    if fs is None or not (float(fs) > 0):
        raise ModalityLoadError(
            f"signal metadata has no positive sampling rate `fs` (got {fs!r})",
            case_id=case_id,
            field=field,
            path=meta.get("path"),
            hint="load the signal with LoadSignald / load_signal, which fills `<key>_meta`",
        )
    return float(fs)


MAX_UPSAMPLING = 1000
""":class:`Resample` refuses to raise a signal's rate more than this many times: a rate given
as a sampling interval would otherwise ask for thousands of times the memory."""


class Resample:
    """Resample to ``target_fs`` (see :func:`resample_signal`); updates ``fs``.

    ``meta["fs_original"]`` keeps the file's rate.

    Args:
        target_fs: wanted rate (Hz).
    """

    def __init__(self, target_fs: float) -> None:
        if not target_fs > 0:
            raise ConfigError(f"target_fs must be > 0 Hz, got {target_fs}", field="target_fs")
        self.target_fs = float(target_fs)

    def __call__(
        self, x: np.ndarray, meta: Mapping[str, Any], case_id: str | None = None
    ) -> tuple[np.ndarray, Meta]:
        """``x``: ``(leads, samples)`` → ``(leads, ceil(samples * target_fs / fs))`` float32."""
        fs = _fs_of(meta, case_id, "signal")
        if self.target_fs > MAX_UPSAMPLING * fs:  # e.g. 0.002 (an interval) given as the rate
            raise ModalityLoadError(
                f"resampling from {fs:g} Hz to {self.target_fs:g} Hz would multiply the "
                f"samples by {self.target_fs / fs:,.0f}",
                case_id=case_id,
                field="signal_fs",
                path=meta.get("path"),
                hint="check signal_fs (a rate in Hz, not the interval between samples), or set "
                "data.signal.target_fs near the signal's own rate",
            )
        y, new_fs = resample_signal(x, fs, self.target_fs)
        out = _with_length(meta, y.shape[1], new_fs)
        out.setdefault("fs_original", fs)
        return y, out


class BandpassFilter:
    """Zero-phase Butterworth band-pass (see :func:`bandpass_filter`).

    Records the edges used in ``meta["bandpass_hz"]``.

    Args:
        low: lower edge (Hz); 0 = low-pass only.
        high: upper edge (Hz); clamped to 0.95 × Nyquist.
        order: Butterworth order.
    """

    def __init__(self, low: float, high: float, order: int = 4) -> None:
        if not 0 <= low < high:
            raise ConfigError(
                f"bandpass needs 0 <= low < high, got ({low}, {high})", field="bandpass"
            )
        self.low, self.high, self.order = float(low), float(high), int(order)

    def __call__(
        self, x: np.ndarray, meta: Mapping[str, Any], case_id: str | None = None
    ) -> tuple[np.ndarray, Meta]:
        """``x``: ``(leads, samples)`` → same shape, float32."""
        fs = _fs_of(meta, case_id, "signal")
        try:
            y, edges = bandpass_filter(x, fs, self.low, self.high, self.order)
        except ValueError as e:
            raise ModalityLoadError(
                str(e),
                case_id=case_id,
                field="signal",
                path=meta.get("path"),
                hint="resample to a higher rate first (Resample) or lower the band edges",
            ) from e
        out = dict(meta)
        out["bandpass_hz"] = edges
        return y, out


class CleanECG:
    """neurokit2 ``ecg_clean`` per lead (e.g. method ``"neurokit"``: 0.5 Hz
    high-pass + powerline filter).

    Args:
        method: an ``nk.ecg_clean`` method name.
    """

    def __init__(self, method: str = "neurokit") -> None:
        self.method = method

    def __call__(
        self, x: np.ndarray, meta: Mapping[str, Any], case_id: str | None = None
    ) -> tuple[np.ndarray, Meta]:
        """``x``: ``(leads, samples)`` → same shape, float32."""
        import neurokit2 as nk

        fs = _fs_of(meta, case_id, "signal")
        arr = _as_2d(x)
        try:
            y = np.stack([nk.ecg_clean(lead, sampling_rate=fs, method=self.method) for lead in arr])
        except ValueError as e:
            raise ConfigError(
                f"neurokit2 ecg_clean failed with method {self.method!r}: {e}", field="ecg_clean"
            ) from e
        out = dict(meta)
        out["ecg_clean"] = self.method
        return y.astype(np.float32), out


class CropOrPad(Randomizable):
    """Crop or zero-pad to ``length`` samples (see :func:`crop_or_pad`).

    Writes ``valid_mask`` (bool ``(length,)``), ``n_valid`` and
    ``valid_start`` to the meta so the padding can be masked out.

    Args:
        length: samples wanted.
        mode: ``"center"``, ``"start"`` or ``"random"`` (uses ``self.R``,
            seeded through :meth:`set_random_state`).
    """

    def __init__(self, length: int, mode: Literal["center", "start", "random"] = "center") -> None:
        if length < 1:
            raise ConfigError(f"crop length must be >= 1 sample, got {length}", field="duration_s")
        if mode not in ("center", "start", "random"):
            raise ConfigError(f"crop must be center/start/random, got {mode!r}", field="crop")
        self.length, self.mode = int(length), mode

    def randomize(self, data: Any = None) -> None:
        """Nothing to draw ahead: the offset is drawn from ``self.R`` in ``__call__``."""

    def __call__(
        self, x: np.ndarray, meta: Mapping[str, Any], case_id: str | None = None
    ) -> tuple[np.ndarray, Meta]:
        """``x``: ``(leads, samples)`` → ``(leads, length)`` float32."""
        y, mask, start = crop_or_pad(x, self.length, self.mode, self.R)
        out = _with_length(meta, self.length)
        out["valid_mask"] = mask
        out["n_valid"] = int(mask.sum())
        out["valid_start"] = start
        return y, out


class NormalizeLeads:
    """Per-lead z-score over valid samples (``meta["valid_mask"]`` if present).

    Args:
        eps: standard deviation at or below which a lead is flat (→ zeros).
    """

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def __call__(
        self, x: np.ndarray, meta: Mapping[str, Any], case_id: str | None = None
    ) -> tuple[np.ndarray, Meta]:
        """``x``: ``(leads, samples)`` → same shape, float32."""
        y = zscore_leads(x, meta.get("valid_mask"), self.eps)
        out = dict(meta)
        out["normalize"] = "zscore"
        return y, out


class SelectLeads:
    """Keep leads by name and/or the first ``n_leads``; updates ``lead_names``/``units``.

    Args:
        lead_names: names to keep, in this order (case-insensitive match).
        n_leads: keep the first ``n`` leads (after name selection); a signal
            with fewer leads is an error.
    """

    def __init__(self, lead_names: Sequence[str] | None = None, n_leads: int | None = None) -> None:
        if lead_names is None and n_leads is None:
            raise ConfigError("SelectLeads needs lead_names or n_leads", field="n_leads")
        if n_leads is not None and n_leads < 1:
            raise ConfigError(f"n_leads must be >= 1, got {n_leads}", field="n_leads")
        self.lead_names = None if lead_names is None else [str(n) for n in lead_names]
        self.n_leads = n_leads

    def __call__(
        self, x: np.ndarray, meta: Mapping[str, Any], case_id: str | None = None
    ) -> tuple[np.ndarray, Meta]:
        """``x``: ``(leads, samples)`` → ``(selected, samples)`` float32."""
        arr = _as_2d(x)
        names = list(meta.get("lead_names") or [f"lead_{i}" for i in range(arr.shape[0])])
        index = list(range(arr.shape[0]))
        if self.lead_names is not None:
            lookup = {n.strip().lower(): i for i, n in reversed(list(enumerate(names)))}
            missing = [n for n in self.lead_names if n.strip().lower() not in lookup]
            if missing:
                raise ModalityLoadError(
                    f"signal lacks lead(s) {missing}; it has {names}",
                    case_id=case_id,
                    field="signal",
                    path=meta.get("path"),
                    hint="change `lead_names` in the signal config or exclude this case",
                )
            index = [lookup[n.strip().lower()] for n in self.lead_names]
        if self.n_leads is not None:
            if len(index) < self.n_leads:
                raise ModalityLoadError(
                    f"signal has {len(index)} lead(s) but the run uses n_leads={self.n_leads}",
                    case_id=case_id,
                    field="signal",
                    path=meta.get("path"),
                    hint="lower `n_leads` in the signal config or exclude this case",
                )
            index = index[: self.n_leads]
        out = dict(meta)
        out["lead_names"] = [names[i] for i in index]
        if meta.get("units") is not None:
            out["units"] = [meta["units"][i] for i in index]
        if meta.get("nan_leads"):
            out["nan_leads"] = [n for n in meta["nan_leads"] if n in out["lead_names"]]
        out["n_leads"] = len(index)
        return arr[index].astype(np.float32), out


# -------------------------------------------------------------- dictionary transforms


def _is_missing(value: Any) -> bool:
    """``None``, ``""`` and NaN (an empty manifest cell) mean a missing modality."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    return isinstance(value, float) and math.isnan(value)


class _SignalMapTransform(MapTransform):
    """Apply an array transform ``t(x, meta, case_id)`` to ``d[key]`` and ``d[f"{key}_{postfix}"]``."""

    transform: Any

    def __init__(
        self,
        keys: KeysCollection,
        meta_key_postfix: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.meta_key_postfix = meta_key_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case_id = d.get("case_id")
        case_id = None if case_id is None else str(case_id)
        for key in self.key_iterator(d):
            if d[key] is None:
                continue
            meta_key = f"{key}_{self.meta_key_postfix}"
            meta = d.get(meta_key)
            if meta is None:
                raise ModalityLoadError(
                    f"no metadata at {meta_key!r} for the signal at {key!r}",
                    case_id=case_id,
                    field=str(key),
                    hint="run LoadSignald first, or put a dict with `fs` at that key",
                )
            d[key], d[meta_key] = self.transform(d[key], meta, case_id)
        return d


class LoadSignald(MapTransform):
    """Load ``d[key]`` (a path) with :func:`~clinfuse.io.signal.load_signal`.

    The sampling rate comes from ``d[fs_key]`` (default ``f"{key}_fs"``, so
    ``signal_fs`` for ``signal``), the case id from ``d["case_id"]``. The
    array replaces the path; the meta goes to ``d[f"{key}_meta"]``. A missing
    value (``None``, ``""``, NaN) becomes ``None`` and no meta is written.

    Args:
        keys: keys holding signal paths.
        fs_key: key of the sampling rate (Hz) for ``.npy``/``.csv``.
        meta_key_postfix: meta key suffix.
        allow_missing_keys: do not fail when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection = ("signal",),
        fs_key: str | None = None,
        meta_key_postfix: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fs_key = fs_key
        self.meta_key_postfix = meta_key_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case_id = d.get("case_id")
        case_id = None if case_id is None else str(case_id)
        for key in self.key_iterator(d):
            value = d[key]
            if _is_missing(value):
                d[key] = None
                continue
            if not isinstance(value, str | Path):
                raise ModalityLoadError(
                    f"expected a file path, got {type(value).__name__}",
                    case_id=case_id,
                    field=str(key),
                    hint="put the signal file's path in the manifest",
                )
            fs_key = self.fs_key or f"{key}_fs"
            d[key], d[f"{key}_{self.meta_key_postfix}"] = load_signal(
                value, fs=d.get(fs_key), case_id=case_id, field=str(key)
            )
        return d


class Resampled(_SignalMapTransform):
    """Dictionary :class:`Resample`. Args: ``keys``, ``target_fs``, ``meta_key_postfix``, ``allow_missing_keys``."""

    def __init__(
        self,
        keys: KeysCollection,
        target_fs: float,
        meta_key_postfix: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, meta_key_postfix, allow_missing_keys)
        self.transform = Resample(target_fs)


class BandpassFilterd(_SignalMapTransform):
    """Dictionary :class:`BandpassFilter`. Args: ``keys``, ``low``, ``high``, ``order``, …"""

    def __init__(
        self,
        keys: KeysCollection,
        low: float,
        high: float,
        order: int = 4,
        meta_key_postfix: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, meta_key_postfix, allow_missing_keys)
        self.transform = BandpassFilter(low, high, order)


class CleanECGd(_SignalMapTransform):
    """Dictionary :class:`CleanECG`. Args: ``keys``, ``method``, …"""

    def __init__(
        self,
        keys: KeysCollection,
        method: str = "neurokit",
        meta_key_postfix: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, meta_key_postfix, allow_missing_keys)
        self.transform = CleanECG(method)


class CropOrPadd(_SignalMapTransform):
    """Dictionary :class:`CropOrPad`, deterministic (``"center"`` or ``"start"``).

    Deterministic so MONAI's ``CacheDataset`` may cache through it; use
    :class:`RandCropOrPadd` for random crops.
    """

    def __init__(
        self,
        keys: KeysCollection,
        length: int,
        mode: Literal["center", "start"] = "center",
        meta_key_postfix: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        if mode not in ("center", "start"):
            raise ConfigError(
                f"CropOrPadd mode must be 'center' or 'start', got {mode!r}",
                field="crop",
                hint="use RandCropOrPadd for random crops",
            )
        super().__init__(keys, meta_key_postfix, allow_missing_keys)
        self.transform = CropOrPad(length, mode)


class RandCropOrPadd(_SignalMapTransform, Randomizable):
    """Dictionary :class:`CropOrPad` with a random window (augmentation).

    Seed through ``Compose.set_random_state`` / :meth:`set_random_state`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        length: int,
        meta_key_postfix: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, meta_key_postfix, allow_missing_keys)
        self.transform = CropOrPad(length, "random")

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandCropOrPadd:
        super().set_random_state(seed, state)
        self.transform.set_random_state(state=self.R)
        return self

    def randomize(self, data: Any = None) -> None:
        """The offset is drawn per key inside :class:`CropOrPad`."""


class NormalizeLeadsd(_SignalMapTransform):
    """Dictionary :class:`NormalizeLeads`. Args: ``keys``, ``eps``, …"""

    def __init__(
        self,
        keys: KeysCollection,
        eps: float = 1e-8,
        meta_key_postfix: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, meta_key_postfix, allow_missing_keys)
        self.transform = NormalizeLeads(eps)


class SelectLeadsd(_SignalMapTransform):
    """Dictionary :class:`SelectLeads`. Args: ``keys``, ``lead_names``, ``n_leads``, …"""

    def __init__(
        self,
        keys: KeysCollection,
        lead_names: Sequence[str] | None = None,
        n_leads: int | None = None,
        meta_key_postfix: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, meta_key_postfix, allow_missing_keys)
        self.transform = SelectLeads(lead_names, n_leads)


# ---------------------------------------------------------------------------- factory


SignalCompose = ClinicalCompose
"""The signal pipeline's ``Compose`` (lets clinfuse errors through, see :class:`ClinicalCompose`)."""


def build_signal_transforms(
    cfg: SignalTransformConfig,
    keys: KeysCollection = ("signal",),
    load: bool = True,
    allow_missing_keys: bool = False,
) -> SignalCompose:
    """The signal pipeline of a run, as a MONAI ``Compose``.

    Order: load → select leads → resample → (ecg_clean) → band-pass →
    crop/pad → z-score. Filtering happens at ``target_fs`` (cheaper) and
    z-scoring over the final window's valid samples (padding stays 0).

    Args:
        cfg: the signal config.
        keys: dict keys of the signal(s).
        load: start with :class:`LoadSignald` (``d[key]`` is a path);
            ``False`` when ``d[key]`` already holds an array and
            ``d[f"{key}_meta"]`` its meta.
        allow_missing_keys: passed to every transform.

    Returns:
        a :class:`SignalCompose` (a MONAI ``Compose``) mapping a case dict to one whose ``d[key]`` is float32
        ``(n_leads, cfg.n_samples)`` (or ``None`` when missing).

    Example:
        >>> tf = build_signal_transforms(SignalTransformConfig(n_leads=12))  # doctest: +SKIP
        >>> tf({"case_id": "c1", "signal": "c1.hea"})["signal"].shape  # doctest: +SKIP
        (12, 1000)
    """
    kw: dict[str, Any] = {"allow_missing_keys": allow_missing_keys}
    steps: list[Any] = []
    if load:
        steps.append(LoadSignald(keys, **kw))
    if cfg.lead_names is not None or cfg.n_leads is not None:
        steps.append(SelectLeadsd(keys, lead_names=cfg.lead_names, n_leads=cfg.n_leads, **kw))
    steps.append(Resampled(keys, target_fs=cfg.target_fs, **kw))
    if cfg.ecg_clean is not None:
        steps.append(CleanECGd(keys, method=cfg.ecg_clean, **kw))
    if cfg.bandpass is not None:
        low, high = cfg.bandpass
        steps.append(BandpassFilterd(keys, low=low, high=high, order=cfg.filter_order, **kw))
    if cfg.crop == "random":
        steps.append(RandCropOrPadd(keys, length=cfg.n_samples, **kw))
    else:
        steps.append(CropOrPadd(keys, length=cfg.n_samples, mode=cfg.crop, **kw))
    if cfg.normalize == "zscore":
        steps.append(NormalizeLeadsd(keys, **kw))
    return SignalCompose(steps)
