"""Shared fixtures: crafted IDX files, small synthetic digits, and the real MNIST directory."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# The seed of every model trained inside the tests. Change it (ROWRNN_FIXTURE_SEED=7) to see the
# suite as another machine would: training is deterministic only on one machine and thread layout,
# so a test that passes for one seed and fails for another depends on where margins happen to fall.
FIXTURE_SEED = int(os.environ.get("ROWRNN_FIXTURE_SEED", "0"))
# A short real-MNIST run (~20 s): 4 epochs on 10 000 images. Augmentation slows early epochs, so
# it is off here; the default 20-epoch run uses it (README: measured results).
QUICK_REAL = dict(limit=10_000, epochs=4, learning_rate=3e-3, warmup_epochs=0, augment_shift=0.0,
                  augment_rotation_degrees=0.0, seed=FIXTURE_SEED)


def rowrnn(*args, env=None, cwd=None):
    """Run the real console entry point in a subprocess, as a user would."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "rowrnn", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=cwd or REPO, timeout=600,
    )


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Nothing downloads at test time: Keras's MNIST fallback fails as it would offline."""
    import rowrnn_keras.data

    def refuse() -> None:
        raise rowrnn_keras.data.InputError("no MNIST directory given (--data or $ROWRNN_DATA); downloads are off in tests")

    monkeypatch.setattr(rowrnn_keras.data, "load_mnist_keras", refuse)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as IDX (uint8 only, as MNIST)."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


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
    from rowrnn_keras.data import FILES

    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = synthetic_digits(n, seed)
        suffix = ".gz" if compress else ""
        write_idx(directory / (FILES[f"{split}_images"] + suffix), images, compress)
        write_idx(directory / (FILES[f"{split}_labels"] + suffix), labels, compress)
    return directory


def real_mnist_dir() -> Path | None:
    """$ROWRNN_DATA, else ../shared/data/mnist beside the checkout, if it holds the files."""
    candidates = [os.environ.get("ROWRNN_DATA"), REPO.parent / "shared" / "data" / "mnist"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    found = real_mnist_dir()
    if found is None:
        pytest.skip("real MNIST not available: set ROWRNN_DATA to the directory with the IDX files")
    return found


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from rowrnn_keras.data import load_mnist_dir

    return load_mnist_dir(mnist_dir)


@pytest.fixture
def fake_mnist_dir(tmp_path) -> Path:
    return write_mnist_dir(tmp_path / "mnist")


@pytest.fixture(scope="session")
def tiny_keras_model(tmp_path_factory) -> Path:
    """A small Dense-LSTM-Dense trained on synthetic digits until it is confidently right.

    Trained to the end, not "briefly": a half-trained model's decision margins fall differently on
    every machine, and whatever a test measures on them (int8 accuracy, say) moves with it. Measured
    over seeds 0-2, on both cores and pinned to one: 100 % on `synthetic_digits(300, 5)`, the
    lowest top probability 0.75-0.82, int8 agreeing with fp32 on every image; ~10-15 s.
    """
    from rowrnn_keras.config import TrainConfig
    from rowrnn_keras.data import Mnist
    from rowrnn_keras.train import run_training

    out = tmp_path_factory.mktemp("tiny-model")
    config = TrainConfig(hidden_units=32, dense_units=32, epochs=6, warmup_epochs=0, batch_size=32,
                         learning_rate=1e-2, validation_size=50, augment_shift=0.0,
                         augment_rotation_degrees=0.0, seed=FIXTURE_SEED)
    mnist = Mnist(*synthetic_digits(1000, 1), *synthetic_digits(100, 2), source="synthetic")
    run_training(config, mnist, out, verbose=0)
    return out / "model.keras"


@pytest.fixture(scope="session")
def exported(tiny_keras_model, tmp_path_factory):
    """The tiny model exported to ONNX (synthetic parity inputs: no data directory)."""
    from export.api import ValidationSet, export_model, synthetic_rows

    out = tmp_path_factory.mktemp("export") / "model.onnx"
    return export_model(tiny_keras_model, out, validation=ValidationSet(synthetic_rows(), None, "synthetic"))


@pytest.fixture(scope="session")
def real_model(mnist, tmp_path_factory) -> Path:
    """A full-size model trained for 2 epochs on 10 000 real MNIST images (slow tests only)."""
    from rowrnn_keras.config import TrainConfig
    from rowrnn_keras.train import run_training

    out = tmp_path_factory.mktemp("real-model")
    run_training(TrainConfig(**QUICK_REAL), mnist, out, verbose=0)
    return out / "model.keras"


def foreign_model(path, input_name="rows", shape=(None, 28, 28), classes=10, metadata=None):
    """A valid ONNX model that is not a rowrnn one: mean of each row, first `classes` of them."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(shape))
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, classes]) for n in ("logits", "probabilities")]
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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90.0) -> "RunningServer":
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


@pytest.fixture
def start_server(tmp_path):
    """`start_server(model, *options, env=...)` -> a ready RunningServer on 127.0.0.1 (any free
    port); every server still running is stopped by its PID at the end of the test."""
    pytest.importorskip("uvicorn", reason="needs the serve extra: pip install '.[serve]'")
    servers: list[RunningServer] = []

    def start(model, *options, env=None) -> RunningServer:
        log = tmp_path / f"server{len(servers)}.log"
        with open(log, "wb") as stream:
            process = subprocess.Popen(
                [sys.executable, "-c", SERVER_BOOT, "serve", str(model), "--host", "127.0.0.1", "--port", "0",
                 *map(str, options)],
                stdout=stream, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})},
            )
        servers.append(RunningServer(process, log))
        return servers[-1].wait_ready()

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.stop(9)
