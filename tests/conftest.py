"""Shared fixtures: small datasets written in the real file formats, and a clean Keras cache."""

import gzip
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "mnist-sample"  # 2,000 + 500 real MNIST digits
sys.path.insert(0, str(ROOT))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Writes `array` (uint8) as an IDX file, gzipped when `path` ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_images(n: int, shape=(28, 28), seed=0, classes=10):
    """A learnable toy task: class k is a bright bar at row band k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, *shape)).astype(np.uint8)
    band = shape[0] // classes
    for i, k in enumerate(labels):
        images[i, k * band:(k + 1) * band] = 255
    return images, labels


def write_idx_dataset(directory: Path, n_train=120, n_test=40, gz=True, seed=0, shape=(28, 28)) -> Path:
    """The four MNIST-format files of a small generated dataset (of `shape` images)."""
    directory.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    x, y = make_images(n_train + n_test, shape, seed=seed)
    write_idx(directory / f"train-images-idx3-ubyte{ext}", x[:n_train])
    write_idx(directory / f"train-labels-idx1-ubyte{ext}", y[:n_train])
    write_idx(directory / f"t10k-images-idx3-ubyte{ext}", x[n_train:])
    write_idx(directory / f"t10k-labels-idx1-ubyte{ext}", y[n_train:])
    return directory


@pytest.fixture(autouse=True)
def empty_keras_cache(tmp_path, monkeypatch):
    """Point the Keras cache at an empty directory, so no test sees a user's files."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return write_idx_dataset(tmp_path / "tiny")


FORMATS = ("png", "jpg", "bmp", "gif")


def write_image_folder(root: Path, classes=("cat", "dog", "eel"), per_class=12, seed=0, formats=FORMATS,
                       modes=("L", "RGB")) -> Path:
    """A folder of learnable images in Keras' layout, root/<class>/<i>.<ext>: class k is a
    bright band across the k-th third of the rows, on noise; odd sizes, the formats and
    colour modes in turn. Returns root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            height, width = (int(d) for d in rng.integers(18, 34, 2))
            image = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
            third = height // len(classes)
            image[k * third:(k + 1) * third] = (255, 220, 200)
            mode = modes[i % len(modes)]
            picture = Image.fromarray(image).convert(mode)
            picture.save(root / name / f"{i:03d}.{formats[i % len(formats)]}")
    return root
