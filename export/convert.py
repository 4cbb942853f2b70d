"""Keras model -> ONNX: fold the input layer in Keras weight space, convert with tf2onnx, then
rewrite the few things in tf2onnx's graph that it cannot express itself.

Conversion: `tf2onnx.convert.from_keras` is broken on Keras 3 (tf2onnx issues #2329, #2348,
#2448), so we convert a `tf.function` around the model with an explicit, named input signature and
a dict of named outputs; tf2onnx then fuses the Keras LSTM into one ONNX `LSTM` op.

The rewrites, each reported as a `Rewrite` (applied or not, and why) in the parity report and in
`rowrnn export`'s output, so an export that silently lost one is visible:

- `fold_input_layer` (Keras weights, before conversion): the linear `Dense` layer feeding the LSTM
  is folded into the LSTM's input kernel, so the LSTM reads the 28 raw pixels of a row.
- `constant_reshape_shapes` (ONNX): Reshape targets computed at run time (Shape/Gather/Concat
  chains) become constants, with -1 for the batch.
- `zero_initial_state` (ONNX): the LSTM's initial state, built at run time as an Expand of zeros
  to the batch size, is omitted; ONNX's default is zero.
- `final_hidden_state` (ONNX): the last step, sliced out of the LSTM's whole output sequence `Y`,
  is read from its final state `Y_h` instead, so the sequence is never written.

Why hand-written ONNX rewrites rather than a library optimizer (checked with tf2onnx 1.17 and
onnxscript 0.7.2 on tf2onnx's graph of this model):

- tf2onnx's own `ReshapeOptimizer` runs inside `from_function` but folds `x -> Shape -> [Gather,
  Concat, ...] -> Reshape(x, ...)` only when the Shape reads the very tensor being reshaped: it
  gives symbolic dimensions only to Shape nodes on the Reshape's own input, and its
  `SymbolicExecutor` stops at any other Shape ("Unsupported op Shape"). Keras's Dense on a 3-D input
  (a Tensordot) reshapes the MatMul's [batch*28, D] output back to a shape computed from
  `Shape(rows)`, a different tensor, so the optimizer gives up. No tf2onnx optimizer touches the
  Expand that builds the zero state (`ConstFoldOptimizer` needs every input constant; the batch is
  not) or knows that `Y_h` is the last step of `Y`.
- onnxscript's `optimizer.optimize` tracks symbolic shapes but replaces a Reshape only when its
  target equals the input's shape (by Identity), and folds Shape/Gather to constants only when every
  dimension gathered is static; a target holding the symbolic batch stays computed, and so does the
  Expand. On this model it removed nothing but the unused LSTM outputs (`drop_unused_lstm_outputs`
  here): a dependency for no gain.

Folding the input layer is done on the Keras weights rather than on the ONNX graph: there it is a
matter of layer types and two matrix products, checked Keras against Keras, instead of matching
tf2onnx's spelling of a Dense layer (MatMul+Add in either operand order, Gemm, Tensordot reshapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import keras
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
from runtime.errors import CheckFailed

# Batch sizes the graph is run at to learn which values depend on the batch (see `probe_values`).
PROBE_BATCH_SIZES = (1, 3, 8)
# Largest |folded - original| Keras logit difference, relative to the logits' scale: float32
# reassociation of x·(A·K) against (x·A)·K, far below the export's parity tolerance.
FOLD_RTOL = 1e-5


@dataclass(frozen=True)
class Rewrite:
    """One optimisation of the exported graph: whether it applied, and what it did or why not."""

    name: str
    applied: bool
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {"applied": self.applied, "detail": self.detail}


class Conversion(NamedTuple):
    model: onnx.ModelProto
    rewrites: list[Rewrite]


def input_signature() -> list[tf.TensorSpec]:
    """The ONNX input: float32 rows [batch, 28, 28], named by the contract."""
    return [tf.TensorSpec((None, *IMAGE_SHAPE), tf.float32, name=INPUT_NAME)]


def serving_function(model: keras.Model) -> tf.types.experimental.GenericFunction:
    """Inference-mode forward pass returning the contract's named outputs."""

    @tf.function(input_signature=input_signature())
    def serve(rows):
        logits = model(rows, training=False)
        return {LOGITS_NAME: logits, PROBABILITIES_NAME: tf.nn.softmax(logits, axis=-1)}

    return serve


