"""The Open Inference Protocol (KServe v2) over HTTP/REST, for the rowrnn model: pure functions.

Requests and responses as Triton, KServe, Seldon MLServer and OpenVINO Model Server speak them,
including the binary tensor data extension: the JSON inference header first, then the raw
little-endian tensors, with `Inference-Header-Content-Length` giving the header's size.
Everything a client can get wrong raises `ProtocolError` with the status and a message that
names the problem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson

from runtime.contract import (
    FULL_MODEL,
    IMAGE_COLS,
    IMAGE_ROWS,
    INPUT_NAME,
    LOGITS_NAME,
    PIXELS,
    ROW_NAME,
    ModelIO,
    TensorSpec,
    output_specs,
)
from runtime.errors import InputError, one_line
from runtime.predictor import Prediction, checked_values, validate_images
from runtime.repository import PLATFORM

PROTOCOL_VERSION = "2"
DATATYPE = "FP32"
OUTPUT_NAMES = tuple(spec.name for spec in FULL_MODEL.outputs)
# The stream model a server serves beside a model with a step model (serve.sequences): one pixel
# row per request, the LSTM state kept in the server per sequence (Triton's implicit state).
STREAM_MODEL = ModelIO("rowrnn stream model", (TensorSpec(ROW_NAME, (IMAGE_COLS,)),), output_specs())
ROW_BYTES = IMAGE_COLS * 4  # one FP32 row
# The protocol extensions this server speaks, named as Triton names them in its server metadata.
EXTENSIONS = ("binary_tensor_data", "model_repository", "sequence", "sequence(string_id)")
HEADER_LENGTH = "inference-header-content-length"
FLOAT32_LE = np.dtype("<f4")


# The gRPC status of each HTTP status we answer with (KServe v2's gRPC service, as Triton maps them).
GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    503: "UNAVAILABLE",
}


class ProtocolError(Exception):
    """A request the protocol refuses: `status` is the HTTP status, `grpc_code` the gRPC status
    name (by default the HTTP status's), the message says why."""

    def __init__(self, message: str, status: int = 400, grpc_code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.grpc_code = grpc_code or GRPC_CODES.get(status, "INVALID_ARGUMENT")


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: np.ndarray  # float32 [N, 28, 28], checked against the contract (range, NaN)
    outputs: tuple[tuple[str, bool], ...]  # (output name, as binary data), in the order asked


def server_metadata(name: str, version: str) -> dict:
    return {"name": name, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(name: str, versions: list[str], parameters: dict[str, str], io: ModelIO = FULL_MODEL) -> dict:
    """The model's metadata; `versions`: the versions loaded (the protocol's field); `io`: the full
    model's I/O, or the stream model's (STREAM_MODEL: one row in, the state kept by the server)."""
    tensor = lambda spec: {"name": spec.name, "datatype": DATATYPE, "shape": [-1, *spec.dims]}  # noqa: E731
    return {
        "name": name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [tensor(spec) for spec in io.inputs],
        "outputs": [tensor(spec) for spec in io.outputs],
        "parameters": parameters,  # the model file's own metadata: architecture, accuracy, ...
    }


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON inference header, binary tensor data) of a request body."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise ProtocolError(f"Inference-Header-Content-Length {header_length!r} is not a number") from None
    if not 0 < length <= len(body):
        raise ProtocolError(
            f"Inference-Header-Content-Length {length} is past the end of the body ({len(body)} bytes)"
            if length > 0
            else f"Inference-Header-Content-Length {length} must be positive"
        )
    return body[:length], memoryview(body)[length:]


def parse_json(header: bytes) -> dict:
    try:
        request = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {one_line(exc, limit=120)}") from None
    if not isinstance(request, dict):
        raise ProtocolError(f"the inference request must be a JSON object, got {type(request).__name__}")
    return request


def parse_request(
    body: bytes, header_length: str | None, parse_tensor: Callable[[object, memoryview], np.ndarray]
) -> tuple[InferRequest, dict]:
    """Parse and check an inference request (JSON, or JSON + binary tensor data) whose input
    `parse_tensor` reads: (the request; its parameters, where Triton's clients put sequence_id,
    sequence_start and sequence_end)."""
    header, binary = split_body(body, header_length)
    request = parse_json(header)
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    tensor = parse_tensor(request.get("inputs"), binary)
    parameters = as_object(request.get("parameters", {}), "'parameters'")
    binary_default = as_bool(parameters.get("binary_data_output", False), "'binary_data_output'")
    return InferRequest(request_id, tensor, parse_outputs(request.get("outputs"), binary_default)), parameters


def parse_infer_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Parse and check an inference request of a model: images [N, 28, 28]."""
    return parse_request(body, header_length, parse_input)[0]


def parse_input(inputs: object, binary: memoryview) -> np.ndarray:
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(f"'inputs' must be a list with the one input '{INPUT_NAME}'")
    check_input_names([item.get("name") if isinstance(item, dict) else None for item in inputs])
    tensor = inputs[0]
    check_datatype(tensor.get("datatype"))
    count = image_count(tensor.get("shape"))
    binary_size = as_object(tensor.get("parameters", {}), "input parameters").get("binary_data_size")
    if binary_size is not None:
        if "data" in tensor:
            raise ProtocolError(f"input '{INPUT_NAME}' has both 'data' and binary_data_size")
        if isinstance(binary_size, bool) or not isinstance(binary_size, int) or binary_size < 0:
            raise ProtocolError(f"binary_data_size {binary_size!r} must be a whole number of bytes")
        if binary_size > len(binary):
            raise ProtocolError(
                f"binary_data_size {binary_size} runs past the end of the body ({len(binary)} bytes of binary data)"
            )
        check_binary_size(binary_size, count)
        if len(binary) != binary_size:
            raise ProtocolError(
                f"{len(binary) - binary_size} bytes of binary data follow the tensors, claimed by no input"
            )
        return binary_images(binary, count)
    if len(binary):
        raise ProtocolError(f"{len(binary)} bytes of binary data, but no input has binary_data_size")
    if "data" not in tensor:
        raise ProtocolError(f"input '{INPUT_NAME}' has neither 'data' nor binary_data_size")
    return checked_images(json_values(tensor["data"], PIXELS * count, count), count)


# The checks below are shared by both protocols (REST here, gRPC in serve.grpc_service): a client
# gets the same message for the same mistake whichever way it speaks.


def check_input_names(names: list, expected: str = INPUT_NAME) -> None:
    unknown = [name for name in names if name != expected]
    if unknown:
        raise ProtocolError(f"unknown input {unknown[0]!r}; this model has one input, '{expected}'")
    if len(names) > 1:
        raise ProtocolError(f"input '{expected}' is given {len(names)} times")


def check_datatype(datatype: object, name: str = INPUT_NAME) -> None:
    if datatype != DATATYPE:
        raise ProtocolError(f"input '{name}' has datatype {datatype!r}; the model takes {DATATYPE}")


def check_binary_size(size: int, count: int) -> None:
    if size != PIXELS * count * FLOAT32_LE.itemsize:
        raise ProtocolError(
            f"binary data of {size} bytes does not match shape "
            f"[{count}, 28, 28] ({PIXELS * count * FLOAT32_LE.itemsize} bytes of FP32)"
        )


def binary_images(blob: bytes | memoryview, count: int) -> np.ndarray:
    """Raw little-endian FP32 tensor data (its size already checked) as checked images, no copy."""
    return checked_images(np.frombuffer(blob, FLOAT32_LE, count=PIXELS * count), count)


def checked_images(values: np.ndarray, count: int) -> np.ndarray:
    """float32 values -> [N, 28, 28] images, refused if out of [0, 1] or not finite."""
    try:
        return validate_images(values.reshape(count, IMAGE_ROWS, IMAGE_COLS), f"input '{INPUT_NAME}'")
    except InputError as exc:
        raise ProtocolError(str(exc)) from None


def image_count(shape: object) -> int:
    """N of a shape [N, 28, 28] (N >= 1), or a ProtocolError."""
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or shape[1:] != [IMAGE_ROWS, IMAGE_COLS]
        or not all(type(d) is int for d in shape)
        or shape[0] < 1
    ):
        raise ProtocolError(f"input '{INPUT_NAME}' has shape {shape!r}; expected [N, 28, 28] with N >= 1")
    return shape[0]


def json_values(data: object, values: int, count: int) -> np.ndarray:
    """The JSON 'data' of an FP32 tensor (flat or nested, row-major) as float32."""
    if not isinstance(data, list):
        raise ProtocolError(f"input '{INPUT_NAME}' data must be a list of numbers")
    try:
        with np.errstate(over="ignore"):  # 1e39 becomes inf, which the range check then names
            array = np.asarray(data, dtype=np.float32)
    except (ValueError, TypeError):
        raise ProtocolError(f"input '{INPUT_NAME}' data must be numbers in a flat or evenly nested list") from None
    check_value_count(array.size, count)
    return array


def check_value_count(size: int, count: int) -> None:
    if size != PIXELS * count:
        raise ProtocolError(
            f"input '{INPUT_NAME}' data holds {size} values; shape [{count}, 28, 28] needs {PIXELS * count}"
        )


def parse_outputs(outputs: object, binary_default: bool) -> tuple[tuple[str, bool], ...]:
    if outputs is None:
        return tuple((name, binary_default) for name in OUTPUT_NAMES)
    if not isinstance(outputs, list) or not outputs:
        raise ProtocolError("'outputs' must be a non-empty list of {\"name\": ...} objects")
    names = check_output_names([item.get("name") if isinstance(item, dict) else None for item in outputs])
    return tuple(
        (
            name,
            as_bool(
                as_object(item.get("parameters", {}), f"parameters of output '{name}'").get(
                    "binary_data", binary_default
                ),
                "'binary_data'",
            ),
        )
        for name, item in zip(names, outputs, strict=True)
    )


def check_output_names(names: list[object]) -> list[str]:
    """The requested output names, each one of the model's, none twice."""
    checked = []
    for name in names:
        if not isinstance(name, str) or name not in OUTPUT_NAMES:
            raise ProtocolError(f"unknown output {name!r}; this model has {', '.join(map(repr, OUTPUT_NAMES))}")
        checked.append(name)
    if len(set(checked)) != len(checked):
        raise ProtocolError("an output is asked for twice")
    return checked


# --- the stream model's requests: one row, and Triton's sequence parameters ---------------------------


def parse_row_request(body: bytes, header_length: str | None = None) -> tuple[InferRequest, dict]:
    """Parse and check a stream model request: (the request, its row float32 [1, 28]; its parameters)."""
    return parse_request(body, header_length, parse_row_input)


def parse_row_input(inputs: object, binary: memoryview) -> np.ndarray:
    """The stream model's one input: a row FP32 [1, 28], in JSON or binary."""
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(f"'inputs' must be a list with the one input '{ROW_NAME}'")
    check_input_names([item.get("name") if isinstance(item, dict) else None for item in inputs], ROW_NAME)
    tensor = inputs[0]
    check_row_tensor(tensor.get("datatype"), tensor.get("shape"))
    binary_size = as_object(tensor.get("parameters", {}), "input parameters").get("binary_data_size")
    if binary_size is not None:
        if "data" in tensor:
            raise ProtocolError(f"input '{ROW_NAME}' has both 'data' and binary_data_size")
        if binary_size != ROW_BYTES or len(binary) != ROW_BYTES:
            raise ProtocolError(
                f"input '{ROW_NAME}': binary_data_size {binary_size!r} with {len(binary)} bytes of binary data; "
                f"one FP32 row [1, {IMAGE_COLS}] is {ROW_BYTES} bytes"
            )
        row = np.frombuffer(binary, FLOAT32_LE, count=IMAGE_COLS)
    else:
        if len(binary):
            raise ProtocolError(f"{len(binary)} bytes of binary data, but no input has binary_data_size")
        if not isinstance(tensor.get("data"), list):
            raise ProtocolError(f"input '{ROW_NAME}' data must be a list of {IMAGE_COLS} numbers")
        try:
            with np.errstate(over="ignore"):
                row = np.asarray(tensor["data"], dtype=np.float32).ravel()
        except (ValueError, TypeError):
            raise ProtocolError(f"input '{ROW_NAME}' data must be {IMAGE_COLS} numbers") from None
    return checked_row(row)


def check_row_tensor(datatype: object, shape: object) -> None:
    """The stream model's input: FP32 [1, 28], one row of one sequence per request."""
    check_datatype(datatype, ROW_NAME)
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(type(d) is int for d in shape)
        or shape[1] != IMAGE_COLS
    ):
        raise ProtocolError(f"input '{ROW_NAME}' has shape {shape!r}; expected [1, {IMAGE_COLS}] (one pixel row)")
    if shape[0] != 1:
        raise ProtocolError(
            f"input '{ROW_NAME}' has batch dimension {shape[0]}; a sequence takes one row per request: [1, {IMAGE_COLS}]"
        )


def checked_row(values: np.ndarray) -> np.ndarray:
    """float32 values -> one row [1, 28], refused unless 28 finite values in [0, 1]."""
    if values.size != IMAGE_COLS:
        raise ProtocolError(
            f"input '{ROW_NAME}' holds {values.size} values; shape [1, {IMAGE_COLS}] needs {IMAGE_COLS}"
        )
    try:
        return checked_values(values.reshape(1, IMAGE_COLS), f"input '{ROW_NAME}'")
    except InputError as exc:
        raise ProtocolError(str(exc)) from None


def as_object(value: object, what: str) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def as_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{what} must be true or false, got {value!r}")
    return value


def encode_infer_response(
    request: InferRequest, prediction: Prediction, model_name: str, model_version: str
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or JSON + binary tensors when any is binary."""
    outputs, blobs = [], []
    for name, binary in request.outputs:
        array = output_array(prediction, name)
        tensor: dict = {"name": name, "datatype": DATATYPE, "shape": list(array.shape)}
        if binary:
            blobs.append(array.tobytes())
            tensor["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            tensor["data"] = array.ravel()  # orjson writes float32 values in their shortest exact form
        outputs.append(tensor)
    response: dict = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, {"content-type": "application/json"}
    return b"".join([header, *blobs]), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def output_array(prediction: Prediction, name: str) -> np.ndarray:
    """An output tensor as the protocol sends it: little-endian FP32, C order."""
    array = prediction.logits if name == LOGITS_NAME else prediction.probabilities
    return np.ascontiguousarray(array, dtype=FLOAT32_LE)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
