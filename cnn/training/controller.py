"""When: the outer loop over epochs and compiled chunks of steps, stops agreed between workers,
mid-epoch checkpoints, and the epoch's end (as Orbit's `Controller` decides when).

What a step does is `cnn.training.steps` (`train_step` inside the compiled loop), what an
evaluation is `cnn.training.evaluator`, and the duties at an epoch's end are the actions of
`cnn.training.actions`, called in order and timed.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import keras
import tensorflow as tf

from cnn import data as data_lib
from cnn.config import Config
from cnn.data import augment
from cnn.reporting import history, summaries
from cnn.runtime.distribute import Distribution
from cnn.runtime.stopping import WATCHED_SIGNALS, StopRequest, Stopped, signal_name
from cnn.text import plural
from cnn.training.actions import EpochEnd
from cnn.training.checkpointer import Checkpointer
from cnn.training.state import TrainState
from cnn.training.steps import make_train_loop

log = logging.getLogger("cnn.training")


def timed(fn: Callable, *args):
    """(fn(*args), seconds it took)."""
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def next_chunk(step: int, epoch_end: int, steps_per_loop: int, every_n_steps: Optional[int]) -> int:
    """Steps for the next loop call: at most steps_per_loop, never past the epoch's end
    or a step-count checkpoint."""
    n = min(steps_per_loop, epoch_end - step)
    if every_n_steps is not None:
        n = min(n, every_n_steps - step % every_n_steps)
    return n


@dataclass
class EpochStats:
    steps: int  # steps run in this call
    images: int
    seconds: float  # wall time of the steps (and of any mid-epoch checkpoint)


class Progress:
    """A Keras progress bar over the epoch's steps (by default only on a terminal), updated
    between compiled calls at most 50 times an epoch (each update reads the device). While the
    bar's line is open, a log line printed to the console first ends it (`BarLine`)."""

    def __init__(self, enabled: Optional[bool], state: TrainState, steps_per_epoch: int):
        self.shown = sys.stdout.isatty() if enabled is None else enabled
        self.state, self.steps = state, steps_per_epoch
        self.every, self.bar = max(1, steps_per_epoch // 50), None

    def start(self, done: int) -> None:
        self.bar = None
        if self.shown:
            # interval=0: every update draws (they are few), so the bar's line is open exactly once drawn.
            self.bar = keras.utils.Progbar(self.steps, stateful_metrics=["loss", "accuracy"], interval=0)
            self.bar.update(done)
            BAR_LINE.opened(done < self.steps)

    def update(self, done: int, ran: int) -> None:
        if self.bar is not None and (done // self.every != (done - ran) // self.every or done == self.steps):
            self.bar.update(done, [("loss", float(self.state.loss.result())),
                                   ("accuracy", float(self.state.accuracy.result()))])
            BAR_LINE.opened(done < self.steps)  # at the epoch's end the bar ends its own line


class BarLine(logging.Filter):
    """Ends an open progress-bar line on stdout before a console handler prints a log record
    (the bar leaves its line open for the next update: a log line would be glued to it). One
    filter for the process, on the root logger's console handlers while a bar is open; it
    holds no reference to a run."""

    def __init__(self):
        super().__init__()
        self.open = False

    def opened(self, open_: bool) -> None:
        """The bar's line is open (`open_`) or ended; the filter is on the console handlers only meanwhile."""
        self.open = open_
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                (handler.addFilter if open_ else handler.removeFilter)(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.open:  # stays on its handlers: removing a filter while logging runs the filters would skip one
            self.open = False
            sys.stdout.write("\n")
            sys.stdout.flush()
        return True


BAR_LINE = BarLine()


class Controller:
    """Trains a restored (or fresh) `TrainState` to `config.epochs`: the epochs' batches through
    the compiled loop, then the epoch-end `actions`. `chief`: writes the run's files."""

    def __init__(self, config: Config, state: TrainState, data: data_lib.Data, directory: Path,
                 checkpointer: Checkpointer, actions: list, placement: Distribution, workdir: Path,
                 summaries_on: bool, element_spec):
        self.config, self.state, self.data, self.checkpointer = config, state, data, checkpointer
        self.directory, self.actions, self.placement = directory, actions, placement
        self.workdir, self.summaries = workdir, summaries_on
        self.steps_per_epoch = data_lib.steps_per_epoch(len(data.x_train), config.batch_size)
        self.regularizers = augment.from_config(config, data.num_classes)
        if self.regularizers.soft_targets:  # the batches' labels are (B, classes) targets
            element_spec = (element_spec[0], tf.TensorSpec([None, data.num_classes], tf.float32))
        # Ctrl-C and SIGTERM end the compiled loop after the step it is in. Several workers must
        # stop at the same step: they agree between calls instead (`between_calls`).
        self.stop_flag = tf.Variable(False, trainable=False) if placement.workers == 1 else None
        self.loop = make_train_loop(state, element_spec, summaries_on, placement.strategy, self.stop_flag)
        self.stop = StopRequest(self.stop_flag)
        # Several workers read the metrics together (a collective): no bar but on a request for all.
        shown = config.progress if placement.workers == 1 else bool(config.progress)
        self.progress = Progress(shown, state, self.steps_per_epoch)
        self.first_step_seconds: Optional[float] = None

    @property
    def step(self) -> int:
        return int(self.state.step.numpy())

    @property
    def stopped_early(self) -> bool:
        """Whether early stopping has ended the run: `patience` epochs in a row (at least one)
        without an improvement of the monitor by `min_delta`, as Keras' EarlyStopping counts."""
        patience, wait = self.config.early_stopping.patience, int(self.state.wait.numpy())
        return patience is not None and wait > 0 and wait >= patience

    def fit(self, started: Optional[float] = None) -> Optional[EpochEnd]:
        """Trains to `config.epochs`; returns the last epoch's end (None: nothing left to train).
        `started`: a time.time() to measure the wait for the first steps from (default: now)."""
        config, spe = self.config, self.steps_per_epoch
        started = time.time() if started is None else started
        step, end = self.step, None
        with self.stop:
            while step < config.epochs * spe and not self.stopped_early:
                epoch = step // spe
                if step % spe == 0:
                    self.state.reset_metrics()
                dataset = self.train_dataset(epoch, skip_batches=step % spe)
                inputs = 0.0
                if self.summaries and end is None:  # once per invocation: what the network is fed
                    _, inputs = timed(lambda: summaries.write_train_inputs(next(iter(dataset))[0], step))
                stats = self.train_epoch(self.placement.distribute(dataset), step, started)
                step += stats.steps
                if step < (epoch + 1) * spe:  # only a signal ends an epoch early
                    self.stop_here(step)
                end = self.end_epoch(EpochEnd(epoch, step, stats.seconds, stats.images,
                                              step >= config.epochs * spe, inputs))
                if self.between_calls(step)[0] and step < config.epochs * spe:
                    self.stop_here(step)
                if end.stop is not None:  # an action ended the run (its checkpoint is saved)
                    log.info("%s after epoch %d", end.stop, epoch + 1)
                    break
        return end

    def train_dataset(self, epoch: int, skip_batches: int) -> tf.data.Dataset:
        """The epoch's batches (shuffled and augmented as a function of seed and epoch)."""
        c = self.config
        return data_lib.train_dataset(
            self.data.x_train, self.data.y_train, c.batch_size, c.seed, epoch, skip_batches=skip_batches,
            max_rotation=c.dataset.max_rotation if c.dataset.augment else 0.0,
            max_shift=c.dataset.max_shift if c.dataset.augment else 0.0,
            flip=c.dataset.flip and c.dataset.augment, regularizers=self.regularizers)

    def train_epoch(self, dataset, start_step: int, started: float) -> EpochStats:
        """Runs the batches of one epoch, or its remainder when `start_step` is inside it."""
        config, spe = self.config, self.steps_per_epoch
        epoch_start = start_step // spe * spe
        end = epoch_start + spe
        self.progress.start(start_step - epoch_start)
        step, iterator, stopping = start_step, iter(dataset), False
        start = time.perf_counter()
        while step < end and not stopping:
            n = next_chunk(step, end, config.steps_per_loop, config.checkpoint.every_n_steps)
            self.loop(iterator, tf.constant(n, tf.int32))
            if self.first_step_seconds is None:
                self.first_steps_done(n, started)
            reached = self.step  # fewer steps than asked when a signal stopped the call
            step, n = reached, reached - step
            stopping, due = self.between_calls(step)
            if step < end and due and not stopping:  # a stop saves anyway (`stop_here`)
                self.checkpointer.save(step)
            self.progress.update(step - epoch_start, n)
        seconds = time.perf_counter() - start
        done = lambda s: min((s - epoch_start) * config.batch_size, len(self.data.x_train))  # images
        return EpochStats(step - start_step, done(step) - done(start_step), seconds)

    def end_epoch(self, end: EpochEnd) -> EpochEnd:
        """Calls each action in turn, timing each."""
        for action in self.actions:
            _, end.timings[action.name] = timed(action, end)
        if self.stopped_early:
            log.info("early stopping: %s has not improved by more than %g for %s; best: epoch %d",
                     self.config.monitor, self.config.early_stopping.min_delta, plural(int(self.state.wait.numpy()),
                     "epoch"), int(self.state.best_step.numpy()) // self.steps_per_epoch)
        return end

    def between_calls(self, step: int) -> tuple[bool, bool]:
        """(stop, save): whether a signal asked to stop, and whether a mid-epoch checkpoint is
        due. Several workers must stop and save at the same steps (saving is collective): one
        all-reduce tells each what any of them saw (a signal, its clock's due checkpoint)."""
        due = self.checkpointer.cadence.due(step)
        if self.placement.workers == 1:
            return bool(self.stop.signum), due
        flags = self.placement.any_of([due, *(self.stop.signum == s for s in WATCHED_SIGNALS)])
        agreed = next((s for s, flag in zip(WATCHED_SIGNALS, flags[1:]) if flag), 0)
        if agreed:
            self.stop.signum = agreed
        return bool(agreed), flags[0]

    def stop_here(self, step: int) -> None:
        """Saves the step reached (unless saved already) and raises Stopped: the polite stop."""
        latest = self.checkpointer.latest
        if latest is None or not latest.endswith(f"-{step}"):
            self.checkpointer.save(step)
        chief = self.placement.chief
        where = self.checkpointer.latest if chief else f"with the chief's, in {self.directory}"
        spe = self.steps_per_epoch
        message = (f"stopped by {signal_name(self.stop.signum)} at step {step} (epoch {step // spe + 1}, "
                   f"{step % spe} of {plural(spe, 'step')} done); saved {where}; rerun the command to resume")
        if chief:
            history.write_json(self.workdir / "results.json", {
                "status": "stopped", "signal": signal_name(self.stop.signum), "step": step,
                "checkpoint": self.checkpointer.latest})
        raise Stopped(message, self.stop.signum, self.stop.chained())

    def first_steps_done(self, steps: int, started: float) -> None:
        self.state.step.numpy()  # wait for the device
        self.first_step_seconds = time.time() - started
        log.info("first %s done %.1f s after the start", "step" if steps == 1 else f"{steps} steps",
                 self.first_step_seconds)
