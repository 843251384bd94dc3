"""Datasets as the loop sees them: `Data` (uint8 images in memory, int32 labels), the
registry of dataset families, the validation split, and the data's fingerprint.

A family is one file in this folder that registers a loader with `@register_dataset`:
`load(dataset_config) -> Data`. The built-in ones find the standard distribution files
with `find_or_download`: in `data_dir` when it is given, else in the Keras cache
(`$KERAS_HOME/datasets`, default `~/.keras/datasets`), else downloaded from the
canonical source with checksum verification.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from cnn.config.schema import DatasetConfig
from cnn.errors import DataError
from cnn.text import plural

EVAL_BATCH_SIZE = 1000
VALIDATION_SEED = 20_000_000  # the split is a function of the data and the fraction only, never of `seed`


@dataclass
class Data:
    """A dataset: uint8 images (N, H, W, C) and int32 labels (N,).

    The images are arrays in memory, or for `dataset=image_folder` with cache=disk|none,
    `StoredImages` that stand in for them (read as the pipelines need them).
    x_val, y_val: the validation set held out of the training set by `split_validation`
    (None before, or with a split of 0).
    fingerprint: what identifies the data, when not its content (an image folder's files).
    test_names: the test images' names, when they are files (relative to the folder), for plots.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple
    x_val: Optional[np.ndarray] = None
    y_val: Optional[np.ndarray] = None
    fingerprint: Optional[str] = None
    test_names: Optional[tuple] = None

    @property
    def image_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --- The registry ---------------------------------------------------------------------

DATASETS: dict[str, Callable] = {}


def register_dataset(name: str):
    """Adds a loader, `load(dataset_config) -> Data`, to DATASETS under `name` (`dataset=<name>`)."""
    def wrap(loader):
        DATASETS[name] = loader
        return loader
    return wrap


def load_dataset(dataset) -> Data:
    """The data a DatasetConfig names."""
    if dataset.name not in DATASETS:
        raise DataError(f"unknown dataset '{dataset.name}'; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[dataset.name](dataset)


def keras_cache() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "datasets"


Candidates = Iterable[tuple[str, Optional[Callable[[], Data]]]]  # (what was looked for, its loader or None)


def find_or_download(name: str, data_dir: Optional[str], download: bool, candidates: Callable[[Path], Candidates],
                     default_dir: Path, fetch: Callable[[], Data], source: str) -> Data:
    """The first local candidate that exists, in `data_dir` if given, else in `default_dir`
    (the Keras cache); else, if allowed, `fetch()`. Raises DataError with the places looked at
    (a candidate describes itself by the files it lacks) and the fix."""
    directory = Path(data_dir).expanduser() if data_dir is not None else None
    if directory is not None and not directory.is_dir():
        raise DataError(f"dataset.data_dir={data_dir}: no such directory")
    looked = []
    for description, loader in candidates(directory or default_dir):
        if loader is not None:
            return check(loader(), description)
        looked.append(description)
    if directory is not None:  # the user's own directory: they need the files there, not a new flag
        raise DataError(f"{name}: no data in {directory}; looked for {' or '.join(looked)}. Fix: put the "
                        f"missing files in {directory}, or set dataset.data_dir=<the directory that has them>")
    hint = "put the files in a directory and pass dataset.data_dir=/path/to/it"
    if not download:
        raise DataError(f"{name}: no data found, looked for {' or '.join(looked)}, "
                        f"and dataset.download=false. Fix: {hint}")
    try:
        return check(fetch(), f"{name} download")
    except DataError:
        raise
    except Exception as e:  # no network, bad checksum, disk full: all end the same way
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{name}: no data found (looked for {' or '.join(looked)}) and the download from "
                        f"{source} failed ({reason}). Fix: {hint}") from None


def files_in(directory: Path, names) -> str:
    """`directory/name`, or `directory/{a,b}` for several names: files looked for, in one line."""
    names = list(names)
    return f"{directory}/{names[0]}" if len(names) == 1 else f"{directory}/{{{','.join(names)}}}"


def check(data: Data, where: str) -> Data:
    """Raises DataError unless train and test images agree in shape and labels fit the classes."""
    if data.x_train.shape[1:] != data.x_test.shape[1:]:
        raise DataError(f"{where}: training images {data.x_train.shape[1:]} and test images "
                        f"{data.x_test.shape[1:]} differ in shape")
    for split, labels in (("training", data.y_train), ("test", data.y_test)):
        if len(labels) == 0 or labels.min() < 0 or labels.max() >= data.num_classes:
            raise DataError(f"{where}: {split} labels must be 0..{data.num_classes - 1} "
                            f"(found {labels.min() if len(labels) else 'none'}..{labels.max() if len(labels) else ''})")
    return data


def fingerprint(data: Data) -> str:
    """A short digest of the data's content: the same files anywhere give the same value."""
    if data.fingerprint is not None:
        return data.fingerprint
    digest = hashlib.sha1()
    for array in (data.x_train, data.y_train, data.x_test, data.y_test):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return f"{len(data.x_train)}+{len(data.x_test)}:{digest.hexdigest()[:12]}"


# --- The validation split ---------------------------------------------------------------

def stratified_holdout(labels: np.ndarray, num_classes: int, fraction: float, seed: int,
                       describe) -> np.ndarray:
    """The sorted indices of round(fraction * n) images of each class (at least one, never all),
    chosen by `seed`. `describe(label, count)` words the error for a class of fewer than two."""
    rng = np.random.default_rng(seed)
    held_out = []
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            raise DataError(describe(label, len(members)))
        n = min(max(1, int(round(fraction * len(members)))), len(members) - 1)
        held_out.append(rng.permutation(members)[:n])
    return np.sort(np.concatenate(held_out))


def split_validation(data: Data, fraction: float) -> Data:
    """Holds `fraction` of each class's training images out as the validation set.

    Stratified: each class gives round(fraction * its count) images, at least one and never
    all. A function of the data and `fraction` only: every job of a sweep, whatever its
    `seed`, validates on the same images and trains on the rest (in their original order).
    Raises DataError when a class has fewer than two training images to share.
    """
    if fraction == 0:
        return data
    val = stratified_holdout(data.y_train, data.num_classes, fraction, VALIDATION_SEED, lambda label, n: (
        f"dataset.validation_split={fraction}: class {label} ('{data.class_names[label]}') has {plural(n, 'training image')}, "
        "too few for one to validate and one to train on. Add images of it, or pass "
        "dataset.validation_split=0"))
    train = np.setdiff1d(np.arange(len(data.y_train)), val, assume_unique=True)
    return dataclasses.replace(data, x_train=data.x_train[train], y_train=data.y_train[train],
                               x_val=data.x_train[val], y_val=data.y_train[val])


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)  # the last, smaller batch counts


def load(name: str, data_dir: Optional[str] = None, download: bool = True) -> Data:
    """Loads built-in dataset `name` (no augmentation, no split): for notebooks and tools."""
    return load_dataset(DatasetConfig(name=name, data_dir=data_dir, download=download, augment=False, max_rotation=0.0,
                                      max_shift=0.0, flip=False, pad=0, validation_split=0.0))
