"""Datasets: finding and parsing the standard distribution files, and the tf.data pipelines.

Files are looked for in `data_dir` when it is given, else in the Keras cache
(`$KERAS_HOME/datasets`, default `~/.keras/datasets`), else downloaded from the
canonical source with checksum verification. Images stay uint8 in memory,
(N, H, W, C); the pipeline turns each batch into float32 in [0, 1].
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from cnn.errors import DataError

MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TAR = "cifar-10-python.tar.gz"

# Canonical sources and their checksums (what keras.utils.get_file verifies).
MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
FASHION_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"

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

    @property
    def image_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --- Parsers -------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (MNIST format), gzipped or not, checking header and size."""
    path = Path(path)
    try:
        with _open(path) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: unreadable ({e}); delete it and fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file of uint8 (bad magic number {raw[:4].hex()}); "
                        "expected e.g. the MNIST train-images-idx3-ubyte file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header; delete it and fetch it again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes, but its header {shape} needs {expected}; "
                        "the file is truncated or corrupt, delete it and fetch it again")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _check_pair(images: np.ndarray, labels: np.ndarray, where: str) -> None:
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{where}: images {images.shape} and labels {labels.shape} do not match; "
                        "expected (N, H, W) images and N labels")


def load_idx_dir(directory: Path, name: str, class_names: tuple) -> Data:
    """Loads the four MNIST-format IDX files (`.gz` or plain) from `directory`."""
    arrays = []
    for stem in IDX_FILES:
        path = _first_existing(directory, (stem + ".gz", stem))
        arrays.append(read_idx(path))
    x_train, y_train, x_test, y_test = arrays
    _check_pair(x_train, y_train, str(directory / "train-*"))
    _check_pair(x_test, y_test, str(directory / "t10k-*"))
    return Data(name, x_train[..., None], y_train.astype(np.int32),
                x_test[..., None], y_test.astype(np.int32), class_names)


def load_mnist_npz(path: Path, name: str = "mnist") -> Data:
    """Loads Keras' `mnist.npz` (x_train, y_train, x_test, y_test)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            x_train, y_train, x_test, y_test = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    except Exception as e:  # zipfile.BadZipFile, OSError, KeyError, ...: all mean a bad file
        raise DataError(f"{path}: not a readable mnist.npz ({type(e).__name__}: {e}); "
                        "delete it and fetch it again") from None
    _check_pair(x_train, y_train, str(path))
    _check_pair(x_test, y_test, str(path))
    return Data(name, x_train.astype(np.uint8)[..., None], y_train.astype(np.int32),
                x_test.astype(np.uint8)[..., None], y_test.astype(np.int32), MNIST_CLASSES)


def _cifar_batch(f, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Parses one pickled CIFAR-10 batch into (N, 32, 32, 3) uint8 images and labels."""
    try:
        batch = pickle.load(f, encoding="bytes")  # the official format is a pickled dict
        data, labels = np.asarray(batch[b"data"], np.uint8), np.asarray(batch[b"labels"], np.int32)
    except Exception as e:  # unpickling garbage raises almost anything
        raise DataError(f"{where}: not a CIFAR-10 python batch ({type(e).__name__}: {e}); "
                        "delete it and fetch it again") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"{where}: data {data.shape} / labels {labels.shape}; "
                        "expected (N, 3072) uint8 and N labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels  # channel-major -> HWC


def load_cifar10(path: Path) -> Data:
    """Loads CIFAR-10 from `cifar-10-batches-py/` or the `cifar-10-python.tar.gz` tarball."""
    if path.is_dir():
        def read(name):
            member = path / name
            if not member.exists():
                raise DataError(f"{member}: missing; {path} must hold {', '.join(CIFAR10_BATCHES)}")
            with open(member, "rb") as f:
                return _cifar_batch(f, str(member))
        batches = [read(n) for n in CIFAR10_BATCHES]
    else:
        try:
            with tarfile.open(path, "r:gz") as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                missing = [n for n in CIFAR10_BATCHES if n not in members]
                if missing:
                    raise DataError(f"{path}: tarball lacks {', '.join(missing)}")
                batches = [_cifar_batch(tar.extractfile(members[n]), f"{path}:{n}") for n in CIFAR10_BATCHES]
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: unreadable tarball ({e}); delete it and fetch it again") from None
    x_train = np.concatenate([b[0] for b in batches[:5]])
    y_train = np.concatenate([b[1] for b in batches[:5]])
    x_test, y_test = batches[5]
    return Data("cifar10", x_train, y_train, x_test, y_test, CIFAR10_CLASSES)


