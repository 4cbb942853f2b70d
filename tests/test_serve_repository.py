"""rowrnn serve --model-repository: several models and versions from a Triton-layout directory,
the version policy, the repository extension, and rollout (--poll-s) under load.

Two models with different weights make every answer traceable to the version that gave it: the
tiny test model and the bundled one (both meet the ONNX contract).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_one_line_error, require_module, rowrnn
from runtime import BUNDLED_MODEL, Predictor
from runtime.repository import write_triton_repository

SERVE_EXTRA = "needs the serve extra: pip install '.[serve]'"
require_module("uvicorn", "serve", SERVE_EXTRA)
triton_http = require_module("tritonclient.http", "serve", "needs tritonclient[http] (test extra)")
text_format = require_module("google.protobuf.text_format", "serve", SERVE_EXTRA)


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 28, 28), dtype=np.float32)


def set_policy(model_dir: Path, policy: str) -> None:
    """Rewrite config.pbtxt's version_policy (e.g. 'all: {}', 'specific: { versions: [1] }')."""
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    config.ClearField("version_policy")
    text_format.Merge(f"version_policy {{ {policy} }}", config)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))


@pytest.fixture
def two_models(exported, tmp_path) -> Path:
    """repo/digits: version 1 the tiny model, version 2 the bundled one, policy all;
    repo/bundled: version 1 the bundled model."""
    repo = tmp_path / "repo"
    write_triton_repository(exported.onnx_path, repo, name="digits")
    write_triton_repository(BUNDLED_MODEL, repo, name="digits", version=2)
    set_policy(repo / "digits", "all: {}")
    write_triton_repository(BUNDLED_MODEL, repo, name="bundled")
    return repo


@pytest.fixture(scope="module")
def weights(exported):
    """Model file -> its in-process Predictor (the reference every answer is compared with)."""
    with Predictor(exported.onnx_path) as tiny, Predictor(BUNDLED_MODEL) as bundled:
        yield {"tiny": tiny, "bundled": bundled}


