"""`Predictor`: one onnxruntime session over a rowrnn ONNX file; thread-safe `predict`."""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.contract import FULL_MODEL, IMAGE_SHAPE, INPUT_NAME, LOGITS_NAME, PIXELS, PROBABILITIES_NAME, scale_pixels
from runtime.errors import InputError, require_file
from runtime.session import check_session, open_session

# The model that ships inside the package (scripts/build_bundled_model.sh makes it): what
# `Predictor()`, `rowrnn predict`, `rowrnn info` and `rowrnn serve` use when given no model.
BUNDLED_MODEL = Path(__file__).with_name("models") / "mnist.onnx"
# Images per session call. Small chunks keep one LSTM step's gates (32 x 512 floats) in cache:
# measured 37k images/s fp32 and 70k int8 at 32, against 32k and 50k at 256, and 30 MB less memory.
CHUNK = 32
ONE_AS_BITS = 0x3F800000  # the bit pattern of float32 1.0
OUTPUTS = [LOGITS_NAME, PROBABILITIES_NAME]  # the order `_run` returns them in


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray  # int64 [N], argmax of the probabilities
    probabilities: np.ndarray  # float32 [N, 10], softmax of the logits (computed in the graph)
    logits: np.ndarray  # float32 [N, 10]

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the predicted label, float32 [N]."""
        confidence: np.ndarray = self.probabilities[np.arange(len(self.labels)), self.labels]
        return confidence

    def __len__(self) -> int:
        return len(self.labels)


def validate_images(images: np.ndarray, name: str = "input") -> np.ndarray:
    """Images in any accepted form -> uint8 or float32 [N, 28, 28], not yet scaled.

    Accepted: uint8 pixels 0-255, or floats in [0, 1]; shapes (28, 28), (N, 28, 28), (784,),
    (N, 784). Anything else is refused with an InputError that names the problem. The common
    case, float32 or uint8 [N, 28, 28] already in memory order, costs one numpy call: this runs
    before every prediction.
    """
    array = images if type(images) is np.ndarray else np.asarray(images)
    if array.ndim != 3 or array.shape[1:] != IMAGE_SHAPE:
        array = as_batch_shape(array, name)
    if len(array) == 0:
        raise InputError(f"{name}: empty batch (0 images)")
    return checked_values(array, name)


def checked_values(array: np.ndarray, name: str) -> np.ndarray:
    """uint8 as it is; floats as C-contiguous float32, finite and in [0, 1]; other dtypes refused.
    Shape-blind: images and the step model's rows share it."""
    if array.dtype == np.uint8:
        return array
    if array.dtype != np.float32 or not array.flags.c_contiguous:
        if array.dtype.kind != "f":
            raise InputError(f"{name}: dtype {array.dtype} not accepted; use uint8 0-255 or float 0-1")
        array = np.ascontiguousarray(array, dtype=np.float32)
    # One pass: non-negative float32 values sort like their bit patterns, and NaN, Inf,
    # negatives and values above 1 all have patterns above 1.0's.
    if array.view(np.uint32).max() <= ONE_AS_BITS:
        return array
    low, high = float(array.min()), float(array.max())  # slow path: say what is wrong (or allow -0.0)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputError(f"{name}: contains NaN or infinite values")
    if low < 0.0 or high > 1.0:
        raise InputError(f"{name}: float values must be in [0, 1], got range [{low:g}, {high:g}]")
    return array


def as_batch_shape(array: np.ndarray, name: str) -> np.ndarray:
    """(28, 28), (784,) and (N, 784) -> (N, 28, 28); any other shape is refused."""
    shape = array.shape
    if shape == IMAGE_SHAPE or shape == (PIXELS,):
        return array.reshape(1, *IMAGE_SHAPE)
    if array.ndim == 2 and shape[1] == PIXELS:
        return array.reshape(shape[0], *IMAGE_SHAPE)
    raise InputError(f"{name}: shape {shape} is not (28, 28), (N, 28, 28), (784,) or (N, 784)")


def as_rows(images: np.ndarray, name: str = "input") -> np.ndarray:
    """Images in any accepted form (see `validate_images`) -> float32 [N, 28, 28] in [0, 1]."""
    return scaled(validate_images(images, name))


def scaled(images: np.ndarray) -> np.ndarray:
    """A batch `validate_images` accepted -> the model's float32 input (uint8 is scaled here)."""
    return scale_pixels(images) if images.dtype == np.uint8 else images


class Predictor:
    """Classify 28x28 digit images with an exported rowrnn ONNX model (default: the bundled one).

    One session is shared by all calls; `predict` is safe to call from many threads at once.
    Each session call runs on one core (`intra_op_threads`, default 1): an LSTM step is too small
    to split across cores without the hand-off costing more than it saves, and idle onnxruntime
    workers would spin on the cores of the app that embeds us. A large batch is cut into chunks of
    32 that `threads` workers (default: every core this process may use) run at once; `close()`
    (or leaving a `with Predictor(...)` block) stops those workers.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        threads: int | None = None,
        intra_op_threads: int | None = None,
        providers: list[str] | None = None,
        session_options: ort.SessionOptions | None = None,
    ) -> None:
        self.path = require_file(BUNDLED_MODEL if path is None else path, "an .onnx model file")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a whole number >= 1, got {threads!r}")  # intra_op_threads: open_session
        self.session = open_session(self.path, intra_op_threads, providers, session_options)
        check_session(self.session, FULL_MODEL, self.path)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.threads = threads or usable_cpus()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False

    def predict(self, images: np.ndarray) -> Prediction:
        """Labels int64 [N], probabilities and logits float32 [N, 10] for images in any form
        `validate_images` accepts."""
        logits, probabilities = self._run(validate_images(images))
        return Prediction(probabilities.argmax(axis=1), probabilities, logits)  # argmax gives int64 (intp)

    def _run(self, images: np.ndarray) -> list[np.ndarray]:
        if len(images) <= CHUNK:  # the common case, kept free of any overhead
            outputs: list[np.ndarray] = self.session.run(OUTPUTS, {INPUT_NAME: scaled(images)})
            return outputs

        def run_chunk(start: int) -> list[np.ndarray]:
            chunk: list[np.ndarray] = self.session.run(OUTPUTS, {INPUT_NAME: scaled(images[start : start + CHUNK])})
            return chunk

        starts = range(0, len(images), CHUNK)
        pool = self._workers()
        chunks = list(pool.map(run_chunk, starts) if pool else map(run_chunk, starts))
        return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]

    def _workers(self) -> ThreadPoolExecutor | None:
        """The pool that runs the chunks of large batches at once (made on first use); None runs
        them in the calling thread (one thread wanted, or the predictor was closed)."""
        if self.threads == 1:
            return None
        with self._pool_lock:
            if self._closed:
                return None
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rowrnn-predict")
            return self._pool

    def close(self) -> None:
        """Stop the worker threads, after the chunks in flight. The predictor still works: large
        batches then run in the calling thread."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Predictor({str(self.path)!r})"


def usable_cpus() -> int:
    """CPUs this process may run on (respects taskset and container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
