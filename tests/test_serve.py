"""rowrnn serve as a real process on 127.0.0.1: Triton's own client, load, bad requests, drain.

Every server is started by the test on a free loopback port and stopped by its PID.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

from helpers import INFER, decode, good_request_works, images, infer_body, metric, require_module
from helpers import http_call as call
from runtime import Predictor

require_module("uvicorn", "serve", "needs the serve extra: pip install '.[serve]'")


@pytest.fixture(scope="module")
def predictor(exported):
    return Predictor(exported.onnx_path)


def test_tritonclient_speaks_to_rowrnn_serve(exported, predictor, start_server):
    """Triton's own HTTP client: health, metadata, and inference with binary and JSON tensors;
    every tensor equals the in-process Predictor's, bit for bit."""
    import tritonclient.http as triton

    server = start_server(exported.onnx_path)
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("rowrnn") and client.is_model_ready("rowrnn", "1")
    assert not client.is_model_ready("other")
    assert {"binary_tensor_data", "model_repository", "sequence"} <= set(client.get_server_metadata()["extensions"])
    metadata = client.get_model_metadata("rowrnn", "1")
    assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "rows", "datatype": "FP32", "shape": [-1, 28, 28]}]
    assert [(o["name"], o["shape"]) for o in metadata["outputs"]] == [("logits", [-1, 10]), ("probabilities", [-1, 10])]
    assert metadata["parameters"]["architecture"] == predictor.metadata["architecture"]

    rows = images(5, 1)
    expected = predictor.predict(rows)
    for binary in (True, False):
        tensor = triton.InferInput("rows", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        for version in ("", "1"):
            result = client.infer(
                "rowrnn",
                [tensor],
                model_version=version,
                request_id=f"req-{binary}",
                outputs=[triton.InferRequestedOutput(name, binary_data=binary) for name in ("logits", "probabilities")],
            )
            assert result.get_response()["id"] == f"req-{binary}"
            np.testing.assert_array_equal(result.as_numpy("logits"), expected.logits)
            np.testing.assert_array_equal(result.as_numpy("probabilities"), expected.probabilities)
        only = client.infer(
            "rowrnn", [tensor], outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary)]
        )
        assert [o["name"] for o in only.get_response()["outputs"]] == ["probabilities"]
        assert only.as_numpy("logits") is None
    with pytest.raises(triton.InferenceServerException, match="no version '2'"):
        client.infer("rowrnn", [tensor], model_version="2")
    client.close()


def run_load(port: int, pool: list, clients: int, per_client: int) -> list[str]:
    """`clients` threads x `per_client` requests drawn from `pool`; returns every failure."""
    failures: list[str] = []

    def client(seed: int) -> None:
        chooser = random.Random(seed)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for _ in range(per_client):
                body, headers, expected = chooser.choice(pool)
                connection.request("POST", INFER, body, headers)
                response = connection.getresponse()
                data = response.read()
                if response.status != 200:
                    failures.append(f"{response.status}: {data[:200]!r}")
                    continue
                outputs = decode(response, data)
                if not (
                    np.array_equal(outputs["logits"], expected.logits)
                    and np.array_equal(outputs["probabilities"], expected.probabilities)
                ):
                    failures.append("an answer differs from the in-process Predictor's")
        except Exception as exc:  # noqa: BLE001  (a thread's exception would vanish)
            failures.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return failures


def test_load_32_clients_get_their_own_answers(exported, predictor, start_server):
    """32 concurrent clients x 100 requests, single-image and 50-image, JSON and binary, twice:
    no errors, every answer is the in-process Predictor's for those images (batches shared by
    several requests never mix them up), and the server's memory does not grow."""
    server = start_server(exported.onnx_path, "--log-level", "warning")
    pool = []
    for i in range(16):
        rows = images(50 if i % 4 == 0 else 1, 100 + i)
        pool.append((*infer_body(rows, binary=i % 2 == 0), predictor.predict(rows)))
    assert run_load(server.port, pool, clients=32, per_client=100) == []
    rss_first = server.rss_bytes()
    assert run_load(server.port, pool, clients=32, per_client=100) == []
    rss_second = server.rss_bytes()
    assert rss_second - rss_first < 16 * 2**20, (rss_first, rss_second)

    _, text = call(server.port, "GET", "/metrics")
    text = text.decode()
    batches = metric(text, "rowrnn_inference_batch_size_count")
    batched_images = metric(text, "rowrnn_inference_batch_size_sum")
    requests = metric(text, "rowrnn_requests_total", code="200", endpoint="infer")
    assert requests == 6400
    assert batches < requests * 0.8, "requests were not batched together"  # proof that batches were shared
    assert batched_images > batches  # on average more than one image per session call


