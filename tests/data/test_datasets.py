"""The loaders on files written in the official formats, their errors, and the pipelines."""

import gzip

import numpy as np
import pytest
from conftest import SAMPLE, make_images, write_idx, write_idx_dataset, write_image_folder

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


def test_missing_files_name_what_was_looked_for(tmp_path):
    with pytest.raises(DataError) as e:
        data.load("fashion_mnist", str(tmp_path))
    message = str(e.value)
    assert "train-images-idx3-ubyte" in message and "dataset.data_dir=" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_a_partial_set_names_only_the_missing_files_and_where_to_put_them(tmp_path, name):
    directory = write_idx_dataset(tmp_path / "d")
    for path in directory.glob("train-*"):
        path.unlink()
    with pytest.raises(DataError) as e:
        data.load(name, str(directory))
    message = str(e.value)
    assert (f"looked for {directory}/{{train-images-idx3-ubyte,train-labels-idx1-ubyte}}[.gz] "
            "(the other IDX files are there)") in message
    assert "t10k" not in message and "pass dataset.data_dir" not in message
    assert message.endswith(f"Fix: put the missing files in {directory}, or set "
                            "dataset.data_dir=<the directory that has them>")


@pytest.mark.parametrize("contents,reason", [
    (b"shopping list: eggs", "not a PNG, JPEG, BMP or GIF image"),
    (b"\xff\xd8\xff cut short", "damaged JPEG data: jpeg::Uncompress failed. Invalid JPEG data or crop window."),
])
def test_an_image_folder_file_that_does_not_decode_is_named_in_plain_words(tmp_path, contents, reason):
    from cnn.config import compose

    root = write_image_folder(tmp_path / "images", per_class=5)
    (root / "dog" / "notes.png").write_bytes(contents)
    config = compose("dataset=image_folder", f"dataset.data_dir={root}", "dataset.image_size=[8,8]")
    with pytest.raises(DataError) as e:
        data.load_dataset(config.dataset)
    (line,) = str(e.value).splitlines()
    assert line.startswith(f"{root / 'dog' / 'notes.png'}: not a decodable image ({reason}); remove it")
    assert "function_node" not in line and "Op:" not in line


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
