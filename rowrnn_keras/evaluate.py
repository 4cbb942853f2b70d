"""Evaluation: test accuracy, per-class accuracy (recall) and the confusion matrix, as numbers and text."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from runtime.contract import NUM_CLASSES
from runtime.errors import InputError


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
