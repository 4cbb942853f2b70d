"""MNIST for training: the IDX directory (`runtime.mnist`), or Keras's download; the validation split.

Images stay uint8 until `runtime.contract.scale_pixels`, the single scaling step shared with the
runtime.
"""

from __future__ import annotations

import os

import numpy as np

from runtime.errors import InputError
from runtime.mnist import DATA_ENV, Mnist, check_images, check_labels, load_mnist_dir, resolve_data_dir


def load_mnist_keras() -> Mnist:
    """Keras's own MNIST download (needs internet the first time; cached in ~/.keras/datasets)."""
    import keras

    try:
        (train_x, train_y), (test_x, test_y) = keras.datasets.mnist.load_data()
    except Exception as exc:  # noqa: BLE001  network errors come in many types; all mean the same to the user
        raise InputError(
            f"no MNIST directory given (--data or ${DATA_ENV}) and Keras's download failed: {exc}"
        ) from None
    return Mnist(
        check_images(train_x, "keras mnist"),
        check_labels(train_y, "keras mnist"),
        check_images(test_x, "keras mnist"),
        check_labels(test_y, "keras mnist"),
        source="keras.datasets.mnist",
    )


def load_mnist(data_dir: str | os.PathLike | None = None) -> Mnist:
    """MNIST from `data_dir` or $ROWRNN_DATA; with neither, Keras's download."""
    resolved = resolve_data_dir(data_dir)
    return load_mnist_keras() if resolved is None else load_mnist_dir(resolved)


def split_validation(
    images: np.ndarray, labels: np.ndarray, validation_size: int, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A seeded random hold-out of `validation_size` images; the rest is for training."""
    if validation_size >= len(images):
        raise InputError(f"validation size {validation_size} leaves no training images out of {len(images)}")
    order = np.random.default_rng(seed).permutation(len(images))
    val, train = order[:validation_size], order[validation_size:]
    return (images[train], labels[train]), (images[val], labels[val])
