"""Figures and summaries: the chapter's basics, learning curves, TensorBoard, evaluation plots, feature maps."""

import json
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf
from conftest import SAMPLE
from helpers import make_config

from cnn.reporting import plots
from cnn.tools import basics, visualize
from cnn.training import evaluate as evaluation
from cnn.training import train as training


def png(path: Path, width: int, height: int) -> np.ndarray:
    """The RGB pixels (height, width, 3) of a PNG, after checking its size and that it is no blank page."""
    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.shape[:2] == (height, width), path
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, path  # text, lines, shades
    return pixels


def test_toy_convolutions_and_pooling_match_hand_computation():
    toy = basics.toy_examples()
    # 2x2 ones over [[1,2,3],[4,5,6],[7,8,9]]: 1+2+4+5 = 12, 2+3+5+6 = 16, ...
    np.testing.assert_array_equal(toy["conv_valid"][0, :, :, 0], [[12, 16], [24, 28]])
    # SAME pads right and bottom with zeros: 3+6 = 9, 7+8 = 15, 9 alone = 9.
    np.testing.assert_array_equal(toy["conv_same"][0, :, :, 0], [[12, 16, 9], [24, 28, 15], [15, 17, 9]])
    three = toy["conv_same_3_filters"][0]
    np.testing.assert_array_equal(three[..., 1], 10 * three[..., 0])
    np.testing.assert_array_equal(three[..., 2], -three[..., 0])
    np.testing.assert_array_equal(toy["pool_valid"][0, :, :, 0], [[4]])
    np.testing.assert_array_equal(toy["pool_same"][0, :, :, 0], [[4, 3], [2, 1]])


def test_a_digit_gives_14x14_then_7x7_maps():
    maps = basics.digit_examples(np.random.default_rng(0).random((28, 28, 1), np.float32))
    assert maps["digit_conv"].shape == (1, 14, 14, 5) and maps["digit_pool"].shape == (1, 7, 7, 5)
    conv = maps["digit_conv"][0]
    np.testing.assert_allclose(maps["digit_pool"][0, 0, 0], conv[:2, :2].max(axis=(0, 1)))


def test_basics_entry_prints_and_writes_its_figures(tmp_path, capsys):
    basics.main(["--out", str(tmp_path), "--data-dir", str(SAMPLE)])
    assert "pooling input (1, 2, 2, 1):\n[[4. 3.]\n [2. 1.]]" in capsys.readouterr().out
    for name, width, height in [("toy_conv", 660, 260), ("toy_filters", 660, 260), ("toy_pool", 660, 260),
                                ("digit", 160, 180), ("digit_conv", 450, 140), ("digit_pool", 450, 140)]:
        png(tmp_path / f"{name}.png", width, height)


def colour_at(pixels: np.ndarray, ax, row: int, col: int) -> tuple:
    """The RGB drawn in cell (row, col) of an imshow panel, near its corner: the value is written at its centre."""
    x, y = ax.transData.transform((col - 0.3, row - 0.3))  # display pixels, y up; the PNG's rows go down
    return tuple(pixels[int(pixels.shape[0] - y), int(x)])


@pytest.mark.parametrize("panels, cells", [
    # 4 is the image's corner, the VALID pool's only value and the SAME pool's corner; 1 only in two panels.
    (lambda toy: {"image": basics.POOL, "valid": toy["pool_valid"], "same": toy["pool_same"]},
     [[(0, 0, 0), (1, 0, 0), (2, 0, 0)], [(0, 1, 1), (2, 1, 1)]]),
    # 9 is the image's last pixel, and two SAME convolution outputs; 12 the convolutions' first.
    (lambda toy: {"image": basics.TOY, "valid": toy["conv_valid"], "same": toy["conv_same"]},
     [[(0, 2, 2), (2, 0, 2), (2, 2, 2)], [(1, 0, 0), (2, 0, 0)]]),
], ids=["pool", "conv"])
def test_toy_figure_panels_share_one_colour_scale(tmp_path, panels, cells):
    fig = basics._grid_figure(panels(basics.toy_examples()), tmp_path / "toy.png")
    pixels = png(tmp_path / "toy.png", 660, 260)
    shades = [{colour_at(pixels, fig.axes[panel], row, col) for panel, row, col in same} for same in cells]
    assert all(len(shade) == 1 for shade in shades), shades  # one value, one shade, in every panel
    assert len(set.union(*shades)) == len(cells)  # and different values, different shades


