"""runtime.repository: a Triton model repository whose config Triton's own schema accepts and
whose inputs and outputs are the ONNX file's."""

import onnx
import pytest

from helpers import assert_one_line_error, require_module, rowrnn
from runtime.errors import InputError
from runtime.repository import write_triton_repository

model_config_pb2 = require_module(
    "tritonclient.grpc.model_config_pb2", "serve", "needs tritonclient[grpc] (the serve extra)"
)
text_format = require_module("google.protobuf.text_format", "serve", "needs protobuf (the serve extra)")

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32"}


def parse_config(path) -> "model_config_pb2.ModelConfig":
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def io_of(model: onnx.ModelProto, values) -> list[tuple[str, str, list[int]]]:
    """(name, Triton data type, dims without the batch dim) of graph inputs or outputs."""
    result = []
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_value for d in tensor.shape.dim]
        assert tensor.shape.dim[0].dim_param == "batch"  # the batch dim Triton adds back
        result.append((value.name, ONNX_TO_TRITON[tensor.elem_type], dims[1:]))
    return result


def test_repository_matches_the_onnx_file(exported, tmp_path):
    model_dir = write_triton_repository(
        exported.onnx_path, tmp_path / "repo", name="digits", max_batch=32, max_delay_ms=1.5
    )
    assert model_dir == tmp_path / "repo" / "digits"
    assert (model_dir / "1" / "model.onnx").read_bytes() == exported.onnx_path.read_bytes()
    config = parse_config(model_dir / "config.pbtxt")  # Triton's schema: unknown fields would raise
    assert config.name == "digits" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32
    assert config.dynamic_batching.max_queue_delay_microseconds == 1500
    assert config.version_policy.latest.num_versions == 1  # Triton's default: the newest version serves
    model = onnx.load(exported.onnx_path)
    as_triton = lambda tensors: [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors]  # noqa: E731
    assert as_triton(config.input) == io_of(model, model.graph.input) == [("rows", "TYPE_FP32", [28, 28])]
    assert as_triton(config.output) == io_of(model, model.graph.output)
    assert [t.name for t in config.output] == ["logits", "probabilities"]


def test_cli_writes_a_repository_for_an_existing_model(exported, tmp_path):
    result = rowrnn("triton-repo", exported.onnx_path, tmp_path / "repo")
    assert result.returncode == 0, result.stderr
    config = parse_config(tmp_path / "repo" / "rowrnn" / "config.pbtxt")
    assert config.max_batch_size == 64 and config.dynamic_batching.max_queue_delay_microseconds == 2000


def test_version_writes_another_version_beside_the_first(exported, tmp_path):
    for version in (1, 2):
        result = rowrnn("triton-repo", exported.onnx_path, tmp_path / "repo", "--version", version)
        assert result.returncode == 0, result.stderr
        assert f"/{version}/model.onnx" in result.stdout
    model_dir = tmp_path / "repo" / "rowrnn"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", "config.pbtxt"]
    assert (model_dir / "2" / "model.onnx").read_bytes() == (model_dir / "1" / "model.onnx").read_bytes()
    assert_one_line_error(rowrnn("triton-repo", exported.onnx_path, tmp_path / "repo", "--version", 0), "--version")


def test_refuses_what_it_cannot_describe(tmp_path, exported):
    from helpers import foreign_model

    with pytest.raises(InputError, match="not a rowrnn model"):
        write_triton_repository(foreign_model(tmp_path / "f.onnx", input_name="x"), tmp_path / "repo")
    with pytest.raises(InputError, match="not a usable model directory name"):
        write_triton_repository(exported.onnx_path, tmp_path / "repo", name='a"b')
    assert not (tmp_path / "repo").exists()
    (tmp_path / "file").write_text("x")
    assert_one_line_error(rowrnn("triton-repo", exported.onnx_path, tmp_path / "file"), "not a directory")


