"""Checks an exported graph must pass: the ONNX contract, and parity with the Keras model."""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from runtime.contract import (
    BATCH_DIM,
    IMAGE_SHAPE,
    INPUT_NAME,
    LOGITS_NAME,
    NUM_CLASSES,
    PROBABILITIES_NAME,
)
from runtime.errors import CheckFailed

PARITY_BATCH_SIZES = (1, 7, 128, "full")
UNROLLED_OPS = {"Loop", "Scan", "If"}


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(collections.Counter(node.op_type for node in model.graph.node).items()))


def tensor_signature(value: onnx.ValueInfoProto) -> tuple[int, list[int | str]]:
    tensor = value.type.tensor_type
    return tensor.elem_type, [d.dim_param or d.dim_value for d in tensor.shape.dim]


def check_contract(model: onnx.ModelProto, quantized: bool = False) -> None:
    """Names, dtypes, shapes, the single fused LSTM, and onnx.checker with full checking."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise CheckFailed(f"onnx.checker rejected the graph: {exc}") from None
    graph = model.graph
    float32 = onnx.TensorProto.FLOAT
    expected_inputs = [(INPUT_NAME, (float32, [BATCH_DIM, *IMAGE_SHAPE]))]
    expected_outputs = [
        (LOGITS_NAME, (float32, [BATCH_DIM, NUM_CLASSES])),
        (PROBABILITIES_NAME, (float32, [BATCH_DIM, NUM_CLASSES])),
    ]
    actual_inputs = [(v.name, tensor_signature(v)) for v in graph.input]
    actual_outputs = [(v.name, tensor_signature(v)) for v in graph.output]
    if actual_inputs != expected_inputs:
        raise CheckFailed(f"graph inputs {actual_inputs} differ from the contract {expected_inputs}")
    if actual_outputs != expected_outputs:
        raise CheckFailed(f"graph outputs {actual_outputs} differ from the contract {expected_outputs}")
    counts = op_counts(model)
    lstm_op = "DynamicQuantizeLSTM" if quantized else "LSTM"
    if counts.get(lstm_op, 0) != 1:
        raise CheckFailed(f"expected exactly one fused {lstm_op} op, graph has {counts}")
    if UNROLLED_OPS & counts.keys():
        raise CheckFailed(f"graph unrolls the recurrence with {sorted(UNROLLED_OPS & counts.keys())}")


@dataclass(frozen=True)
class ParityResult:
    batch_size: int | str
    max_abs: float
    mean_abs: float
    argmax_agreement: float

    def to_dict(self) -> dict:
        return {
            "batch_size": self.batch_size,
            "max_abs_logit_diff": self.max_abs,
            "mean_abs_logit_diff": self.mean_abs,
            "argmax_agreement": self.argmax_agreement,
        }


def run_onnx(session: ort.InferenceSession, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits for `rows`, fed `batch_size` images per call."""
    chunks = [
        session.run([LOGITS_NAME], {INPUT_NAME: rows[start : start + batch_size]})[0]
        for start in range(0, len(rows), batch_size)
    ]
    return np.concatenate(chunks)


def compare(reference: np.ndarray, candidate: np.ndarray, batch_size: int | str) -> ParityResult:
    diff = np.abs(reference.astype(np.float64) - candidate)
    agreement = np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1))
    return ParityResult(batch_size, float(diff.max()), float(diff.mean()), float(agreement))


def onnx_session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def parity_report(
    keras_logits: np.ndarray,
    model: onnx.ModelProto,
    rows: np.ndarray,
    atol: float,
    labels: np.ndarray | None = None,
) -> dict:
    """Run onnxruntime on `rows` at each parity batch size and compare with Keras's logits.

    With `labels`, the report also gives the ONNX model's accuracy (from the full-batch run).
    """
    session = onnx_session(model)
    results, onnx_logits = [], None
    for b in PARITY_BATCH_SIZES:
        onnx_logits = run_onnx(session, rows, len(rows) if b == "full" else b)
        results.append(compare(keras_logits, onnx_logits, b))
    worst = max(r.max_abs for r in results)
    agreement = min(r.argmax_agreement for r in results)
    return {
        "passed": bool(worst <= atol and agreement == 1.0),
        "atol": atol,
        "images": len(rows),
        "max_abs_logit_diff": worst,
        "mean_abs_logit_diff": max(r.mean_abs for r in results),
        "argmax_agreement": agreement,
        "by_batch_size": [r.to_dict() for r in results],
        "onnx_test_accuracy": None if labels is None else accuracy_of(onnx_logits, labels),
    }


def accuracy_of(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=1) == labels))


def accuracy(model: onnx.ModelProto, rows: np.ndarray, labels: np.ndarray) -> float:
    return accuracy_of(run_onnx(onnx_session(model), rows, 1024), labels)
