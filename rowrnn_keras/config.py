"""One place for every training setting; the CLI, the tests and metrics.json all read this."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from runtime.contract import NUM_CLASSES
from runtime.errors import InputError, one_line

# What `rowrnn train` writes into its output directory, and `rowrnn evaluate` beside the model.
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion.png"
DISTRIBUTE_CHOICES = ("none", "mirrored", "multi-worker")
# Why multi-worker fails today, for --help and for the error a run gives (one place).
MULTI_WORKER_BUGS = "keras-team/keras#20585, tensorflow/tensorflow#72388"


@dataclass(frozen=True)
class TrainConfig:
    # Architecture: the tutorial's Dense(128) -> LSTM(128) -> Dense(10).
    dense_units: int = 128
    hidden_units: int = 128
    num_classes: int = NUM_CLASSES
    # Optimisation: the tutorial's Adam, lr 1e-3, batch 128; lr is the peak of the schedule.
    learning_rate: float = 1e-3
    batch_size: int = 128
    epochs: int = 20
    warmup_epochs: int = 1  # capped at epochs - 1, so a 1-epoch run has no warm-up
    clipnorm: float = 1.0  # LSTMs occasionally spike; clipping keeps early epochs stable
    # Training-time augmentation (the images the model sees; inference is unchanged): small
    # random shifts and rotations, as a hand-written digit varies. 0 disables each.
    augment_shift: float = 0.08  # fraction of 28 px, i.e. up to ~2 px
    augment_rotation_degrees: float = 10.0
    # Model selection uses only this many images carved from the 60 000 training images.
    validation_size: int = 5000
    patience: int = 6  # early stopping on validation accuracy
    seed: int = 0
    limit: int | None = None  # train on the first N training images (quick runs)
    # tf.distribute strategy: "none" (one device), "mirrored" (every local GPU; batch_size stays
    # the global batch), "multi-worker" (TF_CONFIG's cluster). Part of the configuration a backup
    # must match: the replicas' gradient sums round differently.
    distribute: str = "none"

    def __post_init__(self) -> None:
        positive = ["dense_units", "hidden_units", "num_classes", "batch_size", "epochs", "patience"]
        for name in positive:
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.learning_rate <= 1:
            raise InputError(f"learning rate must be in (0, 1], got {self.learning_rate}")
        if self.clipnorm <= 0:
            raise InputError(f"clipnorm must be positive, got {self.clipnorm}")
        if self.warmup_epochs < 0:
            raise InputError(f"warmup_epochs must be non-negative, got {self.warmup_epochs}")
        if not 0 <= self.augment_shift < 0.5 or not 0 <= self.augment_rotation_degrees <= 180:
            raise InputError(
                f"augmentation out of range: shift {self.augment_shift} (0-0.5), "
                f"rotation {self.augment_rotation_degrees} degrees (0-180)"
            )
        if self.validation_size < 1:
            raise InputError(f"validation size must be at least 1, got {self.validation_size}")
        if self.limit is not None and self.limit < 2:
            raise InputError(f"--limit must be at least 2 images, got {self.limit}")
        if self.seed < 0:
            raise InputError(f"--seed must be non-negative, got {self.seed}")
        if self.distribute not in DISTRIBUTE_CHOICES:
            raise InputError(f"--distribute must be one of {', '.join(DISTRIBUTE_CHOICES)}, got {self.distribute!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class WorkerTask:
    """This process's place in a multi-worker cluster, from $TF_CONFIG."""

    kind: str  # "chief" or "worker"
    index: int
    is_chief: bool  # writes the artifacts: the "chief" task, else worker 0


def multi_worker_task() -> WorkerTask:
    """This process's task in $TF_CONFIG, or a one-line error when it is missing or unusable
    (TensorFlow itself would fail later, or wait for a cluster that never forms)."""
    raw = os.environ.get("TF_CONFIG", "")
    try:
        tf_config = json.loads(raw)
        cluster, task = tf_config["cluster"], tf_config["task"]
        kind, index = str(task["type"]), int(task["index"])
        if not isinstance(cluster, dict) or not 0 <= index < len(cluster[kind]):
            raise ValueError(f"task {kind}:{index} is not in the cluster")
    except (ValueError, KeyError, TypeError) as exc:
        problem = "is not set" if not raw else f"is not usable ({one_line(exc, limit=120)})"
        raise InputError(
            f"--distribute multi-worker: TF_CONFIG {problem}; it names the cluster and this task, e.g. "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
        ) from None
    return WorkerTask(kind, index, kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster))
