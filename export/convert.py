"""Keras model -> ONNX: describe the I/O, convert with tf2onnx, simplify the graph.

`tf2onnx.convert.from_keras` is broken on Keras 3 (tf2onnx issues #2329, #2348, #2448), so we
convert a `tf.function` around the model with an explicit, named input signature and a dict of
named outputs; tf2onnx then fuses the Keras LSTM into one ONNX `LSTM` op. Its graph still
computes shapes at run time (Shape/Gather/Concat chains feeding Reshape, an Expand that builds
the zero initial state); `simplify` folds those, since batch is the only dynamic dimension.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx
from onnx import helper, numpy_helper

from export.defaults import DEFAULT_OPSET
from runtime.contract import (
    BATCH_DIM,
    IMAGE_SHAPE,
    INPUT_NAME,
    LOGITS_NAME,
    PROBABILITIES_NAME,
)

def input_signature() -> list[tf.TensorSpec]:
    """The ONNX input: float32 rows [batch, 28, 28], named by the contract."""
    return [tf.TensorSpec((None, *IMAGE_SHAPE), tf.float32, name=INPUT_NAME)]


def serving_function(model: tf.keras.Model) -> tf.types.experimental.GenericFunction:
    """Inference-mode forward pass returning the contract's named outputs."""

    @tf.function(input_signature=input_signature())
    def serve(rows):
        logits = model(rows, training=False)
        return {LOGITS_NAME: logits, PROBABILITIES_NAME: tf.nn.softmax(logits, axis=-1)}

    return serve


def convert(model: tf.keras.Model, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """tf2onnx conversion of the serving function, then graph simplification."""
    serve = serving_function(model)
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=input_signature(), opset=opset)
    return simplify(proto)


# ---------------------------------------------------------------- graph simplification


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold run-time shape computation into constants and drop what becomes dead.

    Batch is the only dynamic dimension, so every tensor's shape is known up to it. We learn
    which dimension is the batch by running the graph at two batch sizes ("probing"); this does
    not depend on how tf2onnx happened to spell the shape arithmetic.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    probes = probe_values(model, batch_sizes=(2, 3))
    fold_reshape_shapes(model, probes)
    drop_zero_initial_states(model, probes)
    fold_input_projection(model, probes)
    use_final_hidden_state(model, probes)
    remove_dead_nodes(model)
    drop_unused_lstm_outputs(model)
    name_batch_dimension(model)
    return model


