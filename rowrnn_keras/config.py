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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
