"""export: the ONNX contract, metadata, parity with Keras, int8, and refusing bad input."""

import json

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import export.api as api
from helpers import synthetic_digits
from export.api import ValidationSet, export_model, quantize_checked, synthetic_rows
from export.validate import check_contract, op_counts
from rowrnn_keras.artifacts import sha256_file
from runtime.contract import scale_pixels
from runtime.errors import CheckFailed, InputError

SHAPE_ARITHMETIC = {"Shape", "Gather", "Concat", "Cast", "Expand", "ConstantOfShape", "Unsqueeze"}


def test_graph_meets_the_contract(exported):
    model = onnx.load(exported.onnx_path)
    check_contract(model)  # names, shapes, one LSTM, checker(full_check=True)
    assert [i.name for i in model.graph.input] == ["rows"]
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    ops = op_counts(model)
    assert ops["LSTM"] == 1 and "Loop" not in ops and "Scan" not in ops
    assert not SHAPE_ARITHMETIC & ops.keys(), ops  # folded into constants
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    assert len(lstm.input) <= 5  # no initial_h / initial_c: zero state is ONNX's default


def test_graph_is_folded_for_speed(exported):
    model = onnx.load(exported.onnx_path)
    ops = op_counts(model)
    # the Dense(28 -> 32) input layer lives inside the LSTM's weights; only the logits layer multiplies
    assert ops == {"Transpose": 1, "LSTM": 1, "Squeeze": 1, "MatMul": 1, "Add": 1, "Softmax": 1}, ops
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    weights = {init.name: init for init in model.graph.initializer}
    assert list(weights[lstm.input[1]].dims) == [1, 4 * 32, 28]  # reads the 28 raw pixels of a row
    assert lstm.input[0] != "rows" and lstm.output[0] == "" and lstm.output[1]  # only Y_h is computed


def test_metadata_round_trips(exported, tiny_keras_model):
    metadata = {p.key: p.value for p in onnx.load(exported.onnx_path).metadata_props}
    assert metadata == exported.metadata
    assert metadata["format_version"] == "1"
    assert json.loads(metadata["class_labels"]) == [str(d) for d in range(10)]
    assert metadata["hidden_units"] == "32"
    assert metadata["architecture"] == "Dense(32) -> LSTM(32) -> Dense(10)"
    assert metadata["source_model_sha256"] == sha256_file(tiny_keras_model)
    assert json.loads(metadata["parity"])["passed"] is True
    for key in ("tensorflow_version", "tf2onnx_version", "onnx_version", "input_scaling"):
        assert metadata[key]
    # onnxruntime sees the same metadata an embedding app would read
    session = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["format_version"] == "1"


def test_parity_report_is_written_beside_the_model(exported):
    report = json.loads(exported.report_path.read_text())
    assert exported.report_path == exported.onnx_path.with_name("model.parity.json")
    assert report["passed"] and report["argmax_agreement"] == 1.0
    assert report["max_abs_logit_diff"] <= 1e-5
    assert [r["batch_size"] for r in report["by_batch_size"]] == [1, 7, 128, "full"]
    assert report["inputs"] == "synthetic"


@pytest.fixture(scope="module")
def keras_and_session(tiny_keras_model, exported):
    model = keras.models.load_model(tiny_keras_model)
    session = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    return model, session


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 64).flatmap(lambda n: arrays(np.float32, (n, 28, 28), elements=st.floats(0, 1, width=32))))
def test_property_any_batch_any_values_match_keras(keras_and_session, rows):
    model, session = keras_and_session
    logits, probabilities = session.run(None, {"rows": rows})
    expected = model(rows, training=False).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, keras.ops.softmax(expected).numpy(), atol=1e-5)


def test_parity_failure_refuses_to_write(tiny_keras_model, tmp_path, monkeypatch):
    real_convert = api.convert

    def drifted(model, opset):  # a converter bug: one weight off by a little
        proto = real_convert(model, opset)
        init = next(i for i in proto.graph.initializer if len(i.dims) == 2 and i.dims[-1] == 10)
        weights = onnx.numpy_helper.to_array(init) + np.float32(0.05)
        init.CopyFrom(onnx.numpy_helper.from_array(weights, init.name))
        return proto

    monkeypatch.setattr(api, "convert", drifted)
    output = tmp_path / "bad.onnx"
    output.write_bytes(b"previous model")
    with pytest.raises(CheckFailed, match="does not match Keras"):
        export_model(tiny_keras_model, output, validation=ValidationSet(synthetic_rows(64), None, "synthetic"))
    assert output.read_bytes() == b"previous model"  # untouched
    assert json.loads((tmp_path / "bad.parity.json").read_text())["passed"] is False
    assert not list(tmp_path.glob(".*"))  # no temp files left


