"""Clean Pixel Data [113101]: remove text burned into DICOM pixels.

Ultrasound, secondary captures and scanned documents often carry the patient's name, id,
birth date or the institution *in the pixels*, where header de-identification cannot reach.
:class:`PixelCleaner` is the pixel-cleaning step of :class:`privacy.dicom.DicomOptions`
(``clean_pixel_data``); it blacks out text regions found two ways:

* **Region rules** (``rules``): fixed rectangles for a known device layout, matched on
  header values (Modality, Manufacturer, ManufacturerModelName, Rows, Columns, ...) — the
  approach of RSNA CTP's DicomPixelAnonymizer. A rules file is TOML or JSON::

      [[rule]]
      name = "ACME US banner"
      match = { Modality = "US", Manufacturer = "ACME*", Rows = "480", Columns = "640" }
      boxes = [[0, 0, 640, 48]]        # left, top, width, height in pixels

* **OCR** (the Tesseract engine through ``pytesseract``): every frame's text is read, on the
  first frame and on the per-pixel maximum over frames (a static overlay shows sharply there).
  Mode ``all-text`` masks every word found; mode ``identifiers`` masks only the words that the
  note de-identifier (:class:`privacy.text.TextDeidentifier`) flags, with the file's own
  header values (patient name, ids, birth date, accession number, ...) as a deny-list.

After masking, the cleaned frames are read again and any text left (``all-text``: a word of at
least two letters or digits read with confidence ≥ ``verify_confidence``; ``identifiers``: any
identifier) is masked in a further pass; what still remains after ``max_passes`` raises
:class:`PixelCleaningError`, which the de-identifier turns into a quarantined file. Masked
pixels take the darkest value of the image (the lowest stored value; the highest for
MONOCHROME1; black for colour). The cleaned pixels are written uncompressed (colour as RGB),
BurnedInAnnotation becomes ``NO``; pixels outside the masked boxes are unchanged.

OCR is not perfect: text that Tesseract cannot read (tiny, rotated, low contrast, on top of
bright anatomy) is not found. ``all-text`` plus region rules for known devices is the safe
choice; ``identifiers`` keeps clinical annotations (gain, depth, measurements) readable.

>>> cleaner = PixelCleaner("all-text")  # doctest: +SKIP
>>> report = cleaner(dataset)  # doctest: +SKIP
>>> report.boxes, report.masked_fraction  # doctest: +SKIP
(7, 0.031)
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset

from privacy.dicom import deny_list, dicom_identifiers
from privacy.errors import DicomDeidError

__all__ = [
    "Box",
    "OCRWord",
    "PixelCleaner",
    "PixelCleaningError",
    "PixelCleaningReport",
    "RegionRule",
    "TesseractOCR",
    "load_region_rules",
    "read_frames",
]

PixelMode = Literal["all-text", "identifiers", "regions"]
PIXEL_MODES: tuple[str, ...] = ("all-text", "identifiers", "regions")


class PixelCleaningError(DicomDeidError):
    """Burned-in text cannot be removed (or verified removed) from a file's pixels."""


@dataclass(frozen=True)
class Box:
    """A rectangle in pixel coordinates: ``left``, ``top``, ``width``, ``height``."""

    left: int
    top: int
    width: int
    height: int

    def padded(self, margin: int, rows: int, columns: int) -> tuple[slice, slice]:
        """Row and column slices of the box grown by ``margin``, clipped to the image."""
        r0 = max(0, self.top - margin)
        r1 = min(rows, self.top + self.height + margin)
        c0 = max(0, self.left - margin)
        c1 = min(columns, self.left + self.width + margin)
        return slice(r0, r1), slice(c0, c1)


