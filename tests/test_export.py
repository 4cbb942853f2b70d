"""export: the ONNX contract, metadata, parity with Keras, int8, and each graph rewrite: where it
must fire, where it must not, and that it never changes what the model computes.

Bad options, model files and output paths: the bad-input battery (test_bad_inputs.py).
"""

import json

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper, numpy_helper

import export.api as api
from export.api import ValidationSet, export_model, quantize_checked, quantize_int8, synthetic_rows
from export.convert import PROBE_BATCH_SIZES, Conversion, batch_shape, convert, fold_input_layer, probe_values, simplify
from export.validate import check_contract, op_counts
from helpers import synthetic_digits
from runtime.contract import scale_pixels
from runtime.errors import CheckFailed
from runtime.files import sha256_file

SHAPE_ARITHMETIC = {"Shape", "Gather", "Concat", "Cast", "Expand", "ConstantOfShape", "Unsqueeze"}
REWRITES = ["fold_input_layer", "constant_reshape_shapes", "zero_initial_state", "final_hidden_state"]


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
    rewrites = exported.report["rewrites"]
    assert list(rewrites) == REWRITES
    assert [name for name in REWRITES if rewrites[name]["applied"]] == [
        "fold_input_layer",
        "zero_initial_state",
        "final_hidden_state",
    ]
    # the Keras fold leaves tf2onnx no Dense layer to reshape around
    assert rewrites["constant_reshape_shapes"]["detail"] == "no Reshape has a computed shape"


def test_metadata_round_trips(exported, tiny_keras_model):
    metadata = {p.key: p.value for p in onnx.load(exported.onnx_path).metadata_props}
    assert metadata == exported.metadata
    assert metadata["format_version"] == "1"
    assert json.loads(metadata["class_labels"]) == [str(d) for d in range(10)]
    assert metadata["hidden_units"] == "32"
    assert metadata["architecture"] == "Dense(32) -> LSTM(32) -> Dense(10)"
    assert json.loads(metadata["architecture_json"]) == [
        {"layer": "Dense", "units": 32},
        {"layer": "LSTM", "units": 32},
        {"layer": "Dense", "units": 10},
    ]
    assert metadata["source_model_sha256"] == sha256_file(tiny_keras_model)
    parity = json.loads(metadata["parity"])
    assert parity["passed"] is True and parity["inputs"] == "synthetic"
    for key in ("tensorflow_version", "tf2onnx_version", "onnx_version", "input_scaling"):
        assert metadata[key]
    # a shipped model says nothing about where it was made
    assert not [key for key, value in metadata.items() if "/" in value and key != "input_scaling"]
    # onnxruntime sees the same metadata an embedding app would read
    session = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["format_version"] == "1"


# fp32 parity is float rounding: it grows with the size of the logits, which a confident model
# (or another machine's training run) makes larger. Bound it relative to that size: measured
# 2.8e-5 against logits up to 8.9 (3e-6 of the scale) on synthetic inputs, 5.7e-6 against ~20 on
# MNIST, while a wrong weight moves logits by 1e-2 and more.
FP32_PARITY_RELATIVE = 1e-5


def logit_scale(keras_path, rows: np.ndarray) -> float:
    return float(np.abs(keras.models.load_model(keras_path).predict(rows, batch_size=1024, verbose=0)).max())


def test_parity_report_is_written_beside_the_model(exported, tiny_keras_model):
    report = json.loads(exported.report_path.read_text())
    assert exported.report_path == exported.onnx_path.with_name("model.parity.json")
    assert report["passed"] and report["argmax_agreement"] == 1.0
    assert report["max_abs_logit_diff"] <= FP32_PARITY_RELATIVE * logit_scale(tiny_keras_model, synthetic_rows())
    assert [r["batch_size"] for r in report["by_batch_size"]] == [1, 7, 128, "full"]
    assert report["worst_mean_abs_logit_diff"] == max(r["mean_abs_logit_diff"] for r in report["by_batch_size"])
    assert report["inputs"] == "synthetic"
    assert report["rewrites"] == exported.report["rewrites"]


