"""MNIST from the four standard IDX files: find, read, validate. numpy only, no TensorFlow.

Images stay uint8 until `runtime.contract.scale_pixels`, the single scaling step shared with
training. Keras's download fallback and the validation split live in `rowrnn_keras.data`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.contract import IMAGE_SHAPE, NUM_CLASSES
from runtime.errors import InputError
from runtime.idx import encode_idx, read_idx

DATA_ENV = "ROWRNN_DATA"
TRAIN_SIZE, TEST_SIZE = 60_000, 10_000
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Mnist:
    """uint8 images [N, 28, 28] and uint8 labels [N] for the train and test splits."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


def resolve_data_dir(option: str | os.PathLike[str] | None) -> Path | None:
    """The data directory: the CLI option, else $ROWRNN_DATA, else None (use Keras's download)."""
    chosen = option if option not in (None, "") else os.environ.get(DATA_ENV) or None
    return None if chosen is None else Path(chosen)


def find_idx_file(data_dir: Path, stem: str) -> Path | None:
    """The `.gz` or raw IDX file for `stem` in `data_dir`, if there is one (reading it says
    what is wrong if it is, say, a directory)."""
    for name in (stem + ".gz", stem):
        if (data_dir / name).exists():
            return data_dir / name
    return None


def check_images(images: np.ndarray, name: str) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise InputError(f"{name}: expected uint8 images of shape [N, 28, 28], got {images.dtype} {list(images.shape)}")
    return images


def check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise InputError(f"{name}: expected uint8 labels of shape [N], got {labels.dtype} {list(labels.shape)}")
    if labels.size and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise InputError(f"{name}: label {int(labels[bad])} at index {bad} is outside 0-9")
    return labels


def idx_file(data_dir: Path, stem: str) -> Path:
    path = find_idx_file(data_dir, stem)
    if path is None:
        raise InputError(f"{data_dir}: missing MNIST file {stem}.gz")
    return path


def read_split(data_dir: Path, split: str, expected: int) -> tuple[np.ndarray, np.ndarray]:
    image_path = idx_file(data_dir, FILES[f"{split}_images"])
    label_path = idx_file(data_dir, FILES[f"{split}_labels"])
    images = check_images(read_idx(image_path), str(image_path))
    labels = check_labels(read_idx(label_path), str(label_path))
    if len(images) != len(labels):
        raise InputError(f"{data_dir}: {split} split has {len(images)} images but {len(labels)} labels")
    if len(images) != expected:
        raise InputError(f"{image_path}: expected {expected} MNIST {split} images, found {len(images)}")
    return images, labels


def load_mnist_dir(data_dir: str | os.PathLike[str], sizes: tuple[int, int] = (TRAIN_SIZE, TEST_SIZE)) -> Mnist:
    """Read and validate the four MNIST IDX files in `data_dir` (`sizes`: train and test counts)."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise InputError(f"{data_dir}: data directory does not exist")
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: data path is not a directory")
    if not os.access(data_dir, os.R_OK | os.X_OK):
        raise InputError(f"{data_dir}: data directory is not readable")
    missing = [stem + ".gz" for stem in FILES.values() if find_idx_file(data_dir, stem) is None]
    if missing:
        raise InputError(f"{data_dir}: missing MNIST file(s) {', '.join(missing)}")
    train = read_split(data_dir, "train", sizes[0])
    test = read_split(data_dir, "test", sizes[1])
    return Mnist(*train, *test, source="MNIST IDX files")  # no local path: metrics.json gets shipped


def describe_test_set(images: np.ndarray) -> str:
    """The test images named for a report by their checksum, never by a local path (reports get committed)."""
    return f"MNIST test set (t10k-images sha256 {hashlib.sha256(encode_idx(images)).hexdigest()[:12]}…)"
