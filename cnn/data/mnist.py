"""MNIST and Fashion-MNIST: the four IDX files (gzipped or not), or Keras' `mnist.npz`."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import keras
import numpy as np

from cnn.data.base import Data, files_in, find_or_download, keras_cache, register_dataset
from cnn.errors import DataError

MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

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


def _first_existing(directory: Path, names) -> Path:
    for name in names:
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(directory / names[0])


def idx_candidates(directory: Path, name: str, class_names: tuple, npz: bool):
    """Ways to load an MNIST-like dataset from one directory: [(description, loader or None)];
    a directory with some of the four files is described by the ones it lacks."""
    missing = [s for s in IDX_FILES if not ((directory / s).exists() or (directory / (s + ".gz")).exists())]
    if not missing:
        yield str(directory), lambda: load_idx_dir(directory, name, class_names)
    else:
        some = len(missing) < len(IDX_FILES)
        yield files_in(directory, missing) + "[.gz]" + (" (the other IDX files are there)" if some else ""), None
    if npz:
        path = directory / "mnist.npz"
        yield str(path), (lambda: load_mnist_npz(path)) if path.exists() else None


def _download_mnist() -> Data:
    path = keras.utils.get_file("mnist.npz", MNIST_URL, file_hash=MNIST_SHA256, cache_dir=str(keras_cache().parent))
    return load_mnist_npz(Path(path))


def _download_fashion_mnist() -> Data:
    for fname, md5 in FASHION_MD5.items():
        keras.utils.get_file(fname, FASHION_URL + fname, file_hash=md5, cache_dir=str(keras_cache().parent),
                             cache_subdir="datasets/fashion-mnist")
    return load_idx_dir(keras_cache() / "fashion-mnist", "fashion_mnist", FASHION_MNIST_CLASSES)


@register_dataset("mnist")
def mnist(dataset) -> Data:
    return find_or_download("mnist", dataset.data_dir, dataset.download,
                            lambda d: idx_candidates(d, "mnist", MNIST_CLASSES, npz=True), keras_cache(),
                            _download_mnist, MNIST_URL)


@register_dataset("fashion_mnist")
def fashion_mnist(dataset) -> Data:
    return find_or_download("fashion_mnist", dataset.data_dir, dataset.download,
                            lambda d: idx_candidates(d, "fashion_mnist", FASHION_MNIST_CLASSES, npz=False),
                            keras_cache() / "fashion-mnist", _download_fashion_mnist, FASHION_URL)
