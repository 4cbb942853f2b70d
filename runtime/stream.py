"""Streaming: classify while an image's rows arrive, over the step model (`rowrnn export --step`).

    from runtime import StreamingPredictor
    predictor = StreamingPredictor("model.step.onnx")
    stream = predictor.stream()            # one image; stream(batch=8) for 8 images side by side
    result = stream.push(first_rows)      # a Prediction after the rows read so far
    result = stream.push(next_row)
    stream.reset()                        # the next image

    early = predictor.predict_early(images, confidence=0.99)   # labels, and rows each image needed

The step model is stateless, like every ONNX model: the LSTM state goes in and comes out of each
call. So one session serves any number of streams, each owning its state, from any thread.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from runtime.contract import (
    FULL_MODEL,
    IMAGE_COLS,
    IMAGE_ROWS,
    LOGITS_NAME,
    NUM_CLASSES,
    PROBABILITIES_NAME,
    ROW_NAME,
    STATE_NAMES,
    STATE_OUT_NAMES,
    STEP_FORMAT,
    step_model_io,
)
from runtime.errors import InputError, require_file
from runtime.predictor import Prediction, as_rows, checked_values, scaled
from runtime.session import check_session, expected_inputs, open_session, session_inputs

# Images per session call in the batch functions: large enough that the per-call overhead
# (~10 µs) is noise against a step's matrix work, small enough to keep the state in cache.
CHUNK = 256
OUTPUTS = [*STATE_OUT_NAMES, LOGITS_NAME, PROBABILITIES_NAME]


@dataclass(frozen=True)
class EarlyPrediction(Prediction):
    rows: np.ndarray  # int64 [N]: rows each image was read to (1-28) before the answer was given


def check_step_session(session: ort.InferenceSession, path: os.PathLike[str]) -> int:
    """Refuse a model that is not a rowrnn step model; return its hidden size."""
    inputs = session_inputs(session)
    if session.get_modelmeta().custom_metadata_map.get("format") != STEP_FORMAT and inputs[:1] == expected_inputs(
        FULL_MODEL
    ):
        raise InputError(
            f"{path}: a full rowrnn model, not a step model (export one with `rowrnn export OUT.onnx --step`)"
        )
    dims = inputs[1][2] if len(inputs) > 1 else []
    hidden = dims[0] if len(dims) == 1 and isinstance(dims[0], int) else "H"  # "H": refused below, named so
    check_session(session, step_model_io(hidden), path)
    if not isinstance(hidden, int):  # check_session refuses "H" first, naming what differs
        raise InputError(f"{path}: not a step model (its state has no fixed size)")
    return hidden


def checked_confidence(confidence: float) -> float:
    """A threshold in [0, inf]; above 1 it is never reached, so every image is read to its end."""
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, numbers.Real)
        or math.isnan(confidence)
        or confidence < 0
    ):
        raise InputError(f"confidence must be a number >= 0 (above 1: never stop early), got {confidence!r}")
    return float(confidence)


def checked_pixels(array: np.ndarray, name: str) -> np.ndarray:
    """uint8 0-255 -> float32 /255; floats must be finite and in [0, 1] (the runtime's input rule)."""
    return scaled(checked_values(array, name))


def checked_rows(rows: np.ndarray, streams: int, name: str = "rows") -> np.ndarray:
    """Rows for a batch of `streams` images -> float32 [streams, k, 28], k >= 1.

    Accepted: one row (28,) or k rows (k, 28) of a single stream; one row per stream (streams, 28);
    k rows per stream (streams, k, 28).
    """
    array = rows if type(rows) is np.ndarray else np.asarray(rows)
    if array.shape == (IMAGE_COLS,) and streams == 1:  # the common push, kept short: it runs between steps
        return checked_pixels(array.reshape(1, 1, IMAGE_COLS), name)
    if array.ndim == 0 or array.shape[-1] != IMAGE_COLS:
        raise InputError(f"{name}: a row has {IMAGE_COLS} pixels; got shape {array.shape}")
    if array.ndim == 2 and streams == 1:
        array = array.reshape(1, -1, IMAGE_COLS)
    elif array.ndim == 2 and len(array) == streams:
        array = array.reshape(streams, 1, IMAGE_COLS)
    elif array.ndim != 3 or len(array) != streams:
        raise InputError(
            f"{name}: shape {array.shape} does not fit a stream of {streams} image(s): give "
            + ("(28,) or (k, 28)" if streams == 1 else f"({streams}, 28) or ({streams}, k, 28)")
        )
    if array.shape[1] == 0:
        raise InputError(f"{name}: no rows (shape {array.shape})")
    return checked_pixels(array, name)


class StreamingPredictor:
    """Classify digits row by row with a rowrnn step model (`OUT.step.onnx`).

    One session is shared by every stream and call; streams own their state, so all of it is safe
    to use from many threads. Each session call runs on one core (`intra_op_threads`, default 1),
    as in `Predictor`: one step of one image is far too small to split.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        intra_op_threads: int | None = None,
        providers: list[str] | None = None,
        session_options: ort.SessionOptions | None = None,
    ) -> None:
        self.path = require_file(path, "a step .onnx model file")
        self.session = open_session(self.path, intra_op_threads, providers, session_options)
        self.hidden = check_step_session(self.session, self.path)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def stream(self, batch: int = 1) -> Stream:
        """A new stream of `batch` images read side by side, each from its first row."""
        return Stream(self, batch)

    def step(self, rows: np.ndarray, h: np.ndarray, c: np.ndarray) -> list[np.ndarray]:
        """One step, unchecked: float32 rows [B, 28] and state [B, H] -> [h, c, logits, probabilities]."""
        outputs: list[np.ndarray] = self.session.run(OUTPUTS, {ROW_NAME: rows, STATE_NAMES[0]: h, STATE_NAMES[1]: c})
        return outputs

    def zero_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.hidden), np.float32)

    def row_probabilities(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, 28, 10]: the ten probabilities after each row ("what the network believed").

        `images` in any form `Predictor.predict` accepts. Entry [:, 27] is the full model's answer.
        """
        rows = as_rows(images, "images")
        out = np.empty((len(rows), IMAGE_ROWS, NUM_CLASSES), np.float32)
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            h = c = self.zero_state(len(chunk))
            for r in range(IMAGE_ROWS):
                h, c, _, out[start : start + len(chunk), r] = self.step(chunk[:, r], h, c)
        return out

    def predict_early(self, images: np.ndarray, confidence: float = 0.99) -> EarlyPrediction:
        """Read each image only until its top probability reaches `confidence` (never past row 28).

        Returns the labels and probabilities at that row and `rows`, how many rows each image
        needed. `confidence` above 1 is never reached: every image is read whole, as the full model.
        """
        threshold = checked_confidence(confidence)
        rows = as_rows(images, "images")
        probabilities = np.empty((len(rows), NUM_CLASSES), np.float32)
        logits = np.empty((len(rows), NUM_CLASSES), np.float32)
        needed = np.full(len(rows), IMAGE_ROWS, np.int64)
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            active = np.arange(len(chunk))  # images of the chunk still being read
            h = c = self.zero_state(len(chunk))
            for r in range(IMAGE_ROWS):
                h, c, z, p = self.step(chunk[active, r], h, c)
                done = np.ones(len(active), bool) if r == IMAGE_ROWS - 1 else p.max(axis=1) >= threshold
                probabilities[start + active[done]] = p[done]
                logits[start + active[done]] = z[done]
                needed[start + active[done]] = r + 1
                if done.any():
                    keep = ~done
                    active, h, c = active[keep], h[keep], c[keep]
                if not len(active):
                    break
        return EarlyPrediction(probabilities.argmax(axis=1), probabilities, logits, needed)

    def __repr__(self) -> str:
        return f"StreamingPredictor({str(self.path)!r})"


class Stream:
    """`batch` images read side by side, row by row; each push advances all of them.

    Owns its state; a lock makes concurrent pushes to one stream take turns (streams never wait
    for each other).
    """

    def __init__(self, predictor: StreamingPredictor, batch: int = 1) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InputError(f"batch must be a whole number >= 1, got {batch!r}")
        self.predictor = predictor
        self.batch = batch
        self._lock = threading.Lock()
        self._h = self._c = predictor.zero_state(batch)
        self._rows_read = [0] * batch  # a list: numpy calls between session runs cost ~3 µs each

    @property
    def rows_read(self) -> np.ndarray:
        """int64 [batch]: rows each image of the stream has read since it started or was reset."""
        return np.array(self._rows_read, np.int64)

    def push(self, rows: np.ndarray) -> Prediction:
        """Read the next row(s) of every image; the Prediction after them.

        `rows`: uint8 0-255 or floats in [0, 1]; (28,) or (k, 28) for a one-image stream,
        (batch, 28) or (batch, k, 28) for a batch. All or nothing: a refused push changes no state.
        """
        rows = checked_rows(rows, self.batch)
        with self._lock:
            read = max(self._rows_read)
            if read + rows.shape[1] > IMAGE_ROWS:
                raise InputError(
                    f"rows: pushing {rows.shape[1]} row(s) would read past row {IMAGE_ROWS} (a stream image has "
                    f"read {read}); reset() the stream to start the next image"
                )
            h, c = self._h, self._c
            for r in range(rows.shape[1]):
                h, c, logits, probabilities = self.predictor.step(rows[:, r], h, c)
            self._h, self._c = h, c
            self._rows_read = [read + rows.shape[1] for read in self._rows_read]
        return Prediction(probabilities.argmax(axis=1), probabilities, logits)

    def reset(self, index: int | None = None) -> None:
        """Start over: every image of the stream, or only image `index` (its neighbours go on)."""
        with self._lock:
            if index is None:
                self._h = self._c = self.predictor.zero_state(self.batch)
                self._rows_read = [0] * self.batch
                return
            if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < self.batch:
                raise InputError(f"reset: index {index!r} is not an image of this stream (0-{self.batch - 1})")
            self._h, self._c = self._h.copy(), self._c.copy()  # a push may still hold the old arrays
            self._h[index] = self._c[index] = 0.0
            self._rows_read[index] = 0

    def __repr__(self) -> str:
        return f"Stream(batch={self.batch}, rows_read={self._rows_read})"
