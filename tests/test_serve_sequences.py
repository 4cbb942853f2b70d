"""The stream model NAME-stream: Triton's sequence protocol over REST and gRPC, on a real
`rowrnn serve` process, talked to with Triton's own clients.

The server keeps each sequence's LSTM state (Triton's implicit state); clients send one row per
request with sequence_id / sequence_start / sequence_end. Every answer is checked bit for bit
against the in-process StreamingPredictor reading the same image, and the 28th against the full
model; the server's own counters prove that rows of different sequences shared step calls.
The bundled model (it has its step model beside it) serves: no training needed.
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import signal
import socket
import threading
import time

import numpy as np
import pytest

from helpers import http_call, metric, require_module
from runtime import BUNDLED_MODEL, Predictor, StreamingPredictor
from runtime.contract import step_path_for

SERVE_EXTRA = "needs the serve extra: pip install '.[serve]'"
require_module("uvicorn", "serve", SERVE_EXTRA)
triton_http = require_module("tritonclient.http", "serve", "needs tritonclient[http] (test extra)")
triton_grpc = require_module("tritonclient.grpc", "serve", SERVE_EXTRA)
from tritonclient.utils import InferenceServerException  # noqa: E402

STREAM = "rowrnn-stream"
SEQUENCES = 64
ROWS = 28
DEADLINE_S = 120  # every exchange below takes a few seconds; a stuck one fails, never hangs


@pytest.fixture(scope="module")
def streaming() -> StreamingPredictor:
    return StreamingPredictor(step_path_for(BUNDLED_MODEL))


@pytest.fixture(scope="module")
def full() -> Predictor:
    return Predictor(BUNDLED_MODEL)


def digits(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, ROWS, 28), dtype=np.float32)


def run_clients(threads: list[threading.Thread]) -> None:
    """Start the client threads together and wait for them all, within the deadline."""
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + DEADLINE_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "clients still running at the deadline"


def expected_rows(streaming: StreamingPredictor, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) [28, 10] after each row: an in-process stream pushed row by row."""
    stream = streaming.stream()
    answers = [stream.push(row) for row in image]
    return np.concatenate([a.logits for a in answers]), np.concatenate([a.probabilities for a in answers])


def sequence_ids(n: int) -> list[int | str]:
    """Half unsigned integers, half strings: tritonclient encodes the two differently."""
    return [1000 + i if i % 2 else f"pen-{i}" for i in range(n)]


