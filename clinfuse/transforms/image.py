"""MONAI dictionary transforms that turn an image path into a model-ready array.

A case is a dict. For each image key ``k`` the array lives at ``d[k]`` and its
metadata (see :func:`clinfuse.io.image.load_image`) at ``d[f"{k}_meta"]``. Every
transform copies the dict and never mutates its input; a key whose value is
``None`` (the modality is missing for this case) is left untouched, so the
presence of a modality stays explicit.

:func:`build_image_transforms` chains, for a :class:`ImageTransformConfig`::

    LoadClinicalImaged → EnsureChannelsd → SelectSliced → Windowd
        → Resized (anti-aliased) → NormalizeIntensityd | ScaleIntensityd → float32 numpy

and yields ``d[k]`` as float32 numpy of shape ``(C, *spatial_size)``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import (
    MapTransform,
    NormalizeIntensityd,
    Resized,
    ScaleIntensityd,
    ScaleIntensityRange,
    Transform,
)
from monai.utils import convert_to_numpy

from clinfuse.config import WINDOW_PRESETS, ImageTransformConfig
from clinfuse.errors import ModalityLoadError
from clinfuse.io.image import load_image
from clinfuse.transforms.base import ClinicalCompose

__all__ = [
    "WINDOW_PRESETS",
    "ClinicalCompose",
    "EnsureChannels",
    "EnsureChannelsd",
    "ImageTransformConfig",
    "LoadClinicalImaged",
    "SelectSlice",
    "SelectSliced",
    "Window",
    "Windowd",
    "build_image_transforms",
]

_RESIZE_MODE: dict[int, str] = {2: "bilinear", 3: "trilinear"}


# ----------------------------------------------------------------------------- array transforms


class Window(Transform):
    """Clip to ``[center - width/2, center + width/2]`` and scale that range to ``[0, 1]``.

    Args:
        center: window center in the image's units (HU for CT).
        width: window width, > 0.

    Call:
        ``img``: ``(C, *spatial)`` array → float32 numpy of the same shape.
    """

    def __init__(self, center: float, width: float) -> None:
        if width <= 0:
            raise ValueError(f"window width must be > 0, got {width}")
        self.center = float(center)
        self.width = float(width)
        self._scale = ScaleIntensityRange(
            a_min=self.center - self.width / 2,
            a_max=self.center + self.width / 2,
            b_min=0.0,
            b_max=1.0,
            clip=True,
        )

    def __call__(self, img: Any) -> np.ndarray:
        return convert_to_numpy(self._scale(img), dtype=np.float32)


class EnsureChannels(Transform):
    """Give an image a fixed number of channels.

    Args:
        channels: ``1`` averages several channels (RGB → gray); ``n > 1`` repeats a
            single channel ``n`` times; ``None`` keeps the image as it is.

    Call:
        ``img``: ``(C, *spatial)`` → ``(channels, *spatial)`` float32 numpy.

    Raises:
        ValueError: the image has several channels, but not ``channels`` of them.
    """

    def __init__(self, channels: int | None = 1) -> None:
        self.channels = channels

    def __call__(self, img: Any) -> np.ndarray:
        arr = convert_to_numpy(img, dtype=np.float32)
        c = arr.shape[0]
        if self.channels is None or c == self.channels:
            return arr
        if self.channels == 1:
            return arr.mean(axis=0, keepdims=True, dtype=np.float32)
        if c == 1:
            return np.repeat(arr, self.channels, axis=0)
        raise ValueError(f"cannot make {self.channels} channels from an image with {c} channels")


class SelectSlice(Transform):
    """Bring an image to ``ndim`` spatial dimensions.

    A ``(C, X, Y, Z)`` volume with ``ndim=2`` becomes its middle slice
    ``(C, X, Y)`` at ``Z`` index ``Z // 2``; an image that already has ``ndim``
    spatial dimensions passes through.

    Args:
        ndim: 2 or 3.

    Call:
        ``img``: ``(C, *spatial)`` → ``(array, slice_index)`` where
        ``slice_index`` is the chosen ``Z`` index or None when nothing was taken.

    Raises:
        ValueError: a 2-D image was given for ``ndim=3``.
    """

    def __init__(self, ndim: int = 2) -> None:
        self.ndim = ndim

    def __call__(self, img: Any) -> tuple[np.ndarray, int | None]:
        arr = convert_to_numpy(img, dtype=np.float32)
        have = arr.ndim - 1
        if have == self.ndim:
            return arr, None
        if have == 3 and self.ndim == 2:
            index = arr.shape[-1] // 2
            return np.ascontiguousarray(arr[..., index]), index
        raise ValueError(f"got a {have}-D image with shape {arr.shape}, need {self.ndim}-D")


# ----------------------------------------------------------------------------- dict transforms


class _ClinicalMapTransform(MapTransform):
    """Base: iterate over keys whose value is present and not None; copy, never mutate."""

    def _present_keys(self, d: Mapping[Hashable, Any]) -> list[Hashable]:
        return [k for k in self.key_iterator(d) if d[k] is not None]

    @staticmethod
    def _meta(d: Mapping[Hashable, Any], key: Hashable) -> dict[str, Any]:
        """A copy of ``d[f"{key}_meta"]`` (empty if absent), safe to update."""
        return dict(d.get(f"{key}_meta") or {})

    @staticmethod
    def _error(
        d: Mapping[Hashable, Any], key: Hashable, message: str, hint: str | None = None
    ) -> ModalityLoadError:
        case_id = d.get("case_id")
        return ModalityLoadError(
            message,
            case_id=None if case_id is None else str(case_id),
            field=str(key),
            hint=hint,
        )


class LoadClinicalImaged(_ClinicalMapTransform):
    """Load the image whose path is ``d[key]`` with :func:`~clinfuse.io.image.load_image`.

    Sets ``d[key]`` to the float32 ``(C, *spatial)`` array and ``d[f"{key}_meta"]``
    to its metadata. ``d["case_id"]``, if present, is named in errors.

    Args:
        keys: keys holding image paths.
        allow_missing_keys: don't raise when a key is absent from the dict.

    Raises:
        DataFileNotFoundError, ModalityLoadError: see :func:`load_image`.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self._present_keys(d):
            case_id = d.get("case_id")
            array, meta = load_image(
                d[key], case_id=None if case_id is None else str(case_id), field=str(key)
            )
            d[key] = array
            d[f"{key}_meta"] = meta
        return d