@dataclass(frozen=True)
class OCRWord:
    """One word read by OCR, in the original image's pixel coordinates.

    Attributes:
        text: the word as read.
        confidence: Tesseract's confidence, 0–100.
        box: where it is.
        line: identifies the line the word is on (words of one line share it).
    """

    text: str
    confidence: float
    box: Box
    line: tuple[int, int, int]

    @property
    def alnum(self) -> int:
        """Number of letters and digits in the word."""
        return sum(ch.isalnum() for ch in self.text)


OCR = Callable[[np.ndarray], list[OCRWord]]
"""An OCR engine: a 2-D uint8 image (text bright or dark) → the words it reads."""


class TesseractOCR:
    """The Tesseract OCR engine (Debian/Ubuntu: ``apt-get install tesseract-ocr``).

    Args:
        cmd: the ``tesseract`` executable; default: ``$TESSERACT_CMD`` or ``tesseract`` on PATH.
        scales: upscaling factors before OCR; the image is read at each and the words are
            pooled (small overlay fonts read better larger, and each scale misses different
            words); default: 3 and 4 for images up to 512 pixels on their long side, else 2
            and 3.
        psm: Tesseract page segmentation mode (11 = sparse text: overlays are scattered
            words, not a page).
        lang: Tesseract language(s).
        workers: Tesseract processes run at once (default: one per CPU core).

    Raises:
        PixelCleaningError: pytesseract or the Tesseract executable is missing.
    """

    def __init__(
        self,
        cmd: str | None = None,
        *,
        scales: Sequence[int] | None = None,
        psm: int = 11,
        lang: str = "eng",
        workers: int | None = None,
    ) -> None:
        try:
            import pytesseract
        except ImportError as e:
            raise PixelCleaningError(
                "OCR-based pixel cleaning needs pytesseract: pip install 'clinfuse[deid]'"
            ) from e
        cmd = cmd or os.environ.get("TESSERACT_CMD") or "tesseract"
        found = shutil.which(cmd)
        if found is None:
            raise PixelCleaningError(
                f"the Tesseract OCR engine ({cmd!r}) is not installed: "
                "apt-get install tesseract-ocr (macOS: brew install tesseract), or set "
                "TESSERACT_CMD to its path; region rules alone need no OCR"
            )
        self._tesseract = pytesseract
        self.cmd = found
        self.scales = tuple(scales) if scales else None
        self.workers = workers
        self.psm = psm
        self.lang = lang

    def __call__(self, image: np.ndarray) -> list[OCRWord]:
        """Words in a 2-D uint8 image, in the image's own pixel coordinates."""
        return self.read_many([image])[0]

    def read_many(self, images: Sequence[np.ndarray]) -> list[list[OCRWord]]:
        """The words of each image; every (image, scale) reading runs in its own Tesseract
        process, ``workers`` at a time."""
        from concurrent.futures import ThreadPoolExecutor

        from PIL import Image, ImageOps

        self._tesseract.pytesseract.tesseract_cmd = self.cmd
        jobs: list[tuple[int, Any, int]] = []
        for i, image in enumerate(images):
            rows, columns = image.shape
            base = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
            if float(image.mean()) < 128:  # bright text on dark: Tesseract reads dark on light
                base = ImageOps.invert(base)
            for scale in self.scales or ((3, 4) if max(rows, columns) <= 512 else (2, 3)):
                pil = base
                if scale != 1:
                    pil = base.resize((columns * scale, rows * scale), Image.Resampling.LANCZOS)
                jobs.append((i, pil, scale))
        workers = max(1, min(len(jobs), self.workers or os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            readings = list(pool.map(lambda job: self._read(job[1], job[2]), jobs))
        out: list[list[OCRWord]] = [[] for _ in images]
        for (i, _, _), words in zip(jobs, readings, strict=True):
            out[i] += words
        return out

    def _read(self, pil: Any, scale: int) -> list[OCRWord]:
        try:
            data = self._tesseract.image_to_data(
                pil,
                lang=self.lang,
                config=f"--psm {self.psm}",
                output_type=self._tesseract.Output.DICT,
            )
        except self._tesseract.TesseractError as e:
            raise PixelCleaningError(f"Tesseract failed: {e}") from e
        words = []
        for i, text in enumerate(data["text"]):
            text = str(text).strip()
            if not text:
                continue
            left, top = int(data["left"][i]) // scale, int(data["top"][i]) // scale
            width = -(-int(data["width"][i]) // scale) + 1
            height = -(-int(data["height"][i]) // scale) + 1
            line = (
                scale,
                int(data["block_num"][i]),
                int(data["par_num"][i]) * 10_000 + int(data["line_num"][i]),
            )
            words.append(OCRWord(text, float(data["conf"][i]), Box(left, top, width, height), line))
        return words


@dataclass(frozen=True)
class RegionRule:
    """Fixed rectangles to mask on files whose header matches.

    Attributes:
        match: DICOM keyword → expected value; compared as text, case-insensitive, with
            shell wildcards (``ACME*``). Every entry must match; a missing attribute does not.
        boxes: the rectangles to mask.
        name: a label for the report.
    """

    match: Mapping[str, str]
    boxes: tuple[Box, ...]
    name: str = ""

    def matches(self, ds: Dataset) -> bool:
        """Whether every ``match`` entry equals the dataset's value."""
        for keyword, expected in self.match.items():
            elem = ds.data_element(keyword) if keyword in ds else None
            if elem is None:
                return False
            actual = str(elem.value).strip().lower()
            if not fnmatch.fnmatchcase(actual, str(expected).strip().lower()):
                return False
        return True


def load_region_rules(path: str | Path) -> list[RegionRule]:
    """Read region rules from a TOML or JSON file (see the module docstring for the format).

    Raises:
        PixelCleaningError: the file is missing, not TOML/JSON, or a rule is malformed (the
            message names the rule and the field).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PixelCleaningError(f"{path}: cannot read the region rules: {e.strerror or e}") from e
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(raw)
        else:
            doc = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise PixelCleaningError(f"{path}: not a valid rules file ({e})") from e
    entries = doc.get("rule") if isinstance(doc, dict) else doc
    if not isinstance(entries, list) or not entries:
        raise PixelCleaningError(
            f"{path}: no rules found; write one [[rule]] table per device layout "
            "(match = {{...}}, boxes = [[left, top, width, height], ...])"
        )
    rules = []
    for i, entry in enumerate(entries, 1):
        label = f"{path}: rule {i}"
        if not isinstance(entry, dict):
            raise PixelCleaningError(f"{label} is not a table")
        label = f"{path}: rule {i} ({entry.get('name', 'unnamed')})"
        match = entry.get("match")
        if not isinstance(match, dict) or not match:
            raise PixelCleaningError(
                f"{label}: 'match' must name at least one DICOM keyword, e.g. "
                'match = {{ Modality = "US", Manufacturer = "ACME" }}'
            )
        from pydicom.datadict import tag_for_keyword

        unknown = [k for k in match if tag_for_keyword(k) is None]
        if unknown:
            raise PixelCleaningError(f"{label}: unknown DICOM keyword(s) in 'match': {unknown}")
        boxes = []
        for b in entry.get("boxes") or []:
            ok = isinstance(b, list) and len(b) == 4 and all(isinstance(x, int) for x in b)
            if not ok or b[2] <= 0 or b[3] <= 0 or b[0] < 0 or b[1] < 0:
                raise PixelCleaningError(
                    f"{label}: box {b!r} must be [left, top, width, height] "
                    "with integer pixels, width and height > 0"
                )
            boxes.append(Box(*b))
        if not boxes:
            raise PixelCleaningError(f"{label}: 'boxes' is empty")
        rules.append(
            RegionRule(
                {k: str(v) for k, v in match.items()}, tuple(boxes), str(entry.get("name", ""))
            )
        )
    return rules


@dataclass
class PixelCleaningReport:
    """What :class:`PixelCleaner` did to one dataset (no text that was read is kept).

    Attributes:
        mode: the cleaning mode.
        frames: frames cleaned.
        boxes: rectangles masked (rules and OCR, after merging passes).
        rule_names: the region rules that matched.
        passes: OCR passes run (the last one found nothing left to mask).
        masked_fraction: share of each frame's pixels masked.
        photometric: the photometric interpretation written (colour becomes ``RGB``).
    """

    mode: str
    frames: int = 0
    boxes: int = 0
    rule_names: list[str] = field(default_factory=list)
    passes: int = 0
    masked_fraction: float = 0.0
    photometric: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "mode": self.mode,
            "frames": self.frames,
            "boxes": self.boxes,
            "rules": self.rule_names,
            "passes": self.passes,
            "masked_fraction": round(self.masked_fraction, 5),
            "photometric": self.photometric,
        }


def read_frames(ds: Dataset) -> tuple[np.ndarray, str]:
    """The pixel data as ``(frames, rows, columns[, 3])`` and the photometric interpretation
    it is in (YBR and palette colour become ``RGB``).

    Raises:
        PixelCleaningError: no pixel data, or pixel data pydicom cannot decode here.
    """
    from pydicom.pixels import apply_color_lut, pixel_array

    if "PixelData" not in ds:
        raise PixelCleaningError("the file has no pixel data to clean")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        arr = pixel_array(ds)
    except Exception as e:  # pydicom raises many kinds for missing or failing decoders
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise PixelCleaningError(
            f"cannot decode the pixel data ({name}): {e}; install a decoder for it "
            "(pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg) or decompress the "
            "file first (e.g. gdcmconv --raw)"
        ) from e
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        if arr.dtype != np.uint8:  # 16-bit palette entries: keep the top byte
            arr = (arr >> 8).astype(np.uint8)
        photometric, samples = "RGB", 3
    elif samples == 3:
        photometric = "RGB"  # pydicom returns YBR data converted to RGB
    if frames == 1:
        arr = arr[None]
    expected = 4 if samples == 3 else 3
    if arr.ndim != expected:
        raise PixelCleaningError(
            f"unexpected pixel array shape {arr.shape} for {frames} frame(s) of "
            f"{samples} sample(s) per pixel"
        )
    return arr, photometric


def _render(frame: np.ndarray) -> np.ndarray:
    """A frame as 2-D uint8 for OCR (colour: brightest channel, so coloured text stays bright)."""
    gray = frame.max(axis=-1) if frame.ndim == 3 else frame
    gray = gray.astype(np.float64)
    lo, hi = float(gray.min()), float(gray.max())
    if hi <= lo:
        return np.zeros(gray.shape, np.uint8)
    return np.round((gray - lo) * (255.0 / (hi - lo))).astype(np.uint8)


class PixelCleaner:
    """Remove burned-in text from a DICOM dataset's pixels, in place.

    Args:
        mode: ``all-text`` (mask every word OCR reads), ``identifiers`` (mask words the note
            de-identifier flags, with the header's identifying values as a deny-list) or
            ``regions`` (region rules only, no OCR; a file no rule matches is refused).
        rules: region rules; their boxes are masked in every mode when they match.
        ocr: the OCR engine; default: :class:`TesseractOCR` (created here, so a missing
            engine fails before any file is touched). Not used in ``regions`` mode.
        text_deidentifier: for ``identifiers`` mode; default: tag mode, no presidio.
        margin: pixels added around every box.
        min_confidence: in ``all-text`` mode, words read with a lower confidence are taken
            for texture (speckle, edges) and not masked. OCR reads each image twice: as
            rendered and with only its bright pixels; words of the rendered view need 30 more
            (at most 90), since texture read as words comes from there.
        verify_confidence: in ``all-text`` mode, a word read after masking with at least
            this confidence (same rule for the rendered view) and two letters or digits is
            text left behind.
        max_passes: OCR passes before giving up on text that keeps being read.

    Calling the cleaner returns a :class:`PixelCleaningReport` and raises
    :class:`PixelCleaningError` when the pixels cannot be decoded or text remains.
    """

    def __init__(
        self,
        mode: PixelMode = "all-text",
        *,
        rules: Sequence[RegionRule] = (),
        ocr: OCR | None = None,
        text_deidentifier: Any = None,
        margin: int = 2,
        min_confidence: float = 30.0,
        verify_confidence: float = 50.0,
        max_passes: int = 3,
    ) -> None:
        if mode not in PIXEL_MODES:
            raise ValueError(f"mode must be one of {PIXEL_MODES}, got {mode!r}")
        if mode == "regions" and not rules:
            raise PixelCleaningError("mode 'regions' needs at least one region rule")
        self.mode = mode
        self.rules = list(rules)
        self.ocr: OCR | None = None
        if mode != "regions":
            self.ocr = ocr or TesseractOCR()
        if mode == "identifiers" and text_deidentifier is None:
            from privacy.text import TextDeidentifier

            text_deidentifier = TextDeidentifier(mode="tag", use_presidio=False)
        self.text_deidentifier = text_deidentifier
        self.margin = margin
        self.min_confidence = min_confidence
        self.verify_confidence = verify_confidence
        self.max_passes = max(1, max_passes)

    def __call__(self, ds: Dataset) -> PixelCleaningReport:
        report = PixelCleaningReport(mode=self.mode)
        arr, photometric = read_frames(ds)
        rows, columns = arr.shape[1], arr.shape[2]
        mask = np.zeros((rows, columns), dtype=bool)

        matched = [r for r in self.rules if r.matches(ds)]
        report.rule_names = [r.name or f"rule {self.rules.index(r) + 1}" for r in matched]
        boxes = [b for r in matched for b in r.boxes]
        if self.mode == "regions" and not matched:
            raise PixelCleaningError(
                "no region rule matches this file "
                f"(Modality {ds.get('Modality', '?')}, Manufacturer {ds.get('Manufacturer', '?')!s}, "
                f"model {ds.get('ManufacturerModelName', '?')!s}, {rows}×{columns}); add a rule "
                "for this layout or clean with OCR"
            )
        for box in boxes:
            mask[box.padded(self.margin, rows, columns)] = True

        if self.ocr is not None:
            deny = deny_list(dicom_identifiers(ds)) if self.mode == "identifiers" else {}
            for n in range(1, self.max_passes + 2):  # the last pass only verifies
                report.passes = n
                found = self._text_boxes(self._masked(arr, mask, photometric), deny, final=n > 1)
                fresh = [b for b in found if not mask[b.padded(0, rows, columns)].all()]
                if not fresh:
                    break
                if n > self.max_passes:
                    raise PixelCleaningError(
                        f"text is still read in the pixels after {self.max_passes} cleaning "
                        f"pass(es) ({len(fresh)} region(s)); mask this layout with a region rule"
                    )
                boxes += fresh
                for box in fresh:
                    mask[box.padded(self.margin, rows, columns)] = True

        cleaned = self._masked(arr, mask, photometric)
        bits_stored = 8 if photometric == "RGB" else int(ds.get("BitsStored", 8 * arr.itemsize))
        try:
            ds.set_pixel_data(
                cleaned if arr.shape[0] > 1 else cleaned[0],
                photometric,
                bits_stored,
                generate_instance_uid=False,
            )
        except (ValueError, NotImplementedError) as e:
            raise PixelCleaningError(f"cannot write the cleaned pixel data: {e}") from e
        if photometric == "RGB":
            for keyword in _PALETTE_KEYWORDS:
                ds.pop(keyword, None)
        ds.BurnedInAnnotation = "NO"
        report.frames = int(arr.shape[0])
        report.boxes = len(boxes)
        report.masked_fraction = float(mask.mean())
        report.photometric = photometric
        return report

    # ----------------------------------------------------------------- internals
    def _masked(self, arr: np.ndarray, mask: np.ndarray, photometric: str) -> np.ndarray:
        if not mask.any():
            return arr
        out = arr.copy()
        if photometric == "RGB":
            fill: Any = 0
        elif photometric == "MONOCHROME1":
            fill = arr.max()
        else:
            fill = arr.min()
        out[:, mask] = fill
        return out

    def _views(self, arr: np.ndarray) -> list[tuple[np.ndarray, bool]]:
        """What OCR reads: the first frame (and the maximum over frames), each as rendered
        and with only its bright pixels kept (overlay text is near-white or saturated
        colour; thresholding separates it from coloured banners and anatomy)."""
        frames = [arr[0]] if arr.shape[0] == 1 else [arr[0], arr.max(axis=0)]
        views = []
        for frame in frames:
            gray = _render(frame)
            views += [(gray, False), (np.where(gray >= _BRIGHT, 255, 0).astype(np.uint8), True)]
        return views

    def _text_boxes(
        self, arr: np.ndarray, deny: Mapping[str, Sequence[str]], *, final: bool
    ) -> list[Box]:
        assert self.ocr is not None
        views = self._views(arr)
        read_many = getattr(self.ocr, "read_many", None)
        images = [view for view, _ in views]
        readings = read_many(images) if read_many else [self.ocr(v) for v in images]
        boxes: list[Box] = []
        for (view, bright), words in zip(views, readings, strict=True):
            if self.mode == "all-text":
                # a tall "word" is usually anatomy read as text, unless read clearly: a large
                # banner name on a small ultrasound frame is what must not get through
                max_height = max(_MIN_TEXT_HEIGHT, _TEXT_HEIGHT * view.shape[0])
                words = [
                    w
                    for w in words
                    if w.box.height <= max_height
                    or (w.confidence >= _TALL_WORD_CONFIDENCE and w.alnum >= 3)
                ]
                # texture (speckle, noise) read as words comes from the rendered view, at
                # low confidence; overlay text is in the bright view too
                base = self.verify_confidence if final else self.min_confidence
                min_conf = base if bright else base + _RENDERED_EXTRA
                min_conf = min(min_conf, 90.0)
                min_alnum = 2 if final else 1
                boxes += [w.box for w in words if w.alnum >= min_alnum and w.confidence >= min_conf]
            else:
                boxes += self._identifier_boxes(words, deny)
        return boxes

    def _identifier_boxes(
        self, words: Iterable[OCRWord], deny: Mapping[str, Sequence[str]]
    ) -> list[Box]:
        from privacy.text import PatientContext

        lines: dict[tuple[int, int, int], list[OCRWord]] = {}
        for w in words:
            lines.setdefault(w.line, []).append(w)
        context = PatientContext(deny=deny)
        boxes = []
        for line_words in lines.values():
            text, starts = "", []
            for w in line_words:
                starts.append(len(text))
                text += w.text + " "
            spans = self.text_deidentifier.analyze(text, context)
            for w, start in zip(line_words, starts, strict=True):
                end = start + len(w.text)
                if any(s.start < end and start < s.end for s in spans):
                    boxes.append(w.box)
        return boxes


_TEXT_HEIGHT = 0.1
_MIN_TEXT_HEIGHT = 24
"""In ``all-text`` mode a "word" taller than this share of the rows (and than 24 pixels) is
anatomy, not text, unless read with :data:`_TALL_WORD_CONFIDENCE`; in ``identifiers`` mode
a word is masked whatever its height when it matches an identifier (a specific reading)."""
_TALL_WORD_CONFIDENCE = 80.0

_RENDERED_EXTRA = 30.0
"""Extra confidence asked of words read in the rendered (not thresholded) view."""

_BRIGHT = 160
"""Threshold (of 255) of the bright-pixels view OCR reads besides the rendered frame."""

_PALETTE_KEYWORDS = (
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "PaletteColorLookupTableUID",
)
