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
# A short real-MNIST run (~20 s): 4 epochs on 10 000 images. Augmentation slows early epochs, so
# it is off here; the default 20-epoch run uses it (README: measured results).
QUICK_REAL = dict(limit=10_000, epochs=4, learning_rate=3e-3, warmup_epochs=0, augment_shift=0.0, augment_rotation_degrees=0.0)


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
    """A small Dense-LSTM-Dense trained briefly on synthetic digits (a real, non-trivial model)."""
    from rowrnn_keras.config import TrainConfig
    from rowrnn_keras.data import Mnist
    from rowrnn_keras.train import run_training

    out = tmp_path_factory.mktemp("tiny-model")
    config = TrainConfig(hidden_units=32, dense_units=32, epochs=2, batch_size=32, learning_rate=1e-2,
                         validation_size=50, augment_shift=0.0, augment_rotation_degrees=0.0)
    run_training(config, Mnist(*synthetic_digits(500, 1), *synthetic_digits(100, 2), source="synthetic"), out, verbose=0)
    return out / "model.keras"


@pytest.fixture(scope="session")
def exported(tiny_keras_model, tmp_path_factory):
    """The tiny model exported to ONNX (synthetic parity inputs: no data directory)."""
    from export.api import ValidationSet, export_model, synthetic_rows

    out = tmp_path_factory.mktemp("export") / "model.onnx"
    return export_model(tiny_keras_model, out, validation=ValidationSet(synthetic_rows(), None, "synthetic"))


@pytest.fixture(scope="session")
def exported_step(tiny_keras_model, tmp_path_factory):
    """The tiny model exported with `step=True`: model.onnx and model.step.onnx (synthetic parity inputs)."""
    from export.api import ValidationSet, export_model, synthetic_rows

    out = tmp_path_factory.mktemp("export-step") / "model.onnx"
    return export_model(tiny_keras_model, out, validation=ValidationSet(synthetic_rows(), None, "synthetic"), step=True)


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
