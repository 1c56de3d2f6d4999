"""Load one case's medical image into a float32, channel-first array.

:func:`load_image` reads DICOM (a single file, a multi-frame file, a folder
holding one series, or a zip archive of one series as PACS exports often come), NIfTI (``.nii``/``.nii.gz``) and PNG/JPEG through MONAI's
``LoadImage`` with the matching reader (``PydicomReader``, ``NibabelReader``,
``PILReader``). It returns the array and a small metadata dict that holds no
protected health information.

Axis convention (MONAI's): the array is ``(C, X, Y)`` for 2-D and
``(C, X, Y, Z)`` for 3-D images, where X runs along the image columns (left to
right), Y along the rows (top to bottom) and Z along the slices. For a DICOM
image this is ``ds.pixel_array.T`` (``pixel_array`` is ``(rows, columns)``); a
PNG of width W and height H gives ``(C, W, H)``.

Pixel values of DICOM images are in modality units: the modality LUT
(RescaleSlope/RescaleIntercept, e.g. Hounsfield units for CT) is applied exactly
once. MONAI's ``PydicomReader`` applies RescaleSlope/RescaleIntercept itself (per
slice for a series); clinfuse only adds a ``ModalityLUTSequence`` lookup for files
that have no rescale tags. ``PhotometricInterpretation`` MONOCHROME1 is *not*
inverted (values stay in modality units); it is reported in ``meta["photometric"]``.

MONAI, pydicom and nibabel are imported inside the functions so that
``import clinfuse`` stays light.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clinfuse.errors import ClinFuseError, DataFileNotFoundError
from clinfuse.io._common import ErrorContext, has_dicm_preamble

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["IMAGE_FORMATS", "first_dicom_header", "load_image"]

IMAGE_FORMATS: tuple[str, ...] = ("dicom", "dicom_series", "dicom_zip", "nifti", "png", "jpeg")
"""Values of ``meta["format"]``."""

_SUFFIX_FORMAT: dict[str, str] = {
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".zip": "dicom_zip",
}
_SUPPORTED_TEXT = (
    "a DICOM file (with or without extension), a folder holding one DICOM series, "
    "a .zip of one DICOM series, NIfTI (.nii, .nii.gz), PNG or JPEG"
)
# PIL modes kept as they are; others are converted (alpha dropped, palettes expanded).
_PIL_KEEP_MODES = {"L", "RGB", "I", "I;16", "I;16B", "I;16L", "F"}
_PIL_CONVERT_MODES = {"1": "L", "LA": "L", "P": "RGB", "PA": "RGB", "RGBA": "RGB", "CMYK": "RGB"}
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def load_image(
    path: str | Path, *, case_id: str | None = None, field: str = "image"
) -> tuple[np.ndarray, dict[str, Any]]:
    """Load a medical image as a float32 channel-first array plus PHI-free metadata.

    Args:
        path: a DICOM file (extension optional: detected by the ``DICM``
            preamble; multi-frame files give a volume), a folder holding the
            files of one DICOM series (sorted by ImagePositionPatient projected
            on the slice normal, else by InstanceNumber, else by file name), a
            ``.zip`` archive of one DICOM series or file (unpacked to a private
            temporary folder that is removed after reading; non-DICOM members
            such as DICOMDIR are skipped), a
            NIfTI file (``.nii``/``.nii.gz``; 2-D or 3-D, a 4-D file is refused),
            or a PNG/JPEG (grayscale → 1 channel, colour → 3 channels; alpha is
            dropped and palettes expanded).
        case_id: the case the image belongs to; named in error messages.
        field: the manifest column the path came from; named in error messages.

    Returns:
        ``(array, meta)``. ``array`` is float32, ``(C, X, Y)`` for 2-D or
        ``(C, X, Y, Z)`` for 3-D images (see the module docstring for the axis
        convention); DICOM values are in modality units (e.g. HU).
        ``meta`` has ``format`` (one of :data:`IMAGE_FORMATS`),
        ``spatial_shape`` (tuple of int), ``spacing`` (tuple of float, mm, one
        per spatial axis; 1.0 where the file does not say), ``ndim_spatial``
        (2 or 3), ``n_channels``, ``modality`` (DICOM Modality such as ``"CT"``,
        else None), ``n_slices`` (1 for 2-D), ``photometric`` (DICOM
        PhotometricInterpretation, else None), ``window`` (``(center, width)``
        floats from the first DICOM WindowCenter/WindowWidth, else None) and
        ``slice_order`` (``"position"``, ``"instance_number"``, ``"filename"``
        for a series, ``"file"`` otherwise). It never holds patient identifiers.

    Raises:
        DataFileNotFoundError: ``path`` does not exist.
        ModalityLoadError: the file is unreadable, truncated or not an image,
            the folder is empty or holds several series, the extension is not
            supported, or the image has zero size or non-finite values.

    Example:
        >>> import pydicom.examples
        >>> arr, meta = load_image(pydicom.examples.get_path("ct"), case_id="c1")
        >>> arr.shape, meta["modality"], meta["format"]
        ((1, 128, 128), 'CT', 'dicom')
    """
    p = Path(path)
    where = ErrorContext(case_id, field, p)
    if not p.exists():
        raise where.error(
            "image file not found",
            "check the path; relative manifest paths resolve against the manifest's folder",
            cls=DataFileNotFoundError,
        )
    fmt = _detect_format(p, where)
    try:
        if fmt == "dicom_zip":
            array, meta = _load_dicom_zip(p, where)
        elif fmt == "dicom_series":
            array, meta = _load_dicom_series(p, where)
        elif fmt == "dicom":
            array, meta = _load_dicom_file(p, where)
        elif fmt == "nifti":
            array, meta = _load_nifti(p, where)
        else:
            array, meta = _load_pil(p, where, fmt)
    except ClinFuseError:
        raise
    except Exception as e:
        raise where.error(
            f"cannot read {fmt} image: {type(e).__name__}: {e}",
            "the file may be corrupt or truncated; re-export it",
        ) from e

    if array.size == 0:
        raise where.error(
            f"image has zero size (shape {tuple(array.shape)})", "re-export the image"
        )
    if not np.all(np.isfinite(array)):
        raise where.error("image contains NaN or infinite values", "fix or re-export the image")
    array = np.ascontiguousarray(array, dtype=np.float32)
    meta["spatial_shape"] = tuple(int(s) for s in array.shape[1:])
    meta["ndim_spatial"] = array.ndim - 1
    meta["n_channels"] = int(array.shape[0])
    meta["n_slices"] = int(array.shape[3]) if array.ndim == 4 else 1
    meta["spacing"] = tuple(float(s) for s in meta["spacing"])
    return array, meta


# ----------------------------------------------------------------------------- MONAI


@functools.cache
def _monai_loader() -> Any:
    """One shared ``LoadImage`` (building it instantiates every MONAI reader, which is noisy)."""
    from monai.transforms import LoadImage

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
        return LoadImage(ensure_channel_first=True, image_only=False, dtype=np.float32)


def _monai_load(p: Path, reader: Any) -> np.ndarray:
    """Load ``p`` through MONAI ``LoadImage`` with ``reader``; float32 channel-first numpy."""
    from monai.utils import convert_to_numpy

    image, _ = _monai_loader()(str(p), reader=reader)
    return convert_to_numpy(image, dtype=np.float32)


# ----------------------------------------------------------------------------- format


def _suffix(p: Path) -> str:
    name = p.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else p.suffix.lower()


def _detect_format(p: Path, where: ErrorContext) -> str:
    if p.is_dir():
        return "dicom_series"
    fmt = _SUFFIX_FORMAT.get(_suffix(p))
    if fmt is not None:
        return fmt
    if has_dicm_preamble(p):
        return "dicom"
    raise where.error(
        f"unsupported image format {_suffix(p) or '(no extension)'!r}: expected {_SUPPORTED_TEXT}",
        "convert the image to one of these formats, or point at the DICOM series folder",
    )


# ----------------------------------------------------------------------------- DICOM


def _read_dicom_header(p: Path, where: ErrorContext) -> Dataset:
    """Read a DICOM dataset with large values (pixel data) deferred."""
    import pydicom

    try:
        return pydicom.dcmread(p, defer_size="1 KB")
    except Exception as e:
        raise where.error(
            # pydicom's own advice (force=True) is for its API, not for this user
            f"not a readable DICOM file: {type(e).__name__}: "
            + str(e).replace(" Use force=True to force reading.", ""),
            "check that the file is a complete DICOM Part 10 file; re-export it from PACS",
            path=p,
        ) from e


def _has_pixels(ds: Dataset) -> bool:
    return any(k in ds for k in _PIXEL_DATA_KEYWORDS)


def _first_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[0] if len(value) else None
    return None if value is None else float(value)


def _dicom_window(ds: Dataset) -> tuple[float, float] | None:
    try:
        center = _first_float(ds.get("WindowCenter"))
        width = _first_float(ds.get("WindowWidth"))
    except (TypeError, ValueError):
        return None
    if center is None or width is None or width <= 0:
        return None
    return (center, width)


def _pixel_measures(ds: Dataset) -> Any:
    """The shared functional group's PixelMeasuresSequence item of an enhanced file."""
    try:
        return ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    except (AttributeError, IndexError, KeyError):
        return None


