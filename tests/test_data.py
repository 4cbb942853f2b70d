"""runtime.mnist and rowrnn_keras.data: the four MNIST files are found, validated and split without leaking.

A data path that is a file, and files of the wrong size: the bad-input battery (test_bad_inputs.py).
"""

import hashlib
import os

import numpy as np
import pytest

from helpers import synthetic_digits, write_idx, write_mnist_dir
from rowrnn_keras.data import load_mnist, split_validation
from runtime.contract import scale_pixels
from runtime.errors import InputError
from runtime.mnist import DATA_ENV, FILES, load_mnist_dir, resolve_data_dir

SMALL = (120, 40)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_loads_a_valid_directory(tmp_path, compress):
    directory = write_mnist_dir(tmp_path, compress=compress)
    mnist = load_mnist_dir(directory, SMALL)
    assert mnist.train_images.shape == (120, 28, 28) and mnist.test_images.shape == (40, 28, 28)
    assert mnist.train_images.dtype == np.uint8 and mnist.train_labels.dtype == np.uint8
    np.testing.assert_array_equal(mnist.train_labels, synthetic_digits(120, 1)[1])


def test_option_beats_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "opt") == tmp_path / "opt"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv(DATA_ENV)
    assert resolve_data_dir(None) is None  # -> Keras's download


def test_environment_directory_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="nowhere: data directory does not exist"):
        load_mnist()


def corrupt(directory, name, payload):
    os.remove(directory / (FILES[name] + ".gz"))
    if payload is not None:
        write_idx(directory / (FILES[name] + ".gz"), payload)


@pytest.mark.parametrize(
    "name, payload, message",
    [
        ("train_labels", None, "missing MNIST file.s. train-labels-idx1-ubyte.gz"),
        ("test_images", None, "missing MNIST file.s. t10k-images-idx3-ubyte.gz"),
        ("train_labels", np.full(120, 10), "label 10 at index 0 is outside 0-9"),
        ("train_labels", np.zeros(119), "120 images but 119 labels"),
        ("test_images", np.zeros((40, 28, 27)), r"shape \[N, 28, 28\]"),
        ("train_labels", np.zeros((120, 1)), r"labels of shape \[N\]"),
    ],
    ids=["missing-train-labels", "missing-test-images", "label-range", "count-mismatch", "image-shape", "label-shape"],
)
def test_bad_directory_contents_are_named(tmp_path, name, payload, message):
    directory = write_mnist_dir(tmp_path)
    corrupt(directory, name, payload)
    with pytest.raises(InputError, match=message):
        load_mnist_dir(directory, SMALL)


def test_validation_split_is_seeded_disjoint_and_complete():
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1).repeat(28, 1).repeat(28, 2)
    labels = np.arange(100, dtype=np.uint8) % 10
    (tx, ty), (vx, vy) = split_validation(images, labels, 20, seed=3)
    assert len(vx) == 20 and len(tx) == 80
    ids = np.concatenate([tx[:, 0, 0], vx[:, 0, 0]])
    assert sorted(ids.tolist()) == list(range(100))
    np.testing.assert_array_equal(ty, tx[:, 0, 0] % 10)  # labels travel with their images
    (_, _), (vx2, _) = split_validation(images, labels, 20, seed=3)
    np.testing.assert_array_equal(vx, vx2)
    (_, _), (vx3, _) = split_validation(images, labels, 20, seed=4)
    assert not np.array_equal(vx, vx3)
    with pytest.raises(InputError, match="leaves no training images"):
        split_validation(images, labels, 100, seed=0)


def test_scaling_is_the_single_uint8_contract():
    pixels = np.array([[0, 128, 255]], np.uint8)
    scaled = scale_pixels(pixels)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[0.0, 128 / 255, 1.0]], rtol=1e-7)
    with pytest.raises(InputError, match="expected uint8"):
        scale_pixels(pixels.astype(np.float32))


@pytest.mark.slow
def test_real_mnist_matches_the_published_checksums(mnist_dir, mnist):
    sha = lambda a: hashlib.sha256(a.tobytes()).hexdigest()  # noqa: E731
    # The README of the data folder gives the sha256 of the raw IDX files; payload = file - header.
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (10000, 28, 28)
    header = bytes.fromhex("00000801") + (10000).to_bytes(4, "big")
    assert hashlib.sha256(header + mnist.test_labels.tobytes()).hexdigest() == (
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
    )
    assert np.bincount(mnist.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert sha(mnist.train_images) != sha(mnist.test_images)
