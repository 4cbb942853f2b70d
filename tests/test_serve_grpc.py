"""rowrnn serve over gRPC (inference.GRPCInferenceService) as a real process on 127.0.0.1, talked
to with Triton's own client (tritonclient.grpc) and its generated stub: bit-exact answers, a
bad-request battery, the API key, message size limits, a session call shared by a REST and a
gRPC request, and the drain of both protocols on SIGTERM.
"""

from __future__ import annotations

import http.client
import re
import signal
import socket
import threading
import time

import numpy as np
import pytest

from helpers import decode, good_request_works, images, infer_body, metric, require_module
from helpers import http_call as call
from runtime import Predictor

SERVE_EXTRA = "needs the serve extra: pip install '.[serve]'"
require_module("uvicorn", "serve", SERVE_EXTRA)
grpc = require_module("grpc", "serve", SERVE_EXTRA)
triton_grpc = require_module("tritonclient.grpc", "serve", SERVE_EXTRA)
pb = triton_grpc.service_pb2
service_pb2_grpc = triton_grpc.service_pb2_grpc


@pytest.fixture(scope="module")
def predictor(exported):
    return Predictor(exported.onnx_path)


def stub_of(server) -> tuple[grpc.Channel, service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(server.grpc_url, options=[("grpc.max_send_message_length", 64 * 2**20)])
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def infer_request(rows: np.ndarray, typed: bool = False, model: str = "rowrnn", **fields) -> pb.ModelInferRequest:
    """A ModelInferRequest for float32 images: raw_input_contents, or typed fp32_contents."""
    request = pb.ModelInferRequest(model_name=model, **fields)
    tensor = request.inputs.add(name="rows", datatype="FP32", shape=rows.shape)
    if typed:
        tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    else:
        request.raw_input_contents.append(rows.astype("<f4").tobytes())
    return request


def outputs_of(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        tensor.name: np.frombuffer(raw, "<f4").reshape(tensor.shape)
        for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def test_tritonclient_grpc_speaks_to_rowrnn_serve(exported, predictor, start_server):
    """Triton's gRPC client: health, metadata, inference (both outputs, one output, a request id);
    typed contents through the generated stub; every tensor equals the in-process Predictor's."""
    server = start_server(exported.onnx_path)
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("rowrnn") and client.is_model_ready("rowrnn", "1")
    assert not client.is_model_ready("other") and not client.is_model_ready("rowrnn", "2")
    assert {"binary_tensor_data", "model_repository", "sequence"} <= set(client.get_server_metadata().extensions)
    metadata = client.get_model_metadata("rowrnn", as_json=True)
    assert metadata["versions"] == ["1"] and metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "rows", "datatype": "FP32", "shape": ["-1", "28", "28"]}]
    assert [o["name"] for o in metadata["outputs"]] == ["logits", "probabilities"]

    rows = images(7, 11)
    expected = predictor.predict(rows)
    tensor = triton_grpc.InferInput("rows", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    for version in ("", "1"):
        result = client.infer("rowrnn", [tensor], model_version=version, request_id="req-7")
        assert result.get_response().id == "req-7" and result.get_response().model_version == "1"
        np.testing.assert_array_equal(result.as_numpy("logits"), expected.logits)
        np.testing.assert_array_equal(result.as_numpy("probabilities"), expected.probabilities)
    only = client.infer("rowrnn", [tensor], outputs=[triton_grpc.InferRequestedOutput("probabilities")])
    assert [o.name for o in only.get_response().outputs] == ["probabilities"] and only.as_numpy("logits") is None
    client.close()

    channel, stub = stub_of(server)
    with channel:
        typed = outputs_of(stub.ModelInfer(infer_request(rows, typed=True), timeout=30))
        np.testing.assert_array_equal(typed["logits"], expected.logits)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelStatistics(pb.ModelStatisticsRequest(name="rowrnn"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def with_raw(request: pb.ModelInferRequest, *blobs: bytes) -> pb.ModelInferRequest:
    del request.raw_input_contents[:]
    request.raw_input_contents.extend(blobs)
    return request


def request_with(change) -> pb.ModelInferRequest:
    request = infer_request(images(1, 3))
    change(request)
    return request


ONE = images(1, 3)
BAD_GRPC_REQUESTS = [
    # (name, method, request, status code, message)
    ("no inputs", "ModelInfer", pb.ModelInferRequest(model_name="rowrnn"), "INVALID_ARGUMENT", "one input 'rows'"),
    (
        "unknown input",
        "ModelInfer",
        request_with(lambda r: setattr(r.inputs[0], "name", "x")),
        "INVALID_ARGUMENT",
        "unknown input 'x'",
    ),
    (
        "input twice",
        "ModelInfer",
        request_with(lambda r: r.inputs.add(name="rows", datatype="FP32", shape=[1, 28, 28])),
        "INVALID_ARGUMENT",
        "given 2 times",
    ),
    (
        "wrong datatype",
        "ModelInfer",
        request_with(lambda r: setattr(r.inputs[0], "datatype", "UINT8")),
        "INVALID_ARGUMENT",
        "datatype 'UINT8'",
    ),
    (
        "shape not [N, 28, 28]",
        "ModelInfer",
        request_with(lambda r: r.inputs[0].shape.__setitem__(slice(None), [1, 784])),
        "INVALID_ARGUMENT",
        "[N, 28, 28]",
    ),
    (
        "negative shape",
        "ModelInfer",
        request_with(lambda r: r.inputs[0].shape.__setitem__(0, -5)),
        "INVALID_ARGUMENT",
        "[N, 28, 28]",
    ),
    (
        "raw size vs shape",
        "ModelInfer",
        with_raw(infer_request(ONE), b"\0" * 100),
        "INVALID_ARGUMENT",
        "does not match shape",
    ),
    (
        "huge shape",
        "ModelInfer",
        request_with(lambda r: r.inputs[0].shape.__setitem__(0, 2**40)),
        "INVALID_ARGUMENT",
        "does not match shape",
    ),
    (
        "two raw tensors",
        "ModelInfer",
        with_raw(infer_request(ONE), ONE.tobytes(), ONE.tobytes()),
        "INVALID_ARGUMENT",
        "2 raw_input_contents",
    ),
    (
        "raw and typed",
        "ModelInfer",
        request_with(lambda r: r.inputs[0].contents.fp32_contents.extend([0.0] * 784)),
        "INVALID_ARGUMENT",
        "both contents and raw_input_contents",
    ),
    (
        "typed count",
        "ModelInfer",
        pb.ModelInferRequest(
            model_name="rowrnn",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="rows",
                    datatype="FP32",
                    shape=[2, 28, 28],
                    contents=pb.InferTensorContents(fp32_contents=[0.0] * 784),
                )
            ],
        ),
        "INVALID_ARGUMENT",
        "holds 784 values",
    ),
    (
        "NaN",
        "ModelInfer",
        with_raw(infer_request(ONE), np.full(784, np.nan, "<f4").tobytes()),
        "INVALID_ARGUMENT",
        "NaN",
    ),
    (
        "value above 1",
        "ModelInfer",
        infer_request(np.full((1, 28, 28), 255, np.float32), typed=True),
        "INVALID_ARGUMENT",
        "must be in [0, 1]",
    ),
    (
        "unknown output",
        "ModelInfer",
        request_with(lambda r: r.outputs.add(name="features")),
        "INVALID_ARGUMENT",
        "unknown output 'features'",
    ),
    (
        "output twice",
        "ModelInfer",
        request_with(lambda r: [r.outputs.add(name="logits") for _ in range(2)]),
        "INVALID_ARGUMENT",
        "asked for twice",
    ),
    ("unknown model", "ModelInfer", infer_request(ONE, model="mnist"), "NOT_FOUND", "unknown model 'mnist'"),
    ("unknown version", "ModelInfer", infer_request(ONE, model_version="7"), "NOT_FOUND", "no version '7'"),
    (
        "superscript-two version",
        "ModelMetadata",
        pb.ModelMetadataRequest(name="rowrnn", version="²"),
        "NOT_FOUND",
        "no version '²'",
    ),
    ("5000-digit version", "ModelInfer", infer_request(ONE, model_version="9" * 5000), "NOT_FOUND", "no version '999"),
    (
        "metadata of unknown model",
        "ModelMetadata",
        pb.ModelMetadataRequest(name="mnist"),
        "NOT_FOUND",
        "unknown model 'mnist'",
    ),
    (
        "message over --max-body-mb",
        "ModelInfer",
        infer_request(images(400, 3)),
        "RESOURCE_EXHAUSTED",
        "larger than max",
    ),
    (
        "load on a single model file",
        "RepositoryModelLoad",
        pb.RepositoryModelLoadRequest(model_name="rowrnn"),
        "FAILED_PRECONDITION",
        "not a model repository",
    ),
]


@pytest.fixture(scope="module")
def battery_server(exported, tmp_path_factory):
    """One server for the whole battery: proving that it keeps serving after every bad request."""
    from helpers import start_server_process

    server = start_server_process(
        exported.onnx_path, "--max-body-mb", "1", log=tmp_path_factory.mktemp("grpc") / "server.log"
    )
    yield server
    assert server.stop() == 0


@pytest.mark.parametrize(
    "name, method, request_message, code, message", BAD_GRPC_REQUESTS, ids=[b[0] for b in BAD_GRPC_REQUESTS]
)
def test_bad_grpc_request_gets_its_code_and_one_clear_message(
    battery_server, predictor, name, method, request_message, code, message
):
    channel, stub = stub_of(battery_server)
    with channel:
        with pytest.raises(grpc.RpcError) as refused:
            getattr(stub, method)(request_message, timeout=30)
        assert refused.value.code() == grpc.StatusCode[code], refused.value.details()
        assert message in refused.value.details() and "\n" not in refused.value.details()
        rows = images(2, 99)  # and the server keeps serving
        np.testing.assert_array_equal(
            outputs_of(stub.ModelInfer(infer_request(rows), timeout=30))["logits"], predictor.predict(rows).logits
        )


def test_grpc_metrics_count_by_method_and_code(battery_server, predictor):
    """Beside REST's: every gRPC call by method and code; no client mistake ever became INTERNAL or UNKNOWN."""
    channel, stub = stub_of(battery_server)
    with channel:
        stub.ServerLive(pb.ServerLiveRequest(), timeout=30)
        for _ in range(3):
            stub.ModelInfer(infer_request(ONE), timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(infer_request(ONE, model="mnist"), timeout=30)
    good_request_works(battery_server.port, predictor)
    text = call(battery_server.port, "GET", "/metrics")[1].decode()
    assert metric(text, "rowrnn_grpc_requests_total", method="ModelInfer", code="OK") >= 3
    assert metric(text, "rowrnn_grpc_requests_total", method="ModelInfer", code="NOT_FOUND") >= 1
    assert metric(text, "rowrnn_grpc_requests_total", method="ServerLive", code="OK") >= 1
    assert metric(text, "rowrnn_grpc_request_duration_seconds_count", method="ModelInfer") >= 4
    assert metric(text, "rowrnn_requests_total", endpoint="infer", code="200") >= 1  # REST beside it
    assert not re.search(r'rowrnn_grpc_requests_total\{code="(INTERNAL|UNKNOWN)"', text)


def test_grpc_api_key(exported, predictor, start_server):
    server = start_server(exported.onnx_path, "--api-key", "s3cret")
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    assert client.is_server_live() and client.is_server_ready()  # probes need no key
    tensor = triton_grpc.InferInput("rows", [1, 28, 28], "FP32")
    tensor.set_data_from_numpy(ONE)
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret"}):
        for attempt in (
            lambda sent: client.infer("rowrnn", [tensor], headers=sent),
            lambda sent: client.get_model_metadata("rowrnn", headers=sent),
            lambda sent: client.get_model_repository_index(headers=sent),
        ):
            with pytest.raises(triton_grpc.InferenceServerException) as refused:
                attempt(headers)
            assert refused.value.status() == "StatusCode.UNAUTHENTICATED" and "API key" in refused.value.message()
    result = client.infer("rowrnn", [tensor], headers={"authorization": "Bearer s3cret"})
    np.testing.assert_array_equal(result.as_numpy("logits"), predictor.predict(ONE).logits)
    client.close()


def test_grpc_full_queue_is_resource_exhausted_at_once_and_recovers(exported, predictor, start_server):
    server = start_server(exported.onnx_path, "--max-queue", "1", "--max-batch", "8", "--log-level", "warning")
    rows = images(256, 4)
    expected = predictor.predict(rows).logits
    outcomes, lock = [], threading.Lock()

    def client() -> None:
        channel, stub = stub_of(server)
        with channel:
            for _ in range(5):
                try:
                    same = np.array_equal(
                        outputs_of(stub.ModelInfer(infer_request(rows), timeout=60))["logits"], expected
                    )
                    outcome = ("OK" if same else "OK but wrong", "")
                except grpc.RpcError as exc:
                    outcome = (exc.code().name, exc.details())
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert {code for code, _ in outcomes} == {"OK", "RESOURCE_EXHAUSTED"}, outcomes
    assert all("busy" in details for code, details in outcomes if code == "RESOURCE_EXHAUSTED")
    channel, stub = stub_of(server)
    with channel:  # serving normally afterwards
        np.testing.assert_array_equal(outputs_of(stub.ModelInfer(infer_request(rows), timeout=60))["logits"], expected)


def test_a_rest_and_a_grpc_request_share_one_session_call(exported, predictor, start_server):
    """One shared inference path, proved by the batch metrics: a REST request is still sending its
    body (so the batcher knows it is coming) when a gRPC request arrives; with --max-batch 2 the
    gRPC request waits for it, and one session call answers both."""
    server = start_server(exported.onnx_path, "--max-batch", "2", "--max-delay-ms", "20000")
    rest_rows, grpc_rows = images(1, 21), images(1, 22)
    body, headers = infer_body(rest_rows, binary=True)
    head = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    request = f"POST /v2/models/rowrnn/infer HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode()
    answers: dict[str, object] = {}
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as rest:
        rest.sendall(request + body[:100])  # the REST request is on its way in
        time.sleep(1.0)

        def grpc_client() -> None:
            client = triton_grpc.InferenceServerClient(server.grpc_url)
            tensor = triton_grpc.InferInput("rows", [1, 28, 28], "FP32")
            tensor.set_data_from_numpy(grpc_rows)
            answers["grpc"] = client.infer("rowrnn", [tensor], client_timeout=60).as_numpy("logits")
            client.close()

        thread = threading.Thread(target=grpc_client)
        thread.start()
        time.sleep(1.0)
        assert "grpc" not in answers  # waiting for the REST request's company
        rest.sendall(body[100:])
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < 400:
            chunk = rest.recv(65536)
            if not chunk:
                break
            reply += chunk
        thread.join(60)
    assert time.monotonic() - started < 15  # the batch closed when full, long before --max-delay-ms
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    np.testing.assert_array_equal(answers["grpc"], predictor.predict(grpc_rows).logits)
    text = call(server.port, "GET", "/metrics")[1].decode()
    assert metric(text, "rowrnn_inference_batch_size_count", model="rowrnn") == 1  # one session call ...
    assert metric(text, "rowrnn_inference_batch_size_sum", model="rowrnn") == 2  # ... for both images
    assert metric(text, "rowrnn_grpc_requests_total", method="ModelInfer", code="OK") == 1
    assert metric(text, "rowrnn_requests_total", endpoint="infer", code="200") == 1


def test_sigterm_drains_both_protocols(exported, predictor, start_server):
    """SIGTERM while REST and gRPC clients keep inferring: every request either protocol accepted
    is answered (REST 200, gRPC OK), the rest are refused (503, UNAVAILABLE, or the listener is
    closed), and the process exits 0."""
    server = start_server(exported.onnx_path)
    rows = images(20, 5)
    expected = predictor.predict(rows).logits
    body, headers = infer_body(rows, binary=True)
    outcomes: list[tuple[str, str]] = []
    lock = threading.Lock()
    terminated = threading.Event()

    def record(protocol: str, outcome: str) -> bool:
        with lock:
            outcomes.append((protocol, outcome))
            return outcome in ("200", "OK") and not (terminated.is_set() and len(outcomes) > 20_000)

    def rest_client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        going = True
        while going:
            try:
                connection.request("POST", "/v2/models/rowrnn/infer", body, headers)
                response = connection.getresponse()
                data = response.read()
            except ConnectionRefusedError:
                going = record("rest", "refused")
                continue
            except (ConnectionError, http.client.HTTPException) as exc:
                going = record("rest", f"lost: {exc!r}")
                continue
            same = response.status != 200 or np.array_equal(decode(response, data)["logits"], expected)
            going = record("rest", str(response.status) + ("" if same else " but wrong"))
        connection.close()

    def grpc_client() -> None:
        channel, stub = stub_of(server)
        with channel:
            going = True
            while going:
                try:
                    response = stub.ModelInfer(infer_request(rows), timeout=60)
                except grpc.RpcError as exc:
                    going = record("grpc", exc.code().name)
                    continue
                same = np.array_equal(outputs_of(response)["logits"], expected)
                going = record("grpc", "OK" if same else "OK but wrong")

    threads = [threading.Thread(target=client) for client in [rest_client] * 4 + [grpc_client] * 4]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while (
        sum(p == "grpc" for p, _ in outcomes) < 100 or sum(p == "rest" for p, _ in outcomes) < 100
    ) and time.monotonic() < deadline:
        time.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    terminated.set()
    for thread in threads:
        thread.join(90)
    assert server.process.wait(60) == 0

    counts = {outcome: outcomes.count(outcome) for outcome in set(outcomes)}
    assert {o for p, o in counts if p == "rest"} <= {"200", "503", "refused"}, counts
    assert {o for p, o in counts if p == "grpc"} <= {"OK", "UNAVAILABLE"}, counts
    assert counts.get(("rest", "503"), 0) + counts.get(("grpc", "UNAVAILABLE"), 0) >= 1, counts  # the drain was seen
    log = server.log.read_text()
    assert len(re.findall(r'"POST /v2/models/rowrnn/infer" 200 ', log)) == counts[("rest", "200")]
    assert len(re.findall(r'"gRPC ModelInfer" OK ', log)) == counts[("grpc", "OK")]  # every accepted one answered
