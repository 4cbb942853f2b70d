"""Test helpers: plain functions and constants the test modules import.

They live here, not in conftest.py: conftest is pytest's plugin file, which pytest loads itself
and its documentation says not to import, and some of these run at collection time (in
`parametrize` lists), where fixtures cannot. What tests receive at run time (models, exports, data
directories) comes from conftest's fixtures.
"""

from __future__ import annotations

import gzip
import http.client
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import numpy as np

from runtime.idx import encode_idx

REPO = Path(__file__).resolve().parents[1]
# The seed of every model trained inside the tests. Change it (ROWRNN_FIXTURE_SEED=7) to see the
# suite as another machine would: training is deterministic only on one machine and thread layout,
# so a test that passes for one seed and fails for another depends on where margins happen to fall.
FIXTURE_SEED = int(os.environ.get("ROWRNN_FIXTURE_SEED", "0"))
# A short real-MNIST run (~20 s): 4 epochs on 10 000 images. Augmentation slows early epochs, so
# it is off here; the default 20-epoch run uses it (README: measured results).
QUICK_REAL = dict(
    limit=10_000,
    epochs=4,
    learning_rate=3e-3,
    warmup_epochs=0,
    augment_shift=0.0,
    augment_rotation_degrees=0.0,
    seed=FIXTURE_SEED,
)
# A tiny run on `synthetic_digits(TINY_TRAIN_IMAGES, 1)` that learns its task completely: measured
# 100 % test accuracy on `synthetic_digits(200, 2)` for seeds 0-7 pinned to one core, ~7 s. (With
# 600 images it stopped anywhere between 37 % and 69 % depending on the seed: too few steps.)
# The synthetic classes are bar positions, which shifting would blur: no augmentation.
TINY_TRAIN = dict(
    hidden_units=16,
    dense_units=16,
    epochs=3,
    warmup_epochs=0,
    batch_size=32,
    learning_rate=1e-2,
    validation_size=60,
    augment_shift=0.0,
    augment_rotation_degrees=0.0,
    seed=FIXTURE_SEED,
)
TINY_TRAIN_IMAGES = 1500


def rowrnn(*args, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess, as a user would."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "rowrnn", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=600,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2 and exactly one line on stderr that holds every needle, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as IDX, as uint8 (MNIST's type)."""
    return encode_idx(np.asarray(array, np.uint8))


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def synthetic_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, 28, 28] images whose class k is a bright bar on rows 2k+4..2k+5, plus noise:
    learnable by a row-reading LSTM in a few epochs, so training tests can assert it learned."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        start = rng.integers(3, 10)
        images[i, 2 * label + 4 : 2 * label + 6, start : start + 14] = 255
    return images, labels


def write_mnist_dir(directory: Path, n_train: int = 120, n_test: int = 40, compress: bool = True) -> Path:
    """A directory with the four MNIST files, holding `synthetic_digits`."""
    from runtime.mnist import FILES

    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = synthetic_digits(n, seed)
        suffix = ".gz" if compress else ""
        write_idx(directory / (FILES[f"{split}_images"] + suffix), images, compress)
        write_idx(directory / (FILES[f"{split}_labels"] + suffix), labels, compress)
    return directory


def real_mnist_dir() -> Path:
    """$ROWRNN_DATA if set, else ../shared/data/mnist beside the checkout; `unavailable` (skip, or
    fail where required) unless it holds the four MNIST files."""
    from runtime.mnist import DATA_ENV, FILES, find_idx_file

    chosen = os.environ.get(DATA_ENV)
    directory = Path(chosen) if chosen else REPO.parent / "shared" / "data" / "mnist"
    missing = [stem for stem in FILES.values() if find_idx_file(directory, stem) is None]
    if missing:
        where = f"${DATA_ENV}={chosen}" if chosen else f"${DATA_ENV} is not set and {directory}"
        unavailable(
            "data",
            f"real MNIST not available: {where} lacks {', '.join(missing)} (.gz or raw); "
            f"set ${DATA_ENV} to the directory with the four IDX files",
        )
    return directory


# --- what a test needs and CI has: skip where it is missing, fail where it is required -------------

# What `unavailable` can be asked for, and the variable that requires it. CI=true requires them all
# (CI services set it); an explicit ROWRNN_REQUIRE_*=0 lets a CI job without, say, a browser opt out.
REQUIREMENTS = {
    "data": "ROWRNN_REQUIRE_DATA",  # the real MNIST files
    "browser": "ROWRNN_REQUIRE_BROWSER",  # Playwright and chromium
    "serve": "ROWRNN_REQUIRE_SERVE",  # the serve extra
    "jax": "ROWRNN_REQUIRE_JAX",  # the jax extra (rowrnn train --backend jax)
}
FALSE_WORDS = ("", "0", "false", "no", "off")


def is_required(what: str) -> bool:
    """True when ROWRNN_REQUIRE_<WHAT> says so, else when $CI does."""
    explicit = os.environ.get(REQUIREMENTS[what])
    if explicit is not None:
        return explicit.strip().lower() not in FALSE_WORDS
    return os.environ.get("CI", "").strip().lower() not in FALSE_WORDS


