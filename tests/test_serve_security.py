"""The server attacked as a client would: keys that almost match, requests that lie about
themselves, CORS, gzip, the drain's timings and memory under 100 maximum-size bodies.

Every test runs against a real `rowrnn serve` process on 127.0.0.1 (the bundled model: no
training needed) with real sockets, bounded in count and time. Each names, in a comment, the
plausible wrong implementation it catches. The endpoint lists are data: the gRPC service and the
repository endpoints join them when they exist.
"""

from __future__ import annotations

import gzip
import hmac
import http.client
import io
import json
import re
import signal
import socket
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, require_module, start_server_process
from helpers import http_call as call

require_module("uvicorn", "serve", "needs the serve extra: pip install '.[serve]'")

MODEL = REPO / "runtime" / "models" / "mnist.onnx"
INFER = "/v2/models/rowrnn/infer"
KEY = "k3y-Of-24-characters-Q7z"  # mixed case and digits: a case-folding check shows


def images(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).integers(0, 256, (n, 28, 28)) / 255).astype(np.float32)


def json_request(rows: np.ndarray) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "rows", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}]}
    ).encode()


def binary_request(rows: np.ndarray) -> tuple[bytes, int]:
    """(body, Inference-Header-Content-Length) of a binary tensor data request."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "rows",
                    "datatype": "FP32",
                    "shape": list(rows.shape),
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ]
        }
    ).encode()
    return header + rows.tobytes(), len(header)


def png_digit() -> bytes:
    from PIL import Image

    canvas = np.zeros((28, 28), np.uint8)
    canvas[4:24, 12:16] = 255  # a 1
    out = io.BytesIO()
    Image.fromarray(canvas).save(out, format="PNG")
    return out.getvalue()


# --- talking HTTP by hand: a request that lies must reach the server exactly as written ------------


def exchange(port: int, data: bytes, timeout: float = 10.0, then: bytes | None = None, pause: float = 0.0) -> bytes:
    """Send `data` on a new connection (then, after `pause`, `then`) and read until the server
    closes it or one whole response has arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if then is not None:
                time.sleep(pause)
                sock.sendall(then)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading everything: read what it said
        received = b""
        deadline = time.monotonic() + timeout  # for the whole reply: a server trickling bytes cannot hold the test
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
            head, found, rest = received.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if found and length and len(rest) >= int(length.group(1)):
                break
        return received


def post(path: str, body: bytes, *headers: str, content_length: int | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def status_of(reply: bytes) -> int | None:
    """The first response's status; None when the server closed without answering."""
    found = re.match(rb"HTTP/1\.1 (\d{3}) ", reply)
    return int(found.group(1)) if found else None


def statuses(reply: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)]


@pytest.fixture(scope="module")
def predictor():
    from runtime import Predictor

    with Predictor(MODEL) as loaded:
        yield loaded