def _inplane_spacing(ds: Dataset) -> tuple[float, float]:
    """(x, y) spacing in mm: PixelSpacing is (between rows, between columns)."""
    measures = _pixel_measures(ds)
    for source in (ds, measures):
        if source is None:
            continue
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            value = source.get(keyword)
            if value is not None and len(value) == 2:
                return (float(value[1]), float(value[0]))
    return (1.0, 1.0)


def _slice_spacing(ds: Dataset) -> float:
    """Slice spacing (mm) declared by one dataset, 1.0 when it declares none."""
    measures = _pixel_measures(ds)
    for source in (measures, ds):
        if source is None:
            continue
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = source.get(keyword)
            if value not in (None, "") and float(value) > 0:
                return float(value)
    offsets = ds.get("GridFrameOffsetVector")  # RT dose
    if offsets is not None and len(offsets) > 1:
        step = float(np.median(np.abs(np.diff(np.asarray(offsets, dtype=float)))))
        if step > 0:
            return step
    return 1.0


def _dicom_meta(ds: Dataset, fmt: str) -> dict[str, Any]:
    modality = ds.get("Modality")
    photometric = ds.get("PhotometricInterpretation")
    return {
        "format": fmt,
        "modality": str(modality) if modality else None,
        "photometric": str(photometric) if photometric else None,
        "window": _dicom_window(ds),
        "slice_order": "file",
    }