def event_tags(directory: Path) -> set:
    tags = set()
    for path in directory.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags |= {value.tag for value in event.summary.value}
    return tags


def test_a_run_writes_curves_and_tensorboard_summaries(tmp_path):
    training.train_and_evaluate(make_config(tmp_path, epochs=2, summaries=True, summary_every_n_steps=3),
                                tmp_path / "run")  # 3 divides no epoch end: epoch summaries still come
    png(tmp_path / "run" / "learning_curves.png", 1000, 380)
    tags = event_tags(tmp_path / "ckpt" / "tensorboard")  # the checkpoint directory's: the run's one TensorBoard run
    assert {"train/loss", "train/grad_norm", "train/learning_rate", "epoch/loss", "epoch/accuracy",
            "epoch/val_loss", "epoch/val_accuracy", "epoch/lr", "train_inputs",
            "misclassified_validation_images", "final/val_accuracy", "final/test_accuracy"} <= tags, tags


def test_summaries_can_be_turned_off(tmp_path):
    training.train_and_evaluate(make_config(tmp_path, summaries=False), tmp_path / "run")
    assert not (tmp_path / "ckpt" / "tensorboard").exists() and not (tmp_path / "run" / "tensorboard").exists()
    assert (tmp_path / "run" / "learning_curves.png").exists()


@pytest.mark.parametrize("minutes, drawn", [(0, [1, 2, 3]), (1000, [1, 3])])
def test_learning_curves_are_redrawn_at_most_every_n_minutes_and_at_the_end(tmp_path, monkeypatch, minutes, drawn):
    epochs_drawn = []
    draw = plots.learning_curves
    monkeypatch.setattr(plots, "learning_curves", lambda rows, path: (epochs_drawn.append(len(rows)), draw(rows, path)))
    training.train_and_evaluate(make_config(tmp_path, epochs=3, summaries=False, plot_every_n_minutes=minutes),
                                tmp_path / "run")
    assert epochs_drawn == drawn
    png(tmp_path / "run" / "learning_curves.png", 1000, 380)


@pytest.mark.parametrize("epochs, ticks", [(1, [1]), (3, [1, 2, 3]), (5, [1, 2, 3, 4, 5]),
                                           (25, [5, 10, 15, 20, 25])])
def test_learning_curves_tick_whole_epochs_and_show_a_single_one(epochs, ticks):
    """Never 0.96 ... 1.04 around one epoch, or halves for a few; one epoch's points are discs, not dots."""
    rows = [{"epoch": e, "loss": 1 / e, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.6}
            for e in range(1, epochs + 1)]
    fig = plots.learning_curves_figure(rows)
    for ax in fig.axes:
        low, high = ax.get_xlim()
        assert (low, high) == (0.5, epochs + 0.5)
        assert [t for t in ax.get_xticks() if low <= t <= high] == ticks
        assert {line.get_marker() for line in ax.lines} == ({"o"} if epochs == 1 else {"."})
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "validation"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    where = tmp_path_factory.mktemp("trained")
    training.train_and_evaluate(make_config(where, epochs=1, summaries=False), where / "run")
    return where