def test_validation_set_names_the_data_by_checksum_not_by_path(mnist_dir, monkeypatch):
    inputs = api.validation_set(mnist_dir)
    assert inputs.source == "MNIST test set" and len(inputs.rows) == 10_000
    assert sorted(inputs.checksums) == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    # the sha256 of the uncompressed labels file, as the data folder's README gives it
    assert (
        inputs.checksums["t10k-labels-idx1-ubyte"] == "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
    )
    monkeypatch.delenv("ROWRNN_DATA", raising=False)
    synthetic = api.validation_set(None)
    assert synthetic.labels is None and list(synthetic.checksums) == ["synthetic_rows_float32"]


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
        proto, rewrites = real_convert(model, opset)
        init = next(i for i in proto.graph.initializer if len(i.dims) == 2 and i.dims[-1] == 10)
        weights = onnx.numpy_helper.to_array(init) + np.float32(0.05)
        init.CopyFrom(onnx.numpy_helper.from_array(weights, init.name))
        return Conversion(proto, rewrites)

    monkeypatch.setattr(api, "convert", drifted)
    output = tmp_path / "bad.onnx"
    output.write_bytes(b"previous model")
    with pytest.raises(CheckFailed, match="does not match Keras"):
        export_model(tiny_keras_model, output, validation=ValidationSet(synthetic_rows(64), None, "synthetic"))
    assert output.read_bytes() == b"previous model"  # untouched
    assert json.loads((tmp_path / "bad.parity.json").read_text())["passed"] is False
    assert not list(tmp_path.glob(".*"))  # no temp files left


@pytest.fixture(scope="module")
def digits_300():
    images, labels = synthetic_digits(300, 5)
    return ValidationSet(scale_pixels(images), labels.astype(np.int64), "synthetic digits")


def probabilities_of(model: onnx.ModelProto, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"rows": rows})[0]


def test_int8_is_quantized_and_measured(exported, digits_300):
    from export.validate import accuracy

    fp32 = onnx.load(exported.onnx_path)
    fp32_accuracy = accuracy(fp32, digits_300.rows, digits_300.labels)
    int8, report = quantize_checked(fp32, digits_300, fp32_accuracy, max_drop=1.0)  # no bound here
    check_contract(int8, quantized=True)  # one DynamicQuantizeLSTM: really quantized
    assert report["size_bytes"] < 0.5 * report["fp32_size_bytes"]
    # the accuracy in the report is measured on the validation inputs, by the int8 model
    assert report["test_accuracy"] == accuracy(int8, digits_300.rows, digits_300.labels)
    assert report["accuracy_drop"] == pytest.approx(fp32_accuracy - report["test_accuracy"])
    assert {p.key: p.value for p in int8.metadata_props}["quantization"].startswith("dynamic int8")
    # A broken quantizer fails one of these: everything one class (agrees on ~10 % of the digits),
    # weights garbled (agrees by chance), nothing quantized (the same outputs). Measured with the
    # fixture over seeds 0-7 pinned to one core: int8 agrees with fp32 on 100 % of these digits.
    # int8 moves a logit by up to 1.2 and the closest fp32 top-two margin is 0.6-2.2, so agreement
    # is likely but not guaranteed image by image: the bar leaves 15 of the 300 images of slack.
    fp32_probs, int8_probs = probabilities_of(fp32, digits_300.rows), probabilities_of(int8, digits_300.rows)
    assert np.mean(int8_probs.argmax(axis=1) == fp32_probs.argmax(axis=1)) >= 0.95
    assert len(np.unique(int8_probs.argmax(axis=1))) == 10
    assert not np.array_equal(int8_probs, fp32_probs)  # not the fp32 graph under another name