def raw_exchange(port: int, data: bytes, close_after: bool = False, timeout: float = 30) -> bytes:
    """Send raw bytes (a request written by hand, maybe broken) and read until the server closes."""
    deadline = time.monotonic() + timeout  # for the whole reply: a server trickling bytes cannot hold the test
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if close_after:
            return b""
        chunks = []
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):  # enough to read the status and the JSON error
                head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", head, re.I)
                if length and len(rest) >= int(length.group(1)):
                    break
        return b"".join(chunks)


def binary_request(declared_size: int, blob: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "rows",
                    "datatype": "FP32",
                    "shape": [1, 28, 28],
                    "parameters": {"binary_data_size": declared_size},
                }
            ]
        }
    ).encode()
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


BAD_REQUESTS = [
    # (name, method, path, body, headers, status, message)
    ("malformed JSON", "POST", INFER, b'{"inputs": [', {}, 400, "malformed JSON"),
    (
        "unknown input",
        "POST",
        INFER,
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 28, 28], "data": []}]}',
        {},
        400,
        "unknown input 'x'",
    ),
    (
        "wrong datatype",
        "POST",
        INFER,
        json.dumps(
            {"inputs": [{"name": "rows", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}]}
        ).encode(),
        {},
        400,
        "datatype 'UINT8'",
    ),
    (
        "shape not [N, 28, 28]",
        "POST",
        INFER,
        json.dumps({"inputs": [{"name": "rows", "datatype": "FP32", "shape": [1, 784], "data": [0] * 784}]}).encode(),
        {},
        400,
        "[N, 28, 28]",
    ),
    (
        "negative shape",
        "POST",
        INFER,
        json.dumps(
            {"inputs": [{"name": "rows", "datatype": "FP32", "shape": [-5, 28, 28], "data": [0] * 784}]}
        ).encode(),
        {},
        400,
        "[N, 28, 28]",
    ),
    (
        "huge shape",
        "POST",
        INFER,
        json.dumps(
            {"inputs": [{"name": "rows", "datatype": "FP32", "shape": [2**40, 28, 28], "data": [0] * 784}]}
        ).encode(),
        {},
        400,
        "holds 784 values",
    ),
    (
        "data length",
        "POST",
        INFER,
        json.dumps(
            {"inputs": [{"name": "rows", "datatype": "FP32", "shape": [2, 28, 28], "data": [0] * 784}]}
        ).encode(),
        {},
        400,
        "holds 784 values",
    ),
    (
        "value above 1",
        "POST",
        INFER,
        json.dumps(
            {"inputs": [{"name": "rows", "datatype": "FP32", "shape": [1, 28, 28], "data": [255] * 784}]}
        ).encode(),
        {},
        400,
        "must be in [0, 1]",
    ),
    (
        "unknown output",
        "POST",
        INFER,
        json.dumps(
            {
                "inputs": [{"name": "rows", "datatype": "FP32", "shape": [1, 28, 28], "data": [0] * 784}],
                "outputs": [{"name": "features"}],
            }
        ).encode(),
        {},
        400,
        "unknown output 'features'",
    ),
    ("binary size vs shape", "POST", INFER, *binary_request(100, b"\0" * 100), 400, "does not match shape"),
    ("binary size past the body", "POST", INFER, *binary_request(3136, b"\0" * 100), 400, "runs past the end"),
    (
        "header length past the body",
        "POST",
        INFER,
        b'{"inputs": []}',
        {"Inference-Header-Content-Length": "5000"},
        400,
        "past the end of the body",
    ),
    ("NaN in binary data", "POST", INFER, *binary_request(3136, np.full(784, np.nan, "<f4").tobytes()), 400, "NaN"),
    ("empty body", "POST", INFER, b"", {}, 400, "no body"),
    (
        "wrong content type",
        "POST",
        INFER,
        b"rows=1",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "content type",
    ),
    ("compressed body", "POST", INFER, b"\x1f\x8b", {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    ("unknown model", "POST", "/v2/models/mnist/infer", b"{}", {}, 404, "unknown model 'mnist'"),
    ("unknown version", "GET", "/v2/models/rowrnn/versions/7", None, {}, 404, "no version '7'"),
    # a digit to str.isdigit, not to int(): once a 500
    ("superscript-two version", "GET", "/v2/models/rowrnn/versions/%C2%B2", None, {}, 404, "no version '²'"),
    (
        "5000-digit version",
        "POST",
        "/v2/models/rowrnn/versions/" + "9" * 5000 + "/infer",
        b"{}",
        {},
        404,
        "no version '999",
    ),
    ("unknown endpoint", "GET", "/v1/models/rowrnn:predict", None, {}, 404, "no such endpoint"),
    ("wrong method", "GET", INFER, None, {}, 405, "GET is not allowed"),
    ("body over --max-body-mb", "POST", INFER, b"[" * (1024 * 1024 + 1), {}, 413, "over the 1 MB limit"),
]


@pytest.fixture(scope="module")
def battery_server(exported, tmp_path_factory):
    """One server for the whole battery: proving that it keeps serving after every bad request."""
    from helpers import start_server_process

    server = start_server_process(
        exported.onnx_path,
        "--max-body-mb",
        "1",
        "--body-timeout-s",
        "1",
        log=tmp_path_factory.mktemp("battery") / "server.log",
    )
    yield server
    assert server.stop() == 0


@pytest.mark.parametrize(
    "name, method, path, body, headers, status, message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_request_gets_its_status_and_one_clear_message(
    battery_server, predictor, name, method, path, body, headers, status, message
):
    response, data = call(battery_server.port, method, path, body, headers)
    assert response.status == status, data
    assert response.getheader("Content-Type") == "application/json"
    error = json.loads(data)
    assert list(error) == ["error"] and message in error["error"] and "\n" not in error["error"]
    good_request_works(battery_server.port, predictor)


def test_broken_connections_leave_the_server_serving(battery_server, predictor):
    port = battery_server.port
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    # a body cut short: the client promises 1000 bytes, sends 10 and hangs up
    raw_exchange(port, (head + "Content-Length: 1000\r\n\r\n").encode() + b'{"inputs":', close_after=True)
    good_request_works(port, predictor)
    # a slow client that stops sending mid-body: 408 after --body-timeout-s (1 s here)
    started = time.monotonic()
    reply = raw_exchange(port, (head + "Content-Length: 1000\r\n\r\n").encode() + b'{"inputs":')
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"did not arrive within 1 s" in reply and time.monotonic() - started < 10
    good_request_works(port, predictor)
    # garbage instead of HTTP
    raw_exchange(port, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")
    good_request_works(port, predictor)
    _, text = call(port, "GET", "/metrics")
    assert b'code="500"' not in text  # no client mistake ever became a server error


def test_api_key(exported, predictor, start_server):
    import tritonclient.http as triton

    server = start_server(exported.onnx_path, env={"ROWRNN_API_KEY": "s3cret"})
    assert call(server.port, "GET", "/v2/health/ready")[0].status == 200  # probes need no key
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        response, data = call(server.port, "GET", "/v2/models/rowrnn", headers=headers)
        assert response.status == 401 and "API key" in json.loads(data)["error"]
        assert response.getheader("WWW-Authenticate") == "Bearer"
    assert call(server.port, "GET", "/metrics")[0].status == 401
    body, headers = infer_body(images(1, 3), binary=False)
    assert call(server.port, "POST", INFER, body, headers)[0].status == 401
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    tensor = triton.InferInput("rows", [1, 28, 28], "FP32")
    tensor.set_data_from_numpy(images(1, 3))
    result = client.infer("rowrnn", [tensor], headers={"Authorization": "Bearer s3cret"})
    np.testing.assert_array_equal(result.as_numpy("logits"), predictor.predict(images(1, 3)).logits)


def test_full_queue_answers_503_at_once_and_recovers(exported, predictor, start_server):
    server = start_server(exported.onnx_path, "--max-queue", "1", "--max-batch", "8", "--log-level", "warning")
    rows = images(256, 4)
    pool = [(*infer_body(rows, binary=True), predictor.predict(rows))]
    statuses, lock = [], threading.Lock()

    def client() -> None:
        body, headers, _ = pool[0]
        for _ in range(5):
            response, data = call(server.port, "POST", INFER, body, headers)
            with lock:
                statuses.append(response.status)
            if response.status == 503:
                assert response.getheader("Retry-After") == "1"
                assert "busy" in json.loads(data)["error"]
            else:
                assert response.status == 200
                np.testing.assert_array_equal(decode(response, data)["logits"], pool[0][2].logits)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert 503 in statuses and 200 in statuses, statuses
    assert run_load(server.port, pool, clients=1, per_client=3) == []  # serving normally afterwards


def test_sigterm_drains_without_losing_an_accepted_request(exported, predictor, start_server, tmp_path):
    """SIGTERM in the middle of a load: readiness turns false, new requests get 503, the ones
    in flight finish, the process exits 0; every request the server accepted was answered."""
    modules = tmp_path / "modules.json"
    server = start_server(exported.onnx_path, env={"ROWRNN_TEST_MODULES": str(modules)})
    rows = images(50, 5)
    body, headers = infer_body(rows, binary=True)
    expected = predictor.predict(rows)
    outcomes: list[str] = []
    lock = threading.Lock()
    terminated = threading.Event()

    deadline = time.monotonic() + 180  # the whole exchange: it takes ~10 s; a stuck one fails, never hangs

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        while time.monotonic() < deadline:
            try:
                connection.request("POST", INFER, body, headers)
            except ConnectionRefusedError:
                outcome = "refused"  # never accepted: the listener was closed
            else:
                try:
                    response = connection.getresponse()
                    data = response.read()
                except (ConnectionError, http.client.HTTPException) as exc:
                    outcome = f"lost: {exc!r}"  # sent, then no answer
                else:
                    if response.status == 200:
                        same = np.array_equal(decode(response, data)["logits"], expected.logits)
                        outcome = "200" + ("" if same else " but wrong")
                    else:
                        outcome = str(response.status)
            with lock:
                outcomes.append(outcome)
            if outcome != "200" or (terminated.is_set() and len(outcomes) > 10_000):
                break
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    while len(outcomes) < 200 and any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(outcomes) >= 200, f"the load did not get going: {outcomes[-5:]}"
    server.process.send_signal(signal.SIGTERM)
    terminated.set()
    ready = call(server.port, "GET", "/v2/health/ready")[0].status
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 1))
    assert not any(t.is_alive() for t in threads), "clients still sending at the deadline"
    assert server.process.wait(60) == 0
    assert ready == 503  # readiness turned false at once

    counts = {outcome: outcomes.count(outcome) for outcome in set(outcomes)}
    assert set(counts) <= {"200", "503", "refused"}, counts  # nothing lost, nothing wrong
    assert counts.get("503", 0) >= 1, counts  # the drain was seen: the signal landed mid-load
    served = len(re.findall(rf'"POST {INFER}" 200 ', server.log.read_text()))
    assert served == counts["200"], (served, counts)  # every request the server answered arrived
    assert "draining" in server.log.read_text()

    # The running server imported the light runtime only. The `rowrnn` command itself reads two
    # modules of plain constants for its other commands' option defaults (TrainConfig, export's
    # opset/atol); they import nothing of TensorFlow, and serve/ imports neither.
    loaded = json.loads(modules.read_text())
    cli_constants = {"rowrnn_keras", "rowrnn_keras.config", "export", "export.defaults"}
    heavy = [
        m
        for m in loaded
        if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "rowrnn_keras", "export") and m not in cli_constants
    ]
    assert heavy == [] and "serve.app" in loaded and "runtime.predictor" in loaded


