"""rowrnn runtime: run an exported rowrnn ONNX model with onnxruntime, no TensorFlow needed."""

from runtime.contract import scale_pixels
from runtime.errors import CheckFailed, InputError
from runtime.idx import read_idx

__all__ = ["CheckFailed", "InputError", "read_idx", "scale_pixels"]