def test_export_writes_the_repository_too(tiny_keras_model, tmp_path):
    # synthetic parity inputs, as the other exports of the tiny model: it was not trained on MNIST, and
    # on real digits its top two logits can sit within rounding of each other
    result = rowrnn(
        "export",
        tmp_path / "m.onnx",
        "--model",
        tiny_keras_model,
        "--triton-repo",
        tmp_path / "repo",
        "--step",
        env={"ROWRNN_DATA": ""},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "repo" / "rowrnn" / "1" / "model.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()
    assert parse_config(tmp_path / "repo" / "rowrnn" / "config.pbtxt").platform == "onnxruntime_onnx"
    step_bytes = (tmp_path / "m.step.onnx").read_bytes()  # with --step, the step model as rowrnn-stream too
    assert (tmp_path / "repo" / "rowrnn-stream" / "1" / "model.onnx").read_bytes() == step_bytes
    assert parse_config(tmp_path / "repo" / "rowrnn-stream" / "config.pbtxt").HasField("sequence_batching")


def test_step_repository_is_the_step_models_triton_config(exported_step, tmp_path):
    """--step: NAME-stream's config, read with Triton's schema, describes the step ONNX file: the
    row is its one input besides the implicit state h and c (zero initial state), whose outputs
    h_out and c_out feed back; every input Triton would feed the model (inputs, control inputs,
    states) is an input of the file, and nothing else."""
    model_dir = write_triton_repository(exported_step.onnx_path, tmp_path / "repo", step=True, max_sequences=7)
    step_bytes = exported_step.step_path.read_bytes()
    assert (model_dir / "1" / "model.step.onnx").read_bytes() == step_bytes  # rowrnn serve's NAME-stream
    stream_dir = tmp_path / "repo" / "rowrnn-stream"
    assert (stream_dir / "1" / "model.onnx").read_bytes() == step_bytes  # Triton's
    config = parse_config(stream_dir / "config.pbtxt")
    assert config.name == "rowrnn-stream" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    model = onnx.load(exported_step.step_path)
    onnx_inputs = {name: (kind, dims) for name, kind, dims in io_of(model, model.graph.input)}
    onnx_outputs = {name: (kind, dims) for name, kind, dims in io_of(model, model.graph.output)}
    batching = config.sequence_batching
    as_triton = lambda t: (model_config_pb2.DataType.Name(t.data_type), list(t.dims))  # noqa: E731
    fed = {t.name: as_triton(t) for t in config.input}
    fed |= {state.input_name: as_triton(state) for state in batching.state}
    for control in batching.control_input:  # none written; if any, the model must take it (Triton refuses otherwise)
        fed[control.name] = ("TYPE_FP32", [1])
    assert fed == onnx_inputs
    assert set(onnx_inputs) == {"row", "h", "c"}
    for tensor in config.output:
        assert onnx_outputs[tensor.name] == as_triton(tensor)
    hidden = onnx_inputs["h"][1]
    for state, out in zip(batching.state, ("h_out", "c_out"), strict=True):
        assert state.output_name == out and onnx_outputs[out] == as_triton(state)
        (initial,) = state.initial_state
        assert initial.zero_data and as_triton(initial) == ("TYPE_FP32", hidden) and initial.name
    assert batching.oldest.max_candidate_sequences == 7
    assert batching.max_sequence_idle_microseconds == 60_000_000  # rowrnn serve's --sequence-idle-s


def test_cli_step_repository_needs_the_step_model(exported, exported_step, tmp_path):
    result = rowrnn("triton-repo", exported_step.onnx_path, tmp_path / "repo", "--step", "--sequence-idle-s", "5")
    assert result.returncode == 0, result.stderr
    assert "rowrnn-stream/config.pbtxt" in result.stdout
    batching = parse_config(tmp_path / "repo" / "rowrnn-stream" / "config.pbtxt").sequence_batching
    assert batching.max_sequence_idle_microseconds == 5_000_000
    assert_one_line_error(rowrnn("triton-repo", exported.onnx_path, tmp_path / "other", "--step"), "no step model")
    assert not (tmp_path / "other").exists()
