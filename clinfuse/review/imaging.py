"""Images as a reviewer sees them: DICOM LUTs, window presets, slices, heat-map overlay.

Display pipeline for one 2-D slice::

    stored values ──modality LUT──► modality units (HU) ──VOI LUT / window──► display range ──► 8-bit

- a single DICOM file is decoded with pydicom; ``apply_modality_lut`` maps stored
  values to modality units (RescaleSlope/Intercept or a Modality LUT Sequence),
  then ``apply_voi_lut`` applies the file's own VOI LUT Sequence or
  WindowCenter/WindowWidth (honouring VOILUTFunction: LINEAR, LINEAR_EXACT, SIGMOID).
  A named preset or the sliders replace the file's window with another linear one,
  still through pydicom's ``apply_voi_lut``;
- a DICOM series folder, NIfTI, PNG and JPEG go through
  :func:`clinfuse.io.image.load_image` (modality units already) and the same windowing;
- MONOCHROME1 images are inverted for display (white = low values);
- colour images (RGB ultrasound, photographs) are shown as they are: windowing
  applies to grey-scale data only.

Only de-identified facts leave this module: :data:`SAFE_TAGS` lists the technical
DICOM attributes a reviewer may see; patient, study and institution attributes
are never read into the display metadata.

Axes: a slice is ``(rows, columns)``. The explanation heat map of
:mod:`clinfuse.explain` uses MONAI's ``(X, Y[, Z])`` order (X = columns), so it is
transposed and resized onto the slice here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse.errors import ClinFuseError, DataFileNotFoundError, ModalityLoadError

__all__ = [
    "SAFE_TAGS",
    "WINDOW_PRESETS",
    "DisplayImage",
    "heatmap_for_slice",
    "heatmap_overlay",
    "load_display_image",
    "render_slice",
]

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "CT soft tissue": (40.0, 400.0),
    "CT lung": (-600.0, 1500.0),
    "CT bone": (400.0, 1800.0),
    "CT brain": (40.0, 80.0),
    "CT liver": (60.0, 160.0),
    "CT mediastinum": (50.0, 350.0),
}
"""Named linear windows (center, width) in Hounsfield units. Besides these the viewer
offers ``"DICOM (file)"`` (the file's own VOI LUT / window) and ``"Auto (1-99 %)"``."""

SAFE_TAGS: tuple[str, ...] = (
    "Modality",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "PixelSpacing",
    "SliceThickness",
    "PhotometricInterpretation",
    "BitsStored",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "BodyPartExamined",
    "ImageType",
)
"""DICOM attributes shown to reviewers: technical only, no PHI (no names, dates, ids, places)."""

# attributes the VOI step needs; copied into a bare dataset, never shown
_VOI_TAGS = (
    "PhotometricInterpretation",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
)


@dataclass
class DisplayImage:
    """An image ready for display.

    Attributes:
        slices: ``(Z, rows, cols)`` float64 in modality units, or
            ``(Z, rows, cols, 3)`` for colour images.
        source: ``"dicom"``, ``"dicom_series"``, ``"dicom_zip"``, ``"nifti"``, ``"png"`` or
            ``"jpeg"``.
        has_file_voi: the file carries its own VOI LUT or window.
        default_window: (center, width) to start with.
        info: de-identified facts (only :data:`SAFE_TAGS` and array facts).
    """

    slices: np.ndarray
    source: str
    has_file_voi: bool
    default_window: tuple[float, float]
    info: dict[str, Any] = field(default_factory=dict)
    voi_ds: Any = None

    @property
    def n_slices(self) -> int:
        return int(self.slices.shape[0])

    @property
    def is_color(self) -> bool:
        return self.slices.ndim == 4

    @property
    def value_range(self) -> tuple[float, float]:
        return float(np.min(self.slices)), float(np.max(self.slices))


def _auto_window(arr: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(arr, [1.0, 99.0])
    if hi <= lo:
        lo, hi = float(np.min(arr)), float(np.max(arr))
    width = max(float(hi - lo), 1.0)
    return float(lo + hi) / 2.0, width


def _voi_dataset(ds: Any | None) -> Any:
    """A bare dataset holding only the attributes the VOI step reads (no PHI)."""
    from pydicom.dataset import Dataset

    out = Dataset()
    if ds is not None:
        for kw in _VOI_TAGS:
            if kw in ds:
                setattr(out, kw, ds[kw].value)
    out.PhotometricInterpretation = getattr(out, "PhotometricInterpretation", "MONOCHROME2")
    if "BitsStored" not in out:
        # values already in modality units as float: a wide signed 16-bit output range
        out.BitsStored = 16
        out.PixelRepresentation = 1
    out.PixelRepresentation = getattr(out, "PixelRepresentation", 1)
    return out


def _first(value: Any) -> float:
    """The first number of a possibly multi-valued DICOM attribute."""
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, MultiValue | list | tuple) else value)