# --- Finding the files ------------------------------------------------------------

def _first_existing(directory: Path, names) -> Path:
    for name in names:
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(directory / names[0])


def keras_cache() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "datasets"


def _idx_candidates(directory: Path, name: str, class_names: tuple, npz: bool):
    """Ways to load an MNIST-like dataset from one directory: [(description, loader or None)]."""
    found = all((directory / s).exists() or (directory / (s + ".gz")).exists() for s in IDX_FILES)
    yield (f"{directory}/{{{','.join(IDX_FILES)}}}[.gz]",
           (lambda: load_idx_dir(directory, name, class_names)) if found else None)
    if npz:
        path = directory / "mnist.npz"
        yield str(path), (lambda: load_mnist_npz(path)) if path.exists() else None


def _cifar_candidates(directory: Path):
    for path in (directory, directory / CIFAR10_DIR, directory / CIFAR10_TAR):
        found = (path / "data_batch_1").exists() if path.suffix != ".gz" else path.exists()
        yield str(path), (lambda p=path: load_cifar10(p)) if found else None


def _local_candidates(name: str, data_dir: Optional[Path]):
    """Local places to look, in order: data_dir if given, else the Keras cache."""
    if name == "mnist":
        return _idx_candidates(data_dir or keras_cache(), name, MNIST_CLASSES, npz=True)
    if name == "fashion_mnist":
        return _idx_candidates(data_dir or keras_cache() / "fashion-mnist", name,
                               FASHION_MNIST_CLASSES, npz=False)
    if name == "cifar10":
        return _cifar_candidates(data_dir or keras_cache())
    raise DataError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")


def _download(name: str) -> Data:
    """Fetches the canonical files into the Keras cache, verifying checksums."""
    import keras

    cache = str(keras_cache().parent)
    if name == "mnist":
        path = keras.utils.get_file("mnist.npz", MNIST_URL, file_hash=MNIST_SHA256, cache_dir=cache)
        return load_mnist_npz(Path(path))
    if name == "fashion_mnist":
        for fname, md5 in FASHION_MD5.items():
            keras.utils.get_file(fname, FASHION_URL + fname, file_hash=md5, cache_dir=cache,
                                 cache_subdir="datasets/fashion-mnist")
        return load_idx_dir(keras_cache() / "fashion-mnist", name, FASHION_MNIST_CLASSES)
    path = keras.utils.get_file(CIFAR10_TAR, CIFAR10_URL, file_hash=CIFAR10_SHA256, cache_dir=cache)
    return load_cifar10(Path(path))


DATASETS = ("mnist", "fashion_mnist", "cifar10")  # built in; and image_folder, a folder of the user's
SOURCES = {"mnist": MNIST_URL, "fashion_mnist": FASHION_URL, "cifar10": CIFAR10_URL}


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
    import hashlib

    if data.fingerprint is not None:
        return data.fingerprint
    digest = hashlib.sha1()
    for array in (data.x_train, data.y_train, data.x_test, data.y_test):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return f"{len(data.x_train)}+{len(data.x_test)}:{digest.hexdigest()[:12]}"


def load_dataset(dataset) -> Data:
    """The data a DatasetConfig names: a built-in dataset, or an image folder."""
    if dataset.name == "image_folder":
        from cnn import image_folder

        return image_folder.load(dataset)
    return load(dataset.name, dataset.data_dir, dataset.download)


