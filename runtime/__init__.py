"""rowrnn runtime: run an exported rowrnn ONNX model with onnxruntime, no TensorFlow needed.

    from runtime import Predictor, preprocess_image
    with Predictor() as predictor:                      # the bundled model; or Predictor("model.onnx")
        result = predictor.predict(preprocess_image("digit.png"))
    print(result.labels[0], result.confidence[0])

Streaming over the step model (`rowrnn export --step`): `StreamingPredictor` (runtime.stream).
"""

from runtime.errors import CheckFailed, InputError
from runtime.predictor import BUNDLED_MODEL, Prediction, Predictor, as_rows
from runtime.preprocess import preprocess_image
from runtime.stream import EarlyPrediction, Stream, StreamingPredictor

# What apps use. Training and export import the contract, IDX reader and pixel scaling from
# their modules (runtime.contract, runtime.idx) directly.
__all__ = [
    "BUNDLED_MODEL",
    "CheckFailed",
    "EarlyPrediction",
    "InputError",
    "Prediction",
    "Predictor",
    "Stream",
    "StreamingPredictor",
    "as_rows",
    "preprocess_image",
]