def _dicom_reader(samples_per_pixel: int) -> Any:
    from monai.data import PydicomReader

    # swap_ij=False: keep pydicom's (frames, rows, cols[, samples]) order and
    # transpose here, because MONAI's swap of axes 0/1 mixes frames and rows
    # in multi-frame files.
    return PydicomReader(swap_ij=False, channel_dim=-1 if samples_per_pixel > 1 else None)


def _decode_dicom(p: Path, ds: Dataset, where: ErrorContext, reader: Any = None) -> np.ndarray:
    """Decode one DICOM file to (C, X, Y) or, for a multi-frame file, (C, X, Y, frames)."""
    if not _has_pixels(ds):
        raise where.error(
            f"DICOM object has no pixel data (SOP class {ds.get('SOPClassUID', 'unknown')})",
            "point at an image object, not a report, DICOMDIR or presentation state",
            path=p,
        )
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if rows == 0 or cols == 0:
        raise where.error(
            f"image has zero size (Rows={rows}, Columns={cols})", "re-export the image", path=p
        )
    reader = reader if reader is not None else _dicom_reader(spp)
    try:
        with warnings.catch_warnings():
            # MONAI warns that the affine is an identity when ImagePositionPatient is
            # missing; clinfuse computes spacing itself, so that warning is noise here.
            warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*")
            warnings.filterwarnings("ignore", message=".*ImagePositionPatient.*")
            array = _monai_load(p, reader)
    except Exception as e:
        raise where.error(
            f"cannot decode DICOM pixel data: {type(e).__name__}: {e}",
            "the file may be truncated or use a compression without an installed decoder; "
            "re-export it uncompressed",
            path=p,
        ) from e

    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric == "PALETTE COLOR" and spp == 1:
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(array[0].astype(np.int64), ds)  # (..., 3)
        array = np.moveaxis(rgb, -1, 0).astype(np.float32)
        spp = 3
    elif "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        # PydicomReader applies RescaleSlope/Intercept only; the LUT form is applied here.
        from pydicom.pixels import apply_modality_lut

        array = apply_modality_lut(array.astype(np.int64), ds).astype(np.float32)

    expected = (spp, frames, rows, cols) if frames > 1 else (spp, rows, cols)
    if array.shape != expected:
        raise where.error(
            f"decoded pixel array has shape {array.shape}, expected {expected} "
            "from SamplesPerPixel, NumberOfFrames, Rows and Columns",
            "the file header may be inconsistent; re-export it",
            path=p,
        )
    # (C, [F,] rows, cols) -> (C, cols, rows[, F])
    return array.transpose(0, 3, 2, 1) if frames > 1 else array.transpose(0, 2, 1)


