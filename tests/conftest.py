"""Fixtures: the models, exports and data directories tests receive.

Plain helper functions are in helpers.py (why: its docstring).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import FIXTURE_SEED, QUICK_REAL, RunningServer, real_mnist_dir, start_server_process, synthetic_digits


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Nothing downloads at test time: Keras's MNIST fallback fails as it would offline."""
    import rowrnn_keras.data

    def refuse() -> None:
        raise rowrnn_keras.data.InputError("no MNIST directory given (--data or $ROWRNN_DATA); downloads are off in tests")

    monkeypatch.setattr(rowrnn_keras.data, "load_mnist_keras", refuse)


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
def exported_step(tiny_keras_model, tmp_path_factory):
    """The tiny model exported with `step=True`: model.onnx and model.step.onnx (synthetic parity inputs)."""
    from export.api import ValidationSet, export_model, synthetic_rows

    out = tmp_path_factory.mktemp("export-step") / "model.onnx"
    return export_model(tiny_keras_model, out, validation=ValidationSet(synthetic_rows(), None, "synthetic"), step=True)


@pytest.fixture(scope="session")
def real_model(mnist, tmp_path_factory) -> Path:
    """A full-size model trained with `QUICK_REAL` (4 epochs on 10 000 real MNIST images; slow tests only)."""
    from rowrnn_keras.config import TrainConfig
    from rowrnn_keras.train import run_training

    out = tmp_path_factory.mktemp("real-model")
    run_training(TrainConfig(**QUICK_REAL), mnist, out, verbose=0)
    return out / "model.keras"


@pytest.fixture
def start_server(tmp_path):
    """`start_server(model, *options, env=...)` -> a ready `rowrnn serve` on 127.0.0.1 (any free
    port); every server still running is stopped by its PID at the end of the test."""
    pytest.importorskip("uvicorn", reason="needs the serve extra: pip install '.[serve]'")
    servers: list[RunningServer] = []

    def start(model, *options, env=None) -> RunningServer:
        servers.append(start_server_process(model, *options, log=tmp_path / f"server{len(servers)}.log", env=env))
        return servers[-1]

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.stop(9)
