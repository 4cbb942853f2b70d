"""rowrnn runtime: run an exported rowrnn ONNX model with onnxruntime, no TensorFlow needed.

    from runtime import Predictor, preprocess_image
    predictor = Predictor("model.onnx")
    result = predictor.predict(preprocess_image("digit.png"))

Streaming over the step model (`rowrnn export --step`): `StreamingPredictor` (runtime.stream).
"""

from runtime.contract import scale_pixels
from runtime.errors import CheckFailed, InputError
from runtime.idx import read_idx
from runtime.predictor import Prediction, Predictor, as_rows
from runtime.preprocess import preprocess_image
from runtime.stream import EarlyPrediction, Stream, StreamingPredictor

__all__ = [
    "CheckFailed",
    "EarlyPrediction",
    "InputError",
    "Prediction",
    "Predictor",
    "Stream",
    "StreamingPredictor",
    "as_rows",
    "preprocess_image",
    "read_idx",
    "scale_pixels",
]
