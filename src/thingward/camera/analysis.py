"""Motion analysis of camera snapshots: decode with bounds, compare with the previous frame, mark the region.

Pure: bytes in, values and bytes out; no files, no database. The decoder refuses before it decompresses
anything it cannot bound: the format must be the one declared (JPEG or PNG), the header's dimensions must
be within `AnalysisLimits.max_pixels` (a decompression bomb is a small file with huge dimensions), and a
truncated or corrupt file is refused rather than half-decoded.

The comparison works on a grayscale copy reduced by block means (sensor noise and JPEG artefacts average
out), marks the cells whose brightness moved more than `pixel_threshold`, and reports the changed fraction
and the bounding box of the changed cells in the snapshot's own pixels.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, UnidentifiedImageError

from thingward.errors import InvalidInputError

__all__ = [
    "CONTENT_TYPES",
    "AnalysisLimits",
    "DecodedImage",
    "ImageRejectedError",
    "MotionAnalysis",
    "Region",
    "annotate",
    "compare",
    "decode_image",
]

# What a camera may upload, and the format Pillow must find behind each declared type.
CONTENT_TYPES: dict[str, str] = {"image/jpeg": "JPEG", "image/png": "PNG"}

GrayFrame = npt.NDArray[np.float32]


class ImageRejectedError(InvalidInputError):
    """An upload that is not a usable image: wrong format, too large, a decompression bomb, or corrupt."""


@dataclass(frozen=True)
class AnalysisLimits:
    # A 4K frame is 8.3 MP; twice that is room for any camera, and bounds what a bomb can make us allocate.
    max_pixels: int = 16_777_216
    max_side: int = 8192
    # A cell of the reduced grid counts as changed when its mean brightness moved more than this (0-255).
    pixel_threshold: float = 25.0
    # Motion is reported when at least this fraction of the frame changed.
    min_changed_fraction: float = 0.005
    # The reduced grid's longest side: enough to place a person, small enough to compare in a millisecond.
    analysis_side: int = 320


@dataclass(frozen=True)
class DecodedImage:
    format: str  # JPEG or PNG
    width: int
    height: int
    gray: GrayFrame  # full resolution, 0-255
    rgb: Image.Image


@dataclass(frozen=True)
class Region:
    x: int
    y: int
    width: int
    height: int

    def to_dict(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}


@dataclass(frozen=True)
class MotionAnalysis:
    motion: bool
    changed_fraction: float
    region: Region | None
    note: str = ""


def decode_image(data: bytes, content_type: str, limits: AnalysisLimits | None = None) -> DecodedImage:
    """Decode an uploaded snapshot, or raise ImageRejectedError saying what is wrong with it."""
    limits = limits or AnalysisLimits()
    expected = CONTENT_TYPES.get(content_type)
    if expected is None:
        raise ImageRejectedError(f"content type {content_type!r} is not accepted: upload {' or '.join(CONTENT_TYPES)}")
    if not data:
        raise ImageRejectedError("the upload is empty: send the image bytes")
    try:
        # Pillow's own bomb check is a process-wide setting that warns before it refuses; ours is below,
        # from the header, before a single pixel is decompressed.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[expected])
            width, height = image.size
            if width < 1 or height < 1 or width > limits.max_side or height > limits.max_side:
                raise ImageRejectedError(
                    f"the image is {width}x{height} pixels: each side must be 1 to {limits.max_side}"
                )
            if width * height > limits.max_pixels:
                raise ImageRejectedError(
                    f"the image claims {width}x{height} = {width * height} pixels, over the limit of "
                    f"{limits.max_pixels} (a decompression bomb, or a camera set to a higher resolution)"
                )
            image.load()
            rgb = image.convert("RGB")
    except ImageRejectedError:
        raise
    except UnidentifiedImageError as e:
        raise ImageRejectedError(
            f"the upload is not a {expected} image, as its content type {content_type} says it is"
        ) from e
    except Image.DecompressionBombError as e:
        raise ImageRejectedError(f"the image is refused as a decompression bomb: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageRejectedError(f"the {expected} image is corrupt or truncated: {e}") from e
    gray = np.asarray(rgb.convert("L"), dtype=np.float32)
    return DecodedImage(format=expected, width=width, height=height, gray=gray, rgb=rgb)


def _reduce(gray: GrayFrame, factor: int) -> GrayFrame:
    """Block means of `factor`x`factor` cells (the ragged right and bottom edges are cropped)."""
    rows, cols = gray.shape[0] // factor, gray.shape[1] // factor
    if factor == 1:
        return gray
    cropped = gray[: rows * factor, : cols * factor]
    reduced: GrayFrame = cropped.reshape(rows, factor, cols, factor).mean(axis=(1, 3), dtype=np.float32)
    return reduced


def compare(previous: GrayFrame | None, current: GrayFrame, limits: AnalysisLimits | None = None) -> MotionAnalysis:
    """How much of `current` changed since `previous`, and where (in `current`'s pixels)."""
    limits = limits or AnalysisLimits()
    if previous is None:
        return MotionAnalysis(False, 0.0, None, "the camera's first snapshot: kept as the reference")
    if previous.shape != current.shape:
        return MotionAnalysis(
            False,
            0.0,
            None,
            f"the resolution changed from {previous.shape[1]}x{previous.shape[0]} to "
            f"{current.shape[1]}x{current.shape[0]}: this snapshot is the new reference",
        )
    height, width = current.shape
    factor = max(1, math.ceil(max(height, width) / limits.analysis_side))
    if height < factor or width < factor:
        factor = 1
    # Block means are linear: the mean of the difference is the difference of the means, at half the work.
    difference = np.abs(_reduce(current - previous, factor))
    changed = difference > limits.pixel_threshold
    fraction = float(changed.mean()) if changed.size else 0.0
    if not changed.any():
        return MotionAnalysis(False, 0.0, None)
    rows = np.flatnonzero(changed.any(axis=1))
    cols = np.flatnonzero(changed.any(axis=0))
    x0, y0 = int(cols[0]) * factor, int(rows[0]) * factor
    x1, y1 = min(width, (int(cols[-1]) + 1) * factor), min(height, (int(rows[-1]) + 1) * factor)
    region = Region(x0, y0, x1 - x0, y1 - y0)
    return MotionAnalysis(fraction >= limits.min_changed_fraction, round(fraction, 6), region)


def annotate(image: Image.Image, region: Region | None, quality: int = 85) -> bytes:
    """The snapshot as a JPEG with the changed region outlined in red."""
    marked = image.copy()
    if region is not None:
        draw = ImageDraw.Draw(marked)
        line = max(2, min(marked.size) // 120)
        box = (region.x, region.y, region.x + region.width - 1, region.y + region.height - 1)
        draw.rectangle(box, outline=(230, 30, 30), width=line)
    out = io.BytesIO()
    marked.save(out, format="JPEG", quality=quality)
    return out.getvalue()
