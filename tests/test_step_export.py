"""export --step: the step model's contract, metadata, parity with the full model and Keras, refusal."""

import json

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import export.step as step_module
from export.api import ValidationSet, export_model, synthetic_rows
from export.step import check_step_contract, step_layers
from helpers import rowrnn
from runtime.errors import CheckFailed, InputError

HIDDEN = 32  # the tiny model's LSTM


def step_logits(session: ort.InferenceSession, rows: np.ndarray) -> np.ndarray:
    """28 calls from a zero state, written out here rather than borrowed from the code under test."""
    h = c = np.zeros((len(rows), HIDDEN), np.float32)
    for r in range(28):
        h, c, logits = session.run(["h_out", "c_out", "logits"], {"row": rows[:, r], "h": h, "c": c})
    return logits


def test_step_graph_meets_the_step_contract(exported_step):
    model = onnx.load(exported_step.step_path)
    assert exported_step.step_path == exported_step.onnx_path.with_name("model.step.onnx")
    check_step_contract(model, HIDDEN)  # names, shapes, no loops, checker(full_check=True)
    assert [i.name for i in model.graph.input] == ["row", "h", "c"]
    assert [o.name for o in model.graph.output] == ["h_out", "c_out", "logits", "probabilities"]
    assert all(v.type.tensor_type.shape.dim[0].dim_param == "batch" for v in [*model.graph.input, *model.graph.output])
    # the Dense(28 -> 32) input layer is folded in: the cell's input weights read the 28 raw pixels
    shapes = sorted(tuple(i.dims) for i in model.graph.initializer if len(i.dims) == 2)
    assert (28, 4 * HIDDEN) in shapes and (HIDDEN, 4 * HIDDEN) in shapes and (28, 32) not in shapes, shapes


def test_step_metadata_is_the_full_models_plus_format(exported_step):
    full = {p.key: p.value for p in onnx.load(exported_step.onnx_path).metadata_props}
    stepped = {p.key: p.value for p in onnx.load(exported_step.step_path).metadata_props}
    assert stepped.pop("format") == "step" and "format" not in full
    assert json.loads(stepped.pop("step_parity"))["passed"] is True
    assert stepped == full


def test_step_parity_report_joins_the_parity_json(exported_step):
    report = json.loads(exported_step.report_path.read_text())
    assert report["passed"]  # the full model's own check is still there
    stepped = report["step"]
    assert stepped["passed"] and stepped["images"] == 512
    assert [r["batch_size"] for r in stepped["by_batch_size"]] == [1, 7, "full"]
    assert stepped["max_abs_logit_diff_vs_full_onnx"] <= 1e-5 and stepped["atol_vs_full_onnx"] == 1e-5
    assert stepped["max_abs_logit_diff_vs_keras"] <= stepped["atol_vs_keras"] == 1e-4
    assert stepped["argmax_agreement_vs_full_onnx"] == stepped["argmax_agreement_vs_keras"] == 1.0
    assert "Loop" not in stepped["ops"] and "LSTM" not in stepped["ops"]  # one cell step, no recurrence


@pytest.fixture(scope="module")
def three_engines(tiny_keras_model, exported_step):
    def session(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    return keras.models.load_model(tiny_keras_model), session(exported_step.onnx_path), session(exported_step.step_path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 64).flatmap(lambda n: arrays(np.float32, (n, 28, 28), elements=st.floats(0, 1, width=32))))
