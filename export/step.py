"""The step model (`OUT.step.onnx`): one LSTM step per call, its state passed in and out.

An RNN can classify while the rows arrive, but ONNX models are stateless; so the state is explicit:
inputs `row` [batch, 28], `h` and `c` [batch, H]; outputs `h_out`, `c_out`, `logits` and
`probabilities` after this row. A zero state is the start of an image.

tf2onnx converts a `tf.function` over one call of the trained LSTM cell (the same route as the full
model: `from_keras` is broken on Keras 3). The input Dense layer is folded into the cell's input
weights before conversion, in float64, as `export.convert.fold_input_layer` does for the full
graph: the cell reads the 28 raw pixels of a row. A step file is written only if 28 steps from a
zero state reproduce the full ONNX model (max-abs logit difference <= 1e-5) and Keras (<= --atol).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from export.convert import fold_problem, folded_lstm_weights, name_batch_dimension
from export.validate import check_graph_io, check_no_control_flow, compare, onnx_session, op_counts, run_onnx
from runtime.contract import (
    IMAGE_COLS,
    IMAGE_ROWS,
    LOGITS_NAME,
    PROBABILITIES_NAME,
    ROW_NAME,
    STATE_NAMES,
    STATE_OUT_NAMES,
    step_model_io,
)
from runtime.errors import InputError

STEP_PARITY_BATCH_SIZES = (1, 7, "full")
FULL_MODEL_ATOL = 1e-5  # the step model against the full ONNX model: the same arithmetic, re-ordered
STEP_OUTPUTS = (*STATE_OUT_NAMES, LOGITS_NAME, PROBABILITIES_NAME)


def step_layers(model: keras.Model) -> tuple[keras.layers.Dense, keras.layers.LSTM, keras.layers.Dense]:
    """The model's Dense -> LSTM -> Dense, or an InputError: the fold and the step need exactly that."""
    kinds = [type(layer).__name__ for layer in model.layers]
    if kinds != ["Dense", "LSTM", "Dense"]:
        raise InputError(f"step export needs a Dense -> LSTM -> Dense model, got {' -> '.join(kinds)}")
    problem = fold_problem(model)  # the full export's own check: both exports fold the same models
    if problem:
        raise InputError(f"step export needs a foldable model: {problem}")
    embedding, lstm, logits = model.layers
    if getattr(logits.activation, "__name__", None) != "linear":
        raise InputError(
            f"step export needs a linear output layer (logits); {logits.name} has {logits.activation.__name__}"
        )
    return embedding, lstm, logits


def folded_cell(embedding: keras.layers.Dense, lstm: keras.layers.LSTM) -> keras.layers.LSTMCell:
    """A copy of the trained cell that reads raw pixel rows: `folded_lstm_weights`, as the full export."""
    cell = keras.layers.LSTMCell.from_config({**lstm.cell.get_config(), "use_bias": True, "name": "step_cell"})
    cell.build((None, IMAGE_COLS))
    cell.set_weights(folded_lstm_weights(embedding, lstm))
    return cell


def step_signature(hidden: int) -> list[tf.TensorSpec]:
    """The step model's inputs: one row and the state before it, named by the contract."""
    return [
        tf.TensorSpec((None, IMAGE_COLS), tf.float32, name=ROW_NAME),
        *(tf.TensorSpec((None, hidden), tf.float32, name=name) for name in STATE_NAMES),
    ]


def step_function(model: keras.Model) -> tf.types.experimental.GenericFunction:
    """One inference-mode step of the trained (folded) cell and the logits layer, named outputs."""
    embedding, lstm, logits_layer = step_layers(model)
    cell = folded_cell(embedding, lstm)

    @tf.function(input_signature=step_signature(lstm.units))
    def step(row, h, c):
        h_out, (_, c_out) = cell(row, [h, c], training=False)
        logits = logits_layer(h_out)
        return {
            STATE_OUT_NAMES[0]: h_out,
            STATE_OUT_NAMES[1]: c_out,
            LOGITS_NAME: logits,
            PROBABILITIES_NAME: tf.nn.softmax(logits, axis=-1),
        }

    return step


def convert_step(model: keras.Model, opset: int) -> onnx.ModelProto:
    """tf2onnx conversion of one step; outputs in contract order, the batch dimension named."""
    step = step_function(model)
    proto, _ = tf2onnx.convert.from_function(step, input_signature=step_signature(model.layers[1].units), opset=opset)
    outputs = {value.name: value for value in proto.graph.output}
    ordered = [outputs[name] for name in STEP_OUTPUTS if name in outputs]  # tf2onnx sorts them by name
    if len(ordered) == len(outputs):
        del proto.graph.output[:]
        proto.graph.output.extend(ordered)
    name_batch_dimension(proto)
    return proto


