"""Reader for the IDX format MNIST ships in (raw or gzip-compressed), numpy only.

IDX header: two zero bytes, a dtype code, the number of dimensions, then one big-endian
uint32 per dimension, then the payload in C order.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib

import numpy as np

from runtime.errors import InputError, require_file

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
# Larger than any real IDX file we expect; guards against decompression bombs and absurd headers.
MAX_IDX_BYTES = 1 << 31


def read_idx_bytes(path: str | os.PathLike[str]) -> bytes:
    """Return the decompressed bytes of an IDX file (gzip is detected by its magic, not its name)."""
    path = require_file(path, "an IDX file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            data = stream.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    if len(data) > MAX_IDX_BYTES:
        raise InputError(f"{path}: decompresses to more than {MAX_IDX_BYTES} bytes")
    return data


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a native-endian array, checking header and payload size."""
    if len(data) < 4:
        raise InputError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise InputError(f"{name}: not an IDX file (bad magic number 0x{data[:4].hex()})")
    dtype, ndim = _DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise InputError(f"{name}: truncated IDX header (magic 0x{data[:4].hex()})")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    # Python ints: absurd headers cannot overflow. Empty dimensions hide absurd others, which
    # numpy refuses even for zero elements, so those are bounded too.
    if math.prod(d for d in shape if d) * dtype.itemsize > MAX_IDX_BYTES:
        raise InputError(f"{name}: header shape {shape} is absurdly large")
    expected = math.prod(shape) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise InputError(
            f"{name}: {problem}: header says shape {shape} ({expected} payload bytes), file holds {actual}"
        )
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (`.gz` or raw) into a numpy array."""
    return parse_idx(read_idx_bytes(path), str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of `array` (uncompressed): `parse_idx`'s inverse, for the dtypes IDX has."""
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None or array.ndim == 0:
        raise InputError(f"cannot write {array.dtype} array of shape {array.shape} as IDX")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(_DTYPES[code], copy=False).tobytes()
