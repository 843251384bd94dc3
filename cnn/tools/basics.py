"""The chapter's opening, with real TensorFlow ops: convolution and pooling by hand.

    python -m cnn.basics --out docs/basics

A 3x3 toy image convolved with a 2x2 kernel of ones (VALID: 2x2, SAME: 3x3),
three filters at once, max pooling (VALID and SAME), then an MNIST digit
through a conv layer of 5 filters with stride 2 (14x14 maps) and a 2x2 max
pool (7x7 maps). Prints shapes and values and writes the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).resolve().parents[2] / "tests" / "data" / "mnist-sample"

TOY = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)  # (batch, height, width, channels)
ONES = np.ones((2, 2, 1, 1), np.float32)  # (height, width, in channels, out channels)
POOL = np.array([4, 3, 2, 1], np.float32).reshape(1, 2, 2, 1)


def toy_examples() -> dict:
    """The toy convolutions and poolings: name -> (1, H, W, C) array."""
    import tensorflow as tf

    three = np.concatenate([ONES, 10 * ONES, -ONES], axis=3)  # three 2x2 filters: 1, 10, -1
    return {
        "conv_valid": tf.nn.conv2d(TOY, ONES, strides=1, padding="VALID").numpy(),
        "conv_same": tf.nn.conv2d(TOY, ONES, strides=1, padding="SAME").numpy(),
        "conv_same_3_filters": tf.nn.conv2d(TOY, three, strides=1, padding="SAME").numpy(),
        "pool_valid": tf.nn.max_pool2d(POOL, ksize=2, strides=1, padding="VALID").numpy(),
        "pool_same": tf.nn.max_pool2d(POOL, ksize=2, strides=1, padding="SAME").numpy(),
    }


def digit_examples(image: np.ndarray, seed: int = 0) -> dict:
    """An MNIST digit (28, 28, 1) in [0, 1] through 5 random 3x3 filters, stride 2, and a max pool."""
    import tensorflow as tf

    filters = tf.random.stateless_normal((3, 3, 1, 5), seed=(seed, 0), stddev=0.01)
    conv = tf.nn.conv2d(image[None], filters, strides=2, padding="SAME")  # (1, 14, 14, 5)
    pool = tf.nn.max_pool2d(conv, ksize=2, strides=2, padding="SAME")  # (1, 7, 7, 5)
    return {"digit_conv": conv.numpy(), "digit_pool": pool.numpy()}


def _grid_figure(arrays: dict, path: Path):
    """Every channel of the (1, H, W, C) `arrays` side by side, values written in, all on one
    colour scale: the same value has the same shade in every panel. Returns the saved Figure."""
    from cnn.reporting.plots import _save, figure

    panels = [(name, a[0, :, :, c]) for name, a in arrays.items() for c in range(a.shape[-1])]
    vmin, vmax = min(p.min() for _, p in panels), max(p.max() for _, p in panels)
    fig = figure((2.2 * len(panels), 2.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, panel) in zip(axes.flat, panels):
        ax.imshow(panel, cmap="Greys", vmin=vmin, vmax=vmax)
        for (i, j), value in np.ndenumerate(panel):
            ax.text(j, i, f"{value:g}", ha="center", va="center", color="tab:red", fontsize=9)
        ax.set_title(f"{name}\n{panel.shape[0]}x{panel.shape[1]}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path)
    return fig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("basics"))
    parser.add_argument("--data-dir", default=str(SAMPLE), help="MNIST files (default: the test sample)")
    parser.add_argument("--index", type=int, default=0, help="test image index of the digit")
    args = parser.parse_args(argv)
    from cnn.runtime.console import import_tensorflow

    import_tensorflow()  # without its C++ start-up lines

    from cnn import data as data_lib
    from cnn.reporting import plots

    args.out.mkdir(parents=True, exist_ok=True)
    toy = toy_examples()
    print(f"toy image {TOY.shape}:\n{TOY[0, :, :, 0]}\nkernel {ONES.shape}: all ones")
    print(f"pooling input {POOL.shape}:\n{POOL[0, :, :, 0]}")
    for name, array in toy.items():
        print(f"{name} {array.shape}:\n{np.moveaxis(array[0], -1, 0)}")
    _grid_figure({"image": TOY, "conv_valid": toy["conv_valid"], "conv_same": toy["conv_same"]},
                 args.out / "toy_conv.png")
    _grid_figure({"3 filters (1, 10, -1), SAME": toy["conv_same_3_filters"]}, args.out / "toy_filters.png")
    _grid_figure({"image": POOL, "pool_valid": toy["pool_valid"], "pool_same": toy["pool_same"]},
                 args.out / "toy_pool.png")

    mnist = data_lib.load("mnist", args.data_dir, download=False)
    digit = mnist.x_test[args.index].astype(np.float32) / 255.0
    maps = digit_examples(digit)
    for name, array in maps.items():
        print(f"{name} {array.shape}")
    plots.image_grid(digit[None], [f"MNIST test #{args.index}"], args.out / "digit.png", columns=1)
    plots.feature_maps(maps["digit_conv"][0], "conv 3x3, 5 filters, stride 2, SAME", args.out / "digit_conv.png")
    plots.feature_maps(maps["digit_pool"][0], "max pool 2x2, stride 2, SAME", args.out / "digit_pool.png")
    print(f"figures in {args.out}/")


if __name__ == "__main__":
    main()