def check_step_contract(model: onnx.ModelProto, hidden: int) -> None:
    """The step model's I/O, and one step of plain ops: no control flow."""
    check_graph_io(model, step_model_io(hidden))
    check_no_control_flow(model)


def run_steps(session: ort.InferenceSession, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits after 28 steps from a zero state, `batch_size` images per call."""
    hidden = session.get_inputs()[1].shape[1]
    chunks = []
    for start in range(0, len(rows), batch_size):
        images = rows[start : start + batch_size]
        h = c = np.zeros((len(images), hidden), np.float32)
        for r in range(IMAGE_ROWS):
            h, c, logits = session.run(
                [*STATE_OUT_NAMES, LOGITS_NAME], {ROW_NAME: images[:, r], STATE_NAMES[0]: h, STATE_NAMES[1]: c}
            )
        chunks.append(logits)
    return np.concatenate(chunks)


def step_parity_report(
    step_model: onnx.ModelProto, full_model: onnx.ModelProto, keras_logits: np.ndarray, rows: np.ndarray, atol: float
) -> dict:
    """28 steps at batch sizes 1, 7 and all against the full ONNX model (<= 1e-5) and Keras (<= atol)."""
    full_logits = run_onnx(onnx_session(full_model), rows, len(rows))
    session = onnx_session(step_model)
    by_batch: list[dict[str, Any]] = []
    for b in STEP_PARITY_BATCH_SIZES:
        logits = run_steps(session, rows, b if isinstance(b, int) else len(rows))
        by_batch.append(
            {
                "batch_size": b,
                "vs_full_onnx": compare(full_logits, logits, b).to_dict(),
                "vs_keras": compare(keras_logits, logits, b).to_dict(),
            }
        )
    worst = {ref: max(r[ref]["max_abs_logit_diff"] for r in by_batch) for ref in ("vs_full_onnx", "vs_keras")}
    agreement = {ref: min(r[ref]["argmax_agreement"] for r in by_batch) for ref in ("vs_full_onnx", "vs_keras")}
    passed = worst["vs_full_onnx"] <= FULL_MODEL_ATOL and worst["vs_keras"] <= atol and min(agreement.values()) == 1.0
    return {
        "passed": bool(passed),
        "images": len(rows),
        "atol_vs_full_onnx": FULL_MODEL_ATOL,
        "atol_vs_keras": atol,
        "max_abs_logit_diff_vs_full_onnx": worst["vs_full_onnx"],
        "max_abs_logit_diff_vs_keras": worst["vs_keras"],
        "argmax_agreement_vs_full_onnx": agreement["vs_full_onnx"],
        "argmax_agreement_vs_keras": agreement["vs_keras"],
        "by_batch_size": by_batch,
        "ops": op_counts(step_model),
    }


def export_step(
    model: keras.Model,
    full_model: onnx.ModelProto,
    rows: np.ndarray,
    keras_logits: np.ndarray,
    metadata: dict[str, str],
    opset: int,
    atol: float,
) -> tuple[onnx.ModelProto, dict]:
    """Convert, check the contract, measure parity; the model carries the full model's metadata plus
    `format: step`. The caller writes the report, and the file only if `report["passed"]`."""
    proto = convert_step(model, opset)
    check_step_contract(proto, model.layers[1].units)
    report = step_parity_report(proto, full_model, keras_logits, rows, atol)
    summary = {
        k: report[k] for k in ("passed", "max_abs_logit_diff_vs_full_onnx", "max_abs_logit_diff_vs_keras", "images")
    }
    del proto.metadata_props[:]
    contract = step_model_io(model.layers[1].units).metadata()  # format: step
    onnx.helper.set_model_props(proto, {**metadata, **contract, "step_parity": json.dumps(summary)})
    return proto, report


def step_failure(report: dict, report_path: Path) -> str:
    return (
        f"the step model does not reproduce 28 rows: max-abs logit diff {report['max_abs_logit_diff_vs_full_onnx']:.3g} "
        f"against the full ONNX model (allowed {report['atol_vs_full_onnx']:g}), "
        f"{report['max_abs_logit_diff_vs_keras']:.3g} against Keras (atol {report['atol_vs_keras']:g}); see {report_path}"
    )