def test_int8_is_quantized_checked_and_bounded(exported):
    fp32 = onnx.load(exported.onnx_path)
    images, labels = synthetic_digits(300, 5)
    inputs = ValidationSet(scale_pixels(images), labels.astype(np.int64), "synthetic digits")
    from export.validate import accuracy

    fp32_accuracy = accuracy(fp32, inputs.rows, inputs.labels)
    int8, report = quantize_checked(fp32, inputs, fp32_accuracy, max_drop=0.05)
    check_contract(int8, quantized=True)
    assert report["size_bytes"] < 0.5 * report["fp32_size_bytes"]
    assert report["accuracy_drop"] == pytest.approx(fp32_accuracy - report["test_accuracy"])
    metadata = {p.key: p.value for p in int8.metadata_props}
    assert metadata["quantization"].startswith("dynamic int8")
    with pytest.raises(CheckFailed, match="int8 model loses"):
        quantize_checked(fp32, inputs, fp32_accuracy + 0.2, max_drop=0.005)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"opset": 9}, "--opset 9 is not supported"),
        ({"atol": 0.0}, "--atol"),
        ({"quantize": "int4"}, "--quantize 'int4'"),
    ],
)
def test_bad_options_write_nothing(tiny_keras_model, tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        export_model(tiny_keras_model, tmp_path / "m.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_bad_model_and_output_paths(tmp_path, tiny_keras_model):
    with pytest.raises(InputError, match="no such file"):
        export_model(tmp_path / "absent.keras", tmp_path / "m.onnx")
    (tmp_path / "junk.keras").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a Keras model file"):
        export_model(tmp_path / "junk.keras", tmp_path / "m.onnx")
    with pytest.raises(InputError, match="is a directory"):
        export_model(tiny_keras_model, tmp_path)
    with pytest.raises(InputError, match="must end in .onnx"):
        export_model(tiny_keras_model, tmp_path / "m.txt")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        export_model(tiny_keras_model, tmp_path / "file" / "m.onnx")


def test_model_of_another_shape_is_refused(tmp_path):
    other = keras.Sequential([keras.Input((28, 28)), keras.layers.LSTM(4), keras.layers.Dense(5)])
    other.save(tmp_path / "five.keras")
    with pytest.raises(InputError, match=r"output shape .* is not \(batch, 10\)"):
        export_model(tmp_path / "five.keras", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_real_mnist_parity_and_int8(real_model, mnist_dir, tmp_path):
    result = export_model(real_model, tmp_path / "model.onnx", data_dir=mnist_dir, quantize="int8")
    report = result.report
    assert report["images"] == 10_000 and report["inputs"].startswith("MNIST test set")
    assert report["max_abs_logit_diff"] <= 1e-5 and report["argmax_agreement"] == 1.0
    assert report["onnx_test_accuracy"] > 0.9
    assert report["int8"]["accuracy_drop"] <= 0.005
    assert result.int8_path.stat().st_size < result.onnx_path.stat().st_size / 2
    metadata = {p.key: p.value for p in onnx.load(result.int8_path).metadata_props}
    assert float(metadata["test_accuracy"]) == pytest.approx(report["int8"]["test_accuracy"])


def lstm_graph(hidden: int = 8, activation: str | None = None) -> onnx.ModelProto:
    """rows -> MatMul/Add (a Dense layer) [-> activation] -> Transpose -> LSTM -> last step of Y
    -> MatMul/Add -> logits, Softmax: the shape of graph tf2onnx gives, built by hand."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weights = {
        "A": rng.normal(size=(28, hidden)), "a": rng.normal(size=hidden),
        "W": rng.normal(size=(1, 4 * hidden, hidden)) * 0.3, "R": rng.normal(size=(1, 4 * hidden, hidden)) * 0.3,
        "B": rng.normal(size=(1, 8 * hidden)) * 0.1, "D": rng.normal(size=(hidden, 10)), "d": rng.normal(size=10),
        "axis0": np.array([0]), "axis1": np.array([1]), "start": np.array([-1]), "end": np.array([2**62]),
    }
    initializers = [numpy_helper.from_array(v.astype(np.int64 if v.dtype.kind == "i" else np.float32), k) for k, v in weights.items()]
    dense_out = "act" if activation else "dense"
    nodes = [
        helper.make_node("MatMul", ["rows", "A"], ["mm"]),
        helper.make_node("Add", ["mm", "a"], ["dense"]),
        *([helper.make_node(activation, ["dense"], ["act"])] if activation else []),
        helper.make_node("Transpose", [dense_out], ["seq"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["seq", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden),
        helper.make_node("Squeeze", ["Y", "axis1"], ["y"]),
        helper.make_node("Slice", ["y", "start", "end", "axis0"], ["last3"]),
        helper.make_node("Squeeze", ["last3", "axis0"], ["last"]),
        helper.make_node("MatMul", ["last", "D"], ["lm"]),
        helper.make_node("Add", ["lm", "d"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes, "lstm", [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 28, 28])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 10]) for n in ("logits", "probabilities")],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_graph(model: onnx.ModelProto, rows: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"rows": rows})


@pytest.mark.parametrize("activation", [None, "Relu"])
def test_simplify_folds_only_a_linear_input_layer_and_keeps_the_function(activation):
    from export.convert import simplify

    original = lstm_graph(activation=activation)
    simplified = simplify(original)
    rows = np.random.default_rng(2).random((5, 28, 28), dtype=np.float32)
    for before, after in zip(run_graph(original, rows), run_graph(simplified, rows)):
        np.testing.assert_allclose(after, before, atol=1e-5, rtol=1e-5)
    ops = op_counts(simplified)
    assert "Slice" not in ops  # the last step of Y is read from Y_h
    assert ops["MatMul"] == (1 if activation is None else 2)  # a Relu in between is not linear: no fold
