"""Figures as PNG files: learning curves, evaluation plots, image grids, feature maps.

Matplotlib's Agg backend only: works headless, never opens a window, never blocks.
No TensorFlow here: everything takes numpy arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from cnn.reporting import history
from cnn.text import plural


def figure(figsize, layout: str | None = "tight"):
    """A matplotlib Figure outside pyplot: no global figure registry to leak in a
    long-lived process (an in-process sweep), no GUI backend; `savefig` uses Agg."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout=layout)


def _save(fig, path: Path) -> Path:
    """Writes `fig` to `path` (its format by the suffix) whole or not at all: a failed write
    keeps the previous figure and raises WriteError (cnn.reporting.history.replacing)."""
    path = Path(path)
    with history.replacing(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix[1:] or "png")
    return path


def learning_curves(rows: Sequence[dict], path: Path) -> Path:
    """Writes `learning_curves_figure(rows)` to `path`."""
    return _save(learning_curves_figure(rows), path)


def learning_curves_figure(rows: Sequence[dict]):
    """Loss and accuracy per epoch, on the training and the evaluated set (validation, or with
    none the test set), from metrics.csv rows (a Figure)."""
    epochs = [r["epoch"] for r in rows]
    split, label = ("val", "validation") if rows and "val_loss" in rows[0] else ("test", "test")
    # Written every epoch: fixed margins and legend places, cheaper to draw than "tight" and "best".
    fig = figure((10, 3.8), layout=None)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.13, top=0.92, wspace=0.18)
    loss_ax, acc_ax = fig.subplots(1, 2)
    marker = epoch_marker(epochs)
    loss_ax.plot(epochs, [r["loss"] for r in rows], marker=marker, label="train")
    loss_ax.plot(epochs, [r[f"{split}_loss"] for r in rows], marker=marker, label=label)
    acc_ax.plot(epochs, [r["accuracy"] for r in rows], marker=marker, label="train")
    acc_ax.plot(epochs, [r[f"{split}_accuracy"] for r in rows], marker=marker, label=label)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax, where in ((loss_ax, "upper right"), (acc_ax, "lower right")):
        epoch_axis(ax, epochs)
        ax.grid(alpha=0.3)
        ax.legend(loc=where)
    return fig


def epoch_marker(epochs: Sequence[int]) -> str:
    """A curve's marker: a dot per epoch, a disc when the curve is one point (a dot alone is lost)."""
    return "o" if len(epochs) == 1 else "."


def epoch_axis(ax, epochs: Sequence[int]) -> None:
    """Whole epochs on the x axis, half an epoch beyond the first and the last (matplotlib's own
    ticks run 0.96 to 1.04 around a single epoch, and in halves for a few)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10], min_n_ticks=1))
    if len(epochs):
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)


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


TITLE_CHARACTERS = 28  # what a grid cell's title holds on a line at its font size


def misclassified_titles(wrong: np.ndarray, predictions: np.ndarray, labels: np.ndarray,
                         class_names: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
    """A title for each misclassified test image: which image, the prediction, the truth. Images
    that are files are named by the file, relative to the folder (a name too long for the cell
    keeps its end: the file's name and its class folder); others by their index in the test set."""
    def title(i: int) -> str:
        predicted, truth = class_names[predictions[i]], class_names[labels[i]]
        if names is None:
            return f"#{i} {predicted}\n(true {truth})"
        name = str(names[i])
        name = name if len(name) <= TITLE_CHARACTERS else "..." + name[3 - TITLE_CHARACTERS:]
        return f"{name}\n{predicted} (true {truth})"

    return [title(i) for i in wrong]


def image_grid(images: np.ndarray, titles: Sequence[str], path: Path, columns: int = 8) -> Path:
    """Images (N, H, W, C) in [0, 1] (or uint8) in a grid with a title each."""
    rows = max(1, -(-len(images) // columns))
    # "constrained": "tight" lets a row's images cover the titles of the row below.
    fig = figure((1.6 * columns, 1.8 * rows), layout="constrained")
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
    fig.suptitle(f"{title}: {maps.shape[0]}x{maps.shape[1]}, {plural(channels, 'channel')}", fontsize=9)
    return _save(fig, path)
