"""serve.protocol: Open Inference Protocol requests in, responses out (no server needed)."""

import json

import numpy as np
import pytest

from helpers import require_module

require_module("orjson", "serve", "needs the serve extra: pip install '.[serve]'")

from runtime.predictor import Prediction  # noqa: E402
from serve.protocol import ProtocolError, encode_infer_response, parse_infer_request  # noqa: E402


def request(images, *, binary=False, outputs=None, **extra) -> tuple[bytes, str | None]:
    """An inference request body (and its Inference-Header-Content-Length) for float32 images."""
    tensor = {"name": "rows", "datatype": "FP32", "shape": list(images.shape)}
    if binary:
        tensor["parameters"] = {"binary_data_size": images.nbytes}
    else:
        tensor["data"] = images.ravel().tolist()
    header = json.dumps({"inputs": [tensor], **({"outputs": outputs} if outputs else {}), **extra}).encode()
    return (header + images.astype("<f4").tobytes(), str(len(header))) if binary else (header, None)


@pytest.fixture
def images():
    return np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_images_arrive_exactly(images, binary):
    parsed = parse_infer_request(*request(images, binary=binary))
    assert parsed.images.dtype == np.float32 and parsed.images.shape == (3, 28, 28)
    np.testing.assert_array_equal(parsed.images, images)
    assert parsed.outputs == (("logits", False), ("probabilities", False))


def test_nested_json_data_and_request_options(images):
    body = json.dumps(
        {
            "id": "42",
            "parameters": {"binary_data_output": True},
            "inputs": [{"name": "rows", "datatype": "FP32", "shape": [3, 28, 28], "data": images.tolist()}],
            "outputs": [{"name": "probabilities"}, {"name": "logits", "parameters": {"binary_data": False}}],
        }
    )
    parsed = parse_infer_request(body.encode())
    np.testing.assert_array_equal(parsed.images, images)
    assert parsed.id == "42"
    assert parsed.outputs == (("probabilities", True), ("logits", False))


def prediction(n: int) -> Prediction:
    logits = np.random.default_rng(1).normal(size=(n, 10)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Prediction(probabilities.argmax(axis=1), probabilities.astype(np.float32), logits)


def test_json_response_round_trips_float32_exactly(images):
    parsed = parse_infer_request(*request(images, outputs=[{"name": "logits"}], id="x"))
    body, headers = encode_infer_response(parsed, prediction(3), "rowrnn", "1")
    assert headers == {"content-type": "application/json"}
    response = json.loads(body)
    assert response["id"] == "x" and response["model_name"] == "rowrnn" and response["model_version"] == "1"
    assert [o["name"] for o in response["outputs"]] == ["logits"]  # only what was asked for
    (logits,) = response["outputs"]
    assert logits["shape"] == [3, 10] and logits["datatype"] == "FP32"
    np.testing.assert_array_equal(np.array(logits["data"], np.float32).reshape(3, 10), prediction(3).logits)


def test_binary_response_is_read_by_tritonclient(images):
    from tritonclient.http import InferResult

    parsed = parse_infer_request(*request(images, binary=True, parameters={"binary_data_output": True}))
    body, headers = encode_infer_response(parsed, prediction(3), "rowrnn", "1")
    assert headers["content-type"] == "application/octet-stream"
    result = InferResult.from_response_body(body, header_length=int(headers["inference-header-content-length"]))
    np.testing.assert_array_equal(result.as_numpy("logits"), prediction(3).logits)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), prediction(3).probabilities)


def body_with(**changes) -> bytes:
    tensor = {"name": "rows", "datatype": "FP32", "shape": [1, 28, 28], "data": [0.5] * 784}
    tensor.update(changes.pop("tensor", {}))
    return json.dumps({"inputs": [tensor], **changes}).encode()


@pytest.mark.parametrize(
    "body, header_length, message",
    [
        (b"{not json", None, "malformed JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (body_with(tensor={"name": "pixels"}), None, "unknown input 'pixels'"),
        (json.dumps({"inputs": []}).encode(), None, "'inputs' must be a list"),
        (body_with(tensor={"datatype": "FP64"}), None, "datatype 'FP64'"),
        (body_with(tensor={"shape": [1, 784]}), None, "expected [N, 28, 28]"),
        (body_with(tensor={"shape": [-1, 28, 28]}), None, "expected [N, 28, 28]"),
        (body_with(tensor={"shape": [0, 28, 28], "data": []}), None, "N >= 1"),
        (body_with(tensor={"shape": [10**12, 28, 28]}), None, "holds 784 values"),
        (body_with(tensor={"data": [0.5] * 783}), None, "holds 783 values"),
        (body_with(tensor={"data": ["a"] * 784}), None, "must be numbers"),
        (body_with(tensor={"data": [float("nan")] + [0.0] * 783}), None, "malformed JSON"),  # JSON has no NaN
        (body_with(tensor={"data": [2.0] + [0.0] * 783}), None, "must be in [0, 1]"),
        (body_with(tensor={"data": [-0.5] + [0.0] * 783}), None, "must be in [0, 1]"),
        (body_with(tensor={"data": [1e39] + [0.0] * 783}), None, "NaN or infinite"),
        (body_with(outputs=[{"name": "embedding"}]), None, "unknown output 'embedding'"),
        (body_with(outputs=[{"name": "logits"}, {"name": "logits"}]), None, "asked for twice"),
        (body_with(id=7), None, "'id' must be a string"),
        (body_with(), "99999", "past the end of the body"),
        (body_with(), "abc", "not a number"),
        (body_with(tensor={"parameters": {"binary_data_size": 3136}, "data": None}), None, "both 'data' and binary"),
    ],
)
def test_bad_requests_name_the_problem(body, header_length, message):
    with pytest.raises(ProtocolError, match=message.replace("[", r"\[")) as caught:
        parse_infer_request(body, header_length)
    assert caught.value.status == 400


def binary_body(images: np.ndarray, declared: int, extra: bytes = b"") -> tuple[bytes, str]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "rows",
                    "datatype": "FP32",
                    "shape": list(images.shape),
                    "parameters": {"binary_data_size": declared},
                }
            ]
        }
    ).encode()
    return header + images.tobytes() + extra, str(len(header))


@pytest.mark.parametrize(
    "declared, extra, message",
    [
        (3136 * 2, b"", "runs past the end of the body"),
        (3135, b"", "does not match shape"),
        (3136, b"\0" * 4, "follow the tensors"),
    ],
)
def test_binary_sizes_must_match_the_body(declared, extra, message):
    image = np.zeros((1, 28, 28), np.float32)
    with pytest.raises(ProtocolError, match=message):
        parse_infer_request(*binary_body(image, declared, extra))