def _safe_info(ds: Any) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for kw in SAFE_TAGS:
        if kw in ds:
            value = ds[kw].value
            if isinstance(value, bytes | bytearray):
                continue
            info[kw] = value if isinstance(value, str | int | float) else str(value)
    return info


def _from_dicom_file(path: Path, case_id: str | None) -> DisplayImage:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
    except Exception as e:
        raise ModalityLoadError(
            f"cannot decode the DICOM image: {type(e).__name__}: {e}",
            case_id=case_id,
            field="image",
            path=path,
            hint="the file may be corrupt or truncated; re-export it",
        ) from e
    spp = int(getattr(ds, "SamplesPerPixel", 1))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    info = _safe_info(ds)
    if spp > 1:  # colour: shown as stored (YBR converted to RGB by pydicom)
        rgb = np.asarray(stored, dtype=np.float64)
        rgb = rgb[None] if frames == 1 else rgb
        return DisplayImage(rgb, "dicom", False, (127.5, 255.0), info)
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    values = values[None] if frames == 1 else values
    voi = _voi_dataset(ds)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    window = _auto_window(values)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        window = (_first(ds.WindowCenter), max(_first(ds.WindowWidth), 1.0))
    return DisplayImage(values, "dicom", has_voi, window, info, voi)


def _from_loader(path: Path, case_id: str | None) -> DisplayImage:
    from clinfuse.io.image import first_dicom_header, load_image

    arr, meta = load_image(path, case_id=case_id)  # (C, X, Y[, Z]) in modality units
    if arr.ndim == 3:
        arr = arr[..., None]
    slices = np.transpose(arr, (3, 2, 1, 0)).astype(np.float64)  # (Z, rows=Y, cols=X, C)
    info: dict[str, Any] = {
        "Modality": meta.get("modality"),
        "spatial_shape": list(meta.get("spatial_shape", ())),
        "spacing_mm": list(meta.get("spacing", ())),
        "PhotometricInterpretation": meta.get("photometric"),
    }
    ds = None
    if meta["format"] in ("dicom_series", "dicom_zip"):
        ds = first_dicom_header(path)
        if ds is not None:
            info.update(_safe_info(ds))
    if slices.shape[-1] == 3:
        return DisplayImage(slices, meta["format"], False, (127.5, 255.0), info)
    slices = slices[..., 0]
    window = _auto_window(slices)
    has_voi = False
    if meta.get("window") is not None:
        window = (float(meta["window"][0]), max(float(meta["window"][1]), 1.0))
        has_voi = True
    voi = _voi_dataset(ds)
    if ds is not None:  # series values are already rescaled: drop the rescale range
        for kw in ("RescaleSlope", "RescaleIntercept", "ModalityLUTSequence"):
            if kw in voi:
                delattr(voi, kw)
        voi.BitsStored, voi.PixelRepresentation = 16, 1
        has_voi = has_voi or "VOILUTSequence" in voi
    return DisplayImage(slices, meta["format"], has_voi, window, info, voi)


def load_display_image(path: str | Path, *, case_id: str | None = None) -> DisplayImage:
    """Read an image for display (see the module docstring).

    Raises:
        DataFileNotFoundError: the file does not exist.
        ModalityLoadError: the file cannot be decoded.
    """
    p = Path(path)
    if not p.exists():
        raise DataFileNotFoundError("image file not found", case_id=case_id, field="image", path=p)
    from clinfuse.io._common import has_dicm_preamble

    try:
        if p.is_file() and (p.suffix.lower() in (".dcm", ".dicom") or has_dicm_preamble(p)):
            return _from_dicom_file(p, case_id)
        return _from_loader(p, case_id)
    except ClinFuseError:
        raise
    except Exception as e:
        raise ModalityLoadError(
            f"cannot read the image for display: {type(e).__name__}: {e}",
            case_id=case_id,
            field="image",
            path=p,
        ) from e


