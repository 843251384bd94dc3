"""TensorBoard: the training scalars, the epoch metrics and images, the HParams record.

One TensorBoard run per training run: the event files live in the checkpoint directory's
tensorboard/, which every invocation of the run (resumed, rerun to more epochs) shares, and
an invocation resumed from step S first drops the events its predecessor wrote past S.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import tensorflow as tf

from cnn.config import Config
from cnn.data.image_store import as_array
from cnn.errors import ConfigError, WriteError, errno_of

log = logging.getLogger("cnn.reporting")

EVENTS_DIR = "tensorboard"  # in the checkpoint directory (results.json's tensorboard_dir)
EPOCH_END_TAGS = ("epoch/", "misclassified_")  # write_epoch_summaries': written once, at the epoch's end
HPARAMS_SESSION_TAG = "_hparams_/session_start_info"  # tensorboard.plugins.hparams.metadata's
PARTIAL_FILE = ".truncating"  # no "tfevents" in its name: TensorBoard never reads it


def summaries_enabled(config: Config) -> bool:
    """`summaries`, where null means: when TensorBoard (which tf.summary needs) is installed."""
    installed = importlib.util.find_spec("tensorboard") is not None
    if config.summaries and not installed:
        raise ConfigError("summaries=true needs TensorBoard: pip install -e \".[tensorboard]\" "
                          "(or pass summaries=false)")
    return installed if config.summaries is None else config.summaries


@contextlib.contextmanager
def summary_writer(config: Config, directory: Path, step: tf.Variable, ident: dict) -> Iterator[bool]:
    """The run's default tf.summary writer, into `directory` (the checkpoint directory)/tensorboard,
    recording training scalars every `summary_every_n_steps` steps; yields whether summaries are
    written at all. Opened after the restore: the events past the restored step go first
    (`truncate_events`), and the HParams session is written once per run, by the invocation
    that finds none (a run started from scratch, or whose events were lost)."""
    enabled = summaries_enabled(config)
    events = directory / EVENTS_DIR
    kept = truncate_events(events, int(step.numpy()))  # even when off: a later invocation may turn them on
    if enabled:  # the directory above: with the events as its root run, HParams would show no metrics
        log.info("TensorBoard: tensorboard --logdir %s (the run's events: %s)", directory, events)
    writer = tf.summary.create_file_writer(str(events)) if enabled else tf.summary.create_noop_writer()
    try:
        with writer.as_default(), tf.summary.record_if(lambda: step % config.summary_every_n_steps == 0):
            if enabled and HPARAMS_SESSION_TAG not in kept:
                write_hparams(ident, directory.name)
            yield enabled
    finally:
        in_flight = sys.exc_info()[0] is not None  # an error on its way out says what failed
        try:
            writer.close()  # flushes the last events
        except tf.errors.OpError as e:
            if not in_flight:
                if errno_of(e) is None:
                    raise
                raise WriteError.of(events, e, "the checkpoints are kept") from None


def truncate_events(directory: Path, step: int) -> set[str]:
    """Drops from the run's event files what a run resumed from the checkpoint at `step` writes
    again: every event past `step`, and at `step` all but the epoch's end, which it does not
    redo (the training scalars of `step` come from the step after the checkpoint, the inputs
    and `final/` from the invocation). Else TensorBoard shows those steps twice, or points of
    a timeline abandoned. Each file is rewritten whole and replaces the old one atomically (a
    crash leaves each file old or new; truncating again finishes the job) and keeps its name,
    so TensorBoard reads the files in the order they were written. Returns the tags left."""
    tags: set[str] = set()
    paths = sorted(p for p in directory.glob("*tfevents*") if p.is_file()) if directory.is_dir() else []
    for path in paths:
        records, complete = read_records(path)
        kept = [(raw, event) for raw, event in records if kept_at(event, step)]
        if len(kept) < len(records) or not complete:  # a file left with no summary goes
            summarized = any(event.HasField("summary") for _, event in kept)
            replace_records(path, [raw for raw, _ in kept] if summarized else [])
        tags |= {value.tag for _, event in kept for value in event.summary.value}
    return tags


def kept_at(event, step: int) -> bool:
    """Whether a run resumed at `step` keeps `event` (see `truncate_events`)."""
    if event.step < step:
        return True
    values = event.summary.value
    return event.step == step and bool(values) and all(v.tag.startswith(EPOCH_END_TAGS) for v in values)


def read_records(path: Path) -> tuple[list, bool]:
    """The file's records, raw and parsed, and whether it ended cleanly (a kill mid-write
    leaves a torn last record, dropped)."""
    records = []
    try:
        for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            records.append((raw, tf.compat.v1.Event.FromString(raw)))
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError):
        return records, False
    return records, True


def replace_records(path: Path, records: list) -> None:
    """Replaces the event file `path` by `records` (none: removes it), written completely to
    disk before the rename."""
    if not records:
        path.unlink()
        return
    partial = path.with_name(PARTIAL_FILE)
    try:
        with tf.io.TFRecordWriter(str(partial)) as writer:
            for raw in records:
                writer.write(raw)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, path)
    except (OSError, tf.errors.OpError) as e:  # a full disk: the old file stays, whole
        partial.unlink(missing_ok=True)
        if errno_of(e) is None:
            raise
        raise WriteError.of(path, e, "the events file is kept as it was; truncating again finishes "
                                     "the job") from None


def write_train_inputs(images, step: int) -> None:
    """Up to 8 images as the network is fed them (normalized, augmented)."""
    with tf.summary.record_if(True):
        tf.summary.image("train_inputs", images[:8], step=step, max_outputs=8)


SPLIT_WORDS = {"val": "validation", "test": "test"}


def write_epoch_summaries(row: dict, split: str, images, predictions, labels, class_names, step: int) -> None:
    """Per-epoch scalars and up to 8 misclassified images of the evaluated set (`split`:
    "val" or "test") for TensorBoard."""
    word = SPLIT_WORDS[split]
    with tf.summary.record_if(True):  # every epoch, whatever summary_every_n_steps says
        for key in ("loss", "accuracy", f"{split}_loss", f"{split}_accuracy", "lr"):
            tf.summary.scalar(f"epoch/{key}", row[key], step=step)
        wrong = np.flatnonzero(predictions != labels)[:8]
        if len(wrong):
            tf.summary.image(f"misclassified_{word}_images", as_array(images[wrong]), step=step, max_outputs=8,
                             description="; ".join(f"{word} image {i}: predicted {class_names[predictions[i]]}, "
                                                   f"true {class_names[labels[i]]}" for i in wrong))
    tf.summary.flush()  # on disk now: the epoch's checkpoint is saved before, and a resumed run skips its end


HPARAM_TYPES = (bool, int, float, str)


def write_hparams(ident: dict, run_name: str) -> None:
    """The run's settings for TensorBoard's HParams dashboard (one row per job of a sweep, with
    the `final/` metrics as its columns). Only settings with scalar values; not the data's digest."""
    from tensorboard.plugins.hparams import api as hp

    values = {k: v for k, v in ident.items() if k != "data" and isinstance(v, HPARAM_TYPES)}
    with tf.summary.record_if(True):
        hp.hparams(values, trial_id=run_name)


FINAL_METRICS = ("objective", "val_accuracy", "val_loss", "test_accuracy", "test_loss", "selected_epoch")


def write_final_summaries(results_: dict, step: int) -> None:
    """The run's outcome as `final/<metric>` scalars: the HParams dashboard's metric columns."""
    with tf.summary.record_if(True):
        for key in FINAL_METRICS:
            if isinstance(results_.get(key), (int, float)):
                tf.summary.scalar(f"final/{key}", results_[key], step=step)