def load(name: str, data_dir: Optional[str] = None, download: bool = True) -> Data:
    """Loads dataset `name`: from `data_dir` if given, else the Keras cache, else a download.

    Raises DataError with the places looked at and the `dataset.data_dir=...` fix.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")
    directory = Path(data_dir).expanduser() if data_dir is not None else None
    if directory is not None and not directory.is_dir():
        raise DataError(f"dataset.data_dir={data_dir}: no such directory")
    looked = []
    for description, loader in _local_candidates(name, directory):
        if loader is not None:
            return check(loader(), description)
        looked.append(description)
    hint = "put the files in a directory and pass dataset.data_dir=/path/to/it"
    if directory is not None:
        raise DataError(f"{name}: no data in {directory}; looked for {' or '.join(looked)}. Fix: {hint}")
    if not download:
        raise DataError(f"{name}: no data found, looked for {' or '.join(looked)}, "
                        f"and dataset.download=false. Fix: {hint}")
    try:
        return check(_download(name), f"{name} download")
    except DataError:
        raise
    except Exception as e:  # no network, bad checksum, disk full: all end the same way
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{name}: no data found (looked for {' or '.join(looked)}) and the download from "
                        f"{SOURCES[name]} failed ({reason}). Fix: {hint}") from None


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
        f"dataset.validation_split={fraction}: class {label} ('{data.class_names[label]}') has {n} training "
        "image(s), too few for one to validate and one to train on. Add images of it, or pass "
        "dataset.validation_split=0"))
    train = np.setdiff1d(np.arange(len(data.y_train)), val, assume_unique=True)
    return dataclasses.replace(data, x_train=data.x_train[train], y_train=data.y_train[train],
                               x_val=data.x_train[val], y_val=data.y_train[val])


# --- tf.data pipelines --------------------------------------------------------------

def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: a new order each epoch, the same for the same (seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _normalize(images, labels):
    import tensorflow as tf

    return tf.cast(images, tf.float32) / 255.0, labels  # (B, H, W, C) uint8 -> float32 in [0, 1]


def augment(images, seed, max_rotation: float, max_shift: float, flip: bool = False):
    """Rotates each image by up to +-max_rotation degrees and shifts it by up to +-max_shift
    pixels per axis, and with `flip` mirrors half of them left to right, with stateless
    random numbers: the same `seed` gives the same images. One resampling does it all.

    Args:
      images: (B, H, W, C) float32.
      seed: int64 (2,), e.g. (epoch seed, batch index).
    """
    import tensorflow as tf

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
    import tensorflow as tf

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
    import tensorflow as tf

    from cnn.image_folder import StoredImages

    stored = x if isinstance(x, StoredImages) else None
    return tf.data.Dataset.from_tensor_slices((x.keys if stored else x, y)), stored


def _read_element(ds, stored):
    import tensorflow as tf

    if stored is None:
        return ds
    return ds.map(lambda key, label: (stored.read_element(key), label), num_parallel_calls=tf.data.AUTOTUNE)


def _read_batch(ds, stored):
    import tensorflow as tf

    if stored is None:
        return ds
    return ds.map(lambda keys, labels: (stored.read_batch(keys), labels), num_parallel_calls=tf.data.AUTOTUNE)


def train_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epoch: int,
                  skip_batches: int = 0, max_rotation: float = 0.0, max_shift: float = 0.0,
                  flip: bool = False):
    """One epoch of shuffled training batches; `skip_batches` resumes inside the epoch.

    The order, and the augmentation when max_rotation, max_shift or flip is set, depend
    only on (seed, epoch, batch index), so a resumed run sees the same batches. `x` is an
    array or stored images: their keys (paths, indices) are shuffled, then read in parallel.
    """
    import tensorflow as tf

    this_epoch = epoch_seed(seed, epoch)
    ds, stored = _slices(x, y)
    ds = ds.shuffle(len(x), seed=this_epoch, reshuffle_each_iteration=False)
    ds = _read_element(ds.skip(skip_batches * batch_size), stored)  # skipped images are not read
    ds = _read_batch(ds.batch(batch_size), stored).enumerate(start=skip_batches)  # (batch index, (images, labels))

    def prepare(index, batch):
        images, labels = _normalize(*batch)
        if max_rotation or max_shift or flip:
            seed_pair = tf.stack([tf.constant(this_epoch, tf.int64), index])
            images = augment(images, seed_pair, max_rotation, max_shift, flip)
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
    import tensorflow as tf

    ds, stored = _slices(x, y)
    ds = _read_batch(_read_element(ds, stored).batch(batch_size), stored)
    ds = ds.map(_normalize, num_parallel_calls=tf.data.AUTOTUNE)
    if stored is None:
        ds = ds.cache()
    return ds.prefetch(tf.data.AUTOTUNE).with_options(pipeline_options())


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)  # the last, smaller batch counts
