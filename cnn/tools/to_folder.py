"""Writes a built-in dataset out as image files, one folder per class (Keras' layout).

    python -m cnn.to_folder OUT --dataset fashion_mnist --data-dir /path/to/fashion-mnist [--limit N]

gives OUT/train/<class>/<index>.png and OUT/test/<class>/<index>.png: images to try
`python -m cnn.predict` on, or any tool that reads class folders. Class names become folder
names with "/" replaced by "-" (Fashion-MNIST's "T-shirt/top" is "T-shirt-top").
`--limit N` writes the first N images of each split only. An existing OUT is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cnn.errors import CnnError
from cnn.text import plural


def folder_name(class_name: str) -> str:
    return class_name.replace("/", "-")


def write_split(images: np.ndarray, labels: np.ndarray, class_names, directory: Path) -> int:
    """PNG files in directory/<class>/<index>.png; returns how many."""
    import tensorflow as tf

    for name in class_names:
        (directory / folder_name(name)).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        tf.io.write_file(str(directory / folder_name(class_names[label]) / f"{i:05d}.png"), tf.io.encode_png(image))
    return len(images)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, metavar="OUT")
    parser.add_argument("--dataset", default="mnist", help="mnist (default), fashion_mnist or cifar10")
    parser.add_argument("--data-dir", help="the dataset's files (as dataset.data_dir); default: the Keras cache")
    parser.add_argument("--limit", type=int, help="the first N images of each split only")
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"error: {args.out} exists; give a new directory", file=sys.stderr)
        return 1

    from cnn.runtime.console import import_tensorflow

    import_tensorflow()
    from cnn import data as data_lib

    try:
        data = data_lib.load(args.dataset, args.data_dir, download=args.data_dir is None)
    except CnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = slice(None, args.limit)
    written = sum(write_split(x[n], y[n], data.class_names, args.out / split)
                  for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)))
    print(f"wrote {plural(written, 'image')} of {plural(len(data.class_names), 'class', 'classes')} to {args.out}/train and {args.out}/test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