def http_infer(client, name: str, rows: np.ndarray, version: str = ""):
    tensor = triton_http.InferInput("rows", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return client.infer(name, [tensor], model_version=version)


def test_two_models_and_two_versions_each_answer_with_their_own_weights(two_models, weights, start_server):
    server = start_server(None, "--model-repository", two_models)
    assert "models 'bundled', 'digits' ready at" in server.log.read_text()
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    rows = images(3, 1)
    expected = {name: predictor.predict(rows).logits for name, predictor in weights.items()}
    assert not np.array_equal(expected["tiny"], expected["bundled"])  # the test can tell them apart
    for name, version, source, answered_by in (
        ("digits", "", "bundled", "2"),
        ("digits", "2", "bundled", "2"),
        ("digits", "1", "tiny", "1"),
        ("bundled", "", "bundled", "1"),
    ):
        result = http_infer(client, name, rows, version)
        assert result.get_response()["model_name"] == name
        assert result.get_response()["model_version"] == answered_by
        np.testing.assert_array_equal(result.as_numpy("logits"), expected[source])
    assert client.get_model_metadata("digits")["versions"] == ["1", "2"]
    assert (
        client.get_model_metadata("digits", "1")["parameters"]["hidden_units"]
        == weights["tiny"].metadata["hidden_units"]
    )
    assert client.is_model_ready("digits", "1") and client.is_model_ready("bundled")
    assert not client.is_model_ready("digits", "3") and not client.is_model_ready("rowrnn")
    with pytest.raises(triton_http.InferenceServerException, match="no version '3'"):
        http_infer(client, "digits", rows, "3")
    with pytest.raises(triton_http.InferenceServerException, match="unknown model 'rowrnn'"):
        http_infer(client, "rowrnn", rows)

    # the page and its endpoint: the default model (--name if served, else the first by name) or ?model=
    assert b'<meta name="rowrnn-model" content="bundled">' in urllib.request.urlopen(server.url, timeout=30).read()
    assert b'content="digits"' in urllib.request.urlopen(f"{server.url}/?model=digits", timeout=30).read()
    digit = urllib.request.Request(
        f"{server.url}/v1/classify?model=digits",
        data=png_of(rows[0]),
        headers={"Content-Type": "image/png"},
        method="POST",
    )
    answer = json.loads(urllib.request.urlopen(digit, timeout=30).read())
    assert answer["model"]["name"] == "digits" and answer["model"]["version"] == "2"
    # the browser engine's files follow ?model= too: the page runs the model it was made for
    described = json.loads(urllib.request.urlopen(f"{server.url}/page/model.json?model=digits", timeout=30).read())
    assert described["name"] == "digits" and described["size_bytes"] == BUNDLED_MODEL.stat().st_size
    served_file = urllib.request.urlopen(f"{server.url}/page/model.onnx?model=bundled", timeout=30).read()
    assert served_file == BUNDLED_MODEL.read_bytes()
    with pytest.raises(urllib.error.HTTPError) as unknown:
        urllib.request.urlopen(f"{server.url}/page/model.onnx?model=nope", timeout=30)
    assert unknown.value.code == 404

    index = client.get_model_repository_index()
    assert [(e["name"], e["version"], e["state"]) for e in index] == [
        ("bundled", "1", "READY"),
        ("digits", "1", "READY"),
        ("digits", "2", "READY"),
    ]
    metrics = urllib.request.urlopen(f"{server.url}/metrics", timeout=30).read().decode()  # per model and version
    assert 'rowrnn_inference_images_total{model="digits",version="1"} 3.0' in metrics
    assert 'rowrnn_inference_images_total{model="digits",version="2"} 7.0' in metrics  # 2 x 3 + the page's 1
    client.close()


def png_of(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((image * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "policy, on_disk, served",
    [
        ("", [1, 2, 5], [5]),  # Triton's default: the latest one
        ("latest: { num_versions: 2 }", [1, 2, 5], [2, 5]),
        ("latest: { num_versions: 9 }", [3], [3]),
        ("all: {}", [1, 2, 5], [1, 2, 5]),
        ("specific: { versions: [1, 7] }", [1, 2, 5], [1]),
        ("specific: { versions: [7] }", [1, 2, 5], []),
    ],
)
def test_version_policy_parsed_with_tritons_schema(policy, on_disk, served):
    from tritonclient.grpc import model_config_pb2

    from serve.repository import select_versions

    config = text_format.Parse(f"version_policy {{ {policy} }}" if policy else "", model_config_pb2.ModelConfig())
    assert select_versions(config.version_policy, on_disk) == served


def test_the_policy_decides_what_serves(two_models, weights, start_server):
    set_policy(two_models / "digits", "specific: { versions: [1] }")
    server = start_server(None, "--model-repository", two_models)
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    rows = images(2, 2)
    assert client.get_model_metadata("digits")["versions"] == ["1"]
    np.testing.assert_array_equal(
        http_infer(client, "digits", rows).as_numpy("logits"), weights["tiny"].predict(rows).logits
    )
    with pytest.raises(triton_http.InferenceServerException, match="no version '2'"):
        http_infer(client, "digits", rows, "2")
    client.close()


def corrupt(path: Path) -> Path:
    path.write_bytes(b"not an onnx model" * 10)
    return path


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda repo: shutil.rmtree(repo), "no such directory"),
        (lambda repo: [shutil.rmtree(p) for p in repo.iterdir()], "no model directories"),
        (
            lambda repo: (repo / "digits" / "config.pbtxt").write_text("max_batch_size: {"),
            "not a Triton model configuration",
        ),
        (
            lambda repo: (repo / "digits" / "config.pbtxt").write_text(
                'platform: "tensorflow_savedmodel" max_batch_size: 8'
            ),
            "rowrnn serves 'onnxruntime_onnx' models",
        ),
        (lambda repo: (repo / "digits" / "config.pbtxt").write_text("max_batch_size: 0"), "max_batch_size 0"),
        (
            lambda repo: (repo / "digits" / "config.pbtxt").write_text(
                'max_batch_size: 8 input [ { name: "x" data_type: TYPE_FP32 dims: [28, 28] } ]'
            ),
            "rowrnn contract",
        ),
        (lambda repo: corrupt(repo / "digits" / "2" / "model.onnx"), "digits/2/model.onnx"),
        (lambda repo: (repo / "bundled" / "config.pbtxt").unlink(), "needs Triton's config.pbtxt"),
        (lambda repo: shutil.rmtree(repo / "bundled" / "1"), "no version to serve"),
    ],
    ids=[
        "no directory",
        "empty",
        "config syntax",
        "platform",
        "no batching",
        "contract",
        "corrupt model",
        "no config",
        "no version",
    ],
)
def test_a_repository_that_cannot_serve_is_one_line(two_models, breakage, message):
    breakage(two_models)
    assert_one_line_error(rowrnn("serve", "--model-repository", two_models, "--port", "0"), message)


def test_repository_options_are_checked(exported, two_models):
    assert_one_line_error(rowrnn("serve", exported.onnx_path, "--model-repository", two_models), "not both")
    assert_one_line_error(rowrnn("serve", exported.onnx_path, "--poll-s", "1"), "--poll-s needs --model-repository")
    assert_one_line_error(rowrnn("serve", "--model-repository", two_models, "--poll-s", "-1"), "--poll-s must be")


