"""Training and evaluation: small functions, one job each; `run_training` writes the artifacts."""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from rowrnn_keras import plots
from rowrnn_keras.artifacts import private_prefix, remove_leftovers, sha256_file, write_json_atomic
from rowrnn_keras.config import CURVES_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE, TrainConfig
from rowrnn_keras.data import Mnist, split_validation
from rowrnn_keras.model import compile_model, create_model
from runtime.contract import NUM_CLASSES, scale_pixels
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


def augmenter(config: TrainConfig) -> keras.Sequential | None:
    """Random shift + rotation of [batch, 28, 28] images, or None when both are off."""
    layers = []
    if config.augment_shift:
        layers.append(keras.layers.RandomTranslation(
            config.augment_shift, config.augment_shift, fill_mode="constant", seed=config.seed))
    if config.augment_rotation_degrees:
        layers.append(keras.layers.RandomRotation(
            config.augment_rotation_degrees / 360.0, fill_mode="constant", seed=config.seed + 1))
    if not layers:
        return None
    return keras.Sequential([keras.layers.Reshape((28, 28, 1)), *layers, keras.layers.Reshape((28, 28))])


def training_dataset(config: TrainConfig, images: np.ndarray, labels: np.ndarray) -> tf.data.Dataset:
    """Shuffled, batched, augmented training batches (augmentation runs in the input pipeline,
    so the saved model is exactly the Dense-LSTM-Dense network)."""
    dataset = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
    )
    augment = augmenter(config)
    if augment is not None:
        dataset = dataset.map(lambda x, y: (augment(x, training=True), y))
    return dataset.prefetch(2)


def fit_model(
    config: TrainConfig, splits: Splits, checkpoint: Path, verbose: int | str = "auto"
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train with model.fit; return the best-validation-accuracy model and the per-epoch history."""
    seed_everything(config.seed)
    steps_per_epoch = math.ceil(len(splits.train[0]) / config.batch_size)
    model = compile_model(create_model(config), config, steps_per_epoch)
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            checkpoint, monitor="val_accuracy", mode="max", save_best_only=True
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=config.patience
        ),
    ]
    history = model.fit(
        training_dataset(config, *splits.train),
        epochs=config.epochs,
        validation_data=splits.validation,
        validation_batch_size=1024,
        shuffle=False,  # the dataset shuffles itself, seeded
        callbacks=callbacks,
        verbose=verbose,
    )
    learning_rate = model.optimizer.learning_rate  # the schedule, per step
    history.history["learning_rate"] = [
        float(learning_rate(steps_per_epoch * (epoch + 1) - 1)) for epoch in history.epoch
    ] if callable(learning_rate) else [float(learning_rate)] * len(history.epoch)
    return keras.models.load_model(checkpoint), history.history


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
    config: TrainConfig, mnist: Mnist, out_dir: str | Path, verbose: int | str = "auto"
) -> dict:
    """Train, select the best epoch on validation, test it once, and write every artifact.

    All artifacts are produced in a scratch directory first and moved into `out_dir` only when the
    whole run succeeded, each with an atomic rename: a failed run overwrites nothing.
    """
    out_dir = Path(out_dir)
    scratch = prepare_out_dir(out_dir)
    try:
        splits = make_splits(mnist, config)
        started = time.perf_counter()
        model, history = fit_model(config, splits, scratch / MODEL_FILE, verbose)
        train_seconds = time.perf_counter() - started
        test = evaluate_model(model, *splits.test)
        best_epoch = int(np.argmax(history["val_accuracy"]))
        metrics = {
            "test_accuracy": test.accuracy,
            "val_accuracy": float(history["val_accuracy"][best_epoch]),
            "best_epoch": best_epoch + 1,
            "epochs": len(history["loss"]),
            "train_seconds": round(train_seconds, 3),
            "seconds_per_epoch": round(train_seconds / len(history["loss"]), 3),
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
            publish(scratch / name, out_dir / name)
        return metrics
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
