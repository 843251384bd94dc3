"""Images kept out of memory, and decoding an image file as training reads it.

`decode` is shared by image folders and `cnn.tools.predict` (eagerly, a file that does not
decode raises `UndecodableImage`, saying why in words); `StoredImages` stand in for a
uint8 (N, H, W, C) array in the pipelines (cnn/data/pipeline.py): `ImageFiles` decode the
original files each time (dataset.cache=none), `PixelFile` reads decoded pixels from one
memory-mapped file (dataset.cache=disk).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import tensorflow as tf


# The formats read, by the bytes their files begin with (as tf.io.decode_image tells them apart).
IMAGE_FORMATS = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"))


class UndecodableImage(tf.errors.InvalidArgumentError):
    """Image bytes that do not decode, with why in plain words as the message. An
    InvalidArgumentError still, like TensorFlow's own decode error, so what catches that catches it."""

    def __init__(self, message: str):
        super().__init__(None, None, message)


def decode_problem(contents: bytes, error: Exception) -> str:
    """Why `contents` did not decode (TensorFlow's `error`), in words: not an image of the
    formats read, or one of them that is damaged (TensorFlow's reason, without its op names)."""
    kind = next((name for magic, name in IMAGE_FORMATS if contents.startswith(magic)), None)
    if kind is None:
        return "an empty file" if not contents else "not a PNG, JPEG, BMP or GIF image"
    reason = getattr(error, "message", str(error)).strip().splitlines()[0]
    reason = re.sub(r"\s*\[Op:.*$", "", re.sub(r"^\{\{.*?\}\}\s*", "", reason))  # op and device names
    return f"damaged {kind} data: {reason[:160]}"


def decode_native(contents):
    """Encoded image bytes -> the image as stored, uint8 (H, W, 1|2|3|4) (a GIF: its first frame).
    Eagerly, bytes that do not decode raise UndecodableImage."""
    if not tf.executing_eagerly():  # in a tf.data map: an op error, for ignore_errors to drop
        return tf.io.decode_image(contents, expand_animations=False)
    try:
        return tf.io.decode_image(contents, expand_animations=False)
    except tf.errors.InvalidArgumentError as e:
        raw = contents.numpy() if tf.is_tensor(contents) else bytes(contents)
        raise UndecodableImage(decode_problem(raw, e)) from None


def decode(contents, height: int, width: int, channels: int):
    """Encoded image bytes -> uint8 (height, width, channels), as the module docstring says.
    Works in a tf.data map (graph mode) and eagerly (where bad bytes raise UndecodableImage)."""
    image = decode_native(contents)  # native channels: 1, 2, 3 or 4
    color = tf.shape(image)[-1] >= 3
    image = tf.cast(image, tf.float32)
    if channels == 1:
        image = tf.cond(color, lambda: tf.image.rgb_to_grayscale(image[..., :3]), lambda: image[..., :1])
    else:
        image = tf.cond(color, lambda: image[..., :3], lambda: tf.repeat(image[..., :1], 3, axis=-1))
    same_size = tf.reduce_all(tf.shape(image)[:2] == [height, width])
    image = tf.cond(same_size, lambda: image, lambda: tf.image.resize(image, (height, width)))
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.ensure_shape(image, (height, width, channels))


class StoredImages:
    """Images kept out of memory that stand in for a uint8 (N, H, W, C) array in the pipelines:
    `len`, `shape`, indexing with an index array (a subset), `numpy()`.

    `keys` are what `from_tensor_slices` slices (and the shuffle orders); `read_element`
    makes one key an image before batching, `read_batch` a batch of keys a batch of images
    after it. Each leaves what the other does as it is.
    """

    height: int
    width: int
    channels: int

    @property
    def keys(self) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def shape(self) -> tuple:
        return (len(self), self.height, self.width, self.channels)

    def read_element(self, key):
        return key

    def read_batch(self, keys):
        return keys

    def numpy(self) -> np.ndarray:
        out = np.zeros(self.shape, np.uint8)
        ds = tf.data.Dataset.from_tensor_slices(self.keys).map(self.read_element, num_parallel_calls=tf.data.AUTOTUNE)
        for i, batch in enumerate(ds.batch(256).map(self.read_batch).as_numpy_iterator()):
            out[i * 256:i * 256 + len(batch)] = batch
        return out


@dataclass(frozen=True, eq=False)
class ImageFiles(StoredImages):
    """Image files, decoded each time they are read (cache=none)."""

    paths: np.ndarray  # str, (N,)
    height: int
    width: int
    channels: int

    @property
    def keys(self) -> np.ndarray:
        return self.paths

    def __getitem__(self, index) -> "ImageFiles":
        return ImageFiles(self.paths[index], self.height, self.width, self.channels)

    def read_element(self, path):
        """One file -> uint8 (H, W, C); for a tf.data map."""
        return decode(tf.io.read_file(path), self.height, self.width, self.channels)


_PIXEL_FILES: dict = {}  # (path, inode) -> np.memmap, opened once per process


@dataclass(frozen=True, eq=False)
class PixelFile(StoredImages):
    """Decoded images in one uint8 file, (count, H, W, C) in C order (cache=disk), read a
    batch at a time by index: a memory map, so a file larger than memory is paged in as read."""

    path: str
    count: int
    indices: np.ndarray  # int64, (N,): which images of the file, in this order
    height: int
    width: int
    channels: int

    @property
    def keys(self) -> np.ndarray:
        return self.indices

    def __getitem__(self, index) -> "PixelFile":
        return PixelFile(self.path, self.count, self.indices[index], self.height, self.width, self.channels)

    def _gather(self, indices: np.ndarray) -> np.ndarray:
        opened = (self.path, os.stat(self.path).st_ino)  # a cache rebuilt since is another file
        pixels = _PIXEL_FILES.get(opened)
        if pixels is None:
            pixels = _PIXEL_FILES[opened] = np.memmap(self.path, np.uint8, "r",
                                                      shape=(self.count, self.height, self.width, self.channels))
        return np.asarray(pixels[indices])

    def read_batch(self, indices):
        """A batch of indices -> uint8 (B, H, W, C); for a tf.data map."""
        images = tf.numpy_function(self._gather, [indices], tf.uint8, stateful=False)
        return tf.ensure_shape(images, (None, self.height, self.width, self.channels))


def as_array(images) -> np.ndarray:
    """A uint8 array of `images` (an array, or stored images read now): for the few that plots show."""
    return images.numpy() if isinstance(images, StoredImages) else images
