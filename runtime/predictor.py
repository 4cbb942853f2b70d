"""`Predictor`: one onnxruntime session over a rowrnn ONNX file; thread-safe `predict`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.contract import (
    FORMAT_VERSION,
    IMAGE_COLS,
    IMAGE_ROWS,
    IMAGE_SHAPE,
    INPUT_NAME,
    LOGITS_NAME,
    NUM_CLASSES,
    PROBABILITIES_NAME,
    scale_pixels,
)
from runtime.errors import InputError, require_file

PIXELS = IMAGE_ROWS * IMAGE_COLS
MAX_CHUNK = 1024  # images per session call: bounds memory for huge batches


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray  # int64 [N]
    probabilities: np.ndarray  # float32 [N, 10]

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the predicted label, float32 [N]."""
        return self.probabilities[np.arange(len(self.labels)), self.labels]

    def __len__(self) -> int:
        return len(self.labels)


def as_rows(images: np.ndarray, name: str = "input") -> np.ndarray:
    """Images in any accepted form -> float32 [N, 28, 28] in [0, 1].

    Accepted: uint8 pixels 0-255, or floats in [0, 1]; shapes (28, 28), (N, 28, 28), (784,),
    (N, 784). Anything else is refused with an InputError that names the problem.
    """
    array = np.asarray(images)
    shape = array.shape
    if shape == IMAGE_SHAPE or shape == (PIXELS,):
        array = array.reshape(1, *IMAGE_SHAPE)
    elif array.ndim == 3 and shape[1:] == IMAGE_SHAPE or array.ndim == 2 and shape[1] == PIXELS:
        array = array.reshape(shape[0], *IMAGE_SHAPE)
    else:
        raise InputError(f"{name}: shape {shape} is not (28, 28), (N, 28, 28), (784,) or (N, 784)")
    if len(array) == 0:
        raise InputError(f"{name}: empty batch (0 images)")
    if array.dtype == np.uint8:
        return scale_pixels(array)
    if array.dtype.kind != "f":
        raise InputError(f"{name}: dtype {array.dtype} not accepted; use uint8 0-255 or float 0-1")
    array = array.astype(np.float32, copy=False)
    low, high = float(array.min()), float(array.max())  # NaN propagates into both
    if not (np.isfinite(low) and np.isfinite(high)):
        raise InputError(f"{name}: contains NaN or infinite values")
    if low < 0.0 or high > 1.0:
        raise InputError(f"{name}: float values must be in [0, 1], got range [{low:g}, {high:g}]")
    return np.ascontiguousarray(array)


def check_session(session: ort.InferenceSession, path: Path) -> None:
    """Refuse a model that does not meet the rowrnn ONNX contract."""
    inputs = [(i.name, i.type, i.shape[1:]) for i in session.get_inputs()]
    outputs = {o.name: (o.type, o.shape[1:]) for o in session.get_outputs()}
    if inputs != [(INPUT_NAME, "tensor(float)", list(IMAGE_SHAPE))]:
        raise InputError(
            f"{path}: not a rowrnn model: inputs {inputs}, expected '{INPUT_NAME}' float [batch, 28, 28]"
        )
    for name in (LOGITS_NAME, PROBABILITIES_NAME):
        if outputs.get(name) != ("tensor(float)", [NUM_CLASSES]):
            raise InputError(f"{path}: not a rowrnn model: output '{name}' float [batch, 10] missing, has {outputs}")
    version = session.get_modelmeta().custom_metadata_map.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(f"{path}: rowrnn format version {version!r} is not the supported {FORMAT_VERSION!r}")


class Predictor:
    """Classify 28x28 digit images with an exported rowrnn ONNX model.

    One session is shared by all calls; `predict` is safe to call from many threads at once.
    `intra_op_threads` (default: onnxruntime's choice, all cores) and `providers` are passed to
    onnxruntime.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        intra_op_threads: int | None = None,
        providers: list[str] | None = None,
        session_options: ort.SessionOptions | None = None,
    ) -> None:
        self.path = require_file(path, "an .onnx model file")
        options = session_options or ort.SessionOptions()
        if intra_op_threads is not None:
            if intra_op_threads < 0:
                raise InputError(f"intra_op_threads must be >= 0, got {intra_op_threads}")
            options.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types for unreadable files
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{self.path}: not a loadable ONNX model ({first_line[:200]})") from None
        check_session(self.session, self.path)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def predict_logits(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (logits, probabilities) for images in any form `as_rows` accepts."""
        rows = as_rows(images)
        chunks = [
            self.session.run([LOGITS_NAME, PROBABILITIES_NAME], {INPUT_NAME: rows[i : i + MAX_CHUNK]})
            for i in range(0, len(rows), MAX_CHUNK)
        ]
        if len(chunks) == 1:
            return chunks[0][0], chunks[0][1]
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

    def predict(self, images: np.ndarray) -> Prediction:
        """Labels int64 [N] and probabilities float32 [N, 10]."""
        _, probabilities = self.predict_logits(images)
        return Prediction(probabilities.argmax(axis=1).astype(np.int64), probabilities)

    def __repr__(self) -> str:
        return f"Predictor({str(self.path)!r})"
