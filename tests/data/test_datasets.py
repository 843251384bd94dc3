"""The loaders on files written in the official formats, their errors, and the pipelines."""

import gzip
import pickle
import tarfile

import numpy as np
import pytest
from conftest import SAMPLE, make_images, write_idx, write_idx_dataset

from cnn import data
from cnn.data import cifar10, mnist, pipeline
from cnn.errors import DataError


def test_read_idx_gz_and_plain(tmp_path):
    images, _ = make_images(5)
    for name in ("a-idx3-ubyte.gz", "a-idx3-ubyte"):
        write_idx(tmp_path / name, images)
        np.testing.assert_array_equal(mnist.read_idx(tmp_path / name), images)


def test_idx_dir_shapes_and_dtypes(tmp_path):
    d = data.load("fashion_mnist", str(write_idx_dataset(tmp_path / "f", 30, 10, gz=False)))
    assert d.x_train.shape == (30, 28, 28, 1) and d.x_train.dtype == np.uint8
    assert d.y_train.shape == (30,) and d.y_train.dtype == np.int32
    assert d.x_test.shape == (10, 28, 28, 1)
    assert d.class_names[0] == "T-shirt/top" and d.num_classes == 10


def test_real_sample_loads():
    d = data.load("mnist", str(SAMPLE))
    assert d.x_train.shape == (2000, 28, 28, 1) and d.x_test.shape == (500, 28, 28, 1)
    assert set(np.unique(d.y_train)) == set(range(10))
    assert d.x_train.max() == 255 and d.x_train.min() == 0


def test_wrong_magic_is_a_clear_error(tmp_path):
    path = write_idx_dataset(tmp_path / "d") / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(DataError, match="bad magic number"):
        data.load("mnist", str(tmp_path / "d"))


def test_truncated_idx_is_a_clear_error(tmp_path):
    path = write_idx_dataset(tmp_path / "d", gz=False) / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.load("mnist", str(tmp_path / "d"))


def test_truncated_gzip_is_a_clear_error(tmp_path):
    path = write_idx_dataset(tmp_path / "d") / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match="unreadable"):
        data.load("mnist", str(tmp_path / "d"))


def test_mismatched_images_and_labels(tmp_path):
    d = write_idx_dataset(tmp_path / "d")
    write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    with pytest.raises(DataError, match="do not match"):
        data.load("mnist", str(d))


def test_mnist_npz(tmp_path):
    x, y = make_images(12)
    np.savez(tmp_path / "mnist.npz", x_train=x[:8], y_train=y[:8], x_test=x[8:], y_test=y[8:])
    d = data.load("mnist", str(tmp_path))
    assert d.x_train.shape == (8, 28, 28, 1)
    np.testing.assert_array_equal(d.y_test, y[8:])


def test_keras_cache_is_second_in_line(tmp_path, monkeypatch):
    x, y = make_images(12)
    cache = tmp_path / "home" / "datasets"
    cache.mkdir(parents=True)
    np.savez(cache / "mnist.npz", x_train=x[:8], y_train=y[:8], x_test=x[8:], y_test=y[8:])
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    assert data.load("mnist", download=False).x_train.shape == (8, 28, 28, 1)


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist()}


def write_cifar(directory):
    directory.mkdir(parents=True)
    batches = {name: _cifar_batch(4, i) for i, name in enumerate(cifar10.CIFAR10_BATCHES)}
    for name, batch in batches.items():
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f)
    with open(directory / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in cifar10.CIFAR10_CLASSES]}, f)
    return batches


@pytest.mark.parametrize("form", ["dir", "tarball"])
def test_cifar10(tmp_path, form):
    batches = write_cifar(tmp_path / "src" / cifar10.CIFAR10_DIR)
    if form == "tarball":
        with tarfile.open(tmp_path / cifar10.CIFAR10_TAR, "w:gz") as tar:
            tar.add(tmp_path / "src" / cifar10.CIFAR10_DIR, arcname=cifar10.CIFAR10_DIR)
        where = tmp_path
    else:
        where = tmp_path / "src"
    d = data.load("cifar10", str(where))
    assert d.x_train.shape == (20, 32, 32, 3) and d.x_test.shape == (4, 32, 32, 3)
    # Channel-major rows: the first 1024 bytes are the red plane.
    first = batches["data_batch_1"][b"data"][0]
    np.testing.assert_array_equal(d.x_train[0, :, :, 0].ravel(), first[:1024])
    np.testing.assert_array_equal(d.x_train[0, :, :, 2].ravel(), first[2048:])
    assert d.y_test.tolist() == batches["test_batch"][b"labels"]


