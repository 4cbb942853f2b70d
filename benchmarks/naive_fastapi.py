"""The naive baseline of benchmarks/serve_bench.py: what a user writes first.

A FastAPI handler that parses the JSON request, calls onnxruntime once per request and returns
JSON; no batching, no binary tensors. Run: ROWRNN_MODEL=model.onnx uvicorn naive_fastapi:app
"""

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI

session = ort.InferenceSession(os.environ["ROWRNN_MODEL"], providers=["CPUExecutionProvider"])
app = FastAPI()


@app.post("/v2/models/rowrnn/infer")
def infer(request: dict) -> dict:
    tensor = request["inputs"][0]
    rows = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    logits, probabilities = session.run(["logits", "probabilities"], {"rows": rows})
    return {
        "model_name": "rowrnn",
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": list(logits.shape), "data": logits.ravel().tolist()},
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": list(probabilities.shape),
                "data": probabilities.ravel().tolist(),
            },
        ],
    }
