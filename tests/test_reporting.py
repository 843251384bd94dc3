"""What a run reports: TensorBoard summaries at their cadence, results.json fields, portability."""

import builtins
import sys
from pathlib import Path

import tensorflow as tf
from helpers import make_config

from cnn.reporting import epoch, history, summaries
from cnn.reporting import results as results_lib
from cnn.training import train as training


def scalar_steps(directory: Path, tag: str) -> list[int]:
    steps = []
    for path in directory.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return sorted(steps)


def test_training_scalars_come_every_n_steps_and_epoch_ones_every_epoch(tmp_path):
    training.train_and_evaluate(make_config(tmp_path, epochs=2, summaries=True, summary_every_n_steps=3),
                                tmp_path / "run")  # 18 steps an epoch
    tensorboard = tmp_path / "run" / "tensorboard"
    # A step's scalars carry the step count before its update: 0, 3, ..., 33 of 36 steps.
    assert scalar_steps(tensorboard, "train/loss") == list(range(0, 36, 3))
    assert scalar_steps(tensorboard, "epoch/val_accuracy") == [18, 36]
    assert scalar_steps(tensorboard, "epoch/test_accuracy") == []  # the test set: once, at the end
    assert scalar_steps(tensorboard, "final/test_accuracy") == [36]


def test_misclassified_descriptions_are_not_markdown_headings(tmp_path):
    import numpy as np

    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        summaries.write_epoch_summaries(dict.fromkeys(("loss", "accuracy", "test_loss", "test_accuracy", "lr"), 0.5),
                                        "test", np.zeros((3, 4, 4, 1), np.uint8), np.array([1, 0, 2]), np.array([1, 1, 1]),
                                        ("a", "b", "c"), step=1)
    writer.close()
    descriptions = [value.metadata.summary_description
                    for path in tmp_path.glob("events.out.tfevents.*")
                    for event in tf.compat.v1.train.summary_iterator(str(path)) for value in event.summary.value
                    if value.tag == "misclassified_test_images"]
    assert descriptions == ["test image 1: predicted a, true b; test image 2: predicted c, true b"]


def test_memory_is_reported_without_proc(monkeypatch):
    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc"):
            raise FileNotFoundError(path)  # as on macOS and Windows
        return real_open(path, *args, **kwargs)

    assert results_lib.rss_mb() > 10
    monkeypatch.setattr(builtins, "open", no_proc)
    assert results_lib.rss_mb() > 10  # the peak, from getrusage
    monkeypatch.setitem(sys.modules, "resource", None)  # as on Windows
    assert results_lib.rss_mb() is None


def test_every_epoch_row_has_its_wall_time_and_its_parts(tmp_path):
    training.train_and_evaluate(make_config(tmp_path, epochs=2, summaries=True), tmp_path / "run")
    rows = history.read_rows(tmp_path / "run" / "metrics.csv")
    for row in rows:
        parts = [row[k] for k in ("seconds", "evaluation_seconds", "checkpoint_seconds", "reporting_seconds")]
        assert all(p > 0 for p in parts) and row["wall_seconds"] >= sum(parts), row  # the parts lie inside it


def test_the_epoch_line_names_time_outside_the_parts():
    row = {"seconds": 60.0, "evaluation_seconds": 1.0, "checkpoint_seconds": 0.1, "reporting_seconds": 0.2}
    assert epoch.unaccounted_note({**row, "wall_seconds": 62.0}) == ""  # 0.7 s of 62: 1 %
    assert epoch.unaccounted_note({**row, "wall_seconds": 82.0}) == \
        "  wall 82.0 s: 20.7 s outside training, evaluation, checkpoint and reporting"
    short = {"seconds": 1.0, "evaluation_seconds": 0.1, "checkpoint_seconds": 0.0, "reporting_seconds": 0.0}
    assert epoch.unaccounted_note({**short, "wall_seconds": 1.5}) == ""  # under half a second
    assert epoch.unaccounted_note(row) == ""  # rows written before wall times were
