"""Fixtures: the models, exports and data directories tests receive.

Plain helper functions are in helpers.py (why: its docstring).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    FIXTURE_SEED,
    QUICK_REAL,
    RunningServer,
    real_mnist_dir,
    require_module,
    start_server_process,
    synthetic_digits,
    unavailable,
)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Nothing downloads at test time: Keras's MNIST fallback fails as it would offline."""
    import rowrnn_keras.data

    def refuse() -> None:
        raise rowrnn_keras.data.InputError(
            "no MNIST directory given (--data or $ROWRNN_DATA); downloads are off in tests"
        )

    monkeypatch.setattr(rowrnn_keras.data, "load_mnist_keras", refuse)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A directory `build(directory)` fills once per test run, even with pytest-xdist's workers.

    Each worker has its own session fixtures; the models trained here would otherwise be trained
    once per worker (a core for up to a minute each). Workers share the run's temporary directory,
    so the first one builds under a lock and the others wait for it and reuse what it built.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process: an ordinary session fixture
        directory = tmp_path_factory.mktemp(name)
        build(directory)
        return directory
    run_root = tmp_path_factory.getbasetemp().parent  # this run's, shared by its workers
    directory, built = run_root / name, run_root / f"{name}.built"
    with open(run_root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not built.exists():
            shutil.rmtree(directory, ignore_errors=True)  # a worker that failed half-way
            directory.mkdir()
            build(directory)
            built.touch()
    return directory


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return real_mnist_dir()  # skips, or fails where the data is required (helpers.unavailable)


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from runtime.mnist import load_mnist_dir

    return load_mnist_dir(mnist_dir)


@pytest.fixture(scope="session")
def tiny_keras_model(tmp_path_factory) -> Path:
    """A small Dense-LSTM-Dense trained on synthetic digits until it is confidently right.

    Trained to the end, not "briefly": a half-trained model's decision margins fall differently on
    every machine, and whatever a test measures on them (int8 accuracy, say) moves with it. Measured
    over seeds 0-7 pinned to one core: 100 % on `synthetic_digits(300, 5)`, the lowest top
    probability 0.62-0.86, int8 agreeing with fp32 on every image; ~15 s. (On 1000 images, seeds 4
    and 6 stopped at 99 % with top probabilities down to 0.38: trained too little.)
    """
    from rowrnn_keras.config import TrainConfig
    from rowrnn_keras.train import run_training
    from runtime.mnist import Mnist

    config = TrainConfig(
        hidden_units=32,
        dense_units=32,
        epochs=6,
        warmup_epochs=0,
        batch_size=32,
        learning_rate=1e-2,
        validation_size=50,
        augment_shift=0.0,
        augment_rotation_degrees=0.0,
        seed=FIXTURE_SEED,
    )
    mnist = Mnist(*synthetic_digits(2000, 1), *synthetic_digits(100, 2), source="synthetic")
    out = built_once(
        tmp_path_factory, "tiny-model", lambda directory: run_training(config, mnist, directory, verbose=0)
    )
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

    out = built_once(
        tmp_path_factory,
        "real-model",
        lambda directory: run_training(TrainConfig(**QUICK_REAL), mnist, directory, verbose=0),
    )
    return out / "model.keras"


@pytest.fixture
def start_server(tmp_path):
    """`start_server(model, *options, env=...)` -> a ready `rowrnn serve` on 127.0.0.1 (any free
    port); every server still running is stopped by its PID at the end of the test."""
    require_module("uvicorn", "serve", "needs the serve extra: pip install '.[serve]'")
    servers: list[RunningServer] = []

    def start(model, *options, env=None) -> RunningServer:
        servers.append(start_server_process(model, *options, log=tmp_path / f"server{len(servers)}.log", env=env))
        return servers[-1]

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.stop(9)


# ---------------------------------------------------------------- the browser tests' fixtures


@pytest.fixture(scope="module")
def browser():
    sync_api = require_module("playwright.sync_api", "browser", "needs playwright (test extra)")
    if not Path(CHROMIUM).exists():
        unavailable("browser", f"no chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    directory = Path(os.environ.get("ROWRNN_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    directory.mkdir(parents=True, exist_ok=True)
    return directory
