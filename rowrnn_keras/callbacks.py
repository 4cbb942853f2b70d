"""The callbacks `fit_model` adds to Keras's own: a backup written whole that carries the run's state
(`ResumableBackup`), and TensorBoard scalars without the tensorboard package (`ScalarTensorBoard`)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from rowrnn_keras.backup import BACKUP_DIR, BEST_MODEL_FILE, KERAS_METADATA_FILE, WEIGHTS_FILE, Backup, write_backup


def weights_digest(model: keras.Model) -> str:
    """sha256 of every weight's bytes: equal for two runs exactly when their weights are."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, with each backup written whole (see `rowrnn_keras.backup`) and
    carrying what the model does not hold: the history, the early-stopping and best-model state,
    the best model so far, the training time. Keras's own loading restores the weights, the
    optimizer (its step count drives the learning-rate schedule) and the epoch.

    It must come after ModelCheckpoint and EarlyStopping in the callback list: it backs up what
    they did at the end of each epoch, and restores their state after they reset it.
    """

    def __init__(
        self,
        resume: Backup | None,
        write_to: Path,
        state: dict,
        best_model: Path,
        checkpoint: keras.callbacks.ModelCheckpoint,
        early_stopping: keras.callbacks.EarlyStopping,
    ) -> None:
        # Keras loads from backup_dir; a fresh run points it at a directory that does not exist.
        super().__init__(str(resume.path if resume else write_to / BACKUP_DIR), delete_checkpoint=False)
        self.resume, self.write_to, self.state = resume, write_to, state
        self.best_model, self.checkpoint, self.early_stopping = best_model, checkpoint, early_stopping
        self.epoch_started = 0.0

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.resume is None:
            return
        super().on_train_begin(logs)
        self.checkpoint.best = self.state["checkpoint_best"]
        for name, value in self.state["early_stopping"].items():
            setattr(self.early_stopping, name, value)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        schedule = self.model.optimizer.learning_rate
        history = self.state["history"]
        for name, value in (logs or {}).items():
            history.setdefault(name, []).append(float(value))
        # the rate of the epoch's last step
        step = int(self.model.optimizer.iterations.numpy()) - 1
        history.setdefault("learning_rate", []).append(float(schedule(step)) if callable(schedule) else float(schedule))
        stopping = self.early_stopping
        seconds = time.perf_counter() - self.epoch_started
        self.state.update(
            epoch=epoch + 1,
            finished=bool(self.model.stop_training) or epoch + 1 >= self.params["epochs"],
            checkpoint_best=None if self.checkpoint.best is None else float(self.checkpoint.best),
            early_stopping={
                "wait": stopping.wait,
                "best": None if stopping.best is None else float(stopping.best),
                "best_epoch": stopping.best_epoch,
                "stopped_epoch": stopping.stopped_epoch,
            },
            train_seconds=self.state["train_seconds"] + seconds,
            epoch_seconds=[*self.state.get("epoch_seconds", []), round(seconds, 3)],
            weights_sha256=weights_digest(self.model),
        )
        super().on_epoch_end(epoch, logs)  # calls _save_model

    def _save_model(self) -> None:
        """Replaces Keras's in-place write (see `rowrnn_keras.backup`)."""

        def fill(scratch: Path) -> None:
            self.model.save_weights(scratch / WEIGHTS_FILE)
            (scratch / KERAS_METADATA_FILE).write_text(json.dumps({"epoch": self.state["epoch"], "batch": 0}))
            if self.best_model.exists():
                shutil.copyfile(self.best_model, scratch / BEST_MODEL_FILE)

        write_backup(self.write_to, fill, self.state)


class ScalarSummaries:
    """tf.summary for Keras's TensorBoard callback, with a `scalar` that works without the
    tensorboard package: TensorFlow only forwards tf.summary.scalar to it, and it is not our
    dependency. This writes the record tensorboard's scalar plugin writes (and reads): a float32
    tensor with the "scalars" plugin metadata."""

    METADATA = tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars", content=b""),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    )

    def __getattr__(self, name: str) -> object:
        return getattr(tf.summary, name)

    def scalar(self, name: str, data: object, step: int | None = None, description: str | None = None) -> bool:
        return tf.summary.write(name, tf.cast(data, tf.float32), step=step, metadata=self.METADATA)


class ScalarTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback writing epoch scalars (loss, accuracy, validation metrics and
    the learning rate) through `ScalarSummaries`."""

    summary = ScalarSummaries()