def row_input(module, row: np.ndarray):
    tensor = module.InferInput("row", [1, 28], "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(row.reshape(1, 28)))
    return tensor


def step_counters(server) -> tuple[float, float]:
    """(step-model calls, rows they read) from the server's /metrics."""
    _, text = http_call(server.port, "GET", "/metrics")
    text = text.decode()
    return (
        metric(text, "rowrnn_sequence_step_rows_count", model=STREAM),
        metric(text, "rowrnn_sequence_step_rows_sum", model=STREAM),
    )


def check_answers(answers, images, streaming, full) -> None:
    """Every row's answer bit-exact to the in-process stream; the 28th is the full model's answer."""
    for index, image in enumerate(images):
        logits, probabilities = expected_rows(streaming, image)
        np.testing.assert_array_equal(answers["logits"][index], logits)
        np.testing.assert_array_equal(answers["probabilities"][index], probabilities)
        np.testing.assert_array_equal(answers["probabilities"][index, -1], full.predict(image[None]).probabilities[0])


def test_the_stream_model_is_served_beside_the_model(start_server, full):
    """NAME-stream is in the repository index, ready, with its own metadata (REST and gRPC)."""
    server = start_server(None, "--log-level", "warning")
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    index = {(entry["name"], entry["version"], entry["state"]) for entry in client.get_model_repository_index()}
    assert index == {("rowrnn", "1", "READY"), (STREAM, "1", "READY")}
    assert (
        client.is_model_ready(STREAM) and client.is_model_ready(STREAM, "1") and not client.is_model_ready(STREAM, "2")
    )
    metadata = client.get_model_metadata(STREAM)
    assert metadata["inputs"] == [{"name": "row", "datatype": "FP32", "shape": [-1, 28]}]
    assert [(o["name"], o["shape"]) for o in metadata["outputs"]] == [("logits", [-1, 10]), ("probabilities", [-1, 10])]
    assert metadata["parameters"]["format"] == "step"  # the step model's own metadata
    grpc_client = triton_grpc.InferenceServerClient(server.grpc_url)
    assert grpc_client.is_model_ready(STREAM) and not grpc_client.is_model_ready("rowrnn-stream-stream")
    grpc_metadata = grpc_client.get_model_metadata(STREAM, as_json=True)
    assert grpc_metadata["inputs"] == [{"name": "row", "datatype": "FP32", "shape": ["-1", "28"]}]
    # a gRPC stream carries the full model's requests too, answered as ModelInfer's
    results: queue.Queue = queue.Queue()
    grpc_client.start_stream(lambda result, error: results.put((result, error)))
    images = digits(3, 9)
    tensor = triton_grpc.InferInput("rows", [3, 28, 28], "FP32")
    tensor.set_data_from_numpy(images)
    grpc_client.async_stream_infer("rowrnn", [tensor])
    result, error = results.get(timeout=30)
    assert error is None
    np.testing.assert_array_equal(result.as_numpy("probabilities"), full.predict(images).probabilities)
    grpc_client.stop_stream()
    grpc_client.close()


def test_64_sequences_over_rest_interleaved_bit_exact_and_batched(start_server, streaming, full):
    """64 clients, one sequence each, rows sent with random pauses so that they interleave at
    random: every answer is the in-process stream's, bit for bit, and step calls were shared."""
    server = start_server(None, "--log-level", "warning")
    images = digits(SEQUENCES, 1)
    ids = sequence_ids(SEQUENCES)
    answers = {name: np.full((SEQUENCES, ROWS, 10), np.nan, np.float32) for name in ("logits", "probabilities")}
    errors: list[str] = []

    def client(index: int) -> None:
        rng = random.Random(index)
        connection = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=60)
        try:
            for r in range(ROWS):
                result = connection.infer(
                    STREAM,
                    [row_input(triton_http, images[index, r])],
                    sequence_id=ids[index],
                    sequence_start=r == 0,
                    sequence_end=r == ROWS - 1,
                )
                for name in answers:
                    answers[name][index, r] = result.as_numpy(name)[0]
                time.sleep(rng.random() * 0.003)
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(f"sequence {ids[index]!r}: {exc!r}")
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(SEQUENCES)]
    run_clients(threads)
    assert errors == []
    check_answers(answers, images, streaming, full)
    calls, rows = step_counters(server)
    assert rows == SEQUENCES * ROWS
    assert calls < 0.5 * rows, (calls, rows)  # rows of different sequences shared step calls
    _, text = http_call(server.port, "GET", "/metrics")
    assert metric(text.decode(), "rowrnn_sequences_live") == 0  # every sequence ended


