"""Export's defaults and limits, in a module that imports nothing heavy.

`export_model` and the `rowrnn export` options both read these, so the command line cannot drift
from the library; the CLI can import this module without loading TensorFlow or tf2onnx.
"""

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 14, 18  # LSTM layout of opset 14; tf2onnx 1.17 targets up to 18
DEFAULT_ATOL = 1e-4  # largest |Keras - ONNX| logit difference; measured ~5e-6 on the MNIST test set
MAX_ATOL = 1e-2  # beyond this a "match" would hide real conversion bugs
DEFAULT_MAX_INT8_DROP = 0.005  # test accuracy, as a fraction: 0.5 percentage points
QUANTIZE_CHOICES = ("int8",)
