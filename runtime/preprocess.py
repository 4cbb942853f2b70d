"""Real digit images -> MNIST-like 28x28 float32 inputs.

MNIST's own normalisation: the digit, white on black, is scaled to fit a 20x20 box keeping its
aspect ratio, then placed in a 28x28 field so that its centre of mass is at the centre.
Photos and scans are usually dark ink on light paper, any size, off-centre: we invert when
the background is light, stretch the contrast, crop to the ink, and then do what MNIST did.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from runtime.contract import IMAGE_ROWS
from runtime.errors import InputError, require_file

DIGIT_BOX = 20
INK_THRESHOLD = 0.25  # of full contrast: fainter pixels are paper texture or noise
MAX_IMAGE_PIXELS = 64_000_000  # refuse absurdly large images before decoding them


def open_image(source: str | os.PathLike[str] | bytes | Image.Image) -> Image.Image:
    """Open an image file or the bytes of one (PNG, JPEG, BMP, ...) and decode it fully, or
    raise InputError."""
    if isinstance(source, Image.Image):
        return source
    path: str | Path
    stream: io.BytesIO | Path
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise InputError("image: empty (0 bytes)")
        path, stream = "image", io.BytesIO(source)
    else:
        path = stream = require_file(source, "an image file")
    try:
        with Image.open(stream) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise InputError(f"{path}: image of {image.width}x{image.height} pixels is too large")
            image.load()  # decode now, so a truncated file fails here
            return ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a recognised image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: unreadable or truncated image ({exc})") from None


def to_grayscale(image: Image.Image) -> np.ndarray:
    """float32 [H, W] in [0, 1]; transparent areas become white paper."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    return np.asarray(image.convert("L"), np.float32) / 255.0


def ink_on_black(gray: np.ndarray) -> np.ndarray:
    """White ink on black with contrast stretched to [0, 1]; inverted if the paper is light."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    ink = 1.0 - gray if background > 0.5 else gray
    background = min(background, 1.0 - background)
    peak = float(np.percentile(ink, 99.9))
    if peak - background < 0.1:
        raise InputError("no digit found: the image has almost no contrast")
    return np.clip((ink - background) / (peak - background), 0.0, 1.0)


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero((ink > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
    if rows.size == 0:
        raise InputError("no digit found: the image is blank")
    cropped = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return np.where(cropped > INK_THRESHOLD * 0.5, cropped, 0.0)


def fit_box(ink: np.ndarray, box: int = DIGIT_BOX) -> np.ndarray:
    """Resize so the longer side is `box` pixels, keeping the aspect ratio (anti-aliased)."""
    height, width = ink.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(ink.astype(np.float32), mode="F").resize(
        size, Image.Resampling.LANCZOS, reducing_gap=None
    )
    out = np.clip(np.asarray(resized, np.float32), 0.0, 1.0)
    peak = out.max()
    return out / peak if peak > 0 else out  # thin strokes fade when shrunk; restore full ink


def centre_by_mass(digit: np.ndarray, size: int = IMAGE_ROWS) -> np.ndarray:
    """Place `digit` in a size x size field with its centre of mass at the centre."""
    total = digit.sum()
    rows, cols = np.indices(digit.shape)
    com_row, com_col = (rows * digit).sum() / total, (cols * digit).sum() / total
    top = int(round(size / 2 - com_row - 0.5))
    left = int(round(size / 2 - com_col - 0.5))
    top = min(max(top, 0), size - digit.shape[0])  # keep the whole digit in the field
    left = min(max(left, 0), size - digit.shape[1])
    field = np.zeros((size, size), np.float32)
    field[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return field


def preprocess_image(source: str | os.PathLike[str] | bytes | Image.Image | np.ndarray) -> np.ndarray:
    """A photo, scan or drawing of one digit -> float32 (28, 28) in [0, 1], MNIST-style.

    `source` is a file path, the bytes of an image file, a PIL image, or a 2-D array (uint8
    0-255 or float 0-1, any size).
    """
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
    else:
        name = "image" if isinstance(source, (bytes, bytearray, memoryview)) else type(source).__name__
    if isinstance(source, np.ndarray):
        gray = grayscale_array(source)
    else:
        gray = to_grayscale(open_image(source))
    try:
        return centre_by_mass(fit_box(crop_to_ink(ink_on_black(gray))))
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None


def grayscale_array(array: np.ndarray) -> np.ndarray:
    if array.ndim != 2 or min(array.shape) < 1:
        raise InputError(f"image array must be 2-D (height, width), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype.kind != "f" or not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise InputError("image array must be uint8 0-255 or finite floats in [0, 1]")
    return array.astype(np.float32)
