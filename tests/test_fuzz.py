"""Property-based fuzzing of everything that reads outside input: the IDX reader, image
preprocessing and `Predictor.predict`. Arbitrary bytes and arrays end in a result or in the
documented `InputError`, never another exception; valid inputs always give probabilities that
sum to 1.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays, scalar_dtypes
from PIL import Image

from helpers import idx_bytes
from runtime import InputError, Predictor, preprocess_image
from runtime.idx import parse_idx, read_idx

# 150 examples per property keeps CI fast; ROWRNN_FUZZ_EXAMPLES=5000 for a long local run.
FUZZ = settings(
    max_examples=int(os.environ.get("ROWRNN_FUZZ_EXAMPLES", 150)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

IDX_DTYPE_CODES = [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]


def idx_like(draw) -> bytes:
    """Bytes that start like IDX (right magic, some dims) and continue with anything."""
    code = draw(st.sampled_from(IDX_DTYPE_CODES + [0x00, 0x0A, 0xFF]))
    dims = draw(st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 40), min_size=0, max_size=4))
    header = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
    return header + draw(st.binary(max_size=400))


@FUZZ
@given(st.one_of(st.binary(max_size=600), st.builds(lambda b: b, st.composite(idx_like)())))
@example(bytes([0, 0, 8, 4]) + struct.pack(">4I", 65536, 65536, 65536, 65536))  # 2**64 elements: overflowed int64
@example(b"\x00\x00\x08\x03\x00\x00\x00\x00\xa8\x00\x00\x00\xc3\x0c1\x00")  # 0 x 2.8e9 x 3.3e9: numpy refused it
@example(b"")
def test_idx_parser_returns_an_array_or_input_error(data):
    try:
        array = parse_idx(data)
    except InputError:
        return
    ndim = data[3]
    header = 4 + 4 * ndim
    assert array.shape == struct.unpack(f">{ndim}I", data[4:header])
    assert array.nbytes == len(data) - header


@FUZZ
@given(arrays(st.sampled_from([np.uint8]), array_shapes(min_dims=1, max_dims=3, max_side=6)))
def test_idx_round_trips_through_gzip_files(tmp_path, array):
    path = tmp_path / "data-idx-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(path), array)


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_idx_files_of_any_bytes_give_an_array_or_input_error(tmp_path, data, compress):
    path = tmp_path / "fuzz-idx3-ubyte"
    path.write_bytes(gzip.compress(data)[: len(data) // 2 + 10] if compress else data)  # gzip cut short too
    with contextlib.suppress(InputError):
        read_idx(path)


# ---------------------------------------------------------------- image preprocessing


def assert_mnist_like(image: np.ndarray) -> None:
    assert image.shape == (28, 28) and image.dtype == np.float32
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1


@FUZZ
@given(arrays(scalar_dtypes(), array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40)))
def test_preprocessing_any_array_gives_a_digit_or_input_error(array):
    try:
        image = preprocess_image(array)
    except InputError:
        return
    assert_mnist_like(image)


@FUZZ
@given(arrays(np.uint8, st.tuples(st.integers(1, 80), st.integers(1, 80))))
def test_preprocessing_uint8_images_of_any_size(array):
    try:
        image = preprocess_image(array)
    except InputError as exc:
        assert "no digit found" in str(exc)  # blank or flat images are the only refusal
        return
    assert_mnist_like(image)
    assert image.max() == pytest.approx(1.0)  # the ink is stretched to full contrast


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from([".png", ".jpg", ".bmp", ".gif", ""]))
def test_preprocessing_files_of_any_bytes(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    with contextlib.suppress(InputError):
        assert_mnist_like(preprocess_image(path))


@FUZZ
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 60), st.integers(1, 60), st.sampled_from([3, 4]))),
    st.sampled_from(["PNG", "JPEG", "BMP"]),
    st.integers(0, 600),
)
def test_preprocessing_damaged_image_files(tmp_path, pixels, fmt, cut):
    """Real encoded images, then cut short at any point."""
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., :3] if fmt != "PNG" else pixels).save(buffer, format=fmt)
    path = tmp_path / f"damaged.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: max(cut, 1)] if cut else buffer.getvalue())
    with contextlib.suppress(InputError):
        assert_mnist_like(preprocess_image(path))


# ---------------------------------------------------------------- Predictor.predict


@pytest.fixture(scope="module")
def predictor(exported):
    return Predictor(exported.onnx_path)


def assert_probabilities(result, n: int) -> None:
    assert result.labels.shape == (n,) and result.probabilities.shape == (n, 10)
    assert ((result.labels >= 0) & (result.labels <= 9)).all()
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.labels, result.probabilities.argmax(axis=1))


def images_in(shape: tuple[int, ...]) -> int | None:
    """How many images an input of `shape` holds by the accepted forms: (28, 28) and (784,) one,
    (N, 28, 28) and (N, 784) N; None for any other shape."""
    if shape in ((28, 28), (784,)):
        return 1
    if (len(shape) == 3 and shape[1:] == (28, 28)) or (len(shape) == 2 and shape[1] == 784):
        return shape[0]
    return None


@FUZZ
@given(arrays(scalar_dtypes(), array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=30)))
@example(np.zeros((0, 28, 28), np.float32))
@example(np.full((1, 784), np.nan, np.float64))
@example(np.zeros((3, 28, 28), np.uint8))
def test_predict_any_array_gives_probabilities_or_input_error(predictor, array):
    try:
        result = predictor.predict(array)
    except InputError:
        return
    expected = images_in(array.shape)
    assert expected is not None, f"shape {array.shape} accepted"
    assert_probabilities(result, expected)  # one result per input image, none dropped


@FUZZ
@given(
    st.integers(1, 80).flatmap(
        lambda n: st.one_of(
            arrays(np.uint8, (n, 28, 28)),
            arrays(np.float32, (n, 784), elements=st.floats(0, 1, width=32)),  # includes -0.0 and subnormals
            arrays(np.float64, (n, 28, 28), elements=st.floats(0, 1)),
        )
    )
)
def test_predict_valid_inputs_always_sum_to_one(predictor, array):
    assert_probabilities(predictor.predict(array), len(array))