def _load_dicom_file(p: Path, where: ErrorContext) -> tuple[np.ndarray, dict[str, Any]]:
    ds = _read_dicom_header(p, where)
    array = _decode_dicom(p, ds, where)
    meta = _dicom_meta(ds, "dicom")
    spacing = _inplane_spacing(ds)
    meta["spacing"] = (*spacing, _slice_spacing(ds)) if array.ndim == 4 else spacing
    return array, meta


def _load_dicom_zip(p: Path, where: ErrorContext) -> tuple[np.ndarray, dict[str, Any]]:
    """A zip of one series (or one file): unpacked to a private temporary folder (mode 0700,
    removed afterwards, so no copy of the files stays behind) and read as a series."""
    import tempfile

    from privacy.archive import extract_dicom_zip
    from privacy.errors import ArchiveError

    with tempfile.TemporaryDirectory(prefix="clinfuse-unzip-") as tmp:
        try:
            files = extract_dicom_zip(p, tmp)
        except ArchiveError as e:
            raise where.error(str(e).removeprefix(f"{p}: "), "re-create the archive") from e
        if not files:
            raise where.error(
                "the zip archive holds no DICOM file (no member has the DICM preamble)",
                "zip the DICOM files of one series, or point at the images themselves",
            )
        if len(files) == 1:
            array, meta = _load_dicom_file(files[0], where)
        else:
            array, meta = _load_dicom_series(Path(tmp), where)
    meta["format"] = "dicom_zip"
    return array, meta


def first_dicom_header(path: str | Path, **dcmread_kwargs: Any) -> Dataset | None:
    """The header of the first DICOM file of an image cell: the file itself, the first file of
    a series folder, or the first DICOM member of a zip (read without unpacking); ``None``
    when there is none or it cannot be read. ``dcmread_kwargs`` go to ``pydicom.dcmread``
    (default ``stop_before_pixels=True``)."""
    from contextlib import closing

    import pydicom

    from privacy.archive import is_zip, iter_dicom_members
    from privacy.errors import ArchiveError

    kwargs = {"stop_before_pixels": True, **dcmread_kwargs}
    p = Path(path)
    try:
        if is_zip(p):
            with closing(iter_dicom_members(p)) as members:
                first = next(members, None)
                return None if first is None else pydicom.dcmread(first, **kwargs)
        if p.is_dir():
            files = (f for f in sorted(p.iterdir()) if f.is_file() and has_dicm_preamble(f))
            p = next(files, p)
        if not p.is_file() or not has_dicm_preamble(p):
            return None
        return pydicom.dcmread(p, **kwargs)
    except (ArchiveError, pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError):
        return None


