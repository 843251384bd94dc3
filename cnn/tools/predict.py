"""Classifies image files with an export (`python train.py mode=export ...`).

    python -m cnn.tools.predict EXPORT_DIR IMAGE... [--top K] [--json]

Prints one line per image: its path, the predicted class and its probability (with
`--top K`, the K most probable). `--json` prints one JSON document instead. Needs
TensorFlow and the export only: no config, no checkpoint, no Hydra.

Images are read as `dataset=image_folder` reads them for training (PNG, JPEG, BMP,
GIF: its first frame). One with another channel count than the model takes is
converted (RGB to grayscale with TensorFlow's luma weights, grayscale to RGB by
repetition, alpha dropped); one of another size is resized (bilinear, as Keras'
image_dataset_from_directory does, then rounded to uint8); each conversion is named
on stderr. Every image is read before any is classified: a file that cannot be read
or decoded stops the command with one line naming it, and nothing is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cnn.errors import CnnError
from cnn.text import plural


class PredictError(CnnError):
    """An export or image that cannot be used; the message names it."""


def load_export(directory: Path):
    """(serving function, labels, (H, W, C)) of an export directory; PredictError if it is not one.
    Its SavedModel is a TensorFlow graph that runs as it was written: load only exports you trust."""
    import tensorflow as tf

    write_one = "write one with `python train.py mode=export <the run's settings>`"
    if not directory.exists():
        raise PredictError(f"{directory}: no such directory; pass an export (<checkpoint dir>/export), or {write_one}")
    labels_file, saved = directory / "labels.txt", directory / "saved_model"
    if not (saved / "saved_model.pb").is_file() or not labels_file.is_file():
        raise PredictError(f"{directory}: not an export (it needs saved_model/ and labels.txt); {write_one}")
    try:
        serve = tf.saved_model.load(str(saved)).signatures["serving_default"]
    except Exception as e:  # noqa: BLE001  (damaged files fail in many ways)
        raise PredictError(f"{saved}: cannot load it ({str(e).strip().splitlines()[0][:200]}); export again") from None
    labels = labels_file.read_text().splitlines()
    shape = tuple(serve.structured_input_signature[1]["images"].shape[1:])
    return serve, labels, shape


def _read_bytes(path: Path) -> bytes:
    """The file's contents; PredictError naming it when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PredictError(f"{path}: a directory, not an image file") from None
    except OSError as e:  # no permission, an I/O error
        raise PredictError(f"{path}: cannot read it ({e.strerror or e})") from None


def read_image(path: Path, shape: tuple, notes: list):
    """The image at `path` as uint8 (H, W, C) of the export's shape, converted as training's
    image folders are (`cnn.data.image_store.decode`); conversions go to `notes`."""
    import tensorflow as tf

    from cnn.data.image_store import UndecodableImage, decode, decode_native

    height, width, channels = shape
    contents = _read_bytes(path)
    try:
        have = decode_native(contents).shape
    except UndecodableImage as e:
        raise PredictError(f"{path}: not a decodable image ({e.message})") from None
    if have[-1] != channels:
        notes.append(f"{path}: {plural(have[-1], 'channel')} converted to {channels}, as the model takes")
    if tuple(have[:2]) != (height, width):
        notes.append(f"{path}: resized from {have[1]}x{have[0]} to {width}x{height}")
    with tf.device("/CPU:0"):  # where tf.data decodes for training: the same arithmetic
        return decode(contents, height, width, channels)


def predict(directory: Path, paths: list[Path], top: int = 1) -> tuple[list[dict], list[str]]:
    """[{"path", "predictions": [{"class", "id", "probability"}, ...]}] for each image, best first,
    and the notes on conversions."""
    import numpy as np
    import tensorflow as tf

    serve, labels, shape = load_export(directory)
    notes: list[str] = []
    images = tf.stack([read_image(p, shape, notes) for p in paths])
    probabilities = np.concatenate([serve(images=images[i:i + 256])["probabilities"].numpy()
                                    for i in range(0, len(paths), 256)])
    results = []
    for path, row in zip(paths, probabilities):
        best = np.argsort(-row, kind="stable")[:top]
        results.append({"path": str(path), "predictions": [
            {"class": labels[i], "id": int(i), "probability": float(row[i])} for i in best]})
    return results, notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="EXPORT_DIR: <checkpoint dir>/export, from `python train.py mode=export`")
    parser.add_argument("export_dir", type=Path, metavar="EXPORT_DIR")
    parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    parser.add_argument("--top", type=int, default=1, help="the K most probable classes (default 1)")
    parser.add_argument("--json", action="store_true", help="one JSON document, for machines")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error("--top must be >= 1")

    from cnn.runtime.console import import_tensorflow

    import_tensorflow()
    try:
        results, notes = predict(args.export_dir, args.images, args.top)
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['path']}\t" + ", ".join(f"{p['class']} {p['probability']:.4f}" for p in r["predictions"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
