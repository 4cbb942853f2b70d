"""rowrnn runtime: run an exported rowrnn ONNX model with onnxruntime, no TensorFlow needed.

    from runtime import Predictor, preprocess_image
    predictor = Predictor("model.onnx")
    result = predictor.predict(preprocess_image("digit.png"))
"""

from runtime.contract import scale_pixels
from runtime.errors import CheckFailed, InputError
from runtime.idx import read_idx
from runtime.predictor import Prediction, Predictor, as_rows
from runtime.preprocess import preprocess_image

__all__ = [
    "CheckFailed",
    "InputError",
    "Prediction",
    "Predictor",
    "as_rows",
    "preprocess_image",
    "read_idx",
    "scale_pixels",
]