def _series_label(files: list[tuple[Path, Dataset]]) -> str:
    ds = files[0][1]
    number = ds.get("SeriesNumber", "?")
    modality = ds.get("Modality", "?")
    return f"series number {number} ({modality}, {len(files)} files, e.g. {files[0][0].name})"


def _order_slices(
    slices: list[tuple[Path, Dataset]], where: ErrorContext
) -> tuple[list[tuple[Path, Dataset]], str, float | None]:
    """Sort a series' slices; return them, the rule used and the slice spacing (or None)."""
    iops = [s[1].get("ImageOrientationPatient") for s in slices]
    ipps = [s[1].get("ImagePositionPatient") for s in slices]
    if all(v is not None and len(v) == 6 for v in iops) and all(
        v is not None and len(v) == 3 for v in ipps
    ):
        orient = np.asarray(iops, dtype=float)
        if not np.allclose(orient, orient[0], atol=1e-3):
            raise where.error(
                "the series' slices have different orientations (ImageOrientationPatient), "
                "so they do not form one volume",
                "point at a series of parallel slices (not a localizer), or at one file",
            )
        normal = np.cross(orient[0, :3], orient[0, 3:])
        positions = np.asarray(ipps, dtype=float) @ normal
        order = np.argsort(positions, kind="stable")
        steps = np.diff(positions[order])
        if np.any(np.abs(steps) < 1e-4):
            raise where.error(
                "several slices of the series share one position (several echoes, phases "
                "or time points in one series?)",
                "split the series into one folder per volume",
            )
        return [slices[i] for i in order], "position", float(np.median(np.abs(steps)))
    numbers = [s[1].get("InstanceNumber") for s in slices]
    if all(n not in (None, "") for n in numbers):
        order = np.argsort(np.asarray([int(n) for n in numbers]), kind="stable")
        return [slices[i] for i in order], "instance_number", None
    return sorted(slices, key=lambda s: s[0].name), "filename", None