def test_64_sequences_over_grpc_streams_in_order_bit_exact_and_batched(start_server, streaming, full):
    """4 gRPC streams (tritonclient.grpc start_stream / async_stream_infer), 16 sequences each,
    their rows shuffled at random (each sequence's in order): every answer is the in-process
    stream's, bit for bit, each sequence's answers arrive in its rows' order, step calls were shared.
    Unary ModelInfer sequences run beside them."""
    server = start_server(None, "--log-level", "warning")
    images = digits(SEQUENCES, 2)
    ids = sequence_ids(SEQUENCES)
    answers = {name: np.full((SEQUENCES, ROWS, 10), np.nan, np.float32) for name in ("logits", "probabilities")}
    arrival: dict[int, list[int]] = {index: [] for index in range(SEQUENCES)}
    errors: list[str] = []
    lock = threading.Lock()

    def streamer(first: int, count: int) -> None:
        results: queue.Queue = queue.Queue()
        client = triton_grpc.InferenceServerClient(server.grpc_url)
        client.start_stream(lambda result, error: results.put((result, error)))
        order = [index for index in range(first, first + count) for _ in range(ROWS)]
        random.Random(first).shuffle(order)
        sent = dict.fromkeys(range(first, first + count), 0)
        try:
            for index in order:
                r = sent[index]
                sent[index] += 1
                client.async_stream_infer(
                    STREAM,
                    [row_input(triton_grpc, images[index, r])],
                    request_id=f"{index}:{r}",
                    sequence_id=ids[index],
                    sequence_start=r == 0,
                    sequence_end=r == ROWS - 1,
                )
            for _ in order:
                result, error = results.get(timeout=DEADLINE_S / 2)
                if error is not None:
                    raise error
                index, r = map(int, result.get_response().id.split(":"))
                with lock:
                    arrival[index].append(r)
                    for name in answers:
                        answers[name][index, r] = result.as_numpy(name)[0]
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(f"stream from {first}: {exc!r}")
        finally:
            client.stop_stream()
            client.close()

    unary_images = digits(4, 3)
    unary: list[np.ndarray] = [np.empty((ROWS, 10), np.float32) for _ in unary_images]

    def unary_client(index: int) -> None:
        client = triton_grpc.InferenceServerClient(server.grpc_url)
        try:
            for r in range(ROWS):
                result = client.infer(
                    STREAM,
                    [row_input(triton_grpc, unary_images[index, r])],
                    sequence_id=f"unary-{index}",
                    sequence_start=r == 0,
                    sequence_end=r == ROWS - 1,
                )
                unary[index][r] = result.as_numpy("probabilities")[0]
        except Exception as exc:  # noqa: BLE001
            errors.append(f"unary {index}: {exc!r}")
        finally:
            client.close()

    threads = [threading.Thread(target=streamer, args=(first, 16)) for first in range(0, SEQUENCES, 16)]
    threads += [threading.Thread(target=unary_client, args=(i,)) for i in range(len(unary_images))]
    run_clients(threads)
    assert errors == []
    assert all(rows == list(range(ROWS)) for rows in arrival.values()), "a sequence's answers came out of order"
    check_answers(answers, images, streaming, full)
    for image, got in zip(unary_images, unary, strict=True):
        np.testing.assert_array_equal(got, expected_rows(streaming, image)[1])
    calls, rows = step_counters(server)
    assert rows == (SEQUENCES + len(unary_images)) * ROWS
    assert calls < 0.5 * rows, (calls, rows)


# --- limits: each a clear error, nothing else disturbed ---------------------------------------------