def convert(model: keras.Model, opset: int = DEFAULT_OPSET) -> Conversion:
    """Fold the input layer (Keras), convert with tf2onnx, rewrite the graph; report each rewrite."""
    folded, fold = fold_input_layer(model)
    proto, _ = tf2onnx.convert.from_function(serving_function(folded), input_signature=input_signature(), opset=opset)
    # tf2onnx writes "<version> <git hash>", and a wheel has no hash: "1.17.0 None"
    proto.producer_version = tf2onnx.__version__
    proto, rewrites = simplify(proto)
    return Conversion(proto, [fold, *rewrites])


def format_rewrites(rewrites: dict[str, dict]) -> str:
    """One line for `rowrnn export`: which rewrites applied, and why the others did not."""
    applied = [name for name, r in rewrites.items() if r["applied"]]
    skipped = [f"{name} ({r['detail']})" for name, r in rewrites.items() if not r["applied"]]
    return f"graph rewrites applied: {', '.join(applied) or 'none'}" + (
        f"; not applied: {'; '.join(skipped)}" if skipped else ""
    )


# ---------------------------------------------------------------- Keras weight space


def fold_problem(model: keras.Model) -> str | None:
    """Why the model's first two layers cannot be folded into one LSTM, or None if they can.

    The fold needs a Sequential model whose first layer is a linear Dense and whose second is a
    plain LSTM: last output only, forwards, stateless. The full export and the step export both
    ask this one question."""
    layers = model.layers if isinstance(model, keras.Sequential) else []
    if len(layers) < 2 or not isinstance(layers[0], keras.layers.Dense) or not isinstance(layers[1], keras.layers.LSTM):
        return "the model does not start with Dense -> LSTM"
    dense, lstm = layers[0], layers[1]
    if getattr(dense.activation, "__name__", None) != "linear":
        return f"the Dense layer has a {getattr(dense.activation, '__name__', dense.activation)} activation: not linear"
    if lstm.return_sequences or lstm.return_state or lstm.go_backwards or lstm.stateful:
        return "the LSTM is not a plain forward, last-output LSTM"
    return None


def folded_lstm_weights(dense: keras.layers.Dense, lstm: keras.layers.LSTM) -> list[np.ndarray]:
    """The LSTM's weights [A·K, U, a·K + b] once the Dense layer (A, a) is folded into its input kernel K.

    The LSTM only sees a row `x` through `x·A + a`, and its input gates compute `(x·A + a)·K + b =
    x·(A·K) + (a·K + b)`. Computed in float64, rounded to float32 once. The folded layer always has
    a bias (a·K is not zero even where b was absent): build it with `use_bias=True`.
    """
    kernel, bias = (w.astype(np.float64) for w in dense_weights(dense))
    lstm_kernel, recurrent, *lstm_bias = lstm.get_weights()
    lstm_kernel = lstm_kernel.astype(np.float64)
    folded_bias = bias @ lstm_kernel + (lstm_bias[0] if lstm_bias else 0.0)
    return [(kernel @ lstm_kernel).astype(np.float32), recurrent, folded_bias.astype(np.float32)]


