"""Figures as PNG files: learning curves, evaluation plots, image grids, feature maps.

Matplotlib's Agg backend only: works headless, never opens a window, never blocks.
No TensorFlow here: everything takes numpy arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def figure(figsize, layout: str | None = "tight"):
    """A matplotlib Figure outside pyplot: no global figure registry to leak in a
    long-lived process (an in-process sweep), no GUI backend; `savefig` uses Agg."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout=layout)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def learning_curves(rows: Sequence[dict], path: Path) -> Path:
    """Loss and accuracy per epoch, on the training and the evaluated set (validation, or with
    none the test set), from metrics.csv rows."""
    epochs = [r["epoch"] for r in rows]
    split, label = ("val", "validation") if rows and "val_loss" in rows[0] else ("test", "test")
    # Written every epoch: fixed margins and legend places, cheaper to draw than "tight" and "best".
    fig = figure((10, 3.8), layout=None)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.13, top=0.92, wspace=0.18)
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [r["loss"] for r in rows], marker=".", label="train")
    loss_ax.plot(epochs, [r[f"{split}_loss"] for r in rows], marker=".", label=label)
    acc_ax.plot(epochs, [r["accuracy"] for r in rows], marker=".", label="train")
    acc_ax.plot(epochs, [r[f"{split}_accuracy"] for r in rows], marker=".", label=label)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax, where in ((loss_ax, "upper right"), (acc_ax, "lower right")):
        ax.grid(alpha=0.3)
        ax.legend(loc=where)
    return _save(fig, path)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(true, predicted) counts, int64 (num_classes, num_classes)."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    n = len(class_names)
    fig = figure((1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    return _save(fig, path)


def plot_per_class_accuracy(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    accuracy = np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)
    fig = figure((1.5 + 0.5 * len(class_names), 3.5))
    ax = fig.subplots()
    ax.bar(range(len(class_names)), accuracy)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set(ylim=(min(0.5, accuracy.min() - 0.05), 1.0), ylabel="test accuracy", title="accuracy per class")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def image_grid(images: np.ndarray, titles: Sequence[str], path: Path, columns: int = 8) -> Path:
    """Images (N, H, W, C) in [0, 1] (or uint8) in a grid with a title each."""
    rows = max(1, -(-len(images) // columns))
    fig = figure((1.6 * columns, 1.8 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
        ax.set_title(title, fontsize=7)
    return _save(fig, path)


def feature_maps(maps: np.ndarray, title: str, path: Path) -> Path:
    """Every channel of one layer's output (H, W, channels) as a grid of images."""
    channels = maps.shape[-1]
    columns = min(channels, 16)
    rows = -(-channels // columns)
    fig = figure((0.9 * columns, 0.9 * rows + 0.5))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for c, ax in enumerate(axes.flat[:channels]):
        ax.imshow(maps[..., c], cmap="viridis")
    fig.suptitle(f"{title}: {maps.shape[0]}x{maps.shape[1]}, {channels} channels", fontsize=9)
    return _save(fig, path)