def probe_values(model: onnx.ModelProto, batch_sizes: tuple[int, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every tensor's value (the input's too) at two batch sizes, on random inputs."""
    exposed = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in exposed.graph.output}
    for node in exposed.graph.node:
        for name in node.output:
            if name and name not in existing:
                exposed.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(0)
    inputs = [rng.random((b, *IMAGE_SHAPE), dtype=np.float32) for b in batch_sizes]
    runs = [session.run(None, {INPUT_NAME: rows}) for rows in inputs]
    probes = {name: (np.asarray(a), np.asarray(b)) for name, a, b in zip(names, *runs)}
    probes[INPUT_NAME] = (inputs[0], inputs[1])
    return probes


def batch_shape(values: tuple[np.ndarray, np.ndarray]) -> list[int] | None:
    """The shape with -1 for the one dimension that changes with batch, or None if not so."""
    first, second = values
    if first.ndim != second.ndim:
        return None
    shape = [a if a == b else -1 for a, b in zip(first.shape, second.shape)]
    return shape if shape.count(-1) <= 1 else None


def initializer_names(model: onnx.ModelProto) -> set[str]:
    return {init.name for init in model.graph.initializer}


def fold_reshape_shapes(model: onnx.ModelProto, probes: dict) -> None:
    """Reshape(x, <computed shape>) -> Reshape(x, <constant shape with -1 for batch>)."""
    constants = initializer_names(model)
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.input[1] in constants:
            continue
        shape = batch_shape(probes[node.output[0]])
        if shape is None:
            continue
        name = f"{node.output[0]}__static_shape"
        model.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), name))
        node.input[1] = name


def drop_zero_initial_states(model: onnx.ModelProto, probes: dict) -> None:
    """LSTM initial_h / initial_c that are always zero -> omitted (ONNX's default is zero)."""
    for node in model.graph.node:
        if node.op_type != "LSTM":
            continue
        for index in (5, 6):  # initial_h, initial_c
            if len(node.input) > index and node.input[index]:
                values = probes.get(node.input[index])
                if values is not None and not any(np.any(v) for v in values):
                    node.input[index] = ""
        while node.input and node.input[-1] == "":
            node.input.pop()


def fold_input_projection(model: onnx.ModelProto, probes: dict) -> None:
    """Dense(28 -> 128) feeding the LSTM -> folded into the LSTM's input weights.

    The LSTM only ever sees the rows through `h = x·A + a`, and its input gates compute
    `h·Wᵀ + Wb = x·(W·Aᵀ)ᵀ + (Wb + W·a)`. So the folded LSTM reads the 28 raw pixels of a row:
    the Dense layer's work disappears and the input half of the LSTM shrinks 128 -> 28 wide
    (about 40 % of the model's multiply-adds). Only applied when the chain from the graph input to
    the LSTM is exactly Reshape/MatMul/Add/Transpose and the probes confirm `h = x·A + a`.
    """
    producers = {name: node for node in model.graph.node for name in node.output}
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    lstm = lstm_node(model)
    transpose = producers.get(lstm.input[0]) if lstm is not None else None
    if transpose is None or transpose.op_type != "Transpose" or attribute(transpose, "perm") != [1, 0, 2]:
        return
    projection_name = transpose.input[0]
    chain, name = [], projection_name
    while name != INPUT_NAME:
        node = producers.get(name)
        if node is None or node.op_type not in ("Reshape", "MatMul", "Add"):
            return
        chain.append(node)
        name = node.input[0]
    matmuls = [n for n in chain if n.op_type == "MatMul"]
    adds = [n for n in chain if n.op_type == "Add"]
    if len(matmuls) != 1 or len(adds) > 1 or matmuls[0].input[1] not in weights:
        return
    if adds and adds[0].input[1] not in weights:
        return
    kernel = weights[matmuls[0].input[1]].astype(np.float64)  # A [28, 128]
    bias = weights[adds[0].input[1]].astype(np.float64) if adds else np.zeros(kernel.shape[1])
    if kernel.shape != (IMAGE_SHAPE[1], bias.shape[-1]) or bias.ndim != 1:
        return
    for rows, projected in zip(probes[INPUT_NAME], probes[projection_name]):
        if not np.allclose(rows @ kernel + bias, projected, rtol=1e-5, atol=1e-5):
            return
    w = weights[lstm.input[1]].astype(np.float64)  # [1, 4H, 128]
    hidden = attribute(lstm, "hidden_size")
    b = weights[lstm.input[3]].astype(np.float64) if len(lstm.input) > 3 and lstm.input[3] else np.zeros((1, 8 * hidden))
    folded_w = w @ kernel.T  # [1, 4H, 28]
    folded_b = b.copy()
    folded_b[:, : 4 * hidden] += w @ bias
    prefix = f"{lstm.output[0]}__folded"
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(folded_w.astype(np.float32), f"{prefix}_W"),
            numpy_helper.from_array(folded_b.astype(np.float32), f"{prefix}_B"),
        ]
    )
    while len(lstm.input) < 4:
        lstm.input.append("")
    lstm.input[1], lstm.input[3] = f"{prefix}_W", f"{prefix}_B"
    transpose.input[0] = INPUT_NAME


def use_final_hidden_state(model: onnx.ModelProto, probes: dict) -> None:
    """The last step sliced out of the LSTM's sequence output Y -> its final state Y_h.

    tf2onnx takes Keras's last output as Squeeze/Slice/Squeeze of Y; Y_h is the same tensor, so
    the LSTM need not return the whole sequence. The probes pick the tensor equal to Y_h.
    """
    lstm = lstm_node(model)
    if lstm is None or len(lstm.output) < 2 or lstm.output[1] not in probes:
        return
    final = tuple(v[0] for v in probes[lstm.output[1]])  # Y_h [1, batch, H] -> [batch, H]
    graph_outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if node is lstm or name in graph_outputs or name not in probes:
                continue
            if all(np.array_equal(a, b) for a, b in zip(probes[name], final)):
                squeezed = f"{lstm.output[1]}__squeezed"
                axes = f"{squeezed}_axes"
                model.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), axes))
                index = list(model.graph.node).index(lstm) + 1
                model.graph.node.insert(index, helper.make_node("Squeeze", [lstm.output[1], axes], [squeezed]))
                for consumer in model.graph.node:
                    for i, used in enumerate(consumer.input):
                        if used == name:
                            consumer.input[i] = squeezed
                return


def drop_unused_lstm_outputs(model: onnx.ModelProto) -> None:
    """LSTM outputs nobody reads are not requested (onnxruntime then skips writing them)."""
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type == "LSTM":
            for i, name in enumerate(node.output):
                if name not in used:
                    node.output[i] = ""
            while node.output and node.output[-1] == "":
                node.output.pop()


def lstm_node(model: onnx.ModelProto) -> onnx.NodeProto | None:
    return next((node for node in model.graph.node if node.op_type == "LSTM"), None)


def attribute(node: onnx.NodeProto, name: str):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def remove_dead_nodes(model: onnx.ModelProto) -> None:
    """Drop nodes and initializers that no graph output depends on."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    live = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(live)


def name_batch_dimension(model: onnx.ModelProto) -> None:
    """The dynamic first dimension of every graph input and output is called `batch`."""
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = BATCH_DIM
    del model.graph.value_info[:]  # stale after the rewrites; shape inference can recompute
