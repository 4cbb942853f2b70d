"""The ONNX contract: what every model file rowrnn writes looks like, and the pixel scaling.

Training, export and the runtime all read these names; the runtime is the leaf package, so the
contract lives here and the other packages import it.
"""

from __future__ import annotations

import numpy as np

from runtime.errors import InputError

FORMAT_VERSION = "1"
INPUT_NAME = "rows"  # float32 [batch, 28, 28], values in [0, 1]
BATCH_DIM = "batch"
LOGITS_NAME = "logits"  # float32 [batch, 10]
PROBABILITIES_NAME = "probabilities"  # float32 [batch, 10], softmax of logits
IMAGE_ROWS = IMAGE_COLS = 28
IMAGE_SHAPE = (IMAGE_ROWS, IMAGE_COLS)
NUM_CLASSES = 10
CLASS_LABELS = tuple(str(d) for d in range(NUM_CLASSES))
INPUT_SCALING = "uint8 pixel / 255 -> float32 in [0, 1], white ink on black (MNIST)"


def scale_pixels(images: np.ndarray) -> np.ndarray:
    """Scale uint8 pixels 0-255 to float32 in [0, 1]: the one scaling used in training and serving."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise InputError(f"expected uint8 pixels, got dtype {images.dtype}")
    return np.divide(images, np.float32(255.0), dtype=np.float32)  # exact: uint8 -> float32, then /255

# The step model (`rowrnn export --step` -> OUT.step.onnx): one image row per call, the LSTM state
# passed in and out explicitly, so a caller can classify while rows arrive. A zero state is the
# start of an image.
STEP_FORMAT = "step"  # metadata `format` of a step model (full models have no `format` key)
ROW_NAME = "row"  # float32 [batch, 28]: one pixel row, /255
STATE_NAMES = ("h", "c")  # float32 [batch, hidden_units]: the LSTM state before this row
STATE_OUT_NAMES = ("h_out", "c_out")  # float32 [batch, hidden_units]: the state after it
# logits and probabilities [batch, 10]: the prediction after this row (LOGITS_NAME, PROBABILITIES_NAME)