def answers_a_good_request(port: int, predictor, headers: dict | None = None) -> None:
    """A good request on a new connection is answered, bit-exact to the in-process Predictor."""
    rows = images(2, 99)
    body, length = binary_request(rows)
    response, data = call(
        port,
        "POST",
        INFER,
        body,
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(length), **(headers or {})},
    )
    assert response.status == 200, data[:300]
    header = json.loads(data)
    logits = next(o for o in header["outputs"] if o["name"] == "logits")
    np.testing.assert_array_equal(np.array(logits["data"], np.float32).reshape(2, 10), predictor.predict(rows).logits)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Module servers, started once and stopped by PID (SIGTERM: each must still exit 0)."""
    started = {}

    def get(name: str, *options: str):
        if name not in started:
            log = tmp_path_factory.mktemp("security") / f"{name}.log"
            started[name] = start_server_process(MODEL, *options, "--log-level", "warning", log=log)
        return started[name]

    yield get
    for server in started.values():
        assert server.stop() == 0, server.log.read_text()[-2000:]


@pytest.fixture(scope="module")
def keyed(servers):
    return servers("keyed", "--api-key", KEY)


@pytest.fixture(scope="module")
def plain(servers):
    """No key, no CORS origin; a 1 MB body limit and a 1 s body timeout to lie against."""
    return servers("plain", "--max-body-mb", "1", "--body-timeout-s", "1")


# --- keys ------------------------------------------------------------------------------------------


def protected_rest() -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    """Every REST endpoint behind --api-key that answers 200 with the key: (method, path, body,
    headers). The repository's load and unload answer 409 on a one-model server even with the key:
    `REFUSED_WITH_KEY`."""
    rows = images(1, 3)
    body, length = binary_request(rows)
    binary = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(length)}
    return [
        ("GET", "/v2", None, {}),
        ("GET", "/v2/models/rowrnn", None, {}),
        ("GET", "/v2/models/rowrnn/versions/1", None, {}),
        ("GET", "/v2/models/rowrnn/ready", None, {}),
        ("GET", "/v2/models/rowrnn/versions/1/ready", None, {}),
        ("POST", INFER, json_request(rows), {"Content-Type": "application/json"}),
        ("POST", "/v2/models/rowrnn/versions/1/infer", body, binary),
        ("GET", "/metrics", None, {}),
        ("POST", "/v1/classify", png_digit(), {"Content-Type": "image/png"}),
        ("POST", "/v2/repository/index", None, {}),
        ("GET", "/page/model.onnx", None, {}),  # the browser engine's model files
        ("GET", "/page/model.step.onnx", None, {}),
        ("GET", "/page/model.json", None, {}),
        # the stream model: its metadata, readiness, and a sequence of one row
        ("GET", "/v2/models/rowrnn-stream", None, {}),
        ("GET", "/v2/models/rowrnn-stream/ready", None, {}),
        ("POST", "/v2/models/rowrnn-stream/infer", one_row_sequence(), {"Content-Type": "application/json"}),
    ]


def one_row_sequence() -> bytes:
    """A stream model request: a sequence of one row (sequence_start and sequence_end)."""
    tensor = {"name": "row", "datatype": "FP32", "shape": [1, 28], "data": [0.5] * 28}
    parameters = {"sequence_id": 5, "sequence_start": True, "sequence_end": True}
    return json.dumps({"inputs": [tensor], "parameters": parameters}).encode()


# The repository extension's explicit control: with the key, 409 here (one model file, no
# repository); without it, 401 first: the key is checked before anything is done.
REFUSED_WITH_KEY = [
    ("POST", "/v2/repository/models/rowrnn/load", None, {}),
    ("POST", "/v2/repository/models/rowrnn/unload", None, {}),
]


OPEN_REST = ["/v2/health/live", "/v2/health/ready", "/", "/page/page.js", "/page/page.css"]


def almost_keys() -> list[tuple[str, dict[str, str], str]]:
    """(case, headers, the wrong implementation that would let it through)."""
    middle = len(KEY) // 2
    bearer = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731
    return [
        ("first character changed", bearer("X" + KEY[1:]), "a check that skips the first character"),
        (
            "middle character changed",
            bearer(KEY[:middle] + chr(ord(KEY[middle]) + 1) + KEY[middle + 1 :]),
            "a sampled comparison",
        ),
        ("last character changed", bearer(KEY[:-1] + "x"), "a check of the first len-1 characters"),
        ("a prefix", bearer(KEY[:-3]), "key.startswith(token)"),
        ("the key plus a suffix", bearer(KEY + "0"), "token.startswith(key), or compare token[:len(key)]"),
        ("other case", bearer(KEY.swapcase()), "a case-insensitive comparison (lower() on both)"),
        ("upper case", bearer(KEY.upper()), "a case-insensitive comparison"),
        ("a space before the key", {"Authorization": f"Bearer  {KEY}"}, "token.strip() before comparing"),
        ("a space inside the key", bearer(KEY[:middle] + " " + KEY[middle:]), "comparing with whitespace removed"),
        ("a no-break space after the key", {"Authorization": f"Bearer {KEY}\xa0"}, "str.strip(), which strips U+00A0"),
        ("empty token", {"Authorization": "Bearer "}, "an empty key accepted as 'no key configured'"),
        ("scheme alone", {"Authorization": "Bearer"}, "a missing token treated as no check"),
        ("no header", {}, "no check at all"),
        ("another scheme", {"Authorization": f"Basic {KEY}"}, "a check that ignores the scheme"),
        ("the key without a scheme", {"Authorization": KEY}, "a check that takes the last word"),
        ("non-ASCII", {"Authorization": f"Bearer {KEY[:-1]}é"}, "a 500 from encoding the token"),
        ("64 KB long", bearer(KEY * (65536 // len(KEY) + 1)), "a check that compares only len(key) characters"),
        ("the key in another header", {"X-API-Key": KEY, "Api-Key": KEY}, "accepting any header that holds the key"),
    ]


@pytest.mark.parametrize("case, headers, bug", almost_keys(), ids=[k[0] for k in almost_keys()])
def test_a_key_that_almost_matches_is_refused_on_every_protected_endpoint(keyed, case, headers, bug):
    # Catches: `bug` (each case names the wrong check it defeats).
    for method, path, body, extra in protected_rest() + REFUSED_WITH_KEY:
        response, data = call(keyed.port, method, path, body, {**extra, **headers})
        if case == "64 KB long":  # refused before the key is read: the header block is too large
            assert response.status in (401, 431), (path, response.status, data[:200])
        else:
            assert response.status == 401, (case, method, path, response.status, data[:200])
            assert response.getheader("WWW-Authenticate") == "Bearer"
        assert "error" in json.loads(data)


def test_the_key_in_the_query_string_is_refused(keyed):
    # Catches: a check that also reads ?api_key= / ?key= / ?token= (keys then land in access logs).
    for method, path, body, extra in protected_rest():
        for parameter in ("api_key", "key", "token", "authorization"):
            response, _ = call(keyed.port, method, f"{path}?{parameter}={KEY}", body, extra)
            assert response.status == 401, (path, parameter)


def test_the_right_key_opens_every_protected_endpoint_and_health_and_page_need_none(keyed, predictor):
    # Catches: an over-eager check that also locks out the right key (or the probes and the page),
    # which would make every refusal above meaningless.
    for method, path, body, extra in protected_rest():
        response, data = call(keyed.port, method, path, body, {**extra, "Authorization": f"Bearer {KEY}"})
        assert response.status == 200, (path, data[:200])
        response, _ = call(keyed.port, method, path, body, {**extra, "Authorization": f"bearer {KEY}"})
        assert response.status == 200, path  # the scheme is case-insensitive (RFC 7235), the key is not
    for method, path, body, extra in REFUSED_WITH_KEY:
        response, data = call(keyed.port, method, path, body, {**extra, "Authorization": f"Bearer {KEY}"})
        assert response.status == 409, (path, data[:200])  # past the key check, refused for what it asks
    for path in OPEN_REST:
        assert call(keyed.port, "GET", path)[0].status == 200, path
    answers_a_good_request(keyed.port, predictor, {"Authorization": f"Bearer {KEY}"})
    _, text = call(keyed.port, "GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert b'code="500"' not in text  # no refusal above was a crash


def grpc_calls(stub, service_pb2) -> dict[str, object]:
    """Every gRPC method behind --api-key, as a call taking the metadata to send."""
    rows = images(1, 3)
    infer = service_pb2.ModelInferRequest(model_name="rowrnn", raw_input_contents=[rows.tobytes()])
    infer.inputs.add(name="rows", datatype="FP32", shape=[1, 28, 28])
    row = service_pb2.ModelInferRequest(model_name="rowrnn-stream", raw_input_contents=[rows[0, :1].tobytes()])
    row.inputs.add(name="row", datatype="FP32", shape=[1, 28])
    row.parameters["sequence_id"].string_param = "pen"
    row.parameters["sequence_start"].bool_param = row.parameters["sequence_end"].bool_param = True

    def stream(metadata):
        (response,) = stub.ModelStreamInfer(iter([row]), metadata=metadata, timeout=30)
        assert response.error_message == "", response.error_message

    return {
        "ModelInfer": lambda metadata: stub.ModelInfer(infer, metadata=metadata, timeout=30),
        "ModelInfer of a sequence": lambda metadata: stub.ModelInfer(row, metadata=metadata, timeout=30),
        "ModelStreamInfer": stream,
        "ModelMetadata": lambda metadata: stub.ModelMetadata(
            service_pb2.ModelMetadataRequest(name="rowrnn"), metadata=metadata, timeout=30
        ),
        "ModelReady": lambda metadata: stub.ModelReady(
            service_pb2.ModelReadyRequest(name="rowrnn"), metadata=metadata, timeout=30
        ),
        "ServerMetadata": lambda metadata: stub.ServerMetadata(
            service_pb2.ServerMetadataRequest(), metadata=metadata, timeout=30
        ),
        "RepositoryIndex": lambda metadata: stub.RepositoryIndex(
            service_pb2.RepositoryIndexRequest(), metadata=metadata, timeout=30
        ),
        # with the key: FAILED_PRECONDITION on one model file (no repository); an unload without
        # it would be a denial of service anyone could send
        "RepositoryModelLoad": lambda metadata: stub.RepositoryModelLoad(
            service_pb2.RepositoryModelLoadRequest(model_name="rowrnn"), metadata=metadata, timeout=30
        ),
        "RepositoryModelUnload": lambda metadata: stub.RepositoryModelUnload(
            service_pb2.RepositoryModelUnloadRequest(model_name="rowrnn"), metadata=metadata, timeout=30
        ),
    }


REFUSED_WITH_KEY_GRPC = {"RepositoryModelLoad", "RepositoryModelUnload"}


def test_grpc_refuses_every_almost_key_on_every_protected_method(keyed):
    # Catches: a gRPC check that differs from REST's (the cases and bugs of `almost_keys`), or a
    # method that skips it. gRPC metadata is ASCII and at most 8 KB by default: the non-ASCII and
    # 64 KB keys are refused by the client library itself and are not sent.
    grpc = require_module("grpc", "serve", "needs the serve extra (grpcio): pip install '.[serve]'")
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{keyed.grpc_port}") as channel:
        calls = grpc_calls(service_pb2_grpc.GRPCInferenceServiceStub(channel), service_pb2)
        sendable = [
            (case, headers)
            for case, headers, _ in almost_keys()
            if all(value.isascii() for value in headers.values()) and case != "64 KB long"
        ]
        assert len(sendable) >= 12
        for case, headers in sendable:
            metadata = [(name.lower(), value) for name, value in headers.items()]
            for method, send in calls.items():
                with pytest.raises(grpc.RpcError) as refused:
                    send(metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (case, method, refused.value)
        for method, send in calls.items():  # the right key opens each: the refusals above meant something
            if method in REFUSED_WITH_KEY_GRPC:
                with pytest.raises(grpc.RpcError) as refused:
                    send([("authorization", f"Bearer {KEY}")])
                assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, (method, refused.value)
            else:
                send([("authorization", f"Bearer {KEY}")])
        live = service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(
            service_pb2.ServerLiveRequest(), timeout=30
        )
        assert live.live  # the probe needs no key


def test_the_comparison_is_constant_time(monkeypatch):
    # Catches: `token == key` (time grows with the matching prefix). Timing it would be a flaky
    # speed test; instead the check is seen handing both whole values to hmac.compare_digest.
    import serve.state  # the one key check, for REST headers and gRPC metadata alike

    seen = []
    real = hmac.compare_digest
    monkeypatch.setattr(serve.state.hmac, "compare_digest", lambda a, b: seen.append((a, b)) or real(a, b))
    assert not serve.state.key_matches(f"Bearer {KEY}x", KEY)
    assert seen == [(f"{KEY}x".encode(), KEY.encode())]


# --- requests that lie -------------------------------------------------------------------------------


def lies() -> list[tuple[str, bytes, dict]]:
    """(case, raw request, how to send it). Each would be a *good* request if the server believed
    the lie, so a server that does gets a 200 and fails the test."""
    rows = images(1, 5)
    good_json = json_request(rows)
    body, length = binary_request(rows)
    binary = ["Content-Type: application/octet-stream", f"Inference-Header-Content-Length: {length}"]
    big_rows = images(340, 6)  # 340 images in binary: 1.07 MB, past the 1 MB limit
    big_body, big_length = binary_request(big_rows)
    chunks = (
        b"".join(
            b"%x\r\n%s\r\n" % (len(big_body[i : i + 65536]), big_body[i : i + 65536])
            for i in range(0, len(big_body), 65536)
        )
        + b"0\r\n\r\n"
    )
    chunked_good = b"%x\r\n%s\r\n0\r\n\r\n" % (len(good_json), good_json)
    return [
        # Catches: reading the body until the connection closes instead of Content-Length bytes.
        (
            "Content-Length shorter than the body",
            post(INFER, good_json, "Content-Type: application/json", content_length=len(good_json) // 2),
            {},
        ),
        # Catches: waiting forever for bytes that never come (no body timeout): 408 within 1 s.
        (
            "Content-Length longer than the body",
            post(INFER, good_json, "Content-Type: application/json", content_length=len(good_json) + 1000),
            {"wait": True},
        ),
        # Catches: a parser that prefers one framing over the other (request smuggling).
        (
            "Content-Length and chunked",
            post(INFER, chunked_good, "Content-Type: application/json", "Transfer-Encoding: chunked", content_length=7),
            {},
        ),
        # Catches: --max-body-mb enforced on the Content-Length header only (chunked has none).
        (
            "chunked past --max-body-mb",
            post(
                INFER,
                chunks,
                "Content-Type: application/octet-stream",
                f"Inference-Header-Content-Length: {big_length}",
                "Transfer-Encoding: chunked",
            ),
            {},
        ),
        # Catches: no limit on the header block (the server buffers whatever comes).
        (
            "a 64 KB header block",
            post(
                INFER,
                good_json,
                "Content-Type: application/json",
                "X-Padding: " + "a" * 65536,
                content_length=len(good_json),
            ),
            {},
        ),
        # Catches: no limit on the number of header fields.
        (
            "5000 header fields",
            post(
                INFER,
                good_json,
                "Content-Type: application/json",
                *(f"X-Field-{i}: v" for i in range(5000)),
                content_length=len(good_json),
            ),
            {},
        ),
        # Catches: the Content-Type ignored when Inference-Header-Content-Length is there.
        (
            "Content-Type JSON over binary tensor data",
            post(
                INFER,
                body,
                "Content-Type: application/json",
                f"Inference-Header-Content-Length: {length}",
                content_length=len(body),
            ),
            {},
        ),
        # Catches: an octet-stream body parsed as JSON when the binary header length is missing.
        (
            "Content-Type octet-stream over JSON",
            post(INFER, good_json, "Content-Type: application/octet-stream", content_length=len(good_json)),
            {},
        ),
        # Catches: a header length that is not checked against the body.
        (
            "Inference-Header-Content-Length past the body",
            post(
                INFER, body, binary[0], f"Inference-Header-Content-Length: {len(body) + 10}", content_length=len(body)
            ),
            {},
        ),
        # Catches: body[:length] with a negative length (Python slices from the end: -3136 cuts off
        # exactly the tensor data, and the request would parse).
        (
            "Inference-Header-Content-Length negative",
            post(INFER, body, binary[0], f"Inference-Header-Content-Length: -{rows.nbytes}", content_length=len(body)),
            {},
        ),
        (
            "Inference-Header-Content-Length not a number",
            post(INFER, body, binary[0], f"Inference-Header-Content-Length: {length}abc", content_length=len(body)),
            {},
        ),
    ]


@pytest.mark.parametrize("case, request_bytes, how", lies(), ids=[lie[0] for lie in lies()])
def test_a_request_that_lies_gets_a_4xx_or_a_closed_connection(plain, predictor, case, request_bytes, how):
    started = time.monotonic()
    reply = exchange(plain.port, request_bytes, timeout=10)
    elapsed = time.monotonic() - started
    assert 200 not in statuses(reply), (case, reply[:300])  # the lie was not believed, not even in part
    status = status_of(reply)
    assert status is None or 400 <= status < 500, (case, reply[:300])
    head, _, rest = reply.partition(b"\r\n\r\n")
    if b"application/json" in head:  # ours (uvicorn's own refusals are text/plain): says why
        assert list(json.loads(rest)) == ["error"], reply[:300]
    if how.get("wait"):
        assert status == 408 and elapsed < 5, (status, elapsed)  # --body-timeout-s 1
    answers_a_good_request(plain.port, predictor)


def test_gzip_bodies_are_refused_without_being_inflated(plain, predictor):
    """Decision (README "Security"): bodies are not decompressed; a compressed one gets 415."""
    import tritonclient.http as triton

    rows = images(1, 7)
    good_json = json_request(rows)
    # Catches: a server that inflates first and checks the limit after: a 1 KB -> 1 GB bomb would
    # take a GB of memory (and seconds of CPU) before any refusal. It must be refused at once.
    bomb = gzip.compress(b"\0" * (256 * 2**20), compresslevel=9)  # 256 MB of zeros (~250 KB)
    rss_before = plain.rss_bytes()
    for encoding, body in (
        ("gzip", bomb),
        ("gzip", gzip.compress(good_json)),
        ("deflate", zlib.compress(good_json)),
        ("GZIP", gzip.compress(good_json)),
        ("identity, gzip", gzip.compress(good_json)),
    ):
        started = time.monotonic()
        response, data = call(
            plain.port, "POST", INFER, body, {"Content-Type": "application/json", "Content-Encoding": encoding}
        )
        assert response.status == 415 and "Content-Encoding" in json.loads(data)["error"], (encoding, data[:200])
        assert time.monotonic() - started < 5
    assert plain.rss_bytes() - rss_before < 50 * 2**20  # nothing was inflated
    # Triton's own client, asked to compress, is told why
    client = triton.InferenceServerClient(f"127.0.0.1:{plain.port}")
    tensor = triton.InferInput("rows", [1, 28, 28], "FP32")
    tensor.set_data_from_numpy(rows)
    with pytest.raises(triton.InferenceServerException, match="Content-Encoding 'gzip' is not supported"):
        client.infer("rowrnn", [tensor], request_compression_algorithm="gzip")
    client.close()
    answers_a_good_request(plain.port, predictor)


# --- CORS ---------------------------------------------------------------------------------------------

ORIGIN = "https://app.example"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, inference-header-content-length",
}


def cors_headers(response: http.client.HTTPResponse) -> dict[str, str]:
    return {name.lower(): value for name, value in response.getheaders() if name.lower().startswith("access-control-")}


def test_no_cors_headers_by_default(plain):
    # Catches: CORS on by default (any web page could then call the model from a visitor's browser).
    for method, path, headers in (
        ("OPTIONS", INFER, PREFLIGHT),
        ("GET", "/v2/health/ready", {"Origin": ORIGIN}),
        ("GET", "/v2/models/rowrnn", {"Origin": ORIGIN}),
    ):
        response, _ = call(plain.port, method, path, headers=headers)
        assert cors_headers(response) == {}, (method, path, response.getheaders())


def test_cors_allows_only_the_given_origin_preflight_included(servers):
    # Catches: `allow_origins=["*"]`, an origin echoed back whatever it is, a prefix/suffix match
    # ("https://app.example.evil"), and a preflight that demands the API key (browsers send none).
    server = servers("cors", "--cors-origin", ORIGIN, "--api-key", KEY)
    response, _ = call(server.port, "OPTIONS", INFER, headers=PREFLIGHT)
    allowed = cors_headers(response)
    assert response.status == 200 and allowed["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed["access-control-allow-methods"]
    for header in ("authorization", "content-type", "inference-header-content-length"):
        assert header in allowed["access-control-allow-headers"].lower()
    response, _ = call(
        server.port, "GET", "/v2/models/rowrnn", headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"}
    )
    assert response.status == 200 and response.getheader("Access-Control-Allow-Origin") == ORIGIN
    assert "origin" in (response.getheader("Vary") or "").lower()  # caches keep answers per origin
    for other in ("https://evil.example", "https://app.example.evil", "http://app.example", "null"):
        response, _ = call(server.port, "OPTIONS", INFER, headers={**PREFLIGHT, "Origin": other})
        assert response.status >= 400 and "access-control-allow-origin" not in cors_headers(response), other
        response, _ = call(server.port, "GET", "/v2/health/ready", headers={"Origin": other})
        assert "access-control-allow-origin" not in cors_headers(response), other
    # never `*`, and never `*` with credentials
    for method, path, headers in (("OPTIONS", INFER, PREFLIGHT), ("GET", "/v2/health/live", {"Origin": ORIGIN})):
        allowed = cors_headers(call(server.port, method, path, headers=headers)[0])
        assert allowed.get("access-control-allow-origin") != "*"
        if allowed.get("access-control-allow-credentials") == "true":
            assert allowed.get("access-control-allow-origin") == ORIGIN


# --- the drain ----------------------------------------------------------------------------------------


def readiness(port: int) -> int | None:
    """GET /v2/health/ready on a new connection: the status, or None when it is refused."""
    try:
        return call(port, "GET", "/v2/health/ready")[0].status
    except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
        return None


def watch_readiness(port: int, t0: float, seconds: float) -> list[tuple[float, int | None]]:
    samples = []
    while time.monotonic() - t0 < seconds:
        samples.append((time.monotonic() - t0, readiness(port)))
        if len(samples) > 5 and all(status is None for _, status in samples[-5:]):
            break  # closed for good
        time.sleep(0.02)
    return samples


def test_drain_keeps_the_listener_open_answering_503_for_the_linger_then_closes(tmp_path):
    from serve.server import LINGER_S

    assert LINGER_S >= 0.5  # what README "Security" states
    server = start_server_process(MODEL, log=tmp_path / "server.log")
    try:
        assert readiness(server.port) == 200
        t0 = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        samples = watch_readiness(server.port, t0, LINGER_S + 5)
        assert server.process.wait(10) == 0
    finally:
        server.stop(9)
    closed = [t for t, status in samples if status is None]
    answered = [(t, status) for t, status in samples if status is not None]
    # Catches: closing the listener at the first tick after SIGTERM (load balancers never see the
    # 503): the port must still accept, and answer 503, for the whole linger.
    assert closed, f"the listener never closed: {samples[-3:]}"
    assert closed[0] >= LINGER_S, f"closed {closed[0]:.2f} s after SIGTERM, before the {LINGER_S} s linger"
    assert answered and answered[-1][0] >= LINGER_S - 0.1, answered[-3:]
    # Catches: readiness left at 200 while draining (the signal only closes the port later): the
    # port answers 503 for the whole linger before it closes (the time a load balancer has to see it).
    first_503 = next(t for t, status in answered if status == 503)
    assert all(status == 503 for t, status in answered if t >= first_503), answered
    assert closed[0] - first_503 >= LINGER_S - 0.1, (first_503, closed[0])
    # Catches: a listener that lingers on (until --drain-timeout-s, 30 s) with nothing in flight.
    assert closed[0] < LINGER_S + 2.0, closed[0]
    assert all(status is None for t, status in samples if t >= closed[0]), samples


def test_drain_lets_a_request_in_flight_finish_past_the_linger(tmp_path, predictor):
    from serve.server import LINGER_S

    server = start_server_process(MODEL, log=tmp_path / "server.log")
    rows = images(3, 11)
    body, length = binary_request(rows)
    head = post(
        INFER,
        b"",
        "Content-Type: application/octet-stream",
        f"Inference-Header-Content-Length: {length}",
        content_length=len(body),
    )
    reply: list[bytes] = []
    finish_after = LINGER_S + 1.0  # the client sends the rest of its body well after the linger
    try:
        # a request in flight: headers and half its body arrive before SIGTERM, the rest after
        sender = threading.Thread(
            target=lambda: reply.append(
                exchange(server.port, head + body[:1000], timeout=20, then=body[1000:], pause=0.3 + finish_after)
            )
        )
        sender.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        samples = watch_readiness(server.port, t0, finish_after + 5)
        sender.join(30)
        assert server.process.wait(10) == 0
    finally:
        server.stop(9)
    # Catches: a drain that closes the listener or cancels requests on schedule regardless of the
    # requests in flight (the slow client's request would be lost).
    assert status_of(reply[0]) == 200, reply[0][:300]
    outputs = json.loads(reply[0].partition(b"\r\n\r\n")[2])["outputs"]  # JSON outputs: none asked as binary
    logits = next(o for o in outputs if o["name"] == "logits")
    np.testing.assert_array_equal(np.array(logits["data"], np.float32).reshape(3, 10), predictor.predict(rows).logits)
    # the listener stayed open, answering 503, until the request in flight had finished
    answered = [t for t, status in samples if status == 503]
    closed = [t for t, status in samples if status is None]
    assert 200 not in [status for t, status in samples if t > 0.3]
    assert answered and answered[-1] >= finish_after - 0.1, (answered[-3:], finish_after)
    assert closed and finish_after <= closed[0] < finish_after + LINGER_S + 2.0, (closed[:1], finish_after)


# --- memory under abuse -------------------------------------------------------------------------------

# 100 clients at once, each sending a 6 MB JSON body (--max-body-mb 6, the measurement).
# Measured peak RSS of the server: 344 MB (25 answered, 75 told 503 by the full queue). The stated
# bound: 600 MB, the size of the 100 bodies together; the server holds bodies only while it reads,
# parses and answers them, so it stays well under. Catches: a server that keeps bodies after
# answering (tried: 806 MB), or parses them in parallel threads (6 MB of JSON is ~25 MB of Python
# floats each: GBs).
RSS_BOUND_MB = 600
CLIENTS, BODY_MB = 100, 6


def test_rss_stays_bounded_under_100_clients_sending_maximum_size_bodies(tmp_path):
    server = start_server_process(
        MODEL, "--max-body-mb", str(BODY_MB), "--log-level", "warning", log=tmp_path / "server.log"
    )
    try:
        # a valid JSON request of just under 6 MB: ~1000 images of 784 short decimals
        values = (np.random.default_rng(0).integers(0, 256, 784 * 2000) / 255).round(4)
        per_image = len(json.dumps(values[: 784 * 100].tolist())) / 100
        count = int(0.98 * BODY_MB * 2**20 / per_image)
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "rows",
                        "datatype": "FP32",
                        "shape": [count, 28, 28],
                        "data": values[: 784 * count].tolist(),
                    }
                ]
            }
        ).encode()
        assert 0.9 * BODY_MB * 2**20 < len(body) <= BODY_MB * 2**20, len(body)
        head = post(INFER, b"", "Content-Type: application/json", content_length=len(body))
        barrier = threading.Barrier(CLIENTS)
        results: list[int | None] = []

        def client() -> None:
            barrier.wait(30)
            results.append(status_of(exchange(server.port, head, timeout=120, then=body)))

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        peak_mb = int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024
        print(
            f"peak RSS with {CLIENTS} x {BODY_MB} MB bodies: {peak_mb:.0f} MB; answers: "
            f"{ {status: results.count(status) for status in set(results)} }"
        )
        assert len(results) == CLIENTS and set(results) <= {200, 503}, results  # served or told to retry, no crash
        assert results.count(200) >= 1
        assert peak_mb < RSS_BOUND_MB, peak_mb
        assert server.stop() == 0
    finally:
        server.stop(9)
