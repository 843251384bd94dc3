"""What a run reports: TensorBoard summaries at their cadence, results.json fields, portability."""

import builtins
import io
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import tensorflow as tf
from helpers import make_config

from cnn.reporting import epoch, history, summaries
from cnn.reporting import results as results_lib
from cnn.sweeps.report_callback import tensorboard_command
from cnn.text import plural
from cnn.training import train as training
from cnn.training.controller import BAR_LINE, Progress


def scalar_steps(directory: Path, tag: str) -> list[int]:
    return event_steps(directory).get(tag, [])


def event_steps(directory: Path) -> dict[str, list[int]]:
    """{tag: the steps of its events, sorted, a repeat as often as it is written} of the event
    files in `directory`, as they are on disk now."""
    steps: dict[str, list[int]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    return {tag: sorted(s) for tag, s in steps.items()}


class OnDisk:
    """An epoch-end action (after the run's own): what the event files hold at that moment."""

    name = "on_disk"

    def __init__(self, directory: Path):
        self.directory, self.seen = directory, {}

    def __call__(self, end) -> None:
        self.seen[end.step] = event_steps(self.directory)


def train_as_users_do(tmp: Path) -> dict:
    """One run (18 steps an epoch, training scalars every 3) in the invocations a user meets:
    epochs=1, then epochs=2 (resumed at step 18); then as if killed past its checkpoint at 18
    (ckpt-36 deleted, the event file's last record torn) and rerun; then rerun once it has
    trained (results.json lost: evaluated only). What the run's event files held after each,
    and at the second invocation's epoch ends."""
    events, seen = tmp / "ckpt" / "tensorboard", {}
    config = lambda epochs: make_config(tmp, epochs=epochs, summaries=True, summary_every_n_steps=3)
    training.train_and_evaluate(config(1), tmp / "first")
    on_disk = OnDisk(events)
    training.train_and_evaluate(config(2), tmp / "second", actions=[on_disk])
    seen["two invocations"] = event_steps(events)
    for path in (tmp / "ckpt").glob("ckpt-36.*"):
        path.unlink()
    last = sorted(events.glob("events.out.tfevents.*"))[-1]
    last.write_bytes(last.read_bytes() + b"\x20\x00\x00\x00")
    training.train_and_evaluate(config(2), tmp / "killed")
    seen["killed, rerun"] = event_steps(events)
    (tmp / "ckpt" / "results.json").unlink()
    training.train_and_evaluate(config(2), tmp / "evaluated")
    seen["evaluated only"] = event_steps(events)
    return {"seen": seen, "epoch ends": on_disk.seen}


def test_a_run_is_one_tensorboard_run_however_many_invocations_it_took(tmp_path):
    """One training, several checks: the suite's time is short (each invocation costs seconds)."""
    run, events = train_as_users_do(tmp_path), tmp_path / "ckpt" / "tensorboard"
    assert {path.parent for path in tmp_path.rglob("events.out.tfevents.*")} == {events}  # not in the run dirs
    for when, steps in run["seen"].items():
        # A step's scalars carry the step count before its update: 0, 3, ..., 33 of 36 steps, each once.
        assert steps["train/loss"] == list(range(0, 36, 3)), when
        assert steps["epoch/val_accuracy"] == [18, 36], when
        assert "epoch/test_accuracy" not in steps, when  # the test set: once, at the end
        assert steps["final/test_accuracy"] == [36], when  # the last invocation's outcome
        assert steps["_hparams_/session_start_info"] == [0], when  # one HParams session: one row
    for name in ("first", "second", "killed", "evaluated"):
        assert history.read_json(tmp_path / name / "results.json")["tensorboard_dir"] == str(events.absolute())
    # No lost points: at an epoch's end (its checkpoint saved), its summaries and all before are on disk.
    at_the_end = run["epoch ends"][36]
    assert at_the_end["epoch/val_accuracy"] == [18, 36] and at_the_end["train/loss"] == list(range(0, 36, 3))
    assert "misclassified_validation_images" in at_the_end
    rows = history.read_rows(tmp_path / "ckpt" / "metrics.csv")  # epoch 2's: of a resumed invocation
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        parts = [row[k] for k in ("seconds", "evaluation_seconds", "checkpoint_seconds", "reporting_seconds")]
        assert all(p > 0 for p in parts) and row["wall_seconds"] >= sum(parts), row  # the parts lie inside it


def test_truncating_keeps_what_a_resumed_run_does_not_write_again(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        summaries.write_hparams({"lr": 0.1}, "run")
        for step in range(0, 30, 5):
            tf.summary.scalar("train/loss", 1.0, step=step)
        tf.summary.scalar("epoch/val_accuracy", 0.5, step=10)
        tf.summary.scalar("epoch/val_accuracy", 0.6, step=20)
    writer.close()
    later = tf.summary.create_file_writer(str(tmp_path))
    with later.as_default():
        tf.summary.scalar("train/loss", 1.0, step=30)  # a file with nothing left goes
    later.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    kept = summaries.truncate_events(tmp_path, 10)
    assert kept == {"_hparams_/session_start_info", "train/loss", "epoch/val_accuracy"}
    assert event_steps(tmp_path) == {"_hparams_/session_start_info": [0], "train/loss": [0, 5],
                                     "epoch/val_accuracy": [10]}  # step 10's training scalars: rewritten
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1 and not list(tmp_path.glob(".*"))
    (path,) = tmp_path.glob("events.out.tfevents.*")
    path.write_bytes(path.read_bytes() + b"\x20\x00\x00\x00")  # a kill in the middle of a record
    assert summaries.truncate_events(tmp_path, 10) == kept  # again: the torn record goes, nothing else
    assert event_steps(tmp_path)["train/loss"] == [0, 5]
    assert summaries.truncate_events(tmp_path, 0) == set() and not list(tmp_path.iterdir())  # from scratch
    assert summaries.truncate_events(tmp_path / "none", 10) == set()


def test_the_sweep_command_shows_each_jobs_run_and_the_experiment(tmp_path):
    jobs = [{"job": "0", "results": {"tensorboard_dir": "/c/a/tensorboard"}},
            {"job": "1", "results": {"status": "failed"}},
            {"job": "2", "results": {"tensorboard_dir": "/c/b/tensorboard"}},
            {"job": "3", "results": {"tensorboard_dir": "/c/a/tensorboard"}}]  # the same run, trained further
    assert tensorboard_command(tmp_path, jobs) == (f"tensorboard --logdir_spec job0+3:/c/a/tensorboard,"
                                                   f"job2:/c/b/tensorboard,hparams:{tmp_path}/tensorboard")
    assert results_lib.tensorboard_dir(tmp_path) is None  # summaries=false: no run to show


def test_misclassified_descriptions_are_not_markdown_headings(tmp_path):
    import numpy as np

    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        summaries.write_epoch_summaries(dict.fromkeys(("loss", "accuracy", "test_loss", "test_accuracy", "lr"), 0.5),
                                        "test", np.zeros((3, 4, 4, 1), np.uint8), np.array([1, 0, 2]), np.array([1, 1, 1]),
                                        ("a", "b", "c"), step=1)
        assert scalar_steps(tmp_path, "epoch/test_accuracy") == [1]  # flushed: on disk before the writer closes
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


def test_the_epoch_line_names_time_outside_the_parts():
    row = {"seconds": 60.0, "evaluation_seconds": 1.0, "checkpoint_seconds": 0.1, "reporting_seconds": 0.2}
    assert epoch.unaccounted_note({**row, "wall_seconds": 62.0}) == ""  # 0.7 s of 62: 1 %
    assert epoch.unaccounted_note({**row, "wall_seconds": 82.0}) == \
        "  wall 82.0 s: 20.7 s outside training, evaluation, checkpoint and reporting"
    short = {"seconds": 1.0, "evaluation_seconds": 0.1, "checkpoint_seconds": 0.0, "reporting_seconds": 0.0}
    assert epoch.unaccounted_note({**short, "wall_seconds": 1.5}) == ""  # under half a second
    assert epoch.unaccounted_note(row) == ""  # rows written before wall times were


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_line_while_the_progress_bar_shows_starts_a_line_of_its_own(monkeypatch):
    """The bar leaves its line open for its next update: a log line must not be glued to it."""
    out, console, log = Terminal(), logging.StreamHandler(), logging.getLogger("cnn.test_progress")
    monkeypatch.setattr(sys, "stdout", out)
    console.setStream(out)
    console.setFormatter(logging.Formatter("[log] %(message)s"))
    monkeypatch.setattr(log, "level", logging.INFO)
    metric = SimpleNamespace(result=lambda: 0.5)
    progress = Progress(None, SimpleNamespace(loss=metric, accuracy=metric), 18)  # None: shown on a terminal
    logging.getLogger().addHandler(console)
    try:
        progress.start(0)
        log.info("first 18 steps done")
        progress.update(9, 9)
        log.info("saved a checkpoint")
        progress.update(18, 9)  # the epoch's end: the bar ends its own line
        log.info("epoch 1/1")
        assert BAR_LINE not in console.filters  # nothing left on the handler once the bar has ended
    finally:
        logging.getLogger().removeHandler(console)
    text = out.getvalue()
    assert "18/18" in text and "loss: 0.5000" in text  # the bar was drawn
    logged = [line for line in text.split("\n") if "[log]" in line]
    assert logged == ["[log] first 18 steps done", "[log] saved a checkpoint", "[log] epoch 1/1"]
    assert "\n\n" not in text  # and no empty line: the bar's own line end is not doubled


def test_counts_read_in_the_singular_and_the_plural(caplog):
    assert (plural(1, "epoch"), plural(3, "epoch"), plural(0, "step")) == ("1 epoch", "3 epochs", "0 steps")
    assert (plural(1, "class", "classes"), plural(2, "class", "classes")) == ("1 class", "2 classes")
    caplog.set_level(logging.INFO, "cnn.reporting")
    epoch.log_results({"selected": {}, "last": {}, "protocol": "test", "test_accuracy": 0.5, "test_loss": 1.0,
                       "steps": 1})
    assert "test accuracy 0.5000, test loss 1.0000 after 1 step (" in caplog.text
