"""`dataset=image_folder`: a folder of the user's images, in Keras' layout.

    DIR/<class>/...           one folder per class; a stratified test split is held out
    DIR/train/<class>/...     or the two splits as they are
    DIR/test/<class>/...

Class names are the folder names, in sorted order; images are found in them at any
depth, by extension (.bmp .gif .jpeg .jpg .png, as Keras'), in sorted order. Every
image is decoded as TensorFlow does (a GIF's first frame), given `channels` (RGB to
grayscale with TensorFlow's luma weights, grayscale to RGB by repetition, alpha
dropped) and resized to (height, width) as Keras' `image_dataset_from_directory` does
(`tf.image.resize`, bilinear, no antialiasing, aspect ratio not kept), then rounded
back to uint8: the pixels are stored, and fed to the network, as the built-in
datasets' are. An image already of that size is not changed.

`dataset.cache` says where the decoded images live while training:
  memory  decoded once, held in memory as a uint8 array (what the built-in datasets do);
  disk    decoded once into one file in `cache_dir` (N x H x W x C bytes), read from there
          a batch at a time through a memory map;
  none    decoded from the original files each time they are read.
All three feed the network the same pixels in the same order, so they give the same
numbers; `disk` and `none` train on folders larger than memory. Every file is decoded
once when a folder is first seen: a file that does not decode is named, and is skipped
only with `dataset.skip_bad_files=true`. `disk` and `none` remember that check in
`cache_dir` (keyed by the folder's fingerprint), so later runs of the same folder
start at once.

The fingerprint, which makes a changed folder a different run, covers every image
file's path below DIR, size and modification time, and the image size and channels.
It does not notice a file rewritten with the same size and modification time (as
`touch -r` or some copy tools can leave it); moving or renaming DIR itself keeps it
the same run, and copying DIR without keeping modification times (`cp -r`, not
`cp -a` or `rsync -a`) makes it a new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from cnn.data.base import Data, keras_cache, register_dataset, stratified_holdout
from cnn.data.image_store import ImageFiles, PixelFile
from cnn.errors import DataError, WriteError
from cnn.text import plural

log = logging.getLogger("cnn.image_folder")  # the name its lines have always carried

EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # keras.utils.image_dataset_from_directory's
COLOR_MODES = {"grayscale": 1, "rgb": 3}
TEST_SPLIT_SEED = 30_000_000  # like the validation split: a function of the folder and the fraction only
CACHE_VERSION = 2
PIXELS = "pixels.u8"  # cache=disk: every image of the folder, decoded, (N, H, W, C) uint8


# --- Finding the files ----------------------------------------------------------------------

def _class_folders(directory: Path) -> list[Path]:
    return sorted((p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _images_in(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files)
                  if not f.startswith(".") and f.lower().endswith(EXTENSIONS)]
    return found


def _scan(directory: Path, class_names: Optional[list[str]] = None) -> tuple[list[str], list[Path], np.ndarray]:
    """(class names, image paths, labels) of a folder of class folders."""
    folders = _class_folders(directory)
    names = [f.name for f in folders]
    if class_names is not None and names != class_names:
        raise DataError(f"{directory}: class folders {names} differ from the training set's {class_names}; "
                        "both splits need the same class folders")
    if len(folders) < 2:
        raise DataError(f"{directory}: {plural(len(folders), 'class folder')} ({', '.join(names) or 'none'}); a classifier "
                        "needs two or more, one folder of images per class (DIR/<class>/<image>)")
    paths, labels = [], []
    for label, folder in enumerate(folders):
        images = _images_in(folder)
        if not images:
            raise DataError(f"{folder}: class '{folder.name}' has no images ({', '.join(EXTENSIONS)}); "
                            "add some or remove the folder")
        paths += images
        labels += [label] * len(images)
    return names, paths, np.asarray(labels, np.int32)


def find(data_dir: Optional[str]) -> tuple[Path, bool]:
    """(the folder, whether it holds train/ and test/ splits); DataError when it is not usable."""
    if not data_dir:
        raise DataError("dataset=image_folder needs dataset.data_dir=/path/to/folder (one subfolder of images "
                        "per class, or train/ and test/ holding those)")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset.data_dir={data_dir}: no such directory")
    try:
        empty = not any(root.iterdir())
    except OSError as e:
        raise DataError(f"dataset.data_dir={data_dir}: cannot read it ({e.strerror})") from None
    if empty:
        raise DataError(f"dataset.data_dir={data_dir}: the folder is empty; put one subfolder of images per "
                        "class in it (DIR/<class>/<image>)")
    return root, (root / "train").is_dir() and (root / "test").is_dir()


def folder_fingerprint(root: Path, paths: list[Path], shape: tuple) -> str:
    """A digest of every file's path below `root`, size and modification time, and the image shape."""
    digest = hashlib.sha1(json.dumps(list(shape)).encode())
    for path in paths:
        try:
            stat = path.stat()
        except OSError as e:  # a dangling link, a file removed meanwhile, no permission
            raise DataError(f"{path}: cannot read it ({e.strerror}); remove it or fix it") from None
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _first_shape(paths: list[Path]) -> tuple[Path, tuple[int, int, int]]:
    """The first of `paths` that decodes, and its (height, width, channels); DataError if none does."""
    for path in paths:
        try:
            return path, tuple(int(d) for d in tf.io.decode_image(path.read_bytes(), expand_animations=False).shape)
        except (OSError, tf.errors.OpError):
            continue  # named with the other bad files by the check
    raise DataError(f"{paths[0].parent.parent}: no training image decodes; PNG, JPEG, BMP and GIF are read")