def _load_dicom_series(folder: Path, where: ErrorContext) -> tuple[np.ndarray, dict[str, Any]]:
    entries = sorted(folder.iterdir())
    files = [f for f in entries if f.is_file() and not f.name.startswith(".")]
    subdirs = [f.name for f in entries if f.is_dir()]
    candidates = [
        f
        for f in files
        if f.name.upper() != "DICOMDIR" and (_suffix(f) == ".dcm" or has_dicm_preamble(f))
    ]
    if not candidates:
        if subdirs:
            shown = ", ".join(subdirs[:5]) + (", …" if len(subdirs) > 5 else "")
            detail = f"; it has sub-folders ({shown})"
        else:
            detail = f" ({len(files)} other files)" if files else " (the folder is empty)"
        raise where.error(
            f"no DICOM files in folder{detail}",
            "point at the folder that directly holds the DICOM files of one series",
        )
    headers = [(f, _read_dicom_header(f, where)) for f in candidates]
    images = [(f, ds) for f, ds in headers if _has_pixels(ds)]
    if not images:
        raise where.error(
            f"none of the {len(headers)} DICOM files in the folder holds pixel data",
            "point at a folder of image files",
        )
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    for f, ds in images:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    if len(series) > 1:
        labels = [_series_label(v) for v in series.values()]
        listed = "; ".join(labels[:5]) + (f"; … {len(labels) - 5} more" if len(labels) > 5 else "")
        raise where.error(
            f"folder holds {len(series)} DICOM series: {listed}",
            "point at a folder holding a single series, or at one file",
        )
    if len(images) == 1:
        f, ds = images[0]
        array = _decode_dicom(f, ds, where)
        meta = _dicom_meta(ds, "dicom_series")
        spacing = _inplane_spacing(ds)
        meta["spacing"] = (*spacing, _slice_spacing(ds)) if array.ndim == 4 else spacing
        return array, meta
    multi = [f.name for f, ds in images if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi:
        raise where.error(
            f"series mixes {len(images)} files of which {len(multi)} are multi-frame "
            f"(e.g. {multi[0]}); cannot stack them into one volume",
            "point at one multi-frame file instead of the folder",
        )
    ordered, rule, step = _order_slices(images, where)
    first_ds = ordered[0][1]
    reader = _dicom_reader(int(first_ds.get("SamplesPerPixel", 1) or 1))
    arrays: list[np.ndarray] = []
    for f, ds in ordered:
        arr = _decode_dicom(f, ds, where, reader)
        if arrays and arr.shape != arrays[0].shape:
            raise where.error(
                f"slice shape {arr.shape} differs from the first slice's {arrays[0].shape}",
                "the folder must hold one series of equally sized slices",
                path=f,
            )
        arrays.append(arr)
    volume = np.stack(arrays, axis=-1)  # (C, X, Y, Z)
    meta = _dicom_meta(first_ds, "dicom_series")
    meta["slice_order"] = rule
    meta["spacing"] = (*_inplane_spacing(first_ds), step if step else _slice_spacing(first_ds))
    return volume, meta


# ----------------------------------------------------------------------------- NIfTI


def _load_nifti(p: Path, where: ErrorContext) -> tuple[np.ndarray, dict[str, Any]]:
    import nibabel as nib
    from monai.data import NibabelReader

    try:
        header_img: Any = nib.load(str(p))  # header only; pixels are read by MONAI
        shape = tuple(int(s) for s in header_img.shape)
        zooms = tuple(float(z) for z in header_img.header.get_zooms())
    except Exception as e:
        raise where.error(
            f"not a readable NIfTI file: {type(e).__name__}: {e}",
            "check that the file is complete; re-export it",
        ) from e
    spatial = shape[:3]
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        raise where.error(
            f"NIfTI image is {len(shape)}-D with shape {shape} (a time series or several "
            "volumes); clinfuse expects one 2-D or 3-D image",
            "extract the volume you want into its own file (e.g. nibabel "
            "`img.slicer[..., 0]`) and point at it",
        )
    if len(spatial) < 2:
        raise where.error(
            f"NIfTI image is {len(shape)}-D with shape {shape}; expected a 2-D or 3-D image",
            "point at an image, not a 1-D data file",
        )
    if 0 in shape:
        raise where.error(f"image has zero size (shape {shape})", "re-export the image")
    array = _monai_load(p, NibabelReader())
    array = array.reshape((1, *spatial))  # drop trailing singleton dims
    spacing = tuple(z if z > 0 else 1.0 for z in zooms[: len(spatial)])
    meta = {
        "format": "nifti",
        "spacing": spacing,
        "modality": None,
        "photometric": None,
        "window": None,
        "slice_order": "file",
    }
    return array, meta


# ----------------------------------------------------------------------------- PNG/JPEG


def _pil_normalize_mode(image: Any) -> Any:
    """Grayscale stays one channel, colour becomes RGB (alpha dropped, palettes expanded)."""
    mode = image.mode
    if mode in _PIL_KEEP_MODES:
        return image
    if mode == "P" and "transparency" not in image.info:
        palette = image.getpalette() or []
        rgb = np.asarray(palette[: 3 * 256]).reshape(-1, 3)
        if len(rgb) and np.all(rgb[:, 0] == rgb[:, 1]) and np.all(rgb[:, 1] == rgb[:, 2]):
            return image.convert("L")
    return image.convert(_PIL_CONVERT_MODES.get(mode, "RGB"))


def _load_pil(p: Path, where: ErrorContext, fmt: str) -> tuple[np.ndarray, dict[str, Any]]:
    from monai.data import PILReader

    array = _monai_load(p, PILReader(converter=_pil_normalize_mode))  # (C, W, H)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise where.error(
            f"unexpected decoded {fmt} shape {array.shape}; expected (1 or 3, width, height)",
            "save the image as 8/16-bit grayscale or RGB",
        )
    meta = {
        "format": fmt,
        "spacing": (1.0, 1.0),
        "modality": None,
        "photometric": None,
        "window": None,
        "slice_order": "file",
    }
    return array, meta
