"""Training and evaluation: small functions, one job each; `run_training` writes the artifacts."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from rowrnn_keras import plots
from runtime.files import private_prefix, remove_leftovers, sha256_file, write_json_atomic
from rowrnn_keras.backup import (
    BACKUP_DIR, BEST_MODEL_FILE, KERAS_METADATA_FILE, WEIGHTS_FILE, Backup, discard, fingerprint, resume_point,
    write_backup,
)
from rowrnn_keras.config import CURVES_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE, TrainConfig, multi_worker_task
from rowrnn_keras.data import split_validation
from runtime.mnist import Mnist
from rowrnn_keras.model import compile_model, create_model
from runtime.contract import IMAGE_SHAPE, NUM_CLASSES, scale_pixels
from runtime.errors import InputError


@dataclass(frozen=True)
class Splits:
    """float32 images in [0, 1] and integer labels, ready for `model.fit`."""

    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    per_class_accuracy: list[float]
    confusion: np.ndarray  # [true, predicted] counts

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "per_class_accuracy": self.per_class_accuracy,
            "confusion_matrix": self.confusion.tolist(),
        }


def validation_size_for(config: TrainConfig, n_train: int) -> int:
    """The configured hold-out, but at most a tenth of a `--limit`ed training set."""
    return max(1, min(config.validation_size, n_train // 10))


def make_splits(mnist: Mnist, config: TrainConfig) -> Splits:
    """Limit, hold out the validation images, scale pixels. The test split is never touched."""
    images, labels = mnist.train_images, mnist.train_labels
    if config.limit is not None:
        images, labels = images[: config.limit], labels[: config.limit]
    (train_x, train_y), (val_x, val_y) = split_validation(
        images, labels, validation_size_for(config, len(images)), config.seed
    )
    as_xy = lambda x, y: (scale_pixels(x), y.astype(np.int32))  # noqa: E731
    return Splits(
        as_xy(train_x, train_y),
        as_xy(val_x, val_y),
        as_xy(mnist.test_images, mnist.test_labels),
    )


def seed_everything(seed: int) -> None:
    """Same seed on the same machine gives the same history."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def transform_batch(images: tf.Tensor, shift_x: tf.Tensor, shift_y: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
    """Shift [batch, 28, 28] images by (shift_x, shift_y) pixels and rotate them by `angle`
    radians about their centre: one bilinear resampling, black outside the image."""
    c = (IMAGE_SHAPE[0] - 1) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    # ImageProjectiveTransformV3 maps each output pixel (x, y) to the input point it reads:
    # the inverse of "rotate about the centre, then shift", i.e. R(-angle)(p - c - shift) + c.
    zeros = tf.zeros_like(angle)
    transforms = tf.stack([
        cos, sin, c - cos * (c + shift_x) - sin * (c + shift_y),
        -sin, cos, c + sin * (c + shift_x) - cos * (c + shift_y),
        zeros, zeros,
    ], axis=1)
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=images[..., None], transforms=transforms, output_shape=IMAGE_SHAPE,
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT",
    )
    return moved[..., 0]