def _to_uint8(windowed: np.ndarray, voi: Any) -> np.ndarray:
    """Map the VOI output range of ``voi`` (pydicom's y_min..y_max) to 0..255."""
    bits = int(voi.BitsStored)
    if voi.get("ModalityLUTSequence"):
        y_min, y_max = 0.0, float(2 ** int(voi.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(voi.PixelRepresentation) == 0:
        y_min, y_max = 0.0, float(2**bits - 1)
    else:
        y_min, y_max = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if "RescaleSlope" in voi and "RescaleIntercept" in voi:
        s, i = float(voi.RescaleSlope), float(voi.RescaleIntercept)
        y_min, y_max = sorted((y_min * s + i, y_max * s + i))
    if "VOILUTSequence" in voi and "WindowCenter" not in voi:
        # a VOI LUT's output spans its own bit depth (LUTDescriptor[2])
        y_min, y_max = 0.0, float(2 ** int(voi.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    scaled = (np.asarray(windowed, dtype=np.float64) - y_min) / max(y_max - y_min, 1e-12)
    return np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)


def render_slice(
    image: DisplayImage, index: int = 0, window: tuple[float, float] | None = None
) -> np.ndarray:
    """One slice as 8-bit grey ``(rows, cols)`` (or RGB ``(rows, cols, 3)`` for colour).

    Args:
        image: from :func:`load_display_image`.
        index: slice (frame) number, clipped to the volume.
        window: (center, width) of a linear window in modality units; None uses the
            file's own VOI LUT / window when it has one, else ``image.default_window``.
    """
    from pydicom.pixels import apply_voi_lut

    k = int(np.clip(index, 0, image.n_slices - 1))
    arr = image.slices[k]
    if image.is_color:
        return np.clip(arr, 0, 255).astype(np.uint8)
    voi = image.voi_ds if image.voi_ds is not None else _voi_dataset(None)
    if window is None and image.has_file_voi:
        ds = voi
    else:
        center, width = window if window is not None else image.default_window
        ds = voi.copy()
        for kw in ("VOILUTSequence", "VOILUTFunction"):
            if kw in ds:
                delattr(ds, kw)
        ds.WindowCenter, ds.WindowWidth = float(center), max(float(width), 1.0)
    out = _to_uint8(apply_voi_lut(arr.copy(), ds, prefer_lut=True), ds)
    if str(voi.PhotometricInterpretation).upper() == "MONOCHROME1":
        out = 255 - out
    return out


def _resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from scipy.ndimage import zoom

    factors = (shape[0] / a.shape[0], shape[1] / a.shape[1])
    out = zoom(a, factors, order=1)
    return np.asarray(out[: shape[0], : shape[1]], dtype=np.float64)


def heatmap_for_slice(
    heatmap: np.ndarray, index: int, n_slices: int, shape: tuple[int, int]
) -> np.ndarray | None:
    """The explanation heat map laid onto slice ``index`` of the displayed image.

    Args:
        heatmap: ``(X, Y)`` or ``(X, Y, Z)`` from the cached explanation.
        index: displayed slice; n_slices: slices of the displayed image.
        shape: (rows, cols) of the displayed slice.

    Returns:
        ``(rows, cols)`` values, or None when the heat map does not cover this slice
        (a 2-D model sees only the middle slice ``n_slices // 2`` of a volume).
    """
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim == 2:
        if n_slices > 1 and index != n_slices // 2:
            return None
        plane = h.T
    elif h.ndim == 3:
        z = (
            round(index * (h.shape[2] - 1) / max(n_slices - 1, 1))
            if n_slices > 1
            else h.shape[2] // 2
        )
        plane = h[:, :, int(z)].T
    else:
        return None
    return _resize(plane, shape)


def heatmap_overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a signed heat map onto an 8-bit image: red raises, blue lowers the risk.

    Args:
        gray: ``(rows, cols)`` uint8 or ``(rows, cols, 3)``.
        heat: ``(rows, cols)`` signed attributions.
        alpha: opacity at the strongest attribution.

    Returns:
        ``(rows, cols, 3)`` uint8.
    """
    base = np.repeat(gray[..., None], 3, axis=2) if gray.ndim == 2 else gray
    base = base.astype(np.float64)
    scale = float(np.max(np.abs(heat))) or 1.0
    v = np.clip(heat / scale, -1.0, 1.0)
    color = np.zeros_like(base)
    color[..., 0] = np.where(v > 0, 255.0, 0.0)
    color[..., 2] = np.where(v < 0, 255.0, 0.0)
    a = (alpha * np.abs(v))[..., None]
    return np.clip(base * (1 - a) + color * a, 0, 255).astype(np.uint8)
