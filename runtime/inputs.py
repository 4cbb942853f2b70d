"""Files a user hands `rowrnn predict`: images, `.npy` arrays, IDX files (`.gz` or raw)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from runtime.errors import InputError, require_file
from runtime.idx import parse_idx, read_idx_bytes
from runtime.predictor import as_rows
from runtime.preprocess import preprocess_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"}


def looks_like_idx(path: Path) -> bool:
    """IDX by name (`*-idx3-ubyte`, `.idx`, `.gz`) or by its first bytes (0, 0, dtype, ndim)."""
    name = path.name.lower()
    if "idx" in name or name.endswith(".gz"):
        return True
    with open(path, "rb") as stream:
        head = stream.read(4)
    return (
        len(head) == 4
        and head[:2] == b"\x00\x00"
        and head[2] in (0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E)
        and 1 <= head[3] <= 3
    )


NPY_MAGIC = b"\x93NUMPY"


def load_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as stream:
        if stream.read(len(NPY_MAGIC)) != NPY_MAGIC:  # else numpy talks about pickles
            raise InputError(f"{path}: not a .npy file (no NumPy header)")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise InputError(f"{path}: holds an archive of arrays, expected one array")
    return as_rows(array, str(path))


def load_idx_images(path: Path) -> np.ndarray:
    array = parse_idx(read_idx_bytes(path), str(path))
    if array.dtype != np.uint8:
        raise InputError(f"{path}: IDX images must be uint8, file holds {array.dtype}")
    return as_rows(array, str(path))


def load_input(path: str | os.PathLike[str]) -> np.ndarray:
    """One input file -> float32 [N, 28, 28] rows ready for `Predictor.predict`."""
    path = require_file(path, "an image, .npy or IDX file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return load_npy(path)
    if suffix in IMAGE_SUFFIXES:
        return preprocess_image(path)[np.newaxis]
    if looks_like_idx(path):
        return load_idx_images(path)
    try:  # an image under an unusual name still opens
        return preprocess_image(path)[np.newaxis]
    except InputError:
        raise InputError(f"{path}: unknown file type (expected an image, a .npy array or an IDX file)") from None
