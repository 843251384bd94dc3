"""Figures and summaries: the chapter's basics, learning curves, TensorBoard, evaluation plots, feature maps."""

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf
from conftest import SAMPLE
from test_training import make_config

from cnn import basics, plots, training, visualize


def png_shape(path: Path):
    return matplotlib.image.imread(path).shape


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


def test_basics_entry_writes_its_figures(tmp_path):
    basics.main(["--out", str(tmp_path), "--data-dir", str(SAMPLE)])
    for name in ("toy_conv", "toy_filters", "toy_pool", "digit", "digit_conv", "digit_pool"):
        assert len(png_shape(tmp_path / f"{name}.png")) == 3, name


def event_tags(directory: Path) -> set:
    tags = set()
    for path in directory.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags |= {value.tag for value in event.summary.value}
    return tags


def test_a_run_writes_curves_and_tensorboard_summaries(tmp_path):
    training.train_and_evaluate(make_config(tmp_path, epochs=2, summaries=True, summary_every_n_steps=3),
                                tmp_path / "run")  # 3 divides no epoch end: epoch summaries still come
    assert png_shape(tmp_path / "run" / "learning_curves.png")[:2] == (380, 1000)
    tags = event_tags(tmp_path / "run" / "tensorboard")
    assert {"train/loss", "train/grad_norm", "train/learning_rate", "epoch/loss", "epoch/accuracy",
            "epoch/test_loss", "epoch/test_accuracy", "epoch/lr", "train_inputs",
            "misclassified_test_images"} <= tags, tags


def test_summaries_can_be_turned_off(tmp_path):
    training.train_and_evaluate(make_config(tmp_path, summaries=False), tmp_path / "run")
    assert not (tmp_path / "run" / "tensorboard").exists()
    assert (tmp_path / "run" / "learning_curves.png").exists()


@pytest.mark.parametrize("minutes, drawn", [(0, [1, 2, 3]), (1000, [1, 3])])
def test_learning_curves_are_redrawn_at_most_every_n_minutes_and_at_the_end(tmp_path, monkeypatch, minutes, drawn):
    epochs_drawn = []
    draw = plots.learning_curves
    monkeypatch.setattr(plots, "learning_curves", lambda rows, path: (epochs_drawn.append(len(rows)), draw(rows, path)))
    training.train_and_evaluate(make_config(tmp_path, epochs=3, summaries=False, plot_every_n_minutes=minutes),
                                tmp_path / "run")
    assert epochs_drawn == drawn
    assert png_shape(tmp_path / "run" / "learning_curves.png")[:2] == (380, 1000)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    where = tmp_path_factory.mktemp("trained")
    training.train_and_evaluate(make_config(where, epochs=1, summaries=False), where / "run")
    return where


def test_evaluation_plots(trained, tmp_path):
    results = training.evaluate_checkpoint(make_config(trained, mode="eval"), tmp_path)
    matrix = np.loadtxt(tmp_path / "confusion_matrix.csv", delimiter=",", dtype=np.int64)
    assert matrix.shape == (10, 10) and matrix.sum() == 500  # the sample's test set
    assert np.trace(matrix) / 500 == pytest.approx(results["test_accuracy"], abs=1e-6)
    assert results["per_class_accuracy"]["3"] == pytest.approx(matrix[3, 3] / matrix[3].sum())
    for name in ("confusion_matrix", "per_class_accuracy", "misclassified"):
        assert len(png_shape(tmp_path / f"{name}.png")) == 3, name


def test_feature_maps_of_a_checkpoint(trained, tmp_path):
    visualize.main(["--checkpoint", str(trained / "ckpt"), "--data-dir", str(SAMPLE), "--index", "3",
                    "--out", str(tmp_path)])
    written = sorted(p.name for p in tmp_path.glob("0*.png"))
    assert len(written) == 6 and [name[3:7] for name in written] == ["conv", "max_", "conv", "max_", "conv", "max_"]
    assert (tmp_path / "input.png").exists()


def test_layer_outputs_shapes_of_a_fresh_model():
    model, data = visualize.load_model(None, "bn_cnn", "mnist", str(SAMPLE))
    shapes = [maps.shape for _, maps in visualize.layer_outputs(model, data.x_test[0] / 255.0)]
    assert shapes == [(28, 28, 32), (14, 14, 32), (14, 14, 64), (7, 7, 64), (7, 7, 128), (4, 4, 128)]
