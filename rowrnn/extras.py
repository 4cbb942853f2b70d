"""The extras (`pip install 'rowrnn[train]'`, `'rowrnn[serve]'`): checking they are there, and
importing the training side quietly.

`rowrnn.cli` and `rowrnn.bench` both need these; they live here so neither imports the other.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from types import ModuleType

from runtime.errors import InputError

TRAINING_EXTRA = ("tensorflow", "keras", "tf2onnx", "matplotlib")
INSTALL_HINT = "install the training extra: pip install 'rowrnn[train]'"
JAX_EXTRA = ("jax", "jaxlib")
SERVE_EXTRA = ("starlette", "uvicorn", "httptools", "uvloop", "prometheus_client", "orjson", "grpc", "tritonclient")


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Mute C++ log lines TensorFlow prints at import and device set-up.

    TF_CPP_MIN_LOG_LEVEL no longer silences them (absl logs before InitializeLog; tensorflow
    issue #100442), and they would bury the one-line errors this CLI promises.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_training_extra(
    packages: tuple[str, ...] = TRAINING_EXTRA, needed_by: str = "this command", hint: str = INSTALL_HINT
) -> None:
    """Fail fast, in one line, when the light install runs something that needs an extra."""
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(f"{needed_by} needs {', '.join(missing)}; {hint}")


def check_serve_extra() -> None:
    check_training_extra(SERVE_EXTRA, "rowrnn serve", "install the serve extra: pip install 'rowrnn[serve]'")


def select_keras_backend(backend: str) -> None:
    """Make `backend` Keras's backend in this process. Keras reads KERAS_BACKEND once, when it is
    first imported: this must come before that import (a Keras already imported on another backend
    is refused). TensorFlow-only work (export, evaluate) asks for "tensorflow" whatever the
    environment says."""
    if backend == "jax":
        check_training_extra(JAX_EXTRA, "--backend jax", "install the jax extra: pip install 'rowrnn[train,jax]'")
    if "keras" in sys.modules:
        running = sys.modules["keras"].backend.backend()
        if running != backend:
            raise InputError(f"Keras already runs on {running} in this process; {backend} was asked for")
        return
    os.environ["KERAS_BACKEND"] = backend


def needs_training_extra(module: str = "rowrnn_keras.train", backend: str = "tensorflow") -> ModuleType:
    """Import a training-side module (quietly) with Keras on `backend`, or explain which extra installs it."""
    check_training_extra()
    select_keras_backend(backend)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with native_stderr_silenced():
            imported = importlib.import_module(module)
            import tensorflow as tf

            tf.config.list_physical_devices()  # device probing logs too; do it while muted
    except ModuleNotFoundError as exc:
        raise InputError(f"this command needs {exc.name}; {INSTALL_HINT}") from None
    return imported
