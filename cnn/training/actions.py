"""The duties at an epoch's end, one small object each, called in order and timed by the
controller (as Orbit's `Controller` calls its `Action`s).

Each action is `action(end)` on the `EpochEnd` record they share: `Evaluate` fills in the
evaluation and the epoch's row, the others read them. A new duty is a new object in
`default_actions`'s list, not another branch in the loop.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np

from cnn.checkpointing.directory import keep_best
from cnn.config import Config
from cnn.reporting import epoch as epoch_lines
from cnn.reporting import history, plots, summaries
from cnn.training import ema
from cnn.training.checkpointer import Checkpointer
from cnn.training.evaluator import Evaluator
from cnn.training.state import TrainState

log = logging.getLogger("cnn.training")


@dataclasses.dataclass
class EpochEnd:
    """What an epoch's end knows: filled in by the actions in turn."""

    epoch: int  # 0-based
    step: int
    train_seconds: float
    images: int
    last_epoch: bool
    reporting_seconds: float = 0.0  # reporting done before the epoch's end (TensorBoard's input images)
    evaluation: dict = dataclasses.field(default_factory=dict)
    predictions: Optional[np.ndarray] = None
    row: dict = dataclasses.field(default_factory=dict)
    best: bool = False
    timings: dict = dataclasses.field(default_factory=dict)
    stop: Optional[str] = None  # set by an action to end the run after this epoch (e.g. "pruned")


class RecomputeStatistics:
    """Precise batch-norm statistics (cnn/training/precise_bn.py) before the evaluation."""

    name = "precise_bn"

    def __init__(self, statistics, dataset):
        self.statistics, self.dataset = statistics, dataset

    def __call__(self, end: Optional[EpochEnd] = None) -> None:
        self.statistics.recompute(self.dataset)


class Averaged:
    """`action` run on the weights' moving average (ema.decay), swapped in around it only."""

    def __init__(self, action, state: TrainState):
        self.action, self.state, self.name = action, state, action.name

    def __call__(self, end: Optional[EpochEnd] = None) -> None:
        with ema.averaged(self.state):
            self.action(end)


class Evaluate:
    """The epoch's evaluation (validation, or the test set), and its row of metrics.csv."""

    name = "evaluation"

    def __init__(self, evaluator: Evaluator, state: TrainState, rows: list):
        self.evaluator, self.state, self.rows = evaluator, state, rows

    def __call__(self, end: EpochEnd) -> None:
        end.evaluation, end.predictions = self.evaluator.evaluate()
        s = self.evaluator.split
        end.row = {"epoch": end.epoch + 1, "step": end.step, "loss": float(self.state.loss.result()),
                   "accuracy": float(self.state.accuracy.result()), f"{s}_loss": end.evaluation[f"{s}_loss"],
                   f"{s}_accuracy": end.evaluation[f"{s}_accuracy"],
                   "lr": float(self.state.optimizer.learning_rate.numpy()),  # the rate of the next step
                   "seconds": end.train_seconds, "images_per_sec": end.images / end.train_seconds}
        self.rows.append(end.row)


def improves(value: float, reference: float, monitor: str, min_delta: float = 0.0) -> bool:
    """Whether `value` of `monitor` improves on `reference` by more than `min_delta` (any value
    improves on NaN, the reference of no epoch yet)."""
    if math.isnan(reference):
        return True
    return value - min_delta > reference if monitor.endswith("accuracy") else value + min_delta < reference


class Select:
    """The best checkpoint's record and early stopping's count, updated with the epoch's
    validation metric, in the state (so that a resumed run continues them exactly). The best
    is strictly better (a tie keeps the earlier); its checkpoint is kept by `Save`."""

    name = "select"

    def __init__(self, state: TrainState, config: Config):
        self.state, self.monitor, self.min_delta = state, config.monitor, config.early_stopping.min_delta

    def __call__(self, end: EpochEnd) -> None:
        state, value = self.state, end.row[self.monitor]
        end.best = improves(value, float(state.best_value.numpy()), self.monitor)
        if end.best:
            state.best_value.assign(value)
            state.best_step.assign(end.step)
        if improves(value, float(state.reference.numpy()), self.monitor, self.min_delta):
            state.reference.assign(value)
            state.wait.assign(0)
        else:
            state.wait.assign_add(1)


