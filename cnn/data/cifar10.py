"""CIFAR-10: the official python batches, in `cifar-10-batches-py/` or its tarball."""

from __future__ import annotations

import pickle
import tarfile
import zlib
from pathlib import Path

import keras
import numpy as np

from cnn.data.base import Data, files_in, find_or_download, keras_cache, register_dataset
from cnn.errors import DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TAR = "cifar-10-python.tar.gz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"


# What the official batches are: Python 2 pickles of a dict of str (bytes, read with
# encoding="bytes"), lists of ints and str, and one uint8 numpy array, rebuilt by these
# globals. A pickle calls the globals it names: any other (os.system, what a crafted
# __reduce__ names) is refused before it is looked up, let alone called.
BATCH_GLOBALS = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                           ("numpy", "ndarray"), ("numpy", "dtype")})


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a global that a CIFAR-10 batch does not hold."""


class BatchUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR-10 python batch holds and nothing else (see BATCH_GLOBALS)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in BATCH_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def _cifar_batch(f, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Parses one pickled CIFAR-10 batch into (N, 32, 32, 3) uint8 images and labels."""
    try:
        batch = BatchUnpickler(f, encoding="bytes").load()  # the official format is a pickled dict
        data, labels = np.asarray(batch[b"data"], np.uint8), np.asarray(batch[b"labels"], np.int32)
    except _RefusedGlobal as e:
        raise DataError(f"{where}: not a CIFAR-10 python batch: it names {e}, which a batch never holds (refused; "
                        "nothing in the file was run); delete it and fetch the official batches again") from None
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
        missing = [n for n in CIFAR10_BATCHES if not (path / n).exists()]
        if missing:
            raise DataError(f"{path}: lacks {', '.join(missing)}; put the official batches there")
        def read(name):
            with open(path / name, "rb") as f:
                return _cifar_batch(f, str(path / name))
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


def cifar_candidates(directory: Path):
    """Where CIFAR-10 may be in one directory: [(description, loader or None)]; a directory with
    some of the batches is described by the ones it lacks."""
    for path in (directory, directory / CIFAR10_DIR):
        missing = [n for n in CIFAR10_BATCHES if not (path / n).exists()]
        if not missing:
            yield str(path), lambda p=path: load_cifar10(p)
        else:
            some = len(missing) < len(CIFAR10_BATCHES)
            yield files_in(path, missing) + (" (the other batches are there)" if some else ""), None
    tarball = directory / CIFAR10_TAR
    yield str(tarball), (lambda: load_cifar10(tarball)) if tarball.exists() else None


def _download() -> Data:
    path = keras.utils.get_file(CIFAR10_TAR, CIFAR10_URL, file_hash=CIFAR10_SHA256, cache_dir=str(keras_cache().parent))
    return load_cifar10(Path(path))


@register_dataset("cifar10")
def cifar10(dataset) -> Data:
    return find_or_download("cifar10", dataset.data_dir, dataset.download, cifar_candidates, keras_cache(),
                            _download, CIFAR10_URL)
