"""The ONNX contract: what every model file rowrnn writes looks like, and the pixel scaling.

Training, export and the runtime all read these names; the runtime is the leaf package, so the
contract lives here and the other packages import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import InputError

FORMAT_VERSION = "1"
INPUT_NAME = "rows"  # float32 [batch, 28, 28], values in [0, 1]
BATCH_DIM = "batch"
LOGITS_NAME = "logits"  # float32 [batch, 10]
PROBABILITIES_NAME = "probabilities"  # float32 [batch, 10], softmax of logits
IMAGE_ROWS = IMAGE_COLS = 28
IMAGE_SHAPE = (IMAGE_ROWS, IMAGE_COLS)
PIXELS = IMAGE_ROWS * IMAGE_COLS
NUM_CLASSES = 10
CLASS_LABELS = tuple(str(d) for d in range(NUM_CLASSES))
INPUT_SCALING = "uint8 pixel / 255 -> float32 in [0, 1], white ink on black (MNIST)"


def scale_pixels(images: np.ndarray) -> np.ndarray:
    """Scale uint8 pixels 0-255 to float32 in [0, 1]: the one scaling used in training and serving."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise InputError(f"expected uint8 pixels, got dtype {images.dtype}")
    scaled: np.ndarray = np.divide(images, np.float32(255.0), dtype=np.float32)  # exact: uint8 -> float32, then /255
    return scaled


# The step model (`rowrnn export --step` -> OUT.step.onnx): one image row per call, the LSTM state
# passed in and out explicitly, so a caller can classify while rows arrive. A zero state is the
# start of an image.
STEP_FORMAT = "step"  # metadata `format` of a step model (full models have no `format` key)
ROW_NAME = "row"  # float32 [batch, 28]: one pixel row, /255
STATE_NAMES = ("h", "c")  # float32 [batch, hidden_units]: the LSTM state before this row
STATE_OUT_NAMES = ("h_out", "c_out")  # float32 [batch, hidden_units]: the state after it
# logits and probabilities [batch, 10]: the prediction after this row (LOGITS_NAME, PROBABILITIES_NAME)
STEP_SUFFIX = ".step.onnx"  # MODEL.onnx -> MODEL.step.onnx, its step model


def step_path_for(model: str | Path) -> Path:
    """Where the step model of `model` lives: `MODEL.step.onnx` beside `MODEL.onnx`."""
    model = Path(model)
    return model.with_name(model.stem + STEP_SUFFIX)


# ------------------------------------------------------------ the I/O, described once
# Export checks its graphs against these, the runtime checks the sessions it opens, the metadata
# and the Triton configuration are written from them: one description, as optimum's OnnxConfig.


@dataclass(frozen=True)
class TensorSpec:
    """A float32 graph input or output: its name and its dims after the batch dimension."""

    name: str
    dims: tuple[int | str, ...]  # a str only to describe an unknown size ("H") in a message

    @property
    def shape(self) -> list[int | str]:
        """The ONNX shape, the symbolic batch dimension first."""
        return [BATCH_DIM, *self.dims]

    def describe(self) -> str:
        return f"'{self.name}' float32 [{', '.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class ModelIO:
    """What a rowrnn ONNX file of one kind takes and gives, and the metadata that names its kind."""

    kind: str  # for people: "rowrnn model" or "rowrnn step model"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    format: str | None = None  # metadata `format`: None for the full model, STEP_FORMAT for steps

    def metadata(self) -> dict[str, str]:
        """The contract's part of a model's metadata_props (export adds provenance and parity)."""
        kind = {} if self.format is None else {"format": self.format}
        return {
            "format_version": FORMAT_VERSION,
            **kind,
            "class_labels": json.dumps(list(CLASS_LABELS)),
            "input_scaling": INPUT_SCALING,
        }

    def metadata_problem(self, metadata: dict[str, str]) -> str | None:
        """Why `metadata` does not name this kind of model at the supported format version, or None."""
        found = (metadata.get("format_version"), metadata.get("format"))
        if found == (FORMAT_VERSION, self.format):
            return None
        if self.format is None:
            return f"rowrnn format version {found[0]!r} is not the supported {FORMAT_VERSION!r}"
        return f"rowrnn format {found[0]!r}/{found[1]!r} is not the supported {FORMAT_VERSION!r}/{self.format!r}"


def output_specs(hidden: int | str | None = None) -> tuple[TensorSpec, ...]:
    state = tuple(TensorSpec(name, (hidden,)) for name in STATE_OUT_NAMES) if hidden is not None else ()
    return (*state, TensorSpec(LOGITS_NAME, (NUM_CLASSES,)), TensorSpec(PROBABILITIES_NAME, (NUM_CLASSES,)))


# The full model: a whole image in, the answer out.
FULL_MODEL = ModelIO("rowrnn model", (TensorSpec(INPUT_NAME, IMAGE_SHAPE),), output_specs())


def step_model_io(hidden: int | str) -> ModelIO:
    """The step model of an LSTM with `hidden` units: one row and the state in, the state and the answer out."""
    state = tuple(TensorSpec(name, (hidden,)) for name in STATE_NAMES)
    return ModelIO(
        "rowrnn step model", (TensorSpec(ROW_NAME, (IMAGE_COLS,)), *state), output_specs(hidden), STEP_FORMAT
    )