def fold_input_layer(model: keras.Model) -> tuple[keras.Model, Rewrite]:
    """Dense(28 -> D) feeding LSTM(H) -> one LSTM that reads the 28 raw pixels of a row.

    Applied where `fold_problem` finds none, and only when it saves arithmetic: 28·4H multiply-adds
    per row instead of 28·D + D·4H (a Dense narrower than about 28 would make it dearer). The folded
    model is checked against the original, Keras against Keras, before anything is converted; the
    export's parity check then compares ONNX with the original.
    """
    name = "fold_input_layer"
    problem = fold_problem(model)
    if problem:
        return model, Rewrite(name, False, problem)
    layers = model.layers
    dense, lstm = layers[0], layers[1]
    width, units, gates = IMAGE_SHAPE[1], dense.units, 4 * lstm.units
    if width * gates >= width * units + units * gates:
        return model, Rewrite(name, False, f"Dense({units}) is too narrow: folding would add multiply-adds")

    folded_lstm = keras.layers.LSTM.from_config({**lstm.get_config(), "use_bias": True})
    rest = [type(layer).from_config(layer.get_config()) for layer in layers[2:]]
    folded = keras.Sequential([keras.Input(IMAGE_SHAPE, name=INPUT_NAME), folded_lstm, *rest], name=model.name)
    folded_lstm.set_weights(folded_lstm_weights(dense, lstm))
    for source, target in zip(layers[2:], rest, strict=True):
        target.set_weights(source.get_weights())

    rows = np.random.default_rng(0).random((16, *IMAGE_SHAPE), dtype=np.float32)
    expected = np.asarray(model(rows, training=False))
    difference = float(np.abs(np.asarray(folded(rows, training=False)) - expected).max())
    if difference > FOLD_RTOL * max(1.0, float(np.abs(expected).max())):
        raise CheckFailed(f"folding Dense({units}) into the LSTM changed the Keras model's logits by {difference:.3g}")
    return folded, Rewrite(
        name, True, f"Dense({units}) folded into the LSTM's input weights: it reads {width} pixels a row"
    )


def dense_weights(dense: keras.layers.Dense) -> tuple[np.ndarray, np.ndarray]:
    """(kernel [in, out], bias [out]); a zero bias for a layer built without one."""
    weights = dense.get_weights()
    return weights[0], weights[1] if dense.use_bias else np.zeros(dense.units, weights[0].dtype)