def test_int8_bound_is_enforced_with_values_the_test_controls(exported, digits_300):
    """The bound compares fp32 accuracy (given) with int8 accuracy (measured): set the fp32
    figure relative to the measured int8 one, so the outcome does not depend on the model."""
    from export.validate import accuracy

    fp32 = onnx.load(exported.onnx_path)
    int8_accuracy = accuracy(quantize_int8(fp32), digits_300.rows, digits_300.labels)
    _, report = quantize_checked(fp32, digits_300, int8_accuracy + 0.01, max_drop=0.02)
    assert report["accuracy_drop"] == pytest.approx(0.01)
    with pytest.raises(CheckFailed, match=r"int8 model loses 3.00% .* more than the allowed 2.00%"):
        quantize_checked(fp32, digits_300, int8_accuracy + 0.03, max_drop=0.02)


def test_int8_refusal_writes_nothing(tiny_keras_model, digits_300, tmp_path, monkeypatch):
    real_quantize = api.quantize_int8

    def one_class_quantizer(model):  # a quantizer bug: every image lands in class 3
        int8 = real_quantize(model)
        bias = next(i for i in int8.graph.initializer if list(i.dims) == [10])
        values = np.zeros(10, np.float32)
        values[3] = 1e4
        bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
        return int8

    monkeypatch.setattr(api, "quantize_int8", one_class_quantizer)
    output = tmp_path / "m.onnx"
    with pytest.raises(CheckFailed, match="int8 model loses"):
        export_model(tiny_keras_model, output, quantize="int8", validation=digits_300)
    assert not output.exists() and not api.int8_path_for(output).exists()
    report = json.loads(api.report_path_for(output).read_text())
    assert report["passed"] and "int8" not in report  # fp32 passed; the int8 verdict is the error
    assert not list(tmp_path.glob(".*"))  # no temp files left


@pytest.mark.slow
def test_real_mnist_parity_and_int8(real_model, mnist, mnist_dir, tmp_path):
    result = export_model(real_model, tmp_path / "model.onnx", data_dir=mnist_dir, quantize="int8")
    report = result.report
    assert report["images"] == 10_000 and report["inputs"] == "MNIST test set"
    assert report["argmax_agreement"] == 1.0
    assert report["max_abs_logit_diff"] <= FP32_PARITY_RELATIVE * logit_scale(
        real_model, scale_pixels(mnist.test_images)
    )
    # `real_model` measured over seeds 0-3 pinned to one core: accuracy 0.951-0.960 (margin >= 0.051),
    # int8 drop 0.0004-0.0010 (margin >= 0.004, i.e. 40 of the 10 000 test images)
    assert report["onnx_test_accuracy"] > 0.9
    assert report["int8"]["accuracy_drop"] <= 0.005
    assert result.int8_path.stat().st_size < result.onnx_path.stat().st_size / 2
    metadata = {p.key: p.value for p in onnx.load(result.int8_path).metadata_props}
    assert float(metadata["test_accuracy"]) == pytest.approx(report["int8"]["test_accuracy"])
    assert json.loads(metadata["parity"])["inputs_sha256"] == report["inputs_sha256"]
    for value in metadata.values():  # no local paths in a file that is shipped
        assert str(mnist_dir) not in value and str(mnist_dir.resolve()) not in value and str(tmp_path) not in value


# ---------------------------------------------------------------- the rewrites, one by one


