"""What a run reports: the epoch's log line, TensorBoard summaries, learning curves and
results.json (metrics.csv rows are written by `cnn.history`)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import math
import os
import sys
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

from cnn import history
from cnn.config import Config
from cnn.errors import CheckpointError, ConfigError
from cnn.image_folder import as_array

log = logging.getLogger(__name__)


def read_rows(path: Path) -> list[dict]:
    """The rows of a run's metrics.csv, or one clear error when it is damaged."""
    try:
        return history.read_rows(path)
    except ValueError as e:
        raise CheckpointError(f"{e}; repair or delete it (the checkpoints do not depend on it)") from None


def log_epoch(config: Config, row: dict, evaluation: dict, timings: dict, split: str = "test",
              best: bool = False) -> None:
    """The epoch's line: training and `split` ("val" or "test") metrics, speed, timings."""
    members = evaluation.get(f"member_{split}_accuracy")
    precise = f", precise BN {timings['precise_bn']:.2f} s" if "precise_bn" in timings else ""
    log.info("epoch %d/%d  loss %.4f  accuracy %.4f  %s loss %.4f  %s accuracy %.4f%s  %.1f s  "
             "%.0f images/s  (evaluation %.2f s, checkpoint %.2f s%s)%s%s", row["epoch"], config.epochs,
             row["loss"], row["accuracy"], split, row[f"{split}_loss"], split, row[f"{split}_accuracy"],
             "  (best)" if best else "", row["seconds"], row["images_per_sec"], timings["evaluation"],
             timings["checkpoint"], precise, "  members " + " ".join(f"{a:.4f}" for a in members) if members else "",
             unaccounted_note(row))


UNACCOUNTED = 0.03  # of the wall time: more than this outside the epoch's parts is worth a word


def unaccounted(row: dict) -> float:
    """Seconds of the epoch's wall time outside its parts (training, evaluation, checkpoint, reporting)."""
    parts = row["seconds"] + row["evaluation_seconds"] + row["checkpoint_seconds"] + row["reporting_seconds"]
    return row["wall_seconds"] - parts


def unaccounted_note(row: dict) -> str:
    """'  wall 45.1 s: 20.3 s outside training, evaluation, checkpoint and reporting', when that is
    more than 3 % of the wall time (and 0.5 s); else ''."""
    if "wall_seconds" not in row:
        return ""
    gap = unaccounted(row)
    if gap <= max(UNACCOUNTED * row["wall_seconds"], 0.5):
        return ""
    return (f"  wall {row['wall_seconds']:.1f} s: {gap:.1f} s outside training, evaluation, checkpoint and "
            "reporting")


def log_results(results_: dict) -> None:
    """The run's last lines: what was selected, and its test metrics, reported once."""
    selected, last = results_["selected"], results_["last"]
    if results_["protocol"] == "validation":
        log.info("selected epoch %d of %d by %s (%.4f; its checkpoint in best/): test accuracy %.4f, "
                 "test loss %.4f", selected["epoch"], last["epoch"], results_["monitor"], results_["objective"],
                 selected["test_accuracy"], selected["test_loss"])
        if last["step"] != selected["step"]:
            log.info("last epoch %d: val accuracy %.4f, test accuracy %.4f", last["epoch"],
                     last.get("val_accuracy", math.nan), last["test_accuracy"])
    else:
        log.info("test accuracy %.4f, test loss %.4f after %d steps (dataset.validation_split=0: the test "
                 "set was evaluated every epoch; nothing was selected)", results_["test_accuracy"],
                 results_["test_loss"], results_["steps"])


# --- TensorBoard ---------------------------------------------------------------------

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


# --- results.json ----------------------------------------------------------------------

def rss_mb() -> Optional[float]:
    """This process's resident memory in MB: now, from /proc (Linux); elsewhere its peak
    (getrusage, macOS); None where neither exists (Windows)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KB elsewhere


def results(config: Config, rows: list[dict], final: dict, step: int, directory: Path,
            checkpoint: Optional[str], status: str, first_step_seconds: Optional[float],
            stopped_early: bool = False) -> dict:
    """results.json of a training invocation.

    `final`: Trainer.final_evaluation's {"selected", "last"}. At the top level are the selected
    checkpoint's metrics (val_* and test_*) and the `objective` a sweep ranks by: the
    selected validation `monitor`, or without a validation set the last test accuracy.
    """
    selected, last = final["selected"], final["last"]
    validating = config.dataset.validation_split > 0
    monitor = config.monitor if validating else "test_accuracy"
    rates = [r["images_per_sec"] for r in rows if r["images_per_sec"] > 0]
    return {
        "status": status,  # how this invocation began: started, resumed (or skipped, when finished)
        "protocol": "validation" if validating else "test every epoch",
        "monitor": monitor,
        "objective": selected.get(monitor),
        "selected_epoch": selected["epoch"],
        **{k: v for k, v in selected.items() if k.startswith(("val_", "test_", "member_"))},
        "selected": selected,
        "last": last,
        "stopped_early": stopped_early,
        "early_stopping": dataclasses.asdict(config.early_stopping) if stopped_early else None,
        "epochs": rows[-1]["epoch"] if rows else 0,
        "steps": step,
        "train_images_per_sec": sum(rates) / len(rates) if rates else 0.0,
        "run_name": directory.name,
        "checkpoint": checkpoint,
        "best_checkpoint": selected["checkpoint"] if validating else None,
        "checkpoint_dir": str(directory),
        "first_step_seconds": first_step_seconds,  # from `started` to the first steps' end; None: none run
        "rss_mb": rss_mb(),
        "pid": os.getpid(),
    }


def write_results(results_: dict, *directories: Path) -> None:
    for directory in directories:
        history.write_json(directory / "results.json", results_)


def report_skipped(finished: dict, directory: Path, workdir: Path) -> dict:
    """A finished run rerun (e.g. a rerun sweep): its history and results, copied into `workdir`."""
    log.info("finished earlier (%d epochs, test accuracy %.4f): skipped; its results are in %s",
             finished["epochs"], finished["test_accuracy"], directory)
    history.write_rows(workdir / "metrics.csv", read_rows(directory / "metrics.csv"))
    skipped = {**finished, "status": "skipped"}
    write_results(skipped, workdir)
    return skipped