def rest_row(server, row: np.ndarray, shape=(1, 28), stream: str = STREAM, **parameters) -> tuple[int, dict]:
    """One stream-model request by hand over REST (JSON): (status, decoded body)."""
    body = {"inputs": [{"name": "row", "datatype": "FP32", "shape": list(shape), "data": row.ravel().tolist()}]}
    if parameters:
        body["parameters"] = parameters
    response, data = http_call(
        server.port,
        "POST",
        f"/v2/models/{stream}/infer",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    return response.status, json.loads(data)


def answer(body: dict) -> np.ndarray:
    """The probabilities of a JSON response, as the float32 values the server wrote."""
    (output,) = [output for output in body["outputs"] if output["name"] == "probabilities"]
    return np.asarray(output["data"], np.float32)


def grpc_refusal(client, row: np.ndarray, **sequence) -> tuple[str, str]:
    """(status code name, message) of a ModelInfer that must be refused."""
    with pytest.raises(InferenceServerException) as refused:
        client.infer(STREAM, [row_input(triton_grpc, row)], **sequence)
    return refused.value.status(), refused.value.message()


def test_every_limit_is_a_clear_error_and_disturbs_nothing(start_server, streaming):
    """Unknown sequence, missing or bad sequence_id, a batch other than 1, a 29th row, more than
    --max-sequences, an expired sequence: REST 4xx/503 with a JSON message, gRPC status codes,
    a stream's error_message; a restart starts over from a zero state; the sequences that were
    live meanwhile read on, bit-exact."""
    server = start_server(None, "--log-level", "warning", "--max-sequences", "3", "--sequence-idle-s", "3")
    image = digits(1, 4)[0]
    _, probabilities = expected_rows(streaming, image)
    row = image[0]
    witness_rows = iter(range(ROWS))

    def witness(start: bool = False) -> None:
        """Sequence 7, live through all that follows: its next row, answered as if alone."""
        r = next(witness_rows)
        status, body = rest_row(server, image[r], sequence_id=7, sequence_start=start)
        assert status == 200, body
        np.testing.assert_array_equal(answer(body), probabilities[r])

    witness(start=True)
    assert rest_row(server, row, sequence_id=8) == (
        400,
        {
            "error": f"unknown sequence 8 of {STREAM!r}: its first row must carry sequence_start "
            "(or it has ended, with sequence_end)"
        },
    )
    assert rest_row(server, row, sequence_id="7")[0] == 400  # "7" is not 7: Triton's ids are typed
    status, body = rest_row(server, row)
    assert status == 400 and "send 'sequence_id'" in body["error"]
    for bad in (-1, 2**64, 1.5, True, [1], "x" * 257):
        status, body = rest_row(server, row, sequence_id=bad, sequence_start=True)
        assert status == 400 and "'sequence_id'" in body["error"], (bad, body)
    status, body = rest_row(server, row, sequence_id=9, sequence_start="yes")
    assert status == 400 and "'sequence_start' must be true or false" in body["error"]
    status, body = rest_row(server, np.stack([row, row]), (2, 28), sequence_id=9, sequence_start=True)
    assert status == 400 and "batch dimension 2" in body["error"], body
    status, body = rest_row(server, row[:27], (1, 27), sequence_id=9, sequence_start=True)
    assert status == 400 and "expected [1, 28]" in body["error"], body
    witness()

    # a sequence ends at its 28th row even without sequence_end (it holds no slot after it): a 29th
    # row is refused, with sequence_end too; the sequence's 28 answers were right
    live_before = metric(http_call(server.port, "GET", "/metrics")[1].decode(), "rowrnn_sequences_live")
    for r in range(ROWS):
        status, body = rest_row(server, image[r], sequence_id=10, sequence_start=r == 0)
        assert status == 200
        np.testing.assert_array_equal(answer(body), probabilities[r])
    assert metric(http_call(server.port, "GET", "/metrics")[1].decode(), "rowrnn_sequences_live") == live_before
    for end in (False, True):
        status, body = rest_row(server, row, sequence_id=10, sequence_end=end)
        assert status == 400 and "has read all 28 rows" in body["error"], body
    witness()

    # a restart: sequence_start on the live id 10 (two rows in) starts it over from a zero state
    for r in (0, 1, 0, 1):
        status, body = rest_row(server, image[r], sequence_id=10, sequence_start=r == 0)
        assert status == 200
        np.testing.assert_array_equal(answer(body), probabilities[r])
    assert rest_row(server, row, sequence_id=11, sequence_start=True)[0] == 200

    # --max-sequences 3: live now are 7, 10, 11; a fourth is refused until one ends
    status, body = rest_row(server, row, sequence_id=12, sequence_start=True)
    assert status == 503 and "--max-sequences 3" in body["error"], body
    grpc_client = triton_grpc.InferenceServerClient(server.grpc_url)
    code, message = grpc_refusal(grpc_client, row, sequence_id=12, sequence_start=True)
    assert code == "StatusCode.RESOURCE_EXHAUSTED" and "--max-sequences 3" in message
    assert rest_row(server, image[1], sequence_id=11, sequence_end=True)[0] == 200
    assert rest_row(server, row, sequence_id=12, sequence_start=True, sequence_end=True)[0] == 200
    witness()

    # gRPC: the same mistakes, the same messages, as INVALID_ARGUMENT
    code, message = grpc_refusal(grpc_client, row, sequence_id=8)
    assert code == "StatusCode.INVALID_ARGUMENT" and message.startswith(f"unknown sequence 8 of {STREAM!r}")
    code, message = grpc_refusal(grpc_client, row, sequence_id="eight")
    assert code == "StatusCode.INVALID_ARGUMENT" and "unknown sequence 'eight'" in message
    code, message = grpc_refusal(grpc_client, row)
    assert code == "StatusCode.INVALID_ARGUMENT" and "send 'sequence_id'" in message
    with pytest.raises(InferenceServerException) as refused:
        tensor = triton_grpc.InferInput("row", [2, 28], "FP32")
        tensor.set_data_from_numpy(np.stack([row, row]))
        grpc_client.infer(STREAM, [tensor], sequence_id=9, sequence_start=True)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "batch dimension 2" in refused.value.message()
    # ... and on a stream, in the response's error_message (Triton's way); the stream goes on
    results: queue.Queue = queue.Queue()
    grpc_client.start_stream(lambda result, error: results.put((result, error)))
    grpc_client.async_stream_infer(STREAM, [row_input(triton_grpc, row)], sequence_id=8)
    grpc_client.async_stream_infer(
        STREAM, [row_input(triton_grpc, row)], sequence_id=13, sequence_start=True, sequence_end=True
    )
    result, error = results.get(timeout=30)
    assert result is None and "unknown sequence 8" in error.message()
    result, error = results.get(timeout=30)
    assert error is None
    np.testing.assert_array_equal(result.as_numpy("probabilities")[0], probabilities[0])
    grpc_client.stop_stream()
    witness()

    # idle longer than --sequence-idle-s: dropped; its next row hears that it expired
    time.sleep(3.5)
    status, body = rest_row(server, image[5], sequence_id=7)
    assert status == 400 and "sequence 7 expired" in body["error"] and "--sequence-idle-s" in body["error"], body
    code, message = grpc_refusal(grpc_client, row, sequence_id=10)
    assert code == "StatusCode.INVALID_ARGUMENT" and "sequence 10 expired" in message
    _, text = http_call(server.port, "GET", "/metrics")
    assert metric(text.decode(), "rowrnn_sequence_expirations_total", model=STREAM) == 2  # 7 and 10
    assert metric(text.decode(), "rowrnn_sequences_live") == 0
    # started again, it reads from a zero state
    status, body = rest_row(server, image[0], sequence_id=7, sequence_start=True)
    assert status == 200
    np.testing.assert_array_equal(answer(body), probabilities[0])
    grpc_client.close()


def test_sigterm_lets_live_sequences_finish(start_server, streaming):
    """SIGTERM with sequences half read: new sequences and full-model requests get 503, the live
    sequences send their remaining rows and get bit-exact answers, then the server exits 0; a
    sequence that never ends holds the exit only until --drain-timeout-s."""
    server = start_server(None, "--drain-timeout-s", "6")
    images = digits(8, 5)
    expected = [expected_rows(streaming, image)[1] for image in images]
    for r in range(10):
        for index in range(len(images)):
            assert rest_row(server, images[index, r], sequence_id=index + 1, sequence_start=r == 0)[0] == 200
    assert rest_row(server, images[0, 0], sequence_id="forgotten", sequence_start=True)[0] == 200
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the signal has landed: ...
    assert http_call(server.port, "GET", "/v2/health/ready")[0].status == 503
    status, body = rest_row(server, images[0, 0], sequence_id=99, sequence_start=True)
    assert status == 503 and "cannot start" in body["error"], body
    full_request = {"inputs": [{"name": "rows", "datatype": "FP32", "shape": [1, 28, 28], "data": [0.0] * 784}]}
    response, _ = http_call(
        server.port,
        "POST",
        "/v2/models/rowrnn/infer",
        json.dumps(full_request).encode(),
        {"Content-Type": "application/json"},
    )
    assert response.status == 503
    for r in range(10, ROWS):
        for index in range(len(images)):
            status, body = rest_row(server, images[index, r], sequence_id=index + 1, sequence_end=r == ROWS - 1)
            assert status == 200, body
            np.testing.assert_array_equal(answer(body), expected[index][r])
    assert server.process.poll() is None  # "forgotten" is still live: the drain waits for it ...
    assert server.process.wait(DEADLINE_S) == 0
    waited = time.monotonic() - signalled
    assert 5.5 < waited < 30, waited  # ... until the drain timeout
    log = server.log.read_text()
    assert "drain timeout: 0 requests still in flight, 1 sequences live" in log


def test_a_repository_written_with_step_serves_the_stream_model(start_server, streaming, full, tmp_path):
    """`rowrnn triton-repo --step` writes NAME-stream for Triton beside NAME; rowrnn serve serves
    NAME-stream from NAME's version (model.step.onnx beside model.onnx) and does not load Triton's
    stream directory as a model of its own."""
    from runtime.repository import write_triton_repository

    write_triton_repository(BUNDLED_MODEL, tmp_path / "repo", step=True)
    server = start_server(None, "--model-repository", tmp_path / "repo", "--log-level", "warning")
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    index = [(entry["name"], entry["version"], entry["state"]) for entry in client.get_model_repository_index()]
    assert index == [("rowrnn", "1", "READY"), (STREAM, "1", "READY")]
    image = digits(1, 6)[0]
    got = [
        client.infer(
            STREAM, [row_input(triton_http, row)], sequence_id=3, sequence_start=r == 0, sequence_end=r == ROWS - 1
        ).as_numpy("probabilities")[0]
        for r, row in enumerate(image)
    ]
    np.testing.assert_array_equal(np.array(got), expected_rows(streaming, image)[1])
    np.testing.assert_array_equal(got[-1], full.predict(image[None]).probabilities[0])
    client.close()


def test_a_sequence_stays_on_its_version_until_that_version_is_unloaded(start_server, streaming, tmp_path):
    """A sequence started on version 1 reads on from version 1 after version 2 loads (new sequences
    go to 2); once version 1 is unloaded, its next row is refused with the reason, and a drain does
    not wait for it."""
    import shutil

    from runtime.repository import write_triton_repository

    repo = tmp_path / "repo"
    write_triton_repository(BUNDLED_MODEL, repo, name="digits", step=True)
    config = repo / "digits" / "config.pbtxt"
    config.write_text(config.read_text().replace("latest: { num_versions: 1 }", "all: {}"))
    server = start_server(None, "--model-repository", repo, "--log-level", "warning", "--drain-timeout-s", "20")
    stream = "digits-stream"
    image = digits(1, 7)[0]
    _, probabilities = expected_rows(streaming, image)

    def row(r: int, sequence_id: int, start: bool = False) -> tuple[int, dict]:
        return rest_row(server, image[r], stream=stream, sequence_id=sequence_id, sequence_start=start)

    status, body = row(0, 1, start=True)
    assert status == 200 and body["model_version"] == "1"
    write_triton_repository(BUNDLED_MODEL, repo, name="digits", version=2, step=True)
    config.write_text(config.read_text().replace("latest: { num_versions: 1 }", "all: {}"))
    assert http_call(server.port, "POST", "/v2/repository/models/digits/load")[0].status == 200
    status, body = row(1, 1)
    assert status == 200 and body["model_version"] == "1"  # its own version, not the latest
    np.testing.assert_array_equal(answer(body), probabilities[1])
    status, body = row(0, 2, start=True)
    assert status == 200 and body["model_version"] == "2"  # a new sequence starts on the latest

    shutil.rmtree(repo / "digits" / "1")
    assert http_call(server.port, "POST", "/v2/repository/models/digits/load")[0].status == 200
    status, body = row(2, 1)
    assert status == 400 and "its model version 1 was unloaded" in body["error"], body
    status, body = row(0, 3, start=True)  # version 1 left no other mark
    assert status == 200 and body["model_version"] == "2"
    np.testing.assert_array_equal(answer(body), probabilities[0])
    # live now: 2 and 3 on version 2 ... and a sequence on a version that leaves
    write_triton_repository(BUNDLED_MODEL, repo, name="digits", version=3, step=True)
    config.write_text(config.read_text().replace("latest: { num_versions: 1 }", "all: {}"))
    assert http_call(server.port, "POST", "/v2/repository/models/digits/load")[0].status == 200
    assert row(0, 4, start=True)[1]["model_version"] == "3"
    shutil.rmtree(repo / "digits" / "3")
    assert http_call(server.port, "POST", "/v2/repository/models/digits/load")[0].status == 200
    for sequence_id in (2, 3):  # end the sequences that can: the one on version 3 cannot hold the drain
        assert rest_row(server, image[1], stream=stream, sequence_id=sequence_id, sequence_end=True)[0] == 200
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(DEADLINE_S) == 0
    assert time.monotonic() - signalled < 10  # not the 20 s drain timeout


def test_a_grpc_stream_past_max_queue_is_read_as_its_answers_are_taken(start_server, streaming):
    """With --max-queue 2 at most two answers wait on a stream; a client that sends 3 images' rows
    at once (84 requests) still gets every answer, in order, bit-exact: the stream is held back,
    never dropped or stuck."""
    server = start_server(None, "--log-level", "warning", "--max-queue", "2")
    images = digits(3, 8)
    results: queue.Queue = queue.Queue()
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    client.start_stream(lambda result, error: results.put((result, error)))
    for index, image in enumerate(images):
        for r, row in enumerate(image):
            client.async_stream_infer(
                STREAM,
                [row_input(triton_grpc, row)],
                request_id=f"{index}:{r}",
                sequence_id=index + 1,
                sequence_start=r == 0,
                sequence_end=r == ROWS - 1,
            )
    for index, image in enumerate(images):
        expected = expected_rows(streaming, image)[1]
        for r in range(ROWS):
            result, error = results.get(timeout=60)
            assert error is None, error
            assert result.get_response().id == f"{index}:{r}"  # the order the requests came in
            np.testing.assert_array_equal(result.as_numpy("probabilities")[0], expected[r])
    client.stop_stream()
    client.close()


# --- rows that wait together: made certain, not left to the scheduler ---------------------------------


def hold_the_batchers(server) -> socket.socket:
    """A request whose body stops half-way: while the server waits for it, every batcher waits
    --max-delay-ms for it before its next call (serve.batcher's rule), so the rows sent meanwhile
    are certain to wait in line together. Closing the socket lets the batchers go."""
    held = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    held.sendall(
        f"POST /v2/models/{STREAM}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        'Content-Length: 1000\r\n\r\n{"inputs": '.encode()
    )
    time.sleep(0.5)  # the server is reading its body
    return held


def test_rows_waiting_together_run_in_order_each_on_its_own_state(start_server, streaming):
    """While the batchers are held, one gRPC stream sends 10 rows of sequence 1, the 28 rows of
    sequence 2, then restarts sequence 1 on another image: 66 rows in line at once (the server's
    counters prove it: 28 step calls, one per row of the longest sequence). A call takes one row of
    a sequence, in arrival order, on that sequence's state; the old sequence 1's rows finish on its
    own state, the restarted one starts from zero. Every answer bit-exact."""
    server = start_server(None, "--log-level", "warning", "--max-delay-ms", "3000")
    images = digits(3, 10)
    plan = [(0, 1, r, r == 0, False) for r in range(10)]  # (image, sequence id, row, start, end)
    plan += [(1, 2, r, r == 0, r == ROWS - 1) for r in range(ROWS)]
    plan += [(2, 1, r, r == 0, r == ROWS - 1) for r in range(ROWS)]  # sequence 1 again: a restart
    held = hold_the_batchers(server)
    results: queue.Queue = queue.Queue()
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    client.start_stream(lambda result, error: results.put((result, error)))
    try:
        for n, (image, sequence_id, r, start, end) in enumerate(plan):
            client.async_stream_infer(
                STREAM,
                [row_input(triton_grpc, images[image, r])],
                request_id=str(n),
                sequence_id=sequence_id,
                sequence_start=start,
                sequence_end=end,
            )
        time.sleep(1.0)  # all of them read and in line, the first still waiting for the held request
        held.close()
        expected = [expected_rows(streaming, image)[1] for image in images]
        for n, (image, _, r, _, _) in enumerate(plan):
            result, error = results.get(timeout=60)
            assert error is None, error
            assert result.get_response().id == str(n)
            np.testing.assert_array_equal(result.as_numpy("probabilities")[0], expected[image][r], err_msg=str(n))
    finally:
        client.stop_stream()
        client.close()
    calls, rows = step_counters(server)
    assert (calls, rows) == (ROWS, len(plan))  # every row was in line before the first call


def test_a_waiting_row_does_not_expire_and_idleness_counts_from_the_answer(start_server, streaming):
    """--sequence-idle-s 1 while the batchers are held for 3 s: sequence 1's first row waits past
    the idle limit while sequence 2 starts (its sweep must spare a sequence with a row in line);
    right after the answer, sequence 1 reads on (idle counts from its last answer, not from when
    its row came); a second later without a row, it has expired."""
    server = start_server(None, "--log-level", "warning", "--max-delay-ms", "3000", "--sequence-idle-s", "1")
    image = digits(1, 11)[0]
    _, probabilities = expected_rows(streaming, image)
    held = hold_the_batchers(server)
    answers: dict[int, tuple[int, dict]] = {}

    def first_row(sequence_id: int) -> None:
        answers[sequence_id] = rest_row(server, image[0], sequence_id=sequence_id, sequence_start=True)

    first = threading.Thread(target=first_row, args=(1,))
    first.start()
    time.sleep(1.8)  # sequence 1's row has waited past --sequence-idle-s
    second = threading.Thread(target=first_row, args=(2,))
    second.start()
    for thread in (first, second):
        thread.join(DEADLINE_S)
    held.close()
    for sequence_id in (1, 2):
        status, body = answers[sequence_id]
        assert status == 200, body
        np.testing.assert_array_equal(answer(body), probabilities[0])
    status, body = rest_row(server, image[1], sequence_id=1)
    assert status == 200, body  # not expired: it was answered a moment ago
    np.testing.assert_array_equal(answer(body), probabilities[1])
    _, text = http_call(server.port, "GET", "/metrics")
    assert metric(text.decode(), "rowrnn_sequence_expirations_total", model=STREAM) == 0
    time.sleep(1.5)
    status, body = rest_row(server, image[2], sequence_id=1)
    assert status == 400 and "sequence 1 expired" in body["error"], body


def test_a_sequence_whose_step_call_failed_is_refused_until_it_starts_again():
    """In process, with the step model made to fail once: the failing row's client gets the error,
    and the sequence's next row a 400 (its state did not move on: reading on would answer wrongly)."""
    from serve.protocol import ProtocolError
    from serve.sequences import SequenceControl
    from serve.settings import ServeSettings
    from serve.state import ServerState

    state = ServerState(ServeSettings())
    state.load(None)  # the bundled model and its step model
    image = np.random.default_rng(3).random((ROWS, 28), dtype=np.float32)

    async def rows() -> None:
        first = SequenceControl(1, start=True)
        await state.infer_row(STREAM, None, image[:1], first)
        step_model = state.resolve_stream(STREAM, None).step_model
        real_step = step_model.step
        step_model.step = lambda *args: (_ for _ in ()).throw(RuntimeError("injected"))
        with pytest.raises(RuntimeError, match="injected"):
            await state.infer_row(STREAM, None, image[1:2], SequenceControl(1))
        step_model.step = real_step
        with pytest.raises(ProtocolError, match="failed to read one of its rows") as refused:
            await state.infer_row(STREAM, None, image[2:3], SequenceControl(1))
        assert refused.value.status == 400
        _, prediction = await state.infer_row(STREAM, None, image[:1], first)  # started again: served
        expected = StreamingPredictor(step_path_for(BUNDLED_MODEL)).stream().push(image[0]).probabilities
        np.testing.assert_array_equal(prediction.probabilities, expected)
        await state.repository.close()

    asyncio.run(rows())