def lstm_graph(
    hidden: int = 8, last_step: str = "slice-last", initial_state: str | None = None, computed_reshape: bool = False
) -> onnx.ModelProto:
    """rows -> MatMul/Add (a Dense layer) -> Transpose -> LSTM -> one step of Y -> MatMul/Add ->
    logits, Softmax: the shape of graph tf2onnx gives, built by hand, in the spellings the
    rewrites must handle (and some they must leave alone).

    last_step: "slice-last" (tf2onnx's Squeeze/Slice/Squeeze of the last step), "gather-last",
    or "slice-first" (a model that reads the first step). initial_state: None, "expand-zeros"
    (tf2onnx's), "constant-of-shape-zeros", or "from-input" (not zero). computed_reshape: the Dense
    output goes through tf2onnx's flatten / unflatten-to-Shape(rows) Reshape pair.
    """
    rng = np.random.default_rng(1)
    floats = {
        "A": rng.normal(size=(28, hidden)),
        "a": rng.normal(size=hidden),
        "P": rng.normal(size=(28, hidden)),
        "W": rng.normal(size=(1, 4 * hidden, hidden)) * 0.3,
        "R": rng.normal(size=(1, 4 * hidden, hidden)) * 0.3,
        "B": rng.normal(size=(1, 8 * hidden)) * 0.1,
        "D": rng.normal(size=(hidden, 10)),
        "d": rng.normal(size=10),
        "zero": np.zeros(()),
    }
    ints = {
        "axis0": [0],
        "axis1": [1],
        "first2": [0, 1],
        "last": [-1],
        "first": [0],
        "one": [1],
        "end": [2**62],
        "units": [hidden],
        "flat": [-1, hidden],
        "step": -1,
    }
    initializers = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in floats.items()]
    initializers += [numpy_helper.from_array(np.asarray(v, np.int64), k) for k, v in ints.items()]
    node = helper.make_node
    nodes = [node("MatMul", ["rows", "A"], ["mm"]), node("Add", ["mm", "a"], ["dense"])]
    sequence_input = "dense"
    if computed_reshape:  # [B, 28, H] -> [B*28, H] -> back to Shape(rows)[0:2] + [H]
        nodes += [
            node("Reshape", ["dense", "flat"], ["dense_flat"]),
            node("Shape", ["rows"], ["rows_shape"]),
            node("Gather", ["rows_shape", "first2"], ["batch_steps"]),
            node("Concat", ["batch_steps", "units"], ["dense_shape"], axis=0),
            node("Reshape", ["dense_flat", "dense_shape"], ["dense_again"]),
        ]
        sequence_input = "dense_again"
    nodes.append(node("Transpose", [sequence_input], ["seq"], perm=[1, 0, 2]))
    states = ["", ""]
    if initial_state in ("expand-zeros", "constant-of-shape-zeros"):
        nodes += [node("Shape", ["rows"], ["shape"]), node("Gather", ["shape", "first"], ["batch"])]
        if initial_state == "expand-zeros":  # Expand(0.0, [B, H]) -> Unsqueeze -> [1, B, H]
            nodes += [
                node("Concat", ["batch", "units"], ["state_shape"], axis=0),
                node("Expand", ["zero", "state_shape"], ["zeros"]),
                node("Unsqueeze", ["zeros", "axis0"], ["state"]),
            ]
        else:
            nodes += [
                node("Concat", ["one", "batch", "units"], ["state_shape"], axis=0),
                node(
                    "ConstantOfShape",
                    ["state_shape"],
                    ["state"],
                    value=numpy_helper.from_array(np.zeros(1, np.float32)),
                ),
            ]
        states = ["state", "state"]
    elif initial_state == "from-input":  # h0 = mean row · P: not zero
        nodes += [
            node("ReduceMean", ["rows"], ["mean_row"], axes=[1], keepdims=0),
            node("MatMul", ["mean_row", "P"], ["h0"]),
            node("Unsqueeze", ["h0", "axis0"], ["state"]),
        ]
        states = ["state", "state"]
    nodes.append(
        node(
            "LSTM",
            ["seq", "W", "R", "B", "", *states] if initial_state else ["seq", "W", "R", "B"],
            ["Y", "Y_h"],
            hidden_size=hidden,
        )
    )
    nodes.append(node("Squeeze", ["Y", "axis1"], ["y"]))  # [T, B, H]
    if last_step == "gather-last":
        nodes.append(node("Gather", ["y", "step"], ["chosen"], axis=0))
    else:
        start, end = ("last", "end") if last_step == "slice-last" else ("first", "one")
        nodes += [node("Slice", ["y", start, end, "axis0"], ["step1"]), node("Squeeze", ["step1", "axis0"], ["chosen"])]
    nodes += [
        node("MatMul", ["chosen", "D"], ["lm"]),
        node("Add", ["lm", "d"], ["logits"]),
        node("Softmax", ["logits"], ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes,
        "lstm",
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 28, 28])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 10]) for n in ("logits", "probabilities")],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_graph(model: onnx.ModelProto, rows: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"rows": rows})


