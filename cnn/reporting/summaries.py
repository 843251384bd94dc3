"""TensorBoard: the training scalars, the epoch metrics and images, the HParams record."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Iterator

import numpy as np
import tensorflow as tf

from cnn.config import Config
from cnn.data.image_store import as_array
from cnn.errors import ConfigError


def summaries_enabled(config: Config) -> bool:
    """`summaries`, where null means: when TensorBoard (which tf.summary needs) is installed."""
    installed = importlib.util.find_spec("tensorboard") is not None
    if config.summaries and not installed:
        raise ConfigError("summaries=true needs TensorBoard: pip install -e \".[tensorboard]\" "
                          "(or pass summaries=false)")
    return installed if config.summaries is None else config.summaries


@contextlib.contextmanager
def summary_writer(config: Config, workdir: Path, step: tf.Variable) -> Iterator[bool]:
    """The run's default tf.summary writer (workdir/tensorboard), recording training scalars
    every `summary_every_n_steps` steps; yields whether summaries are written at all."""
    enabled = summaries_enabled(config)
    writer = (tf.summary.create_file_writer(str(workdir / "tensorboard")) if enabled
              else tf.summary.create_noop_writer())
    try:
        with writer.as_default(), tf.summary.record_if(lambda: step % config.summary_every_n_steps == 0):
            yield enabled
    finally:
        writer.close()


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


def curves_due(now: float, drawn_at: float, every_n_minutes: float, last_epoch: bool) -> bool:
    """Whether an epoch end redraws learning_curves.png: after the last epoch, and otherwise
    once `every_n_minutes` have passed since the last drawing (-inf: never drawn)."""
    return last_epoch or now - drawn_at >= 60 * every_n_minutes