def unavailable(what: str, reason: str) -> NoReturn:
    """The test cannot run here: skip it with `reason`, or fail with it where `what` is required
    (CI must not go green by skipping what it was set up to run). Works at module level too."""
    import pytest

    if is_required(what):
        variable = REQUIREMENTS[what]
        because = f"{variable}={os.environ[variable]}" if variable in os.environ else f"CI={os.environ['CI']}"
        pytest.fail(f"{reason} [required here: {because}]", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str, what: str, reason: str) -> ModuleType:
    """`pytest.importorskip(name)`, except that where `what` is required a missing module fails."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(what, f"{reason} ({exc})")


def foreign_model(path, input_name="rows", shape=(None, 28, 28), classes=10, metadata=None):
    """A valid ONNX model that is not a rowrnn one: mean of each row, first `classes` of them."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(shape))
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, classes]) for n in ("logits", "probabilities")
    ]
    consts = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("s", 0), ("e", classes), ("a", 1))]
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["m"], axes=[2], keepdims=0),
        helper.make_node("Slice", ["m", "s", "e", "a"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"]),
    ]
    graph = helper.make_graph(nodes, "foreign", [inp], outputs, initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.save(model, path)
    return path


# --- a real `rowrnn serve` process on a free loopback port --------------------------------------

# Starts the real console entry point; at exit (after the drain) it writes the names of every
# module the server process imported to $ROWRNN_TEST_MODULES, so a test can check what it loaded.
SERVER_BOOT = """
import atexit, json, os, sys
out = os.environ.get("ROWRNN_TEST_MODULES")
if out:
    atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["rowrnn", *sys.argv[1:]]
from rowrnn.__main__ import run
run()
"""


class RunningServer:
    def __init__(self, process: subprocess.Popen, log: Path) -> None:
        self.process, self.log = process, log
        self.port = 0
        self.grpc_port: int | None = None  # None: the server runs without gRPC (--no-grpc)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90.0) -> RunningServer:
        import re
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            found = re.search(r"ready at http://127\.0\.0\.1:(\d+)/", self.log.read_text())
            if found:
                self.port = int(found.group(1))
                grpc_found = re.search(r"gRPC \(.*\) at 127\.0\.0\.1:(\d+)", self.log.read_text())
                self.grpc_port = int(grpc_found.group(1)) if grpc_found else None
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=5) as response:
                    assert response.status == 200
                return self
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log.read_text()}")

    def stop(self, sig: int = 15, timeout: float = 60.0) -> int:
        """Send `sig` (SIGTERM by default) to the server's PID and wait for it to exit."""
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"server did not stop within {timeout} s after signal {sig}") from None

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


def start_server_process(model, *options, log: Path, env: dict[str, str] | None = None) -> RunningServer:
    """`rowrnn serve MODEL --port 0 --grpc-port 0 OPTIONS` on 127.0.0.1 (MODEL None: not given, e.g. with
    --model-repository), its output in `log`; ready when returned."""
    with open(log, "wb") as stream:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SERVER_BOOT,
                "serve",
                *([] if model is None else [str(model)]),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--grpc-port",
                "0",
                *map(str, options),
            ],
            stdout=stream,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
    return RunningServer(process, log).wait_ready()


# --- talking to a server: the Open Inference Protocol over HTTP, by hand -----------------------------

INFER = "/v2/models/rowrnn/infer"


def images(n: int, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return (pixels / np.float32(255)).astype(np.float32)


def infer_body(rows: np.ndarray, binary: bool, **extra) -> tuple[bytes, dict[str, str]]:
    tensor = {"name": "rows", "datatype": "FP32", "shape": list(rows.shape)}
    if not binary:
        tensor["data"] = rows.ravel().tolist()
        return json.dumps({"inputs": [tensor], **extra}).encode(), {"Content-Type": "application/json"}
    tensor["parameters"] = {"binary_data_size": rows.nbytes}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}, **extra}).encode()
    return header + rows.tobytes(), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def decode(response: http.client.HTTPResponse, body: bytes) -> dict[str, np.ndarray]:
    """Output name -> float32 array, from a JSON or a binary-tensor response."""
    length = response.getheader("Inference-Header-Content-Length")
    header = json.loads(body[: int(length)] if length else body)
    arrays, offset = {}, int(length or 0)
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            arrays[output["name"]] = np.array(output["data"], np.float32).reshape(output["shape"])
        else:
            arrays[output["name"]] = np.frombuffer(body, "<f4", size // 4, offset).reshape(output["shape"])
            offset += size
    return arrays


def http_call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One request on a new connection to 127.0.0.1:`port`: (response, body bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def good_request_works(port: int, predictor) -> None:
    """A good binary request after whatever came before: answered, bit-exact to `predictor`."""
    rows = images(2, 99)
    response, body = http_call(port, "POST", INFER, *infer_body(rows, binary=True))
    assert response.status == 200, body
    np.testing.assert_array_equal(decode(response, body)["logits"], predictor.predict(rows).logits)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels` (asserted to exist)."""
    values = []
    for sample, label_text, value in re.findall(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if sample == name and all(found.get(key) == wanted for key, wanted in labels.items()):
            values.append(float(value))
    assert values, (name, labels)
    return sum(values)


# ---------------------------------------------------------------- the browser (Debian's chromium)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's notes say: without the background-networking flags Chromium tries to reach
# Google's hosts at start, which this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def free_port() -> int:
    """A free port on 127.0.0.1 whose next one is free too: a multi-process run's coordinator port
    (JAX's) and the one after it (rowrnn_keras.cluster's link)."""
    while True:
        with socket.socket() as probe, socket.socket() as next_one:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            try:
                next_one.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