class Windowd(_ClinicalMapTransform):
    """Dictionary wrapper of :class:`Window`.

    Args:
        keys: image keys.
        window: ``(center, width)``, a name from :data:`WINDOW_PRESETS`, or
            ``"dicom"`` to read ``d[f"{key}_meta"]["window"]`` per case.
        allow_missing_keys: don't raise when a key is absent.

    The window used is recorded as ``meta["window_applied"]``.

    Raises:
        ModalityLoadError: ``"dicom"`` was asked and the image has no window.
    """

    def __init__(
        self,
        keys: KeysCollection,
        window: tuple[float, float] | str,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(window, str) and window != "dicom":
            if window not in WINDOW_PRESETS:
                raise ValueError(f"unknown window preset {window!r}")
            window = WINDOW_PRESETS[window]
        self.window = window

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self._present_keys(d):
            meta = self._meta(d, key)
            window = meta.get("window") if self.window == "dicom" else self.window
            if window is None:
                raise self._error(
                    d,
                    key,
                    "window 'dicom' asked, but the image has no WindowCenter/WindowWidth",
                    "choose a preset such as 'ct_soft_tissue' or give (center, width)",
                )
            center, width = (float(v) for v in window)
            d[key] = Window(center, width)(d[key])
            meta["window_applied"] = (center, width)
            d[f"{key}_meta"] = meta
        return d


class EnsureChannelsd(_ClinicalMapTransform):
    """Dictionary wrapper of :class:`EnsureChannels`; errors name the case.

    Args:
        keys: image keys.
        channels: see :class:`EnsureChannels`.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self, keys: KeysCollection, channels: int | None = 1, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = EnsureChannels(channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self._present_keys(d):
            try:
                d[key] = self.op(d[key])
            except ValueError as e:
                raise self._error(d, key, str(e), "set `channels` to 1, 3 or None") from e
        return d


class SelectSliced(_ClinicalMapTransform):
    """Dictionary wrapper of :class:`SelectSlice`; records ``meta["slice_index"]``.

    Args:
        keys: image keys.
        ndim: 2 or 3, see :class:`SelectSlice`.
        allow_missing_keys: don't raise when a key is absent.

    Raises:
        ModalityLoadError: a 2-D image was given for ``ndim=3`` (names the case).
    """

    def __init__(
        self, keys: KeysCollection, ndim: int = 2, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = SelectSlice(ndim)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self._present_keys(d):
            try:
                array, index = self.op(d[key])
            except ValueError as e:
                raise self._error(
                    d, key, str(e), "use a 3-D image (volume or series) or set ndim=2"
                ) from e
            d[key] = array
            if index is not None:
                meta = self._meta(d, key)
                meta["slice_index"] = index
                d[f"{key}_meta"] = meta
        return d


class _SkipNone(MapTransform):
    """Run a MONAI dictionary transform only on the keys whose value is not None."""

    def __init__(self, transform: MapTransform) -> None:
        super().__init__(transform.keys, allow_missing_keys=True)
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        missing = {k: d.pop(k) for k in self.keys if k in d and d[k] is None}
        if all(k not in d for k in self.keys):
            d.update(missing)
            return d
        out = dict(self.transform(d))
        out.update(missing)
        return out


class _ToFloat32Numpyd(_ClinicalMapTransform):
    """Convert ``d[key]`` (MetaTensor, tensor or array) to contiguous float32 numpy."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self._present_keys(d):
            d[key] = np.ascontiguousarray(convert_to_numpy(d[key], dtype=np.float32))
        return d


def build_image_transforms(
    cfg: ImageTransformConfig,
    keys: Sequence[str] = ("image",),
    load: bool = True,
) -> ClinicalCompose:
    """Build the image pipeline for one config.

    Args:
        cfg: the image transform config.
        keys: image keys of the case dict.
        load: start with :class:`LoadClinicalImaged` (``d[key]`` is a path);
            ``False`` when ``d[key]`` already holds a ``(C, *spatial)`` array and
            ``d[f"{key}_meta"]`` its metadata.

    Returns:
        A :class:`ClinicalCompose` (a MONAI ``Compose`` that raises clinfuse errors
        unwrapped); applied to a case dict it returns a new dict with
        ``d[key]`` float32 numpy ``(C, *cfg.spatial_size)`` (``C = cfg.channels``
        unless that is None) and ``d[f"{key}_meta"]`` the image metadata. Keys
        whose value is None stay None.

    Example:
        >>> import pydicom.examples
        >>> t = build_image_transforms(ImageTransformConfig(window="ct_soft_tissue"))
        >>> out = t({"case_id": "c1", "image": pydicom.examples.get_path("ct")})
        >>> out["image"].shape, out["image"].dtype
        ((1, 64, 64), dtype('float32'))
    """
    keys = tuple(keys)
    steps: list[Callable[..., Any]] = []
    if load:
        steps.append(LoadClinicalImaged(keys))
    steps.append(EnsureChannelsd(keys, channels=cfg.channels))
    steps.append(SelectSliced(keys, ndim=cfg.ndim))
    if cfg.window is not None:
        steps.append(Windowd(keys, window=cfg.window))
    steps.append(
        _SkipNone(
            Resized(
                keys,
                spatial_size=cfg.spatial_size,
                mode=_RESIZE_MODE[cfg.ndim],
                anti_aliasing=True,
                allow_missing_keys=True,
            )
        )
    )
    if cfg.normalize == "zscore":
        steps.append(
            _SkipNone(NormalizeIntensityd(keys, channel_wise=True, allow_missing_keys=True))
        )
    elif cfg.normalize == "minmax":
        steps.append(
            _SkipNone(
                ScaleIntensityd(
                    keys, minv=0.0, maxv=1.0, channel_wise=True, allow_missing_keys=True
                )
            )
        )
    steps.append(_ToFloat32Numpyd(keys))
    return ClinicalCompose(steps)
