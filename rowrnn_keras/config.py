"""One place for every training setting; the CLI, the tests and metrics.json all read this."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from runtime.contract import NUM_CLASSES
from runtime.errors import InputError

# What `rowrnn train` writes into its output directory, and `rowrnn evaluate` beside the model.
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion.png"
BACKEND_CHOICES = ("tensorflow", "jax")
# Each backend's strategies: mirrored is tf.distribute's (one machine), data-parallel is
# keras.distribution's on JAX (one machine or several processes).
DISTRIBUTE_FOR_BACKEND = {"tensorflow": ("none", "mirrored"), "jax": ("none", "data-parallel")}
DISTRIBUTE_CHOICES = ("none", "mirrored", "data-parallel")


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
    # The Keras backend that trains ("tensorflow" or "jax"; TensorFlow's tf.data feeds both), and
    # how: "none" (one device), "mirrored" (TensorFlow: every local GPU, else every CPU device),
    # "data-parallel" (JAX: every device of every process, a CPU device per core, see `Cluster` and
    # `placement.devices_per_process`). batch_size stays the
    # global batch. Part of the configuration a backup must match: they round differently.
    backend: str = "tensorflow"
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
        if self.backend not in BACKEND_CHOICES:
            raise InputError(f"--backend must be one of {', '.join(BACKEND_CHOICES)}, got {self.backend!r}")
        if self.distribute not in DISTRIBUTE_CHOICES:
            raise InputError(f"--distribute must be one of {', '.join(DISTRIBUTE_CHOICES)}, got {self.distribute!r}")
        if self.distribute not in DISTRIBUTE_FOR_BACKEND[self.backend]:
            other = next(b for b, kinds in DISTRIBUTE_FOR_BACKEND.items() if self.distribute in kinds)
            raise InputError(f"--distribute {self.distribute} needs --backend {other} (got --backend {self.backend})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Cluster:
    """This process's place among the processes of a `--distribute data-parallel` run: every process
    runs the same command with its own `process_id`; process 0 (the chief) runs the coordinator at
    `coordinator` and is the only one that writes. Not part of a backup's configuration: a run may
    resume on another number of processes (the global batch, so the training, stays the same)."""

    coordinator: str | None = None  # HOST:PORT
    num_processes: int = 1
    process_id: int = 0
    # A process that cannot reach the coordinator (or that the others do not join) gives up after
    # connect_timeout_s; a process that stops sending heartbeats is declared lost after heartbeat_timeout_s.
    connect_timeout_s: int = 120
    heartbeat_timeout_s: int = 20

    def __post_init__(self) -> None:
        if self.num_processes < 1:
            raise InputError(f"--num-processes must be at least 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise InputError(
                f"--process-id {self.process_id} is out of range for --num-processes {self.num_processes} "
                f"(0-{self.num_processes - 1})"
            )
        if self.num_processes > 1 and self.coordinator is None:
            raise InputError(
                f"--num-processes {self.num_processes} needs --coordinator HOST:PORT (process 0's address)"
            )
        if self.coordinator is not None:
            host, _, port = self.coordinator.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise InputError(f"--coordinator {self.coordinator!r} is not HOST:PORT (a port 1-65535)")
        if self.connect_timeout_s < 1 or self.heartbeat_timeout_s < 1:
            raise InputError("cluster timeouts must be at least 1 second")

    @property
    def is_chief(self) -> bool:
        return self.process_id == 0

    @property
    def is_multi_process(self) -> bool:
        return self.num_processes > 1

    def check_for(self, config: TrainConfig) -> None:
        """Several processes train only with `--distribute data-parallel`, and each takes an equal
        part of every global batch."""
        if not self.is_multi_process:
            return
        if config.distribute != "data-parallel":
            raise InputError(
                f"--num-processes {self.num_processes} needs --backend jax --distribute data-parallel "
                f"(got --backend {config.backend} --distribute {config.distribute})"
            )
        if config.batch_size % self.num_processes:
            raise InputError(
                f"--batch-size {config.batch_size} is not a multiple of --num-processes {self.num_processes}: "
                "each process takes an equal part of every batch"
            )