def augment_batch(config: TrainConfig, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random shifts up to `augment_shift` x 28 px and rotations up to `augment_rotation_degrees`
    (uniform, as keras's RandomTranslation and RandomRotation draw them), drawn statelessly from
    `seed`: the same seed gives the same images, in this run or in a resumed one."""
    draws = tf.random.stateless_uniform([tf.shape(images)[0], 3], seed, minval=-1.0, maxval=1.0)
    shift = config.augment_shift * IMAGE_SHAPE[0]
    angle = math.radians(config.augment_rotation_degrees)
    return transform_batch(images, draws[:, 0] * shift, draws[:, 1] * shift, draws[:, 2] * angle)


def training_dataset(
    config: TrainConfig, images: np.ndarray, labels: np.ndarray, first_epoch: int = 0
) -> tf.data.Dataset:
    """The training batches of every epoch from `first_epoch` on, shuffled and augmented.

    Each epoch's order and each batch's augmentation are pure functions of (seed, epoch) and
    (seed, step), not of a random state that advances as the run goes: a run resumed at epoch 8
    sees exactly the batches the interrupted one would have. Augmentation runs in the input
    pipeline, so the saved model is exactly the Dense-LSTM-Dense network.
    """
    count = len(images)
    steps = math.ceil(count / config.batch_size)
    all_images, all_labels = tf.constant(images), tf.constant(labels)
    shuffle_key = tf.constant([config.seed, 0], tf.int64)
    augment_key = tf.constant([config.seed, 1], tf.int64)

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        seed = tf.random.experimental.stateless_fold_in(shuffle_key, epoch)
        order = tf.random.experimental.stateless_shuffle(tf.range(count), seed)
        return tf.data.Dataset.from_tensor_slices(order).batch(config.batch_size)

    def load(step: tf.Tensor, indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch = tf.gather(all_images, indices)
        if config.augment_shift or config.augment_rotation_degrees:
            batch = augment_batch(config, batch, tf.random.experimental.stateless_fold_in(augment_key, step))
        return batch, tf.gather(all_labels, indices)

    dataset = (
        tf.data.Dataset.range(first_epoch, config.epochs)
        .flat_map(epoch_batches)
        .enumerate(start=first_epoch * steps)
        .map(load)
        .prefetch(2)
    )
    options = tf.data.Options()
    # Several workers split each batch between them (the default, FILE, needs files to shard).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


@dataclass(frozen=True)
class Placement:
    """Where training runs: the tf.distribute strategy and what metrics.json says about it."""

    strategy: tf.distribute.Strategy
    kind: str  # TrainConfig.distribute
    devices: list[str]
    is_chief: bool  # writes the artifacts (always, except non-chief workers of a multi-worker run)


def short_device(name: str) -> str:
    """'/job:localhost/replica:0/task:0/device:CPU:1' -> 'CPU:1' (other jobs keep job and task)."""
    spec = tf.DeviceSpec.from_string(name)
    prefix = "" if spec.job in (None, "localhost") else f"/job:{spec.job}/task:{spec.task}/"
    return f"{prefix}{spec.device_type}:{spec.device_index or 0}"


MULTI_WORKER_BROKEN = (
    f"--distribute multi-worker: model.fit fails in Keras {keras.__version__} with TensorFlow {tf.__version__} "
    '("unsupported type PerReplica": keras-team/keras#20585, tensorflow/tensorflow#72388); '
    "--distribute mirrored trains on every device of one machine"
)


def place(kind: str) -> Placement:
    """The strategy for `--distribute`: none (TensorFlow's default: one device), mirrored (every
    local GPU, else every logical CPU device), or multi-worker (TF_CONFIG's cluster)."""
    if kind == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
        return Placement(strategy, kind, [short_device(d) for d in strategy.extended.worker_devices], True)
    if kind == "multi-worker":
        is_chief = multi_worker_task().is_chief  # checked before the strategy starts its server
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return Placement(strategy, kind, [short_device(d) for d in strategy.extended.worker_devices], is_chief)
    gpus = tf.config.list_logical_devices("GPU")
    return Placement(tf.distribute.get_strategy(), kind, [short_device((gpus or tf.config.list_logical_devices("CPU"))[0].name)], True)


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

    def __init__(self, resume: Backup | None, write_to: Path, state: dict, best_model: Path,
                 checkpoint: keras.callbacks.ModelCheckpoint, early_stopping: keras.callbacks.EarlyStopping) -> None:
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
        self.state.update(
            epoch=epoch + 1,
            finished=bool(self.model.stop_training) or epoch + 1 >= self.params["epochs"],
            checkpoint_best=None if self.checkpoint.best is None else float(self.checkpoint.best),
            early_stopping={"wait": stopping.wait, "best": None if stopping.best is None else float(stopping.best),
                            "best_epoch": stopping.best_epoch, "stopped_epoch": stopping.stopped_epoch},
            train_seconds=self.state["train_seconds"] + time.perf_counter() - self.epoch_started,
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


@dataclass
class FitResult:
    model: keras.Model  # the best epoch's
    history: dict[str, list[float]]
    state: dict  # the backup state after the last epoch (rowrnn_keras.backup)
    steps_per_epoch: int


def new_state(data_and_config: dict) -> dict:
    """A fresh run's backup state (rowrnn_keras.backup); `data_and_config`: `fingerprint(...)`."""
    return {"fingerprint": data_and_config, "epoch": 0, "finished": False, "history": {},
            "checkpoint_best": None, "early_stopping": {}, "train_seconds": 0.0, "resumed_at": [],
            "weights_sha256": None, "run_name": time.strftime("run-%Y%m%d-%H%M%S")}


def fit_model(
    config: TrainConfig,
    splits: Splits,
    checkpoint: Path,
    backup_to: Path,
    state: dict,
    verbose: int | str = "auto",
    *,
    placement: Placement | None = None,
    resume: Backup | None = None,
    tensorboard: Path | None = None,
) -> FitResult:
    """Train with model.fit; return the best-validation-accuracy model and the history.

    A backup is written into `backup_to` at every epoch end; `state` is what it carries besides
    the model (`new_state`, or the state of `resume`, the backup training continues from).
    `tensorboard`: a directory for Keras's TensorBoard logs, one subdirectory per run.
    """
    placement = placement or place("none")
    steps_per_epoch = math.ceil(len(splits.train[0]) / config.batch_size)
    if resume is not None:
        if (resume.path / BEST_MODEL_FILE).exists():  # ModelCheckpoint carries on from the best so far
            shutil.copyfile(resume.path / BEST_MODEL_FILE, checkpoint)
        if resume.finished:  # killed after training, before publishing: nothing left to train
            return FitResult(keras.models.load_model(checkpoint), state["history"], state, steps_per_epoch)
    seed_everything(config.seed)
    with placement.strategy.scope():
        model = compile_model(create_model(config), config, steps_per_epoch)
    best = keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_accuracy", mode="max", save_best_only=True)
    stopping = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=config.patience)
    callbacks: list[keras.callbacks.Callback] = [best, stopping]
    if tensorboard is not None:
        callbacks.append(ScalarTensorBoard(tensorboard / state["run_name"], write_graph=False))
    callbacks.append(ResumableBackup(resume, backup_to, state, checkpoint, best, stopping))
    first_epoch = resume.epoch if resume else 0
    model.fit(
        training_dataset(config, *splits.train, first_epoch=first_epoch),
        steps_per_epoch=steps_per_epoch,
        epochs=config.epochs,
        initial_epoch=first_epoch,
        validation_data=splits.validation,
        validation_batch_size=1024,
        shuffle=False,  # the dataset shuffles itself, per epoch
        callbacks=callbacks,
        verbose=verbose,
    )
    return FitResult(keras.models.load_model(checkpoint), state["history"], state, steps_per_epoch)


def predict_logits(model: keras.Model, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    return model.predict(images, batch_size=batch_size, verbose=0)


def evaluate_predictions(labels: np.ndarray, predicted: np.ndarray) -> Evaluation:
    """Accuracy, per-class accuracy (recall) and the confusion matrix."""
    labels, predicted = np.asarray(labels, np.int64), np.asarray(predicted, np.int64)
    if len(labels) == 0 or len(labels) != len(predicted):
        raise InputError(f"cannot evaluate {len(predicted)} predictions against {len(labels)} labels")
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return Evaluation(float(np.mean(labels == predicted)), per_class.round(6).tolist(), confusion)


def evaluate_model(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> Evaluation:
    return evaluate_predictions(labels, predict_logits(model, images).argmax(axis=1))


def format_evaluation(result: Evaluation) -> str:
    """Per-class accuracy and the confusion matrix as aligned text tables."""
    n = len(result.per_class_accuracy)
    lines = ["class  accuracy", *(f"{c:>5}  {a:.4f}" for c, a in enumerate(result.per_class_accuracy))]
    width = max(5, len(str(result.confusion.max())) + 1)
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    lines.append("t\\p".ljust(6) + "".join(f"{p:>{width}}" for p in range(n)))
    for true in range(n):
        lines.append(f"{true:>5} " + "".join(f"{v:>{width}}" for v in result.confusion[true]))
    return "\n".join(lines)


def history_csv(history: dict[str, list[float]]) -> str:
    columns = ["epoch", *sorted(history)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for epoch in range(len(next(iter(history.values())))):
        writer.writerow([epoch + 1, *(f"{history[c][epoch]:.6g}" for c in columns[1:])])
    return out.getvalue()


def prepare_out_dir(out_dir: Path) -> Path:
    """Create `out_dir` and a private scratch directory in it; fail early if it is not writable.

    Scratch directories of killed runs (their process is gone) are removed first.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out_dir, ".rowrnn-*")
        return Path(tempfile.mkdtemp(prefix=private_prefix(), dir=out_dir))
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot write to output directory ({exc.strerror or exc})") from None


def publish(source: Path, target: Path) -> None:
    """Atomically move a finished artifact into place (on disk first, so a crash keeps it whole)."""
    if target.is_dir():
        raise InputError(f"{target}: is a directory, cannot write the artifact there")
    with open(source, "rb+") as stream:
        os.fsync(stream.fileno())
    os.replace(source, target)


def run_training(
    config: TrainConfig,
    mnist: Mnist,
    out_dir: str | Path,
    verbose: int | str = "auto",
    *,
    restart: bool = False,
    tensorboard: str | Path | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Train, select the best epoch on validation, test it once, and write every artifact.

    All artifacts are produced in a scratch directory first and moved into `out_dir` only when the
    whole run succeeded, each with an atomic rename: a failed run overwrites nothing. A backup in
    `out_dir/backup` (written at every epoch end, removed once the run has its results) lets the
    same call continue a killed run; `restart` discards it instead. `tensorboard`: a directory
    for TensorBoard logs. `log` receives the one-line notice that a run resumes.
    """
    out_dir = Path(out_dir)
    placement = place(config.distribute)  # first: MultiWorkerMirroredStrategy must precede other TF work
    # Only the chief writes into out_dir; other workers write the same files to a private place.
    work_dir = out_dir if placement.is_chief else Path(tempfile.mkdtemp(prefix="rowrnn-worker-"))
    scratch = prepare_out_dir(work_dir)
    try:
        resume = resume_point(out_dir, config, mnist, restart, readonly=not placement.is_chief)
        state = resume.state if resume else new_state(fingerprint(config, mnist))
        if resume is not None:
            state["resumed_at"].append(resume.epoch + 1)
            log(f"resuming at epoch {resume.epoch + 1}/{config.epochs}" if not resume.finished else
                f"resuming after epoch {resume.epoch}/{config.epochs}: training had finished; evaluating")
        splits = make_splits(mnist, config)
        session_started = time.perf_counter()
        try:
            fit = fit_model(
                config, splits, scratch / MODEL_FILE, work_dir, state, verbose, placement=placement, resume=resume,
                tensorboard=None if tensorboard is None else Path(tensorboard) if placement.is_chief else work_dir / "logs",
            )
        except ValueError as exc:
            if placement.kind == "multi-worker" and "PerReplica" in str(exc):
                raise InputError(MULTI_WORKER_BROKEN) from None
            raise
        test = evaluate_model(fit.model, *splits.test)
        history = fit.history
        # The run has its results: from here a kill loses it (seconds), but a later run with other
        # settings into the same directory finds no backup to refuse.
        discard(work_dir)
        best_epoch = int(np.argmax(history["val_accuracy"]))
        epochs_run = len(history["loss"])
        metrics = {
            "test_accuracy": test.accuracy,
            "val_accuracy": float(history["val_accuracy"][best_epoch]),
            "best_epoch": best_epoch + 1,
            "epochs": epochs_run,
            # every session's finished epochs (a killed session's unfinished epoch is not counted)
            "train_seconds": round(state["train_seconds"], 3),
            "seconds_per_epoch": round(state["train_seconds"] / epochs_run, 3),
            "session_seconds": round(time.perf_counter() - session_started, 3),
            "resumed": bool(state["resumed_at"]),
            "resumed_at_epochs": state["resumed_at"],
            "strategy": placement.kind,
            "devices": placement.devices,
            "replicas": placement.strategy.num_replicas_in_sync,
            "steps_per_epoch": fit.steps_per_epoch,
            "final_weights_sha256": state["weights_sha256"],  # the last epoch's, not the best one's
            "train_images": len(splits.train[0]),
            "validation_images": len(splits.validation[0]),
            "test_images": len(splits.test[0]),
            "data_source": mnist.source,
            # published last, so a kill between renames can pair new reports with an older model:
            # this says which model they describe
            "model_sha256": sha256_file(scratch / MODEL_FILE),
            "test_per_class_accuracy": test.per_class_accuracy,
            "config": config.to_dict(),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        }
        (scratch / HISTORY_FILE).write_text(history_csv(history))
        plots.save_curves(history, scratch / CURVES_FILE)
        write_json_atomic(scratch / METRICS_FILE, metrics)
        # Everything exists: publish with same-filesystem renames, the model last.
        for name in (HISTORY_FILE, CURVES_FILE, METRICS_FILE, MODEL_FILE):
            publish(scratch / name, work_dir / name)
        return metrics
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not placement.is_chief:
            shutil.rmtree(work_dir, ignore_errors=True)