# ---------------------------------------------------------------- ONNX graph rewrites


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Rewrite]]:
    """Apply the ONNX rewrites (module docstring) to a copy of `model`; then drop dead nodes,
    unused LSTM outputs and stale shape annotations, and name the batch dimension.

    Each rewrite decides from values, not from how tf2onnx spelled the graph: the graph is run at
    a few batch sizes first (`probe_values`), and a rewrite fires only where the probes show the
    pattern holds (a shape that changes only in the batch dimension, a state that is always zero, a
    tensor always equal to `Y_h`).
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    probes = probe_values(model)
    rewrites = [
        fold_reshape_shapes(model, probes),
        drop_zero_initial_states(model, probes),
        use_final_hidden_state(model, probes),
    ]
    remove_dead_nodes(model)
    drop_unused_lstm_outputs(model)
    name_batch_dimension(model)
    return model, rewrites


def probe_values(
    model: onnx.ModelProto, batch_sizes: tuple[int, ...] = PROBE_BATCH_SIZES
) -> dict[str, tuple[np.ndarray, ...]]:
    """Every tensor's value (graph input, initializers and node outputs) at each batch size, on
    random rows: what the rewrites decide from.

    What probing can show: which dimensions and values change with the batch at the probed sizes.
    What it cannot: that a dimension or value equal at every probe is equal at every batch size
    (a graph could compute `min(batch, 8)` or `batch // 16`). The sizes 1, 3 and 8 rule out what
    two sizes would miss: a dimension that is 1 only because the batch is 1, and one like
    `ceil(batch / 4)` that agrees at two small sizes (1, 1, 2 here). tf2onnx's graphs of Keras
    layers take the batch from `Shape(rows)[0]` and use it as it is, which is what the probes
    assume; the parity check at batch sizes 1, 7, 128 and the whole set is what proves the result.
    """
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
    probes = {name: tuple(np.asarray(run[i]) for run in runs) for i, name in enumerate(names)}
    probes[INPUT_NAME] = tuple(inputs)
    for init in model.graph.initializer:
        probes[init.name] = (numpy_helper.to_array(init),) * len(batch_sizes)
    return probes


def batch_shape(values: tuple[np.ndarray, ...]) -> list[int] | None:
    """The shape with -1 for the one dimension that changes across the probes; None if the rank
    changes or more than one dimension does (see `probe_values` for what this can show)."""
    if len({v.ndim for v in values}) != 1:
        return None
    shape = [sizes[0] if len(set(sizes)) == 1 else -1 for sizes in zip(*(v.shape for v in values), strict=True)]
    return shape if shape.count(-1) <= 1 else None


def fold_reshape_shapes(model: onnx.ModelProto, probes: dict) -> Rewrite:
    """Reshape(x, <computed shape>) -> Reshape(x, <constant shape with -1 for batch>)."""
    constants = initializer_names(model)
    folded, kept = 0, 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.input[1] in constants:
            continue
        shape = batch_shape(probes[node.output[0]])
        if shape is None:
            kept += 1
            continue
        name = f"{node.output[0]}__static_shape"
        model.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), name))
        node.input[1] = name
        folded += 1
    left = f"{kept} left computed: more than one dimension changes with the batch" if kept else ""
    if not folded:
        return Rewrite("constant_reshape_shapes", False, left or "no Reshape has a computed shape")
    return Rewrite(
        "constant_reshape_shapes", True, f"{folded} Reshape shape(s) made constant" + (f"; {left}" if left else "")
    )


def drop_zero_initial_states(model: onnx.ModelProto, probes: dict) -> Rewrite:
    """LSTM initial_h / initial_c that are zero at every probe -> omitted (ONNX's default is zero)."""
    dropped, nonzero = [], []
    for node in model.graph.node:
        if node.op_type != "LSTM":
            continue
        for index, state in ((5, "initial_h"), (6, "initial_c")):
            if len(node.input) > index and node.input[index]:
                values = probes.get(node.input[index])
                if values is not None and not any(np.any(v) for v in values):
                    node.input[index] = ""
                    dropped.append(state)
                else:
                    nonzero.append(state)
        while node.input and node.input[-1] == "":
            node.input.pop()
    if dropped:
        return Rewrite("zero_initial_state", True, f"{' and '.join(dropped)} omitted (always zero)")
    reason = f"{' and '.join(nonzero)} not always zero" if nonzero else "the LSTM has no initial state input"
    return Rewrite("zero_initial_state", False, reason)


def use_final_hidden_state(model: onnx.ModelProto, probes: dict) -> Rewrite:
    """The last step sliced out of the LSTM's sequence output Y -> its final state Y_h.

    tf2onnx takes Keras's last output as Squeeze/Slice/Squeeze of Y; Y_h is the same tensor, so
    the LSTM need not return the whole sequence. The probes pick the tensor equal to Y_h however
    it was computed; a model that reads another step (the first, say) has none.
    """
    name = "final_hidden_state"
    lstm = lstm_node(model)
    if lstm is None or len(lstm.output) < 2 or lstm.output[1] not in probes:
        return Rewrite(name, False, "no LSTM with a Y_h output")
    if attribute(lstm, "direction") not in (None, b"forward", "forward"):
        return Rewrite(name, False, "the LSTM is not a forward LSTM")
    final = tuple(v[0] for v in probes[lstm.output[1]])  # Y_h [1, batch, H] -> [batch, H]
    graph_outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for tensor in node.output:
            if node is lstm or tensor in graph_outputs or tensor not in probes:
                continue
            if all(np.array_equal(a, b) for a, b in zip(probes[tensor], final, strict=True)):
                squeezed = f"{lstm.output[1]}__squeezed"
                axes = f"{squeezed}_axes"
                model.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), axes))
                index = list(model.graph.node).index(lstm) + 1
                model.graph.node.insert(index, helper.make_node("Squeeze", [lstm.output[1], axes], [squeezed]))
                for consumer in model.graph.node:
                    for i, used in enumerate(consumer.input):
                        if used == tensor:
                            consumer.input[i] = squeezed
                return Rewrite(name, True, f"the last step is read from Y_h ({node.op_type} output replaced)")
    return Rewrite(name, False, "no tensor equals the LSTM's last step")


# ---------------------------------------------------------------- clean-up and helpers


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


def initializer_names(model: onnx.ModelProto) -> set[str]:
    return {init.name for init in model.graph.initializer}


def lstm_node(model: onnx.ModelProto) -> onnx.NodeProto | None:
    return next((node for node in model.graph.node if node.op_type == "LSTM"), None)


def attribute(node: onnx.NodeProto, name: str) -> object:
    """The value of `node`'s attribute `name`, or None when it is not set."""
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