def test_property_28_steps_match_the_full_model_and_keras(three_engines, rows):
    model, full, stepped = three_engines
    logits = step_logits(stepped, rows)
    np.testing.assert_allclose(logits, full.run(["logits"], {"rows": rows})[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits, model(rows, training=False).numpy(), atol=1e-4, rtol=0)


def test_each_step_is_the_lstm_after_that_many_rows(three_engines):
    """After k rows the step model holds the state Keras's LSTM has after the first k rows."""
    model, _, stepped = three_engines
    rows = np.random.default_rng(3).random((5, 28, 28), dtype=np.float32)
    embedding, lstm, _ = model.layers
    sequence = keras.layers.LSTM(HIDDEN, return_sequences=True, return_state=True)
    sequence.build((None, 28, 32))
    sequence.set_weights(lstm.get_weights())
    outputs, _, _ = sequence(embedding(rows))
    h = c = np.zeros((5, HIDDEN), np.float32)
    for r in range(28):
        h, c = stepped.run(["h_out", "c_out"], {"row": rows[:, r], "h": h, "c": c})
        np.testing.assert_allclose(h, outputs[:, r].numpy(), atol=1e-5, rtol=0)


def test_step_parity_failure_writes_no_model(tiny_keras_model, tmp_path, monkeypatch):
    real_convert = step_module.convert_step

    def drifted(model, opset):  # a converter bug: the logits layer's weights a little off
        proto = real_convert(model, opset)
        init = next(i for i in proto.graph.initializer if list(i.dims) == [HIDDEN, 10])
        init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) + np.float32(0.05), init.name))
        return proto

    monkeypatch.setattr(step_module, "convert_step", drifted)
    output = tmp_path / "model.onnx"
    with pytest.raises(CheckFailed, match="step model does not reproduce 28 rows"):
        export_model(
            tiny_keras_model, output, validation=ValidationSet(synthetic_rows(64), None, "synthetic"), step=True
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.parity.json"]  # no .onnx, no temporaries
    report = json.loads((tmp_path / "model.parity.json").read_text())
    assert report["passed"] is True and report["step"]["passed"] is False
    assert report["step"]["max_abs_logit_diff_vs_full_onnx"] > 1e-3


def test_the_step_contract_check_refuses_other_graphs(exported_step):
    with pytest.raises(CheckFailed, match="not a rowrnn step model: graph inputs"):
        check_step_contract(onnx.load(exported_step.onnx_path), HIDDEN)  # the full model
    with pytest.raises(CheckFailed, match="not a rowrnn step model: graph inputs"):
        check_step_contract(onnx.load(exported_step.step_path), 64)  # a state of the wrong size
    renamed = onnx.load(exported_step.step_path)
    for node in renamed.graph.node:
        node.input[:] = ["h_new" if name == "h_out" else name for name in node.input]
        node.output[:] = ["h_new" if name == "h_out" else name for name in node.output]
    renamed.graph.output[0].name = "h_new"
    with pytest.raises(CheckFailed, match="not a rowrnn step model: graph outputs"):
        check_step_contract(renamed, HIDDEN)


@pytest.mark.parametrize(
    "layers, problem",
    [
        (
            lambda: [keras.layers.Dense(8, activation="relu"), keras.layers.LSTM(8), keras.layers.Dense(10)],
            "relu activation: not linear",
        ),
        (
            lambda: [keras.layers.Dense(8), keras.layers.LSTM(8, go_backwards=True), keras.layers.Dense(10)],
            "not a plain forward",
        ),
        (
            lambda: [keras.layers.Dense(8), keras.layers.LSTM(8), keras.layers.Dense(10, activation="softmax")],
            "linear output layer",
        ),
        (lambda: [keras.layers.Dense(8), keras.layers.GRU(8), keras.layers.Dense(10)], "Dense -> GRU -> Dense"),
        (lambda: [keras.layers.LSTM(8), keras.layers.Dense(10)], "Dense -> LSTM -> Dense"),
    ],
    ids=["relu", "gru", "no-embedding", "backwards", "softmax-head"],
)
def test_the_step_export_refuses_other_architectures(layers, problem):
    model = keras.Sequential([keras.Input((28, 28)), *layers()])
    with pytest.raises(InputError, match=problem):
        step_layers(model)


@pytest.mark.parametrize(
    "dense_bias, lstm_bias",
    [(False, True), (True, False), (False, False)],
    ids=["dense-without-bias", "lstm-without-bias", "neither"],
)
def test_models_without_biases_step_exactly(dense_bias, lstm_bias):
    """The step export folds as the full export does, bias-free layers included (it once crashed on them)."""
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Dense(32, use_bias=dense_bias),
            keras.layers.LSTM(HIDDEN, use_bias=lstm_bias),
            keras.layers.Dense(10),
        ]
    )
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])
    proto = step_module.convert_step(model, opset=17)
    check_step_contract(proto, HIDDEN)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = synthetic_rows(64, seed=2)
    np.testing.assert_allclose(step_logits(session, rows), model(rows, training=False).numpy(), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_cli_export_step_writes_both_files(tiny_keras_model, tmp_path):
    result = rowrnn("export", tmp_path / "m.onnx", "--model", tiny_keras_model, "--step", env={"ROWRNN_DATA": ""})
    assert result.returncode == 0, result.stderr
    assert "wrote " + str(tmp_path / "m.step.onnx") + ": 28 steps reproduce the full model" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.parity.json", "m.step.onnx"]
    assert json.loads((tmp_path / "m.parity.json").read_text())["step"]["passed"] is True


@pytest.mark.slow
def test_real_model_step_parity_on_the_mnist_test_set(real_model, mnist_dir, tmp_path):
    result = export_model(real_model, tmp_path / "model.onnx", data_dir=mnist_dir, step=True)
    stepped = result.report["step"]
    assert stepped["passed"] and stepped["images"] == 10_000
    assert stepped["max_abs_logit_diff_vs_full_onnx"] <= 1e-5
    assert stepped["max_abs_logit_diff_vs_keras"] <= 1e-4