def test_evaluation_plots(trained, tmp_path):
    results = evaluation.evaluate_checkpoint(make_config(trained, mode="eval"), tmp_path)
    matrix = np.loadtxt(tmp_path / "confusion_matrix.csv", delimiter=",", dtype=np.int64)
    assert matrix.shape == (10, 10) and matrix.sum() == 500  # the sample's test set
    assert np.trace(matrix) / 500 == pytest.approx(results["test_accuracy"], abs=1e-6)
    assert results["per_class_accuracy"]["3"] == pytest.approx(matrix[3, 3] / matrix[3].sum())
    png(tmp_path / "confusion_matrix.png", 700, 680)
    png(tmp_path / "per_class_accuracy.png", 650, 350)
    wrong = min(32, 500 - np.trace(matrix))  # shown 8 to a row, 180 pixels each
    png(tmp_path / "misclassified.png", 1280, 180 * -(-wrong // 8))


def test_misclassified_images_are_named_by_their_file_when_they_have_one():
    wrong, predictions, labels, classes = np.array([0, 2]), np.array([1, 0, 0]), np.array([0, 0, 1]), ("Bag", "Shirt")
    names = ["test/Shirt/00004.png", "test/Bag/00001.png", "train/Ankle boot/deep/folders/of/0000012.png"]
    first, long = plots.misclassified_titles(wrong, predictions, labels, classes, names)
    assert first == "test/Shirt/00004.png\nShirt (true Bag)"
    shown, truth = long.split("\n")
    assert len(shown) == plots.TITLE_CHARACTERS and shown.startswith("...") and names[2].endswith(shown[3:])
    assert shown.endswith("folders/of/0000012.png") and truth == "Bag (true Shirt)"  # the file and its folders
    assert plots.misclassified_titles(wrong, predictions, labels, classes) == [  # no files (MNIST): test set indices
        "#0 Shirt\n(true Bag)", "#2 Bag\n(true Shirt)"]


def test_feature_maps_of_a_checkpoint_go_next_to_it(trained, tmp_path):
    shutil.copytree(trained / "ckpt", tmp_path / "ckpt")
    visualize.main(["--checkpoint", str(tmp_path / "ckpt"), "--data-dir", str(SAMPLE), "--index", "3"])
    out = tmp_path / "ckpt" / "feature_maps"
    written = sorted(p.name for p in out.glob("0*.png"))
    assert [name[3:7] for name in written] == ["conv", "max_", "conv", "max_", "conv", "max_"]
    png(next(out.glob("01_*.png")), 1440, 230)  # 32 channels, 16 to a row
    png(out / "input.png", 160, 180)


def test_feature_maps_without_a_checkpoint_need_out(capsys):
    with pytest.raises(SystemExit) as exit_info:
        visualize.main(["--data-dir", str(SAMPLE)])
    assert exit_info.value.code == 2 and "--out is required without --checkpoint" in capsys.readouterr().err


def test_a_restored_model_has_the_trained_weights(trained):
    """Its accuracy is the one training reported; a fresh model's maps differ from its maps."""
    restored, data = visualize.load_model(str(trained / "ckpt"), "unused", "unused", str(SAMPLE))
    fresh, _ = visualize.load_model(None, "book_cnn", "mnist", str(SAMPLE))
    images = data.x_test.astype("float32") / 255.0
    accuracy = np.mean(np.argmax(restored(images, training=False), axis=-1) == data.y_test)
    reported = json.loads((trained / "run" / "results.json").read_text())["test_accuracy"]
    assert accuracy == pytest.approx(reported, abs=0.005) and accuracy > 0.5
    first_maps = [visualize.layer_outputs(model, images[3])[0][1] for model in (restored, fresh)]
    assert not np.allclose(*first_maps, atol=1e-3)


def test_layer_outputs_shapes_of_a_fresh_model():
    model, data = visualize.load_model(None, "bn_cnn", "mnist", str(SAMPLE))
    shapes = [maps.shape for _, maps in visualize.layer_outputs(model, data.x_test[0] / 255.0)]
    assert shapes == [(28, 28, 32), (14, 14, 32), (14, 14, 64), (7, 7, 64), (7, 7, 128), (4, 4, 128)]


def test_an_image_folders_misclassified_images_are_named_by_their_files(tmp_path, monkeypatch):
    """So that a user can find them: each title's first line is the file, relative to the folder."""
    from PIL import Image

    from cnn import data as data_lib
    from cnn.config import compose

    for i in range(12):
        path = tmp_path / "folder" / ("cats" if i % 2 else "dogs") / f"img {i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(path)
    config = compose("dataset=image_folder", f"dataset.data_dir={tmp_path / 'folder'}", "dataset.test_split=0.5",
                     f"dataset.cache_dir={tmp_path / 'cache'}")
    data = data_lib.load_dataset(config.dataset)
    titles = []
    monkeypatch.setattr(plots, "image_grid", lambda images, shown, path, columns=8: titles.extend(shown))
    evaluation.evaluation_plots(data, (data.y_test + 1) % 2, tmp_path)  # every one wrong
    assert len(titles) == len(data.y_test) == 6
    for title, label in zip(titles, data.y_test):
        name, verdict = title.split("\n")
        assert (tmp_path / "folder" / name).is_file() and name.split("/")[0] == data.class_names[label]
        assert verdict.endswith(f"(true {data.class_names[label]})")
