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
        env={"ROWRNN_DATA": ""},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "repo" / "rowrnn" / "1" / "model.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()
    assert parse_config(tmp_path / "repo" / "rowrnn" / "config.pbtxt").platform == "onnxruntime_onnx"
