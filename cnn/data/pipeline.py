"""The tf.data pipelines: `from_tensor_slices`, the epoch's seeded shuffle, batches,
normalization to float32 in [0, 1] and the on-the-fly augmentation.

Every batch is a function of (seed, epoch, batch index): a resumed run sees the same
batches as an uninterrupted one. Images are uint8 arrays in memory, (N, H, W, C), or
images stored out of memory (cnn/data/image_store.py) that the pipelines read as they go.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from cnn.data.augment import Regularizers
from cnn.data.base import EVAL_BATCH_SIZE
from cnn.data.image_store import StoredImages


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: a new order each epoch, the same for the same (seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def normalize(images, labels):
    return tf.cast(images, tf.float32) / 255.0, labels  # (B, H, W, C) uint8 -> float32 in [0, 1]


def augment(images, seed, max_rotation: float, max_shift: float, flip: bool = False):
    """Rotates each image by up to +-max_rotation degrees and shifts it by up to +-max_shift
    pixels per axis, and with `flip` mirrors half of them left to right, with stateless
    random numbers: the same `seed` gives the same images. One resampling does it all.

    Args:
      images: (B, H, W, C) float32.
      seed: int64 (2,), e.g. (epoch seed, batch index).
    """
    height, width = images.shape[1], images.shape[2]
    n = tf.shape(images)[0]
    angle_seed, shift_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    angle = tf.random.stateless_uniform([n], angle_seed, -max_rotation, max_rotation) * (np.pi / 180)
    shift = tf.random.stateless_uniform([n, 2], shift_seed, -max_shift, max_shift)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel (x, y) samples the input at (cos x - sin y + dx, sin x + cos y + dy): a
    # rotation about the centre (Keras' RandomRotation offsets), then the shift.
    dx = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2 + shift[:, 0]
    dy = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2 + shift[:, 1]
    a0, b0 = cos, sin
    if flip:  # mirrored: output x reads what (width - 1 - x) read, so x's coefficients change sign
        flip_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        mirrored = tf.random.stateless_uniform([n], flip_seed) < 0.5
        dx = tf.where(mirrored, dx + cos * (width - 1), dx)
        dy = tf.where(mirrored, dy + sin * (width - 1), dy)
        a0, b0 = tf.where(mirrored, -cos, cos), tf.where(mirrored, -sin, sin)
    zeros = tf.zeros_like(cos)
    transforms = tf.stack([a0, -sin, dx, b0, cos, dy, zeros, zeros], axis=1)  # (B, 8)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=[height, width], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")


def pipeline_options():
    """The options of every pipeline here: tf.data's model-based autotuning off.

    With it on (TensorFlow 2.21), deleting a finished epoch's iterator sometimes blocks for
    10-20 s: the epoch-boundary pauses of docs/results.md, at up to 10 of 24 epoch ends of
    `book_best`. A parallel map with AUTOTUNE then runs on every core, and prefetch(AUTOTUNE)
    keeps its own buffer tuning.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def _slices(x, y):
    """`from_tensor_slices` over (images, labels), and the images' store (None for an array).

    For an array the elements are (uint8 image, label). For images kept out of memory (an
    image folder with cache=disk|none) they are (key, label): a file path or an index, made
    an image by `_read_element` (before batching) and `_read_batch` (after), once any
    shuffle has ordered them, so the order is decided before anything is read.
    """
    stored = x if isinstance(x, StoredImages) else None
    return tf.data.Dataset.from_tensor_slices((x.keys if stored else x, y)), stored


def _read_element(ds, stored):
    if stored is None:
        return ds
    return ds.map(lambda key, label: (stored.read_element(key), label), num_parallel_calls=tf.data.AUTOTUNE)


def _read_batch(ds, stored):
    if stored is None:
        return ds
    return ds.map(lambda keys, labels: (stored.read_batch(keys), labels), num_parallel_calls=tf.data.AUTOTUNE)


def train_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epoch: int,
                  skip_batches: int = 0, max_rotation: float = 0.0, max_shift: float = 0.0,
                  flip: bool = False, regularizers: Optional[Regularizers] = None):
    """One epoch of shuffled training batches; `skip_batches` resumes inside the epoch.

    The order, and the augmentation when max_rotation, max_shift or flip is set, depend
    only on (seed, epoch, batch index), so a resumed run sees the same batches; so do the
    `regularizers` (cnn/data/augment.py: crops, erasing, cutout, mixup, cutmix; with mixup,
    cutmix or label smoothing the batches are (images, (B, classes) targets)). `x` is an
    array or stored images: their keys (paths, indices) are shuffled, then read in parallel.
    """
    this_epoch = epoch_seed(seed, epoch)
    ds, stored = _slices(x, y)
    ds = ds.shuffle(len(x), seed=this_epoch, reshuffle_each_iteration=False)
    ds = _read_element(ds.skip(skip_batches * batch_size), stored)  # skipped images are not read
    ds = _read_batch(ds.batch(batch_size), stored).enumerate(start=skip_batches)  # (batch index, (images, labels))

    def prepare(index, batch):
        images, labels = normalize(*batch)
        if max_rotation or max_shift or flip:
            seed_pair = tf.stack([tf.constant(this_epoch, tf.int64), index])
            images = augment(images, seed_pair, max_rotation, max_shift, flip)
        if regularizers is not None and regularizers.active:
            images, labels = regularizers(images, labels, tf.stack([tf.constant(this_epoch, tf.int64), index]))
        return images, labels

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE).with_options(pipeline_options())


def statistics_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, batches: int):
    """`batches` full training batches (fewer when the set is smaller), normalized and not
    augmented, for recomputing batch-norm statistics: the same images every epoch and
    every run of `seed`, drawn apart from the epochs' shuffles (which it leaves untouched)."""
    batch_size = min(batch_size, len(x))
    batches = min(batches, len(x) // batch_size)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2**32 - 1]))  # no epoch uses this one
    chosen = rng.permutation(len(x))[:batches * batch_size]  # shuffled: batches of mixed classes
    return _evaluation_batches(x[chosen], y[chosen], batch_size)


def test_dataset(x: np.ndarray, y: np.ndarray, batch_size: int = EVAL_BATCH_SIZE):
    return _evaluation_batches(x, y, batch_size)


def _evaluation_batches(x, y, batch_size: int):
    """Normalized batches in order. Read every epoch: arrays keep their float32 batches (4 bytes
    a pixel) after the first pass; image files are read again, or a folder larger than memory
    would not fit."""
    ds, stored = _slices(x, y)
    ds = _read_batch(_read_element(ds, stored).batch(batch_size), stored)
    ds = ds.map(normalize, num_parallel_calls=tf.data.AUTOTUNE)
    if stored is None:
        ds = ds.cache()
    return ds.prefetch(tf.data.AUTOTUNE).with_options(pipeline_options())

