"""runtime.idx: IDX files, raw or gzip, are read exactly or refused with a named reason.

Missing, empty, directory, truncated and random files: the bad-input battery (test_bad_inputs.py).
"""

import gzip

import numpy as np
import pytest

from helpers import idx_bytes, write_idx
from runtime.errors import InputError
from runtime.idx import encode_idx, parse_idx, read_idx


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_reads_images_and_labels_exactly(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 7], np.uint8)
    got_images = read_idx(write_idx(tmp_path / "i", images, compress))
    got_labels = read_idx(write_idx(tmp_path / "l", labels, compress))
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_gzip_is_detected_by_content_not_name(tmp_path):
    path = tmp_path / "labels.idx"  # no .gz suffix
    path.write_bytes(gzip.compress(idx_bytes(np.arange(10))))
    np.testing.assert_array_equal(read_idx(path), np.arange(10))


def test_big_endian_int_payload_is_converted():
    data = bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + np.array([1, -2], ">i4").tobytes()
    np.testing.assert_array_equal(parse_idx(data), [1, -2])


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "too short"),
        (b"\x00\x00", "too short"),
        (b"\x12\x34\x08\x01\x00\x00\x00\x01\x05", "bad magic"),
        (b"\x00\x00\x42\x01\x00\x00\x00\x01\x05", "bad magic"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (b"\x00\x00\x08\x00", "truncated IDX header"),
        (idx_bytes(np.zeros((3, 28, 28)))[:-1], "truncated"),
        (idx_bytes(np.zeros(3)) + b"\x00", "trailing bytes"),
    ],
    ids=[
        "empty",
        "two-bytes",
        "bad-zero-bytes",
        "bad-dtype",
        "short-header",
        "no-dims",
        "truncated-payload",
        "trailing",
    ],
)
def test_malformed_bytes_are_refused(data, message):
    with pytest.raises(InputError, match=message):
        parse_idx(data, "crafted")


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_encode_idx_is_the_readers_inverse(dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    data = encode_idx(array)
    assert len(data) == 4 + 3 * 4 + array.nbytes
    decoded = parse_idx(data)
    assert decoded.dtype == np.dtype(dtype) and decoded.shape == (2, 3, 4)
    np.testing.assert_array_equal(decoded, array)
    with pytest.raises(InputError, match="cannot write"):
        encode_idx(array.astype(np.int64))  # IDX has no 64-bit integers
