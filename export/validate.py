"""Checks an exported graph must pass: the ONNX contract, and parity with the Keras model."""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from runtime.contract import FULL_MODEL, INPUT_NAME, LOGITS_NAME, ModelIO
from runtime.errors import CheckFailed

PARITY_BATCH_SIZES = (1, 7, 128, "full")
# Control-flow ops: a graph that runs the recurrence step by step in one of these, instead of in the
# fused LSTM op, is refused.
CONTROL_FLOW_OPS = {"Loop", "Scan", "If"}


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the graph has, by op type."""
    return dict(sorted(collections.Counter(node.op_type for node in model.graph.node).items()))


def tensor_signature(value: onnx.ValueInfoProto) -> tuple[int, list[int | str]]:
    """(element type, dims with dim_param names for the symbolic ones) of a graph input or output."""
    tensor = value.type.tensor_type
    return tensor.elem_type, [d.dim_param or d.dim_value for d in tensor.shape.dim]


def check_graph_io(model: onnx.ModelProto, io: ModelIO) -> None:
    """onnx.checker with full checking, then the graph's inputs and outputs exactly as `io` describes
    them (names, order, float32, the symbolic batch dimension first)."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise CheckFailed(f"onnx.checker rejected the graph: {exc}") from None
    for role, values, specs in (("inputs", model.graph.input, io.inputs), ("outputs", model.graph.output, io.outputs)):
        actual = [(v.name, tensor_signature(v)) for v in values]
        expected = [(spec.name, (onnx.TensorProto.FLOAT, spec.shape)) for spec in specs]
        if actual != expected:
            raise CheckFailed(f"not a {io.kind}: graph {role} {actual} differ from the contract {expected}")


def check_no_control_flow(model: onnx.ModelProto) -> dict[str, int]:
    """Refuse a graph that runs the recurrence step by step in control flow; returns its op counts."""
    counts = op_counts(model)
    if CONTROL_FLOW_OPS & counts.keys():
        raise CheckFailed(
            f"graph runs the recurrence in control flow ({sorted(CONTROL_FLOW_OPS & counts.keys())}), not in one fused op or step"
        )
    return counts


def check_contract(model: onnx.ModelProto, quantized: bool = False) -> None:
    """The full model's I/O, no control flow, and the recurrence in exactly one fused LSTM op."""
    check_graph_io(model, FULL_MODEL)
    counts = check_no_control_flow(model)
    lstm_op = "DynamicQuantizeLSTM" if quantized else "LSTM"
    if counts.get(lstm_op, 0) != 1:
        raise CheckFailed(f"expected exactly one fused {lstm_op} op, graph has {counts}")


@dataclass(frozen=True)
class ParityResult:
    batch_size: int | str
    max_abs: float
    mean_abs: float
    argmax_agreement: float

    def to_dict(self) -> dict[str, object]:
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
    """Logit differences and argmax agreement of `candidate` against `reference`."""
    diff = np.abs(reference.astype(np.float64) - candidate)
    agreement = np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1))
    return ParityResult(batch_size, float(diff.max()), float(diff.mean()), float(agreement))


def onnx_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU session on an in-memory model."""
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
    `worst_mean_abs_logit_diff` is the largest of the per-batch-size means (`by_batch_size` has each).
    """
    session = onnx_session(model)
    results, full_batch_logits = [], None
    for b in PARITY_BATCH_SIZES:
        onnx_logits = run_onnx(session, rows, b if isinstance(b, int) else len(rows))
        results.append(compare(keras_logits, onnx_logits, b))
        full_batch_logits = onnx_logits if b == "full" else full_batch_logits
    worst = max(r.max_abs for r in results)
    agreement = min(r.argmax_agreement for r in results)
    return {
        "passed": bool(worst <= atol and agreement == 1.0),
        "atol": atol,
        "images": len(rows),
        "max_abs_logit_diff": worst,
        "worst_mean_abs_logit_diff": max(r.mean_abs for r in results),
        "argmax_agreement": agreement,
        "by_batch_size": [r.to_dict() for r in results],
        "onnx_test_accuracy": None
        if labels is None or full_batch_logits is None
        else accuracy_of(full_batch_logits, labels),
    }


def accuracy_of(logits: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of rows whose largest logit is at the label."""
    return float(np.mean(logits.argmax(axis=1) == labels))


def accuracy(model: onnx.ModelProto, rows: np.ndarray, labels: np.ndarray) -> float:
    """The ONNX model's accuracy on labelled rows."""
    return accuracy_of(run_onnx(onnx_session(model), rows, 1024), labels)
