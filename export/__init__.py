"""rowrnn export: Keras model -> ONNX via tf2onnx, with parity validation."""
