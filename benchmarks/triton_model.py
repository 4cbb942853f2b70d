"""The Triton baseline's model (Triton's Python backend), copied by serve_bench.py into a temporary
model repository as `rowrnn/1/model.py`, beside the same ONNX file `rowrnn serve` is given.

The `tritonserver` inside the nvidia-pytriton wheel ships the Python backend only (no onnxruntime
backend), so the model runs the ONNX file with onnxruntime, as rowrnn does. Triton's dynamic
batcher hands `execute` every request of a batch: they share one session call, then each request
gets its own slice of the outputs. The session keeps onnxruntime's defaults, as a user would write it.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.outputs = [output["name"] for output in config["output"]]
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def execute(self, requests: list) -> list:
        inputs = [pb_utils.get_input_tensor_by_name(request, "rows").as_numpy() for request in requests]
        batch = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)
        results = self.session.run(self.outputs, {"rows": batch})
        responses, start = [], 0
        for rows in inputs:
            end = start + len(rows)
            tensors = [
                pb_utils.Tensor(name, result[start:end]) for name, result in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        return responses