# --- rollout (--poll-s) and the repository extension ----------------------------------------------


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def test_rollout_under_load_loses_no_request(exported, weights, start_server, tmp_path):
    """32 clients (16 REST, 16 gRPC) keep inferring on 'digits' while version 2 is added and, by the
    policy (latest 1), version 1 removed: zero failed requests, every answer bit-exact to the
    version that says it answered, and version 2 serves after the poll. Then a corrupt version 3
    is refused with a log line while version 2 keeps serving."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    repo = tmp_path / "repo"
    write_triton_repository(exported.onnx_path, repo, name="digits")
    server = start_server(None, "--model-repository", repo, "--poll-s", "0.2")
    rows = images(2, 5)
    expected = {"1": weights["tiny"].predict(rows).logits, "2": weights["bundled"].predict(rows).logits}
    answers: list[tuple[str, str]] = []  # (protocol, version) of each answer
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def keep_inferring(protocol: str, infer_once) -> None:
        """Infer until told to stop (at most 5 000 times), recording who answered and any failure."""
        for _ in range(5_000):
            if stop.is_set():
                break
            try:
                version, logits = infer_once()
                failure = (
                    None
                    if np.array_equal(logits, expected.get(version))
                    else f"{protocol}: an answer of version {version!r} is not that version's"
                )
            except Exception as exc:  # noqa: BLE001  (a thread's exception would vanish)
                version, failure = "", f"{protocol}: {exc!r}"
            with lock:
                answers.append((protocol, version))
                if failure:
                    failures.append(failure)

    def rest_client() -> None:
        client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=60)

        def infer_once() -> tuple[str, np.ndarray]:
            result = http_infer(client, "digits", rows)
            return result.get_response()["model_version"], result.as_numpy("logits")

        keep_inferring("rest", infer_once)
        client.close()

    def grpc_client() -> None:
        channel = grpc.insecure_channel(server.grpc_url)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="digits", outputs=[{"name": "logits"}])
        request.inputs.add(name="rows", datatype="FP32", shape=rows.shape)
        request.raw_input_contents.append(rows.tobytes())

        def infer_once() -> tuple[str, np.ndarray]:
            response = stub.ModelInfer(request, timeout=60)
            return response.model_version, np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 10)

        keep_inferring("grpc", infer_once)
        channel.close()

    threads = [threading.Thread(target=client) for client in [rest_client] * 16 + [grpc_client] * 16]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(answers) >= 300, 60, "300 answers from version 1")
        write_triton_repository(BUNDLED_MODEL, repo, name="digits", version=2)  # the rollout
        wait_for(
            lambda: ("rest", "2") in answers[-200:] and ("grpc", "2") in answers[-200:],
            60,
            "both protocols answered by version 2",
        )
        switched = len(answers)
        wait_for(lambda: len(answers) >= switched + 300, 60, "300 answers after the switch")
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    assert failures == [], failures[:5]
    assert {version for _, version in answers} == {"1", "2"}
    log = server.log.read_text()
    assert "model 'digits' version 2 loaded and warmed up" in log and "model 'digits' version 1 unloaded" in log
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.get_model_metadata("digits")["versions"] == ["2"]  # version 1 drained and left

    (repo / "digits" / "3").mkdir()
    corrupt(repo / "digits" / "3" / "model.onnx")  # a broken new version
    wait_for(lambda: "model 'digits' version 3 refused" in server.log.read_text(), 30, "version 3 refused")
    assert "version 2 keeps serving" in server.log.read_text()
    result = http_infer(client, "digits", rows)
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_array_equal(result.as_numpy("logits"), expected["2"])
    index = {(e["name"], e["version"]): e for e in client.get_model_repository_index()}
    assert index[("digits", "2")]["state"] == "READY"
    assert index[("digits", "3")]["state"] == "UNAVAILABLE" and "model.onnx" in index[("digits", "3")]["reason"]
    time.sleep(1.0)  # five more polls: a refused file is not retried (nor logged again) until it changes
    assert server.log.read_text().count("model 'digits' version 3 refused") == 1
    client.close()


def test_repository_extension_load_and_unload(two_models, weights, start_server):
    """Explicit control (no --poll-s): unload over REST drains and removes a model, load over gRPC
    brings it back; both behind --api-key."""
    import tritonclient.grpc as triton_grpc

    server = start_server(None, "--model-repository", two_models, "--api-key", "s3cret")
    key = {"authorization": "Bearer s3cret"}
    rest = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    grpc_client = triton_grpc.InferenceServerClient(server.grpc_url)
    with pytest.raises(triton_http.InferenceServerException, match="API key"):
        rest.unload_model("bundled")
    with pytest.raises(triton_grpc.InferenceServerException, match="API key"):
        grpc_client.load_model("bundled")

    rest.unload_model("bundled", headers=key)
    assert not rest.is_model_ready("bundled", headers=key)
    assert [e["name"] for e in rest.get_model_repository_index(headers=key)] == ["digits", "digits"]
    with pytest.raises(triton_http.InferenceServerException, match="unknown model 'bundled'"):
        rest.infer("bundled", [], headers=key)
    with pytest.raises(triton_grpc.InferenceServerException, match="is not loaded"):
        grpc_client.unload_model("bundled", headers=key)

    grpc_client.load_model("bundled", headers=key)
    rows = images(2, 8)
    tensor = triton_grpc.InferInput("rows", [2, 28, 28], "FP32")
    tensor.set_data_from_numpy(rows)
    result = grpc_client.infer("bundled", [tensor], headers=key)
    np.testing.assert_array_equal(result.as_numpy("logits"), weights["bundled"].predict(rows).logits)
    ready = grpc_client.get_model_repository_index(headers=key, as_json=True)["models"]
    assert [(m["name"], m["version"], m["state"]) for m in ready] == [
        ("bundled", "1", "READY"),
        ("digits", "1", "READY"),
        ("digits", "2", "READY"),
    ]

    corrupt(two_models / "bundled" / "1" / "model.onnx")  # a reload that fails keeps what serves
    with pytest.raises(triton_http.InferenceServerException, match="did not load.*version 1 keeps serving"):
        rest.load_model("bundled", headers=key)
    result = grpc_client.infer("bundled", [tensor], headers=key)
    np.testing.assert_array_equal(result.as_numpy("logits"), weights["bundled"].predict(rows).logits)
    with pytest.raises(triton_grpc.InferenceServerException) as absent:
        grpc_client.load_model("absent", headers=key)
    assert absent.value.status() == "StatusCode.NOT_FOUND"
    rest.close()
    grpc_client.close()


def test_explicit_control_is_refused_while_polling(two_models, start_server):
    server = start_server(None, "--model-repository", two_models, "--poll-s", "5")
    rest = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    with pytest.raises(triton_http.InferenceServerException, match="not allowed while --poll-s"):
        rest.unload_model("bundled")
    assert rest.is_model_ready("bundled")
    rest.close()


@pytest.mark.parametrize(
    "text, number",
    [
        ("1", 1),
        ("12", 12),
        ("0", None),
        ("01", None),
        ("²", None),
        ("1.0", None),
        ("-1", None),
        (" 1", None),
        ("9" * 5000, None),
        ("", None),
    ],
)
def test_a_version_is_a_plain_decimal_number(text, number):
    """Directories and requests name versions alike; "²" is a digit to str.isdigit but not to int(),
    and 5 000 digits are past int()'s limit: both once ended in a 500 (or, as a directory, a
    traceback at start and a poll that failed forever)."""
    from serve.repository import version_number

    assert version_number(text) == number


def test_a_refused_reload_leaves_the_page_the_bytes_that_still_serve(exported, start_server, tmp_path):
    """Version 1's file is overwritten with junk: the reload is refused and the old model keeps
    serving, and the page's browser engine still downloads the model that serves, not the junk."""
    repo = tmp_path / "repo"
    write_triton_repository(exported.onnx_path, repo, name="digits")
    served = exported.onnx_path.read_bytes()
    server = start_server(None, "--model-repository", repo, "--poll-s", "0.2", "--name", "digits")
    (repo / "digits" / "1" / "model.onnx").write_bytes(b"junk, not a model")
    wait_for(lambda: "model 'digits' version 1 refused" in server.log.read_text(), 30, "the junk refused")
    page_file = urllib.request.urlopen(f"{server.url}/page/model.onnx?model=digits", timeout=30).read()
    assert page_file == served
    described = json.loads(urllib.request.urlopen(f"{server.url}/page/model.json?model=digits", timeout=30).read())
    assert described["size_bytes"] == len(served)  # the footer describes the same model, not the junk


def test_a_version_is_warmed_up_at_the_shapes_it_will_see_before_it_is_returned(exported):
    """Rollout's promise that a new version takes traffic only once warm: the shapes a batcher
    forms (one image, a full batch) have run before `open_version` hands the version back."""
    from serve.repository import Batching, open_version

    predictor = Predictor(exported.onnx_path)
    seen: list[int] = []
    real_predict = predictor.predict
    predictor.predict = lambda images: seen.append(len(images)) or real_predict(images)
    version = open_version("digits", 1, predictor, Batching(48, 0.002), lambda *args: object())
    assert sorted(seen) == [1, 48]
    assert version.model_bytes == exported.onnx_path.read_bytes()
    version.close()