def _reason(path: Path, files: ImageFiles) -> str:
    try:
        files.read_element(str(path))
    except (OSError, tf.errors.OpError) as e:
        return getattr(e, "message", str(e)).strip().splitlines()[0][:160]
    return "unreadable"


def _decode_all(files: ImageFiles, store) -> list[int]:
    """Decodes every file once, in parallel, handing (index, image) to `store`; returns the
    indices of the files that did not decode."""
    indices = tf.data.Dataset.range(len(files))
    ds = tf.data.Dataset.zip(indices, tf.data.Dataset.from_tensor_slices(files.paths))
    ds = ds.map(lambda i, p: (i, files.read_element(p)), num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    seen = np.zeros(len(files), bool)
    for index, images in ds.batch(256).prefetch(2).as_numpy_iterator():
        seen[index] = True
        store(index, images)
    return np.flatnonzero(~seen).tolist()


def _bad_files_message(root: Path, files: ImageFiles, bad: list[int], skip: bool) -> None:
    if not bad:
        return
    first = Path(files.paths[bad[0]])
    if not skip:
        raise DataError(f"{first}: not a decodable image ({_reason(first, files)}); remove it, or pass "
                        f"dataset.skip_bad_files=true to train without it ({plural(len(bad), 'such file')} in {root})")
    log.warning("dataset.skip_bad_files=true: skipped %s (not decodable), e.g. %s", plural(len(bad), "file"), first)


def _prepare(files: ImageFiles, cache: str, cache_dir: Path, key: str):
    """(the images to train on, indices of bad files): an array, or ImageFiles of the
    originals (none) or a PixelFile of their decoded pixels (disk)."""
    if cache == "memory":
        log.info("dataset.cache=memory: decoding %d images into memory (%.0f MB)", len(files),
                 np.prod(files.shape) / 1e6)
        out = np.zeros(files.shape, np.uint8)
        bad = _decode_all(files, lambda i, images: out.__setitem__(i, images))
        return out, bad
    directory = cache_dir / key
    index = _read_index(directory, len(files), cache, files.shape)
    if index is None:
        directory = _build_cache(files, cache, cache_dir, key)
        index = _read_index(directory, len(files), cache, files.shape)
    bad = index["bad"]
    if cache == "none":
        return files, bad
    return PixelFile(str(directory / PIXELS), len(files), np.arange(len(files)), *files.shape[1:]), bad


def _read_index(directory: Path, count: int, cache: str, shape: tuple) -> Optional[dict]:
    """The cache's record of its check, if it is complete for `cache` (with disk: its pixel
    file whole), else None."""
    try:
        index = json.loads((directory / "index.json").read_text())
        pixels = (directory / PIXELS).stat().st_size if index.get("pixels") else None
    except (OSError, ValueError, AttributeError):
        return None
    complete = index.get("version") == CACHE_VERSION and index.get("files") == count
    if cache == "disk":
        complete = complete and pixels == int(np.prod(shape))
    return index if complete else None


STALE_SECONDS = 24 * 3600  # a staging folder this old was left by a process that died building it
CACHE_INSTEAD = "dataset.cache_dir=<a directory with room> or dataset.cache=memory"


def _build_cache(files: ImageFiles, cache: str, cache_dir: Path, key: str) -> Path:
    """Checks every file (and with cache=disk writes its pixels) into a staging folder renamed
    to cache_dir/key: processes building the same cache at once, on one machine or several
    sharing cache_dir, leave one whole copy; a full disk is a WriteError, not half a cache."""
    target = cache_dir / key
    staging = cache_dir / f".{key}.{socket.gethostname()}.{uuid.uuid4().hex}"
    try:
        staging.mkdir(parents=True)
    except OSError as e:
        raise WriteError.of(cache_dir, e, "nothing was written", instead=CACHE_INSTEAD) from None
    for old in cache_dir.glob(".*.*"):  # left by processes that died building a cache
        with contextlib.suppress(OSError):
            if old != staging and time.time() - old.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
    log.info("dataset.cache=%s: checking %d images%s, once for this folder (in %s)", cache, len(files),
             " and writing their pixels" if cache == "disk" else "", target)
    try:
        if cache == "disk":
            with open(staging / PIXELS, "wb") as f:  # the space taken now: a full disk is an OSError here,
                allocate = getattr(os, "posix_fallocate", None)  # not a SIGBUS in the map (Linux; not macOS)
                allocate(f.fileno(), 0, int(np.prod(files.shape))) if allocate else f.truncate(int(np.prod(files.shape)))
            pixels = np.memmap(staging / PIXELS, np.uint8, "r+", shape=files.shape)
            bad = _decode_all(files, lambda i, images: pixels.__setitem__(i, images))
            pixels.flush()
            del pixels
        else:
            bad = _decode_all(files, lambda i, images: None)
        (staging / "index.json").write_text(json.dumps({"version": CACHE_VERSION, "files": len(files),
                                                        "pixels": cache == "disk", "bad": bad}))
        if target.exists() and _read_index(target, len(files), cache, files.shape) is None:
            shutil.rmtree(target, ignore_errors=True)  # an older, damaged or checked-only cache: replaced
        with contextlib.suppress(OSError):  # another process finished first: its copy is the same
            staging.rename(target)
    except OSError as e:  # the staging folder goes (below); a cache already in place stays
        kept = "the cache already there is kept" if target.exists() else "no partial cache is left"
        raise WriteError.of(target, e, kept, instead=CACHE_INSTEAD) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if _read_index(target, len(files), cache, files.shape) is None:
        raise DataError(f"dataset.cache_dir={cache_dir}: {target} is not a usable cache and cannot be replaced; "
                        "delete it, or pass another dataset.cache_dir")
    return target


def default_cache_dir() -> Path:
    return keras_cache().parent / "cnn_image_folder"


# --- Loading ---------------------------------------------------------------------------------------

@register_dataset("image_folder")
def load(dataset):
    """The `Data` of `dataset` (a DatasetConfig with name image_folder); DataError for a bad folder."""
    root, has_splits = find(dataset.data_dir)
    if has_splits:
        class_names, train_paths, y_train = _scan(root / "train")
        _, test_paths, y_test = _scan(root / "test", class_names)
    else:
        class_names, train_paths, y_train = _scan(root)
        test_paths, y_test = [], np.zeros(0, np.int32)
    if dataset.image_size is not None and dataset.color_mode is not None:
        height, width = dataset.image_size
        channels = COLOR_MODES[dataset.color_mode]
    else:  # what the run was not told: the first training image's (the first that decodes)
        first, (first_height, first_width, first_channels) = _first_shape(train_paths)
        height, width = dataset.image_size or (first_height, first_width)
        channels = COLOR_MODES[dataset.color_mode] if dataset.color_mode else (3 if first_channels >= 3 else 1)
        guessed = ([f"dataset.image_size=[{height}, {width}]"] if dataset.image_size is None else []) + (
            [f"dataset.color_mode={'rgb' if channels == 3 else 'grayscale'}"] if dataset.color_mode is None else [])
        log.info("%s: the first training image's (%s)", ", ".join(guessed), first)

    all_paths = train_paths + test_paths
    labels = np.concatenate([y_train, y_test])
    key = folder_fingerprint(root, all_paths, (height, width, channels))
    files = ImageFiles(np.array([str(p) for p in all_paths]), height, width, channels)
    cache_dir = Path(dataset.cache_dir).expanduser() if dataset.cache_dir else default_cache_dir()
    images, bad = _prepare(files, dataset.cache, cache_dir, key)
    _bad_files_message(root, files, bad, dataset.skip_bad_files)
    good = np.setdiff1d(np.arange(len(files)), bad)
    train = good[good < len(train_paths)]
    test = good[good >= len(train_paths)]
    if not has_splits:
        names = class_names
        held = stratified_holdout(labels[train], len(class_names), dataset.test_split, TEST_SPLIT_SEED,
                                  lambda label, n: f"dataset.test_split={dataset.test_split}: class '{names[label]}' "
                                  f"has {plural(n, 'image')}, too few for one to test and one to train on; add images")
        test, train = train[held], np.delete(train, held)
    for split, chosen, where in (("training", train, root / "train" if has_splits else root),
                                 ("test", test, root / "test" if has_splits else root)):
        missing = sorted(set(range(len(class_names))) - set(labels[chosen].tolist()))
        if missing:
            raise DataError(f"{where}: class '{class_names[missing[0]]}' has no {split} image that decodes; "
                            "add some or remove the folder")
    data = Data("image_folder", images[train], labels[train], images[test], labels[test], tuple(class_names),
                fingerprint=f"{len(train)}+{len(test)}:{key[:12]}",
                test_names=tuple(str(all_paths[i].relative_to(root)) for i in test))
    log.info("dataset %s: %d classes (%s), %d training and %d test images, %dx%dx%d, cache=%s", root,
             len(class_names), ", ".join(class_names[:10]) + (", ..." if len(class_names) > 10 else ""),
             len(train), len(test), height, width, channels, dataset.cache)
    return data
