"""Choosing on validation, reporting on test: the split, the best checkpoint, early stopping."""

import json
import re
import shutil

import keras
import numpy as np
import pytest
from conftest import SAMPLE, write_idx
from helpers import make_config

from cnn import data
from cnn.checkpointing import directory as checkpoint
from cnn.reporting import sweep_report as report
from cnn.training import evaluate as evaluation
from cnn.training import train as training
from cnn.errors import CheckpointError, ConfigError, DataError

# On the MNIST sample (1,800 training images after the split, 18 steps an epoch), lr=0.03 with a
# patience of 1 stops at epoch 3, which does not improve on epoch 2's validation accuracy: epoch 2
# is selected. (lr=0.003 stops at epoch 4 and selects epoch 3.)
STOPS_EARLY = ("lr=0.03", "early_stopping.patience=1", "epochs=12")


def numbered(n: int, labels: np.ndarray) -> data.Data:
    """A dataset whose training image i holds its index: pixels i % 256 and i // 256."""
    i = np.arange(n)
    x = np.stack([i % 256, i // 256], axis=1).astype(np.uint8).reshape(n, 2, 1, 1)
    return data.Data("toy", x, labels, x[:3], labels[:3], tuple(str(c) for c in range(labels.max() + 1)))


def indices(images: np.ndarray) -> list:
    return [int(image[0, 0, 0]) + 256 * int(image[1, 0, 0]) for image in images]


def test_the_split_is_stratified_disjoint_deterministic_and_ignores_the_seed():
    labels = np.repeat(np.arange(4), [100, 50, 30, 7]).astype(np.int32)
    full = numbered(len(labels), labels)
    keras.utils.set_random_seed(1)
    first = data.split_validation(full, 0.1)
    keras.utils.set_random_seed(2)  # a job's seed sets every global generator: none of them is used
    second = data.split_validation(full, 0.1)
    assert indices(first.x_val) == indices(second.x_val)
    assert indices(first.x_train) == indices(second.x_train)
    assert np.bincount(first.y_val).tolist() == [10, 5, 3, 1]  # round(0.1 * count), at least one
    assert sorted(indices(first.x_val) + indices(first.x_train)) == list(range(len(labels)))  # disjoint, whole
    assert indices(first.x_train) == sorted(indices(first.x_train))  # the training images keep their order
    assert first.y_val.tolist() == labels[indices(first.x_val)].tolist()  # labels travel with their images
    assert first.y_train.tolist() == labels[indices(first.x_train)].tolist()
    assert data.split_validation(full, 0) is full


def test_a_class_too_small_to_split_is_one_clear_line():
    labels = np.array([0, 0, 0, 1], np.int32)
    with pytest.raises(DataError, match=r"validation_split=0.1: class 1 \('1'\) has 1 training image, too few"):
        data.split_validation(numbered(4, labels), 0.1)


@pytest.mark.parametrize("overrides,message", [
    (["dataset.validation_split=1"], "must be in [0, 1)"),
    (["monitor=val_acc"], "must be one of val_accuracy, val_loss"),
    (["early_stopping.patience=-1"], "must be >= 0, or null"),
    (["dataset.validation_split=0", "early_stopping.patience=2"], "needs a validation set"),
    (["checkpoint.eval=first"], "must be best, latest or null"),
])
def test_bad_selection_settings_are_one_clear_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_config(tmp_path, *overrides)


def garbage_test_labels(tmp_path):
    """The MNIST sample with its test labels replaced by random ones."""
    copy = tmp_path / "garbage"
    shutil.copytree(SAMPLE, copy)
    sample = data.load("mnist", str(SAMPLE))
    (label_file,) = [p for p in copy.iterdir() if p.name.startswith("t10k-labels")]
    label_file.unlink()
    labels = np.random.default_rng(0).integers(0, 10, len(sample.y_test)).astype(np.uint8)
    write_idx(copy / "t10k-labels-idx1-ubyte", labels)
    return copy


def test_nothing_the_test_set_says_changes_what_is_selected(tmp_path):
    garbage = garbage_test_labels(tmp_path)
    runs = {}
    for name, data_dir in (("real", SAMPLE), ("garbage", garbage)):
        for lr in ("0.03", "0.003"):
            where = tmp_path / f"{name}-{lr}"
            runs[name, lr] = training.train_and_evaluate(
                make_config(where, f"lr={lr}", "early_stopping.patience=1", "epochs=12", data_dir=data_dir),
                where / "run")
            job = tmp_path / f"sweep-{name}" / lr
            (job / ".hydra").mkdir(parents=True)
            (job / ".hydra" / "overrides.yaml").write_text(f"- lr={lr}\n")
            (job / "results.json").write_text(json.dumps(runs[name, lr]))
    for lr in ("0.03", "0.003"):
        real, bad = runs["real", lr], runs["garbage", lr]
        for key in ("objective", "selected_epoch", "val_accuracy", "val_loss", "epochs", "stopped_early"):
            assert real[key] == bad[key], key
        assert real["selected"]["step"] == bad["selected"]["step"]
        assert real["test_accuracy"] != bad["test_accuracy"]  # the test set did change
        assert bad["test_accuracy"] < 0.3
    ranking = lambda name: [row[0] for row in report.table(report.collect(tmp_path / f"sweep-{name}"))[1]]
    assert ranking("real") == ranking("garbage")


def test_the_best_checkpoint_is_kept_apart_from_the_rotation_and_evaluated(tmp_path):
    config = make_config(tmp_path, *STOPS_EARLY, checkpoint={"keep": 1, "every_n_steps": 5})
    results = training.train_and_evaluate(config, tmp_path / "run")
    selected, last = results["selected"], results["last"]
    assert results["stopped_early"] and last["epoch"] < 12
    assert selected["epoch"] < last["epoch"]  # the case that needs a kept best
    ckpt = tmp_path / "ckpt"
    assert [p.name for p in ckpt.glob("ckpt-*.index")] == [f"ckpt-{last['step']}.index"]  # rotated away ...
    assert checkpoint.best_checkpoint(ckpt) == str(ckpt / "best" / f"ckpt-{selected['step']}")  # ... but kept
    assert results["best_checkpoint"] == selected["checkpoint"] == checkpoint.best_checkpoint(ckpt)
    best = evaluation.evaluate_checkpoint(make_config(tmp_path, *STOPS_EARLY, mode="eval"), tmp_path / "e1")
    assert (best["which"], best["steps"]) == ("best", selected["step"])
    assert (best["test_accuracy"], best["test_loss"]) == (results["test_accuracy"], results["test_loss"])
    latest = evaluation.evaluate_checkpoint(
        make_config(tmp_path, *STOPS_EARLY, "checkpoint.eval=latest", mode="eval"), tmp_path / "e2")
    assert (latest["which"], latest["steps"]) == ("latest", last["step"])
    assert latest["test_accuracy"] == last["test_accuracy"]
    # Rerunning the command: the run has stopped; nothing trains, nothing changes.
    again = training.train_and_evaluate(config, tmp_path / "run2")
    assert again["status"] == "skipped" and again["selected"] == selected
    # A larger patience trains on from where early stopping ended the run.
    longer = training.train_and_evaluate(make_config(tmp_path, *STOPS_EARLY[:1], "early_stopping.patience=50",
                                                     "epochs=5", checkpoint={"keep": 1, "every_n_steps": 5}),
                                         tmp_path / "run3")
    assert longer["status"] == "resumed" and longer["epochs"] == 5 and not longer["stopped_early"]


def test_a_lost_copy_of_the_best_checkpoint_is_made_again_on_resume(tmp_path):
    """A run killed between an epoch's save and the copy into best/ repairs it when rerun."""
    training.train_and_evaluate(make_config(tmp_path, epochs=1), tmp_path / "run")
    shutil.rmtree(tmp_path / "ckpt" / "best")
    (tmp_path / "ckpt" / "results.json").unlink()
    results = training.train_and_evaluate(make_config(tmp_path, epochs=1), tmp_path / "run2")
    assert results["best_checkpoint"] == str(tmp_path / "ckpt" / "best" / "ckpt-18")
    assert checkpoint.best_checkpoint(tmp_path / "ckpt") == results["best_checkpoint"]


def test_without_a_validation_set_the_test_set_is_evaluated_every_epoch_and_so_labeled(tmp_path):
    results = training.train_and_evaluate(make_config(tmp_path, "dataset.validation_split=0", epochs=2),
                                          tmp_path / "run")
    assert results["protocol"] == "test every epoch" and results["monitor"] == "test_accuracy"
    assert results["objective"] == results["test_accuracy"] and results["best_checkpoint"] is None
    rows = json.loads(json.dumps(results))["last"]
    assert rows["epoch"] == 2 and rows["step"] == 40  # 2,000 training images, none held out
    assert not (tmp_path / "ckpt" / "best").exists()
    with pytest.raises(CheckpointError, match="has no best checkpoint.*checkpoint.eval=latest"):
        evaluation.evaluate_checkpoint(make_config(tmp_path, "dataset.validation_split=0", "checkpoint.eval=best",
                                                   mode="eval"), tmp_path / "eval")