# Runs `rowrnn` with the web stack hidden, as on the plain `pip install .`.
WITHOUT_SERVE_EXTRA = """
import sys
HIDDEN = {"starlette", "uvicorn", "httptools", "uvloop", "prometheus_client", "orjson"}
class HideServeExtra:
    def __init__(self, finders):
        self.finders = finders
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        for finder in self.finders:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                return spec
        return None
sys.meta_path[:] = [HideServeExtra(list(sys.meta_path))]
sys.argv = ["rowrnn", *sys.argv[1:]]
from rowrnn.__main__ import run
run()
"""


def test_without_the_serve_extra_it_names_the_extra(exported):
    from helpers import REPO, assert_one_line_error

    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_SERVE_EXTRA, "serve", str(exported.onnx_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert_one_line_error(result, "pip install 'rowrnn[serve]'", "starlette")


@pytest.mark.parametrize(
    "options, message",
    [
        (["--port", "70000"], "--port 70000"),
        (["--max-batch", "0"], "--max-batch must be at least 1"),
        (["--max-delay-ms", "-1"], "--max-delay-ms"),
        (["--log-level", "loud"], "--log-level 'loud'"),
        (["--api-key", " "], "--api-key is empty"),
        (["--grpc-port", "70000"], "--grpc-port 70000"),
        (["--port", "8123", "--grpc-port", "8123"], "give them different ports"),
        (["--header-timeout-s", "0"], "--header-timeout-s must be above 0"),
        (["--max-connections", "0"], "--max-connections must be at least 1"),
        (["--max-sequences", "0"], "--max-sequences must be at least 1"),
        (["--sequence-idle-s", "0"], "--sequence-idle-s must be above 0"),
    ],
)
def test_bad_options_are_one_line(exported, options, message):
    from helpers import assert_one_line_error, rowrnn

    assert_one_line_error(rowrnn("serve", exported.onnx_path, *options), message)


def test_bad_model_and_busy_port_are_one_line(exported, tmp_path):
    from helpers import assert_one_line_error, foreign_model, rowrnn

    assert_one_line_error(rowrnn("serve", tmp_path / "absent.onnx"), "no such file")
    assert_one_line_error(rowrnn("serve", foreign_model(tmp_path / "f.onnx", input_name="x")), "not a rowrnn model")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_error(rowrnn("serve", exported.onnx_path, "--port", port), f"cannot listen on 127.0.0.1:{port}")
        assert_one_line_error(
            rowrnn("serve", exported.onnx_path, "--port", 0, "--grpc-port", port), f"cannot listen on 127.0.0.1:{port}"
        )


def test_an_exposed_address_without_a_key_is_warned_about(exported, monkeypatch, caplog):
    """Checked without binding anything but loopback: the listener and uvicorn are stand-ins."""
    import serve.server
    from serve import ServeSettings, create_app

    assert not ServeSettings().exposed and not ServeSettings(host="::1").exposed
    assert ServeSettings(host="0.0.0.0").exposed and ServeSettings(host="192.0.2.1").exposed
    started = []
    monkeypatch.setattr(serve.server, "listen", lambda host, port: types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(serve.server.DrainingServer, "run", lambda self, sockets: started.append(self))
    app = create_app(exported.onnx_path)
    for settings, warned in (
        (ServeSettings(host="0.0.0.0"), True),
        (ServeSettings(host="0.0.0.0", api_key="k"), False),
        (ServeSettings(), False),
    ):
        caplog.clear()
        serve.server.run(app, settings)
        assert ("without --api-key" in caplog.text) == warned
    assert len(started) == 3


def read_reply(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or `timeout` passes)."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def test_a_client_that_never_finishes_its_headers_is_cut_off(exported, predictor, start_server):
    """Slowloris: 50 connections trickle a header byte every 0.2 s. Trickling does not extend the
    deadline: each gets 408 and is closed within --header-timeout-s (1 s here), and a good client
    is served meanwhile."""
    server = start_server(exported.onnx_path, "--header-timeout-s", "1", "--log-level", "warning")
    slow = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(50)]
    started = time.monotonic()
    for sock in slow:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\n".encode())
    good_request_works(server.port, predictor)
    cut = set()
    while len(cut) < len(slow) and time.monotonic() - started < 10:
        for index, sock in enumerate(slow):
            if index not in cut:
                try:
                    sock.sendall(b"X")  # one more byte of a header that never ends
                except OSError:  # the server closed it
                    cut.add(index)
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    replies = [read_reply(sock, 5) for sock in slow]
    for sock in slow:
        sock.close()
    assert len(cut) == len(slow) and elapsed < 5, (len(cut), elapsed)  # cut off near the 1 s deadline
    assert all(reply.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in reply for reply in replies), (
        replies[0]
    )
    good_request_works(server.port, predictor)


def test_connections_beyond_the_limit_get_503_at_once_while_requests_in_flight_finish(
    exported, predictor, start_server
):
    server = start_server(
        exported.onnx_path, "--max-connections", "20", "--header-timeout-s", "60", "--log-level", "warning"
    )
    rows = images(3, 31)
    body, headers = infer_body(rows, binary=True)
    head = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    in_flight = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    in_flight.sendall(
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:50]
    )
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(19)]
    time.sleep(0.5)  # the server has accepted all 20
    for _ in range(5):  # the 21st, 22nd, ...: refused at once, with the reason
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as extra:
            reply = read_reply(extra, 5)
        assert time.monotonic() - started < 2
        assert reply.startswith(b"HTTP/1.1 503") and b"--max-connections" in reply and b"retry-after: 1" in reply, reply
    in_flight.sendall(body[50:])  # the request in flight finishes, answered exactly
    reply = read_reply_until_complete(in_flight)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    in_flight.close()
    for sock in idle:
        sock.close()
    deadline = time.monotonic() + 10
    while True:  # once they are gone, new clients are served again
        response, data = call(server.port, "POST", INFER, body, headers)
        if response.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert response.status == 200
    np.testing.assert_array_equal(decode(response, data)["logits"], predictor.predict(rows).logits)


def read_reply_until_complete(sock: socket.socket) -> bytes:
    """One HTTP response with a Content-Length, read whole (the connection stays open)."""
    sock.settimeout(30)
    data = b""
    while True:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", head, re.I)
        if length and len(rest) >= int(length.group(1)):
            return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
