"""dataset=image_folder: the user's own images in Keras' layout, read from memory, a disk cache
or the files themselves, with the same numbers; its folder fingerprint and its bad input."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, write_image_folder
from PIL import Image

from cnn import data as data_lib
from cnn.config import compose
from cnn.data import image_folder, image_store
from cnn.errors import ConfigError, DataError


def folder_config(root, *overrides, cache_dir=None):
    cache = [f"dataset.cache_dir={cache_dir}"] if cache_dir else []
    return compose("dataset=image_folder", f"dataset.data_dir={root}", *cache, *overrides)


def load(root, *overrides, cache_dir=None):
    return data_lib.load_dataset(folder_config(root, *overrides, cache_dir=cache_dir).dataset)


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "images")


def test_class_folders_give_sorted_classes_and_a_stratified_test_split_of_every_format(folder):
    data = load(folder, "dataset.image_size=[16,20]")
    assert data.class_names == ("cat", "dog", "eel")
    assert data.x_train.shape == (3 * 10, 16, 20, 1) and data.x_test.shape == (3 * 2, 16, 20, 1)  # 20% of 12 each
    assert np.bincount(data.y_test).tolist() == [2, 2, 2] and np.bincount(data.y_train).tolist() == [10, 10, 10]
    again = load(folder, "dataset.image_size=[16,20]", "seed=7")  # the split is the folder's, not the seed's
    np.testing.assert_array_equal(again.x_test, data.x_test)
    rgb = load(folder, "dataset.image_size=[16,20]", "dataset.color_mode=rgb")
    assert rgb.x_train.shape[-1] == 3
    # The learnable band is where the class says, in every format, after resizing.
    for images, labels in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        rows = images.mean(axis=(2, 3))
        thirds = np.stack([rows[:, :5].mean(1), rows[:, 5:11].mean(1), rows[:, 11:].mean(1)], axis=1)
        assert (thirds.argmax(axis=1) == labels).all()


def test_train_and_test_folders_are_the_splits_and_sizes_default_to_the_first_image(tmp_path):
    write_image_folder(tmp_path / "split" / "train", per_class=4, formats=("png",), modes=("RGB",))
    write_image_folder(tmp_path / "split" / "test", per_class=2, seed=1, formats=("jpg",), modes=("RGB",))
    data = load(tmp_path / "split")
    first = np.asarray(Image.open(tmp_path / "split" / "train" / "cat" / "000.png"))
    assert data.x_train.shape == (12, *first.shape) and data.x_test.shape == (6, *first.shape)
    np.testing.assert_array_equal(data.x_train[0], first)  # its own size: the pixels as stored
    assert data.y_test.tolist() == [0, 0, 1, 1, 2, 2]


def test_decoding_resizes_as_keras_does_and_rounds_to_uint8(tmp_path):
    root = write_image_folder(tmp_path / "rgb", per_class=3, formats=("png", "jpg", "bmp"), modes=("RGB",))
    ours = load(root, "dataset.image_size=[15,11]", "dataset.color_mode=rgb", "dataset.cache=none",
                cache_dir=tmp_path / "cache")  # files: their paths say which is which
    keras_ds = keras.utils.image_dataset_from_directory(root, image_size=(15, 11), shuffle=False, batch_size=None,
                                                        verbose=False)
    theirs = {path: (image, label) for path, (image, label) in zip(keras_ds.file_paths, keras_ds.as_numpy_iterator())}
    for x, y in ((ours.x_train, ours.y_train), (ours.x_test, ours.y_test)):
        for path, image, label in zip(x.paths, x.numpy(), y):
            np.testing.assert_array_equal(image, np.clip(np.round(theirs[path][0]), 0, 255).astype(np.uint8))
            assert label == theirs[path][1]
    assert len(ours.x_train) + len(ours.x_test) == len(theirs) == 9

    gray = tf.constant(np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8))
    encoded = tf.io.encode_png(gray)
    converted = image_store.decode(encoded, 5, 7, 1).numpy()
    expected = np.round(tf.image.rgb_to_grayscale(tf.cast(gray, tf.float32)).numpy())
    np.testing.assert_array_equal(converted, expected.astype(np.uint8))
    np.testing.assert_array_equal(image_store.decode(tf.io.encode_png(gray[..., :1]), 5, 7, 3).numpy(),
                                  np.repeat(gray.numpy()[..., :1], 3, axis=-1))


def batches(ds):
    return [(x.copy(), y.copy()) for x, y in ds.as_numpy_iterator()]


def test_memory_disk_and_none_feed_the_same_batches(folder, tmp_path):
    cache_dir = tmp_path / "cache"
    loaded = {cache: data_lib.split_validation(load(folder, "dataset.image_size=[16,16]", f"dataset.cache={cache}",
                                                    cache_dir=cache_dir), 0.1)
              for cache in ("memory", "disk", "none")}
    assert isinstance(loaded["memory"].x_train, np.ndarray)
    assert isinstance(loaded["disk"].x_train, image_store.PixelFile)
    assert isinstance(loaded["none"].x_train, image_store.ImageFiles)
    assert len({data_lib.fingerprint(d) for d in loaded.values()}) == 1
    feeds = {}
    for cache, d in loaded.items():
        feeds[cache] = (batches(data_lib.train_dataset(d.x_train, d.y_train, 8, 3, 1, max_rotation=10, flip=True))
                        + batches(data_lib.train_dataset(d.x_train, d.y_train, 8, 3, 2, skip_batches=2))
                        + batches(data_lib.test_dataset(d.x_val, d.y_val))
                        + batches(data_lib.test_dataset(d.x_test, d.y_test))
                        + batches(data_lib.statistics_dataset(d.x_train, d.y_train, 8, 3, 2)))
    for cache in ("disk", "none"):
        assert len(feeds[cache]) == len(feeds["memory"])
        for (x, y), (mx, my) in zip(feeds[cache], feeds["memory"]):
            np.testing.assert_array_equal(x, mx)
            np.testing.assert_array_equal(y, my)
    # Resuming mid-epoch reads the same batches as the whole epoch's tail.
    whole = batches(data_lib.train_dataset(loaded["none"].x_train, loaded["none"].y_train, 8, 3, 2))
    assert all((a[0] == b[0]).all() for a, b in zip(whole[2:], feeds["none"][len(whole):]))

    # The disk cache and the check are built once: a second load reads them.
    (built,) = [p for p in cache_dir.iterdir()]
    stamp = (built / "index.json").stat().st_mtime_ns
    load(folder, "dataset.image_size=[16,16]", "dataset.cache=disk", cache_dir=cache_dir)
    load(folder, "dataset.image_size=[16,16]", "dataset.cache=none", cache_dir=cache_dir)
    assert (built / "index.json").stat().st_mtime_ns == stamp
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]  # no staging left
    # A damaged cache (its pixel file cut short) is rebuilt, whole.
    with open(built / image_folder.PIXELS, "r+b") as f:
        f.truncate(100)
    rebuilt = load(folder, "dataset.image_size=[16,16]", "dataset.cache=disk", cache_dir=cache_dir)
    assert (built / image_folder.PIXELS).stat().st_size == np.prod(rebuilt.x_train.shape[1:]) * 36
    np.testing.assert_array_equal(rebuilt.x_train.numpy(), load(folder, "dataset.image_size=[16,16]").x_train)


def test_the_fingerprint_follows_the_files_not_where_the_folder_is(folder, tmp_path):
    first = data_lib.fingerprint(load(folder, "dataset.image_size=[16,16]"))
    moved = shutil.copytree(folder, tmp_path / "moved", copy_function=shutil.copy2)  # times kept
    assert data_lib.fingerprint(load(moved, "dataset.image_size=[16,16]")) == first
    assert data_lib.fingerprint(load(folder, "dataset.image_size=[16,17]")) != first
    one = folder / "dog" / "000.png"
    os.utime(one, ns=(one.stat().st_atime_ns, one.stat().st_mtime_ns + 10**9))  # edited
    edited = data_lib.fingerprint(load(folder, "dataset.image_size=[16,16]"))
    shutil.copy(one, folder / "dog" / "extra.png")  # a file added
    added = load(folder, "dataset.image_size=[16,16]")
    assert len({first, edited, data_lib.fingerprint(added)}) == 3
    assert len(added.x_train) + len(added.x_test) == 37


def test_a_file_that_does_not_decode_is_named_and_skipped_only_when_asked(folder, tmp_path, caplog):
    (folder / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    for cache in ("memory", "disk", "none"):
        with pytest.raises(DataError, match=r"dog/broken\.jpg: not a decodable image .*dataset\.skip_bad_files=true"):
            load(folder, f"dataset.cache={cache}", "dataset.image_size=[16,16]", cache_dir=tmp_path / "c")
    with caplog.at_level("WARNING"):
        data = load(folder, "dataset.skip_bad_files=true", "dataset.image_size=[16,16]", "dataset.cache=none",
                    cache_dir=tmp_path / "c")
    assert "skipped 1 file (not decodable)" in caplog.text and "broken.jpg" in caplog.text
    assert len(data.x_train) + len(data.x_test) == 36
    assert not any("broken" in p for p in data.x_train.paths)
    # The size and colour a run is not told come from the first training image that decodes.
    (folder / "cat" / "000.png").rename(folder / "cat" / "000.png.bak")
    (folder / "cat" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    first = np.asarray(Image.open(folder / "cat" / "001.jpg"))
    guessed = load(folder, "dataset.skip_bad_files=true", cache_dir=tmp_path / "c")
    assert guessed.x_train.shape[1:] == (*first.shape[:2], 3)


@pytest.mark.parametrize("make,override,message", [
    (lambda root: None, "", r"images: no such directory"),
    (lambda root: root.mkdir(), "", r"the folder is empty"),
    (lambda root: write_image_folder(root, classes=("only",)), "", r"1 class folder \(only\).*two or more"),
    (lambda root: (write_image_folder(root), (root / "fox").mkdir()), "",
     r"fox: class 'fox' has no images"),
    (lambda root: write_image_folder(root, per_class=1), "", r"test_split=0.2: class 'cat' has 1 image"),
    (lambda root: (write_image_folder(root), (root / "dog" / "gone.png").symlink_to(root / "nowhere.png")), "",
     r"dog/gone.png: cannot read it \(No such file or directory\); remove it or fix it"),
    (lambda root: (write_image_folder(root / "train"), write_image_folder(root / "test", classes=("cat", "dog"))),
     "", r"class folders \['cat', 'dog'\] differ from the training set's"),
], ids=["missing", "empty", "one-class", "empty-class", "too-few", "broken-link", "split-classes"])
def test_a_bad_folder_is_one_line(tmp_path, make, override, message):
    make(tmp_path / "images")
    with pytest.raises(DataError, match=message) as error:
        load(tmp_path / "images", *([override] if override else []))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("overrides,message", [
    (["dataset.image_size=[0,16]"], r"dataset.image_size=\[0, 16\]: must be \[height, width\], both >= 1"),
    (["dataset.image_size=[16]"], r"must be \[height, width\]"),
    (["dataset.color_mode=cmyk"], r"dataset.color_mode=cmyk: must be grayscale, rgb"),
    (["dataset.cache=gpu"], r"dataset.cache=gpu: must be one of memory, disk, none"),
    (["dataset.test_split=1.0"], r"dataset.test_split=1.0: must be in \(0, 1\)"),
])
def test_bad_image_folder_settings_are_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        folder_config(tmp_path, *overrides)


def test_image_folder_keys_belong_to_image_folder_only():
    for override in ("+dataset.cache=disk", "dataset.cache=disk"):  # added, or set: not a key of dataset=mnist
        with pytest.raises(ConfigError, match=r"^dataset\.cache is for dataset=image_folder only"):
            compose(override)
    with pytest.raises(DataError, match=r"dataset=image_folder needs dataset.data_dir="):
        data_lib.load_dataset(compose("dataset=image_folder").dataset)


@pytest.mark.slow
def test_a_folder_trains_and_its_export_predicts_what_the_checkpoint_does(tmp_path, folder):
    """From the command line: a folder of PNG, JPEG, BMP and GIF images of odd sizes, grey and
    colour, with one that does not decode, streamed from its files (cache=none), resumed bitwise
    after a SIGKILL; then mode=eval and mode=export of it, and `python -m cnn.tools.predict` on
    the test images' own files in a fresh process."""
    from helpers import env, run_in_process, sigkill_then_rerun

    from cnn.checkpointing.resume import restore_chosen
    from cnn.training import build

    (folder / "eel" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    settings = ["dataset=image_folder", f"dataset.data_dir={folder}", "dataset.image_size=[16,16]",
                "dataset.color_mode=rgb", "dataset.cache=none", f"dataset.cache_dir={tmp_path / 'cache'}",
                "dataset.skip_bad_files=true", "epochs=6", "batch_size=9", "checkpoint.every_n_steps=5",
                "checkpoint.keep=2"]
    trained = sigkill_then_rerun(tmp_path, settings)  # its straight run: checkpoint.dir=straight
    log = (tmp_path / "r2" / "train.log").read_text()  # the command line's rerun
    assert "3 classes (cat, dog, eel), 30 training and 6 test images, 16x16x3, cache=none" in log
    assert "skipped 1 file (not decodable), e.g." in log and "broken.png" in log
    assert trained["test_accuracy"] == 1.0  # the bands are easy: it learns them
    settings.append("checkpoint.dir=straight")
    evaluated = run_in_process(tmp_path, *settings, "mode=eval", run_dir="eval")
    assert evaluated["test_accuracy"] == trained["test_accuracy"] and evaluated["test_loss"] == trained["test_loss"]
    assert set(evaluated["per_class_accuracy"]) == {"cat", "dog", "eel"}
    run_in_process(tmp_path, *settings, "mode=export", run_dir="export")
    out = tmp_path / "straight" / "export"
    assert (out / "labels.txt").read_text().splitlines() == ["cat", "dog", "eel"]

    config = folder_config(folder, *settings[2:-1], f"checkpoint.dir={tmp_path / 'straight'}")
    data = data_lib.load_dataset(config.dataset)
    build.setup(config)
    state = build.create_state(config, data)
    restore_chosen(state, tmp_path / "straight", None)
    expected = tf.nn.softmax(state.model(data.x_test.numpy().astype(np.float32) / 255, training=False)).numpy()
    paths = list(data.x_test.paths)
    proc = subprocess.run([sys.executable, "-m", "cnn.tools.predict", str(out), *paths, "--json", "--top", "3"],
                          cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "resized from" in proc.stderr and "converted to 3" in proc.stderr  # odd sizes, grey images
    for row, probabilities, label in zip(json.loads(proc.stdout), expected, data.y_test):
        best = np.argsort(-probabilities, kind="stable")[:3]
        assert [p["id"] for p in row["predictions"]] == best.tolist()
        assert row["predictions"][0]["class"] == data.class_names[label]
        np.testing.assert_allclose([p["probability"] for p in row["predictions"]], probabilities[best], atol=1e-6)


@pytest.mark.slow
def test_a_bad_folder_on_the_command_line_is_one_line_and_writes_nothing(tmp_path, folder):
    from helpers import train

    (folder / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    proc = train(tmp_path, "dataset=image_folder", f"dataset.data_dir={folder}",
                 f"dataset.cache_dir={tmp_path / 'cache'}", "hydra.run.dir=run", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output
    (line,) = [l for l in output.splitlines() if l.startswith("error: ")]
    assert "dog/broken.jpg: not a decodable image" in line and "dataset.skip_bad_files=true" in line
    assert not (tmp_path / "checkpoints").exists()


def test_every_cache_trains_to_the_same_weights_and_numbers(folder, tmp_path):
    from helpers import assert_same_checkpoint, rows_without_timing

    from cnn.training import train as training

    results = {}
    for cache in ("memory", "disk", "none"):
        config = folder_config(folder, "dataset.image_size=[16,16]", f"dataset.cache={cache}", "epochs=2",
                               "batch_size=9", "dataset.augment=true", "model=bn_cnn", "progress=false",
                               "summaries=false", f"checkpoint.dir={tmp_path / cache}", cache_dir=tmp_path / "cache")
        results[cache] = training.train_and_evaluate(config, tmp_path / cache / "run")
    for cache in ("disk", "none"):
        steps = results["memory"]["steps"]
        assert_same_checkpoint(tmp_path / "memory" / f"ckpt-{steps}", tmp_path / cache / f"ckpt-{steps}")
        assert rows_without_timing(tmp_path / cache / "metrics.csv") == rows_without_timing(
            tmp_path / "memory" / "metrics.csv")
        for key in ("test_accuracy", "test_loss", "val_loss", "weights_digest"):
            assert results[cache][key] == results["memory"][key], key


@pytest.mark.parametrize("cache", ["disk", "none"])
def test_a_cache_that_cannot_be_written_is_one_line_and_leaves_no_part_of_itself(tmp_path, folder, monkeypatch, cache):
    import errno
    from pathlib import Path

    from cnn.errors import WriteError

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # disk: reserving the pixel file's space; none: writing the record of the check
    monkeypatch.setattr(*(os, "posix_fallocate") if cache == "disk" else (Path, "write_text"), refuse)
    cache_dir = tmp_path / "cache"
    with pytest.raises(WriteError, match=f"^cannot write {cache_dir}/[0-9a-f]+: no space left on the device "
                                         r"\(ENOSPC\); no partial cache is left\. Free space there and rerun the "
                                         r"command, or pass dataset.cache_dir=<a directory with room> or "
                                         r"dataset.cache=memory$"):
        load(folder, "dataset.image_size=[16,16]", f"dataset.cache={cache}", cache_dir=cache_dir)
    assert list(cache_dir.iterdir()) == []
