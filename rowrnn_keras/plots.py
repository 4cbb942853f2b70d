"""PNG figures: training curves and the confusion matrix (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_curves(history: dict[str, list[float]], path: Path) -> Path:
    """Loss and accuracy per epoch, train vs validation."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history[metric], marker="o", label="train")
        ax.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path


def save_confusion(confusion: np.ndarray, path: Path, title: str) -> Path:
    """The confusion matrix as a heat map with counts."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    image = ax.imshow(np.log1p(confusion), cmap="Blues")
    n = confusion.shape[0]
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    threshold = np.log1p(confusion).max() / 2
    for true in range(n):
        for pred in range(n):
            value = int(confusion[true, pred])
            color = "white" if np.log1p(value) > threshold else "black"
            ax.text(pred, true, str(value), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path