def test_cifar10_corrupt_batch(tmp_path):
    write_cifar(tmp_path / cifar10.CIFAR10_DIR)
    (tmp_path / cifar10.CIFAR10_DIR / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 python batch"):
        data.load("cifar10", str(tmp_path))


def test_missing_files_name_what_was_looked_for(tmp_path):
    with pytest.raises(DataError) as e:
        data.load("fashion_mnist", str(tmp_path))
    message = str(e.value)
    assert "train-images-idx3-ubyte" in message and "dataset.data_dir=" in message
    assert "\n" not in message


def test_no_network_gives_one_clear_line(monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://...: None -- [Errno -3] Temporary failure")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(DataError) as e:
        data.load("mnist")
    message = str(e.value)
    assert "mnist.npz" in message and "download" in message and "dataset.data_dir=" in message
    assert "\n" not in message


def test_download_is_checksum_verified(monkeypatch):
    import keras

    calls = []
    monkeypatch.setattr(keras.utils, "get_file", lambda *a, **k: calls.append(k) or 1 / 0)
    with pytest.raises(DataError):
        data.load("cifar10")
    assert calls[0]["file_hash"] == cifar10.CIFAR10_SHA256


def test_data_dir_must_exist(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        data.load("mnist", str(tmp_path / "nope"))


def _labels(ds):
    return np.concatenate([y.numpy() for _, y in ds])


def test_shuffle_is_seeded_and_new_each_epoch():
    x, y = make_images(50)
    y = np.arange(50, dtype=np.int32)  # labels as ids reveal the order
    order = lambda seed, epoch: _labels(data.train_dataset(x, y, 8, seed, epoch))
    np.testing.assert_array_equal(order(0, 0), order(0, 0))
    assert not np.array_equal(order(0, 0), order(0, 1))
    assert not np.array_equal(order(0, 0), order(1, 0))
    assert sorted(order(3, 2)) == list(range(50))


def test_skip_batches_resumes_the_same_order():
    x, y = make_images(50)
    y = np.arange(50, dtype=np.int32)
    full = _labels(data.train_dataset(x, y, 8, 0, 4))
    rest = _labels(data.train_dataset(x, y, 8, 0, 4, skip_batches=3))
    np.testing.assert_array_equal(rest, full[24:])


def test_pipeline_gives_float_images_in_unit_range():
    x, y = make_images(10)
    images, labels = next(iter(data.train_dataset(x[..., None], y.astype(np.int32), 4, 0, 0)))
    assert images.dtype.name == "float32" and images.shape == (4, 28, 28, 1)
    assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 1.0


def _images(ds):
    return np.concatenate([x.numpy() for x, _ in ds])


def test_augmentation_is_deterministic_per_seed_and_epoch():
    x, y = make_images(40)
    x = x[..., None]
    y = y.astype(np.int32)
    aug = lambda seed, epoch, **kw: _images(data.train_dataset(x, y, 16, seed, epoch, max_rotation=15.0,
                                                               max_shift=2.0, **kw))
    plain = _images(data.train_dataset(x, y, 16, 0, 0))
    first = aug(0, 0)
    np.testing.assert_array_equal(first, aug(0, 0))
    assert not np.array_equal(first, plain)
    assert not np.array_equal(first, aug(0, 1))
    np.testing.assert_array_equal(aug(0, 0, skip_batches=1), first[16:])  # resuming mid-epoch
    assert first.shape == plain.shape and 0 <= first.min() and first.max() <= 1


def test_zero_augmentation_is_the_identity_and_a_shift_moves_pixels():
    import tensorflow as tf

    image = np.zeros((1, 8, 8, 1), np.float32)
    image[0, 3, 4, 0] = 1.0
    same = pipeline.augment(tf.constant(image), tf.constant([1, 2], tf.int64), 0.0, 0.0).numpy()
    np.testing.assert_array_equal(same, image)
    shifted = pipeline.augment(tf.constant(image), tf.constant([1, 2], tf.int64), 0.0, 2.0).numpy()
    assert shifted.sum() > 0 and not np.array_equal(shifted, image)
    assert np.argwhere(shifted[0, ..., 0] > 0.2).size  # the dot is still in the frame, moved


def test_flip_mirrors_half_the_images_exactly_and_leaves_the_others():
    import tensorflow as tf

    images = np.random.default_rng(5).random((64, 8, 8, 1)).astype(np.float32)
    seed = tf.constant([5, 7], tf.int64)
    flipped = pipeline.augment(tf.constant(images), seed, 0.0, 0.0, flip=True).numpy()
    mirrored = [np.array_equal(f, image[:, ::-1]) for f, image in zip(flipped, images)]
    kept = [np.array_equal(f, image) for f, image in zip(flipped, images)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 16 < sum(mirrored) < 48
    # With rotation and shift too: the images it does not mirror get exactly the unflipped augmentation.
    both = pipeline.augment(tf.constant(images), seed, 15.0, 2.0, flip=True).numpy()
    plain = pipeline.augment(tf.constant(images), seed, 15.0, 2.0).numpy()
    assert all(np.array_equal(both[i], plain[i]) for i in np.flatnonzero(kept))
    assert not any(np.array_equal(both[i], plain[i]) for i in np.flatnonzero(mirrored))


def test_corrupt_npz_is_a_clear_error(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable mnist.npz"):
        data.load("mnist", str(tmp_path))


def test_labels_beyond_the_classes_are_refused(tmp_path):
    d = write_idx_dataset(tmp_path / "d")
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.full(40, 12, np.uint8))
    with pytest.raises(DataError, match="test labels must be 0..9"):
        data.load("mnist", str(d))


def test_fingerprint_follows_content_not_place(tmp_path):
    a = data.load("mnist", str(write_idx_dataset(tmp_path / "a")))
    b = data.load("mnist", str(write_idx_dataset(tmp_path / "b")))
    c = data.load("mnist", str(write_idx_dataset(tmp_path / "c", seed=1)))
    assert data.fingerprint(a) == data.fingerprint(b) != data.fingerprint(c)


def test_no_pipeline_autotunes_its_model():
    """tf.data's model-based autotuning stays off: with it, deleting a finished epoch's iterator
    sometimes blocked for 10-60 s (docs/results.md, "Epoch-boundary pauses")."""
    x, y = make_images(30)
    x = x[..., None]
    for ds in (data.train_dataset(x, y, 10, 0, 0, max_shift=2.0), data.test_dataset(x, y),
               data.statistics_dataset(x, y, 10, 0, 2)):
        assert ds.options().autotune.enabled is False