def simplified_and_checked(original: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """simplify(original), after checking it computes the same at batch sizes the probes never saw."""
    simplified, rewrites = simplify(original)
    onnx.checker.check_model(simplified, full_check=True)
    for batch in (2, 5, 64):
        rows = np.random.default_rng(batch).random((batch, 28, 28), dtype=np.float32)
        for before, after in zip(run_graph(original, rows), run_graph(simplified, rows), strict=True):
            np.testing.assert_allclose(after, before, atol=1e-5, rtol=1e-5)
    return simplified, {r.name: r for r in rewrites}


@pytest.mark.parametrize("last_step, fires", [("slice-last", True), ("gather-last", True), ("slice-first", False)])
def test_final_hidden_state_reads_y_h_only_for_the_last_step(last_step, fires):
    simplified, rewrites = simplified_and_checked(lstm_graph(last_step=last_step))
    assert rewrites["final_hidden_state"].applied is fires, rewrites["final_hidden_state"]
    lstm = next(n for n in simplified.graph.node if n.op_type == "LSTM")
    if fires:  # the sequence Y is no longer computed, only Y_h
        assert lstm.output[0] == "" and not {"Slice", "Gather"} & op_counts(simplified).keys()
    else:
        assert (
            lstm.output[0] == "Y" and rewrites["final_hidden_state"].detail == "no tensor equals the LSTM's last step"
        )


@pytest.mark.parametrize(
    "initial_state, fires",
    [("expand-zeros", True), ("constant-of-shape-zeros", True), ("from-input", False), (None, False)],
)
def test_zero_initial_state_is_dropped_only_when_zero(initial_state, fires):
    simplified, rewrites = simplified_and_checked(lstm_graph(initial_state=initial_state))
    assert rewrites["zero_initial_state"].applied is fires, rewrites["zero_initial_state"]
    lstm = next(n for n in simplified.graph.node if n.op_type == "LSTM")
    assert (len(lstm.input) <= 5) is (fires or initial_state is None)
    if fires:
        assert not SHAPE_ARITHMETIC & op_counts(simplified).keys(), op_counts(simplified)


def test_computed_reshape_shapes_become_constant():
    simplified, rewrites = simplified_and_checked(lstm_graph(computed_reshape=True))
    assert rewrites["constant_reshape_shapes"].applied, rewrites["constant_reshape_shapes"]
    assert rewrites["constant_reshape_shapes"].detail == "1 Reshape shape(s) made constant"
    assert not {"Shape", "Gather", "Concat"} & op_counts(simplified).keys()
    _, plain = simplified_and_checked(lstm_graph())
    assert not plain["constant_reshape_shapes"].applied  # nothing to fold


def test_a_reshape_with_two_batch_dimensions_stays_computed():
    """Gram matrix [B, B] of the flattened rows: its Reshape target has two dimensions that change
    with the batch, which one -1 cannot express. The [B, 784] flattening beside it still folds."""
    node = helper.make_node
    flat_tail = numpy_helper.from_array(np.array([784], np.int64), "pixels")
    first = numpy_helper.from_array(np.array([0], np.int64), "first")
    nodes = [
        node("Shape", ["rows"], ["rows_shape"]),
        node("Gather", ["rows_shape", "first"], ["batch"]),
        node("Concat", ["batch", "pixels"], ["flat_shape"], axis=0),
        node("Reshape", ["rows", "flat_shape"], ["flat"]),
        node("Transpose", ["flat"], ["flat_t"], perm=[1, 0]),
        node("MatMul", ["flat", "flat_t"], ["gram"]),
        node("Shape", ["gram"], ["gram_shape"]),
        node("Reshape", ["gram", "gram_shape"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gram",
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 28, 28])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "batch"])],
        [flat_tail, first],
    )
    original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    simplified, rewrites = simplify(original)
    reshape = next(r for r in rewrites if r.name == "constant_reshape_shapes")
    assert reshape.applied and reshape.detail == (
        "1 Reshape shape(s) made constant; 1 left computed: more than one dimension changes with the batch"
    )
    rows = np.random.default_rng(0).random((5, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(run_graph(simplified, rows)[0], run_graph(original, rows)[0], rtol=1e-5)


def test_probes_include_batch_one_and_tell_batch_dimensions_apart():
    probes = probe_values(lstm_graph())
    assert len(PROBE_BATCH_SIZES) >= 3 and 1 in PROBE_BATCH_SIZES
    assert [v.shape for v in probes["rows"]] == [(b, 28, 28) for b in PROBE_BATCH_SIZES]
    assert batch_shape(probes["seq"]) == [28, -1, 8]
    # a dimension like ceil(batch / 4) is 1, 1, 2 at batch 1, 3, 8: it changes, so it is not constant
    assert batch_shape((np.zeros((1, 5)), np.zeros((1, 5)), np.zeros((2, 5)))) == [-1, 5]
    assert batch_shape((np.zeros((1, 1)), np.zeros((3, 3)), np.zeros((8, 8)))) is None


# ---------------------------------------------------------------- folding the input layer (Keras)


def small_model(dense_units: int = 32, hidden: int = 32, first_step: bool = False, **dense_options) -> keras.Model:
    """Dense -> LSTM -> Dense with random weights; `first_step`: the head reads the LSTM's first step."""
    layers = [
        keras.Input((28, 28), name="rows"),
        keras.layers.Dense(dense_units, **dense_options),
        keras.layers.LSTM(hidden, return_sequences=first_step),
    ]
    layers += [keras.layers.Lambda(lambda sequence: sequence[:, 0])] if first_step else []
    model = keras.Sequential([*layers, keras.layers.Dense(10)])
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


@pytest.mark.parametrize(
    "options, fires, detail",
    [
        ({}, True, "Dense(32) folded into the LSTM's input weights"),
        ({"use_bias": False}, True, "Dense(32) folded into the LSTM's input weights"),
        ({"activation": "relu"}, False, "the Dense layer has a relu activation: not linear"),
        ({"dense_units": 8, "hidden": 16}, False, "Dense(8) is too narrow: folding would add multiply-adds"),
        ({"first_step": True}, False, "the LSTM is not a plain forward, last-output LSTM"),
    ],
    ids=["linear", "no-bias", "relu", "narrow", "first-step"],
)
def test_fold_input_layer_fires_only_where_it_is_exact_and_cheaper(options, fires, detail):
    model = small_model(**options)
    folded, rewrite = fold_input_layer(model)
    assert rewrite.applied is fires and rewrite.detail.startswith(detail), rewrite
    rows = np.random.default_rng(4).random((9, 28, 28), dtype=np.float32)
    if fires:
        assert [type(layer).__name__ for layer in folded.layers] == ["LSTM", "Dense"]
        assert folded.layers[0].get_weights()[0].shape == (28, 4 * 32)
        np.testing.assert_allclose(folded(rows).numpy(), model(rows).numpy(), atol=1e-5)
    else:
        assert folded is model


def test_a_model_reading_the_first_step_converts_unfolded_and_exact():
    """End to end through tf2onnx: neither the input fold nor Y_h may fire, and ONNX matches Keras."""
    model = small_model(first_step=True)
    proto, rewrites = convert(model)
    applied = {r.name: r.applied for r in rewrites}
    assert applied == {
        "fold_input_layer": False,
        "constant_reshape_shapes": True,
        "zero_initial_state": True,
        "final_hidden_state": False,
    }, rewrites
    rows = np.random.default_rng(5).random((6, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(run_graph(proto, rows)[0], model(rows).numpy(), atol=1e-5)