class Record:
    """metrics.csv, in the checkpoint directory (the run's whole history) and in workdir. It goes
    before the save: if the save never happens, the resumed run drops the row."""

    name = "record"

    def __init__(self, rows: list, *directories: Path):
        self.rows, self.paths = rows, [d / "metrics.csv" for d in directories]

    def __call__(self, end: Optional[EpochEnd] = None) -> None:
        for path in self.paths:
            history.write_rows(path, self.rows)


class Save:
    """The epoch's checkpoint; the best one also kept in best/ (by the chief)."""

    name = "checkpoint"

    def __init__(self, checkpointer: Checkpointer, directory: Optional[Path]):
        self.checkpointer, self.directory = checkpointer, directory  # directory None: not the chief

    def __call__(self, end: EpochEnd) -> None:
        self.checkpointer.save(end.step)
        if end.best and self.directory is not None:
            keep_best(self.directory, end.step)


class Summarize:
    """The epoch's TensorBoard scalars and misclassified images."""

    name = "summaries"

    def __init__(self, evaluator: Evaluator, class_names):
        self.evaluator, self.class_names = evaluator, class_names

    def __call__(self, end: EpochEnd) -> None:
        e = self.evaluator
        summaries.write_epoch_summaries(end.row, e.split, e.x_eval, end.predictions, e.y_eval, self.class_names,
                                        end.step)


class DrawCurves:
    """learning_curves.png, after the last epoch and at most every `every_n_minutes` between."""

    name = "curves"

    def __init__(self, rows: list, path: Path, every_n_minutes: float):
        self.rows, self.path, self.every_n_minutes = rows, path, every_n_minutes
        self.drawn = -math.inf  # time.monotonic() of the last drawing

    def __call__(self, end: Optional[EpochEnd] = None) -> None:
        if curves_due(time.monotonic(), self.drawn, self.every_n_minutes, end is None or end.last_epoch):
            plots.learning_curves(self.rows, self.path)
            self.drawn = time.monotonic()


def curves_due(now: float, drawn_at: float, every_n_minutes: float, last_epoch: bool) -> bool:
    """Whether an epoch end redraws learning_curves.png: after the last epoch, and otherwise
    once `every_n_minutes` have passed since the last drawing (-inf: never drawn)."""
    return last_epoch or now - drawn_at >= 60 * every_n_minutes


class LogEpoch:
    """The epoch's line, and its row's wall time (from the previous epoch's line to this one's)
    beside the time of its parts; then metrics.csv again, with them."""

    name = "log"

    def __init__(self, config: Config, split: str, record: Optional[Record]):
        self.config, self.split, self.record = config, split, record
        self.line_end = time.perf_counter()

    def __call__(self, end: EpochEnd) -> None:
        timings = {"train": end.train_seconds, **end.timings}
        end.row.update(epoch_parts(timings, end.reporting_seconds), wall_seconds=time.perf_counter() - self.line_end)
        epoch_lines.log_epoch(self.config, end.row, end.evaluation, timings, self.split, end.best)
        if self.record is not None:
            self.record()
        self.line_end = time.perf_counter()


def epoch_parts(timings: dict, reporting_seconds: float = 0.0) -> dict:
    """The epoch's time by part, for metrics.csv, from the actions' timings."""
    return {"evaluation_seconds": timings.get("precise_bn", 0.0) + timings["evaluation"],
            "checkpoint_seconds": timings["checkpoint"],
            "reporting_seconds": reporting_seconds + sum(timings.get(k, 0.0) for k in ("record", "summaries", "curves"))}
