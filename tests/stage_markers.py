"""`rowrnn` with a marker file at each stage, for test_kill.py: so a kill test can prove where its
signal landed.

test_kill.py starts `python -c "import stage_markers; stage_markers.main()" ARGS...` (tests/ on
sys.path) with $ROWRNN_STAGE_DIR naming an empty directory. The stages, wrapped from outside (the
product code has no test hooks):

- `importing`: the TensorFlow-side import (`needs_training_extra`); `converting`: export's tf2onnx
  conversion; `training`: `fit_model`.
- `checkpoint-saved`: after the first epoch's best-model checkpoint, then a pause, inside training.
- `publish-<file>`: each of train's renames into the output directory, marking `renamed-<file>`
  once renamed; `publish-metrics.json` then pauses: its rename is the last before the model's.
- `write-<file>`: every atomic write, slowed down: half the bytes go into the temporary file,
  `write-<file>.half` is marked, a pause, then the rest.

Each stage marks `<stage>.entered` when it starts and `<stage>.left` when it returns normally; a
signal or an exception leaves no `.left`. So "`.entered` and no `.left`" after the process died
says the signal landed inside the stage. A pause is $ROWRNN_STAGE_HOLD seconds (default 1): long
enough that a signal sent when the marker appears lands before the stage moves on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

MARKERS = Path(os.environ.get("ROWRNN_STAGE_DIR", "."))
HOLD = float(os.environ.get("ROWRNN_STAGE_HOLD", "1"))


def mark(name: str) -> None:
    (MARKERS / name).touch()


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    mark(f"{name}.entered")
    yield
    mark(f"{name}.left")  # not in `finally`: a stage that did not finish leaves no `.left`


def in_stage(name: str, function):
    def wrapped(*args, **kwargs):
        with stage(name):
            return function(*args, **kwargs)

    return wrapped


def slow_write_bytes_atomic(target, data: bytes) -> Path:
    """`write_bytes_atomic`, pausing with half the bytes in the temporary file."""
    from runtime.files import atomic_path

    target = Path(target)
    with stage(f"write-{target.name}"), atomic_path(target) as tmp, open(tmp, "wb") as stream:
        stream.write(data[: len(data) // 2])
        stream.flush()
        mark(f"write-{target.name}.half")
        time.sleep(HOLD)
        stream.write(data[len(data) // 2 :])
    return target


def install_after_import() -> None:
    """Wrap the stages of whichever TensorFlow-side modules the command imported."""
    import runtime.files as artifacts

    artifacts.write_bytes_atomic = slow_write_bytes_atomic  # write_text/json_atomic call it too
    api = sys.modules.get("export.api")
    if api is not None:
        api.write_bytes_atomic = slow_write_bytes_atomic
        api.convert = in_stage("converting", api.convert)
    train = sys.modules.get("rowrnn_keras.train")
    if train is not None:
        import keras

        class HeldCheckpoint(keras.callbacks.ModelCheckpoint):
            def on_epoch_end(self, epoch, logs=None):
                super().on_epoch_end(epoch, logs)
                if epoch == 0:
                    mark("checkpoint-saved")
                    time.sleep(HOLD)

        keras.callbacks.ModelCheckpoint = HeldCheckpoint
        train.fit_model = in_stage("training", train.fit_model)
        publish = train.publish

        def marked_publish(source: Path, target: Path) -> None:
            with stage(f"publish-{target.name}"):
                publish(source, target)
                mark(f"renamed-{target.name}")
                if target.name == "metrics.json":
                    time.sleep(HOLD)  # the moment after the reports' renames, before the model's

        train.publish = marked_publish


def main() -> None:
    import rowrnn.cli as cli

    needs_training_extra = cli.needs_training_extra

    def marked_needs_training_extra(*args, **kwargs):
        with stage("importing"):
            imported = needs_training_extra(*args, **kwargs)
        install_after_import()
        return imported

    cli.needs_training_extra = marked_needs_training_extra
    cli.main(sys.argv[1:])
