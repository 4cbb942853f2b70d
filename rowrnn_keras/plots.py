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
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
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


def save_anytime(report: dict, path: Path) -> Path:
    """`rowrnn anytime`'s figure. Left: accuracy after reading the top k rows, with each early-exit
    threshold placed at its mean rows read. Right: the share of images answered by each row."""
    rows = np.arange(1, len(report["accuracy_after_rows"]) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(
        rows,
        np.asarray(report["accuracy_after_rows"]) * 100,
        marker="o",
        markersize=3,
        color="tab:blue",
        label="after k rows",
    )
    for row, color in zip(report["early_exit"], ("tab:orange", "tab:green", "tab:red", "tab:purple"), strict=False):
        left.scatter(
            row["mean_rows"],
            row["accuracy"] * 100,
            color=color,
            zorder=3,
            s=40,
            label=f"exit at {row['threshold']:g}: {row['accuracy']:.2%}, {row['mean_rows']:.1f} rows",
        )
        histogram = np.asarray(row["rows_histogram"])
        right.step(
            rows,
            np.cumsum(histogram) / histogram.sum() * 100,
            where="post",
            color=color,
            label=f"threshold {row['threshold']:g}",
        )
    for ax, ylabel, title, corner in (
        (left, "test accuracy (%)", "accuracy after reading the top k rows", "center left"),
        (right, "images answered by this row (%)", "early exit: when each image was answered", "upper left"),
    ):
        ax.set(xlabel="rows read" if ax is left else "row", ylabel=ylabel, xlim=(0.5, rows[-1] + 0.5), ylim=(0, 101))
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc=corner)
    fig.suptitle(f"rowrnn anytime: {report['images']} test images; all {rows[-1]} rows: {report['full_accuracy']:.2%}")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path
