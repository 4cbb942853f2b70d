"""rowrnn runtime: run an exported rowrnn ONNX model with onnxruntime, no TensorFlow needed.

    from runtime import Predictor, preprocess_image
    with Predictor() as predictor:                      # the bundled model; or Predictor("model.onnx")
        result = predictor.predict(preprocess_image("digit.png"))
    print(result.labels[0], result.confidence[0])
"""

from runtime.errors import CheckFailed, InputError
from runtime.predictor import BUNDLED_MODEL, Prediction, Predictor, as_rows
from runtime.preprocess import preprocess_image

# What apps use. Training and export import the contract, IDX reader and pixel scaling from
# their modules (runtime.contract, runtime.idx) directly.
__all__ = [
    "BUNDLED_MODEL",
    "CheckFailed",
    "InputError",
    "Prediction",
    "Predictor",
    "as_rows",
    "preprocess_image",
]
