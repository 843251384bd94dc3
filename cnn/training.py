"""The outer loop: epochs of compiled training steps, and the duties at each epoch's end.

`train_and_evaluate` reads top to bottom: load the data and hold out the
validation set, find the run (and skip it when it has finished), build the state,
restore or start, then `Trainer.fit` and `Trainer.final_evaluation`.
Per epoch, `Trainer.train_epoch` calls the compiled loop (`cnn.steps`) in
chunks, with mid-epoch checkpoints between chunks, and `Trainer.end_epoch`
does the epoch's duties, one named call each: recompute batch-norm statistics,
validate, select (best checkpoint, early stopping), record, save, summarize, draw,
log. The benchmark times those same calls.

The protocol: each epoch is evaluated on the validation set, which alone picks the
best checkpoint and stops early; the test set is evaluated once, at the end, on the
selected checkpoint (and on the last). With `dataset.validation_split=0` (the book's
protocol) each epoch is evaluated on the test set, so labeled, and nothing is selected.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf

from cnn import data as data_lib
from cnn import distribute, history, plots, precise_bn, reporting, run
from cnn.checkpoint import keep_best, make_manager, restore, write_identity
from cnn.config import Config
from cnn.errors import TrainingError
from cnn.state import TrainState
from cnn.steps import make_evaluate, make_train_loop
from cnn.stopping import WATCHED_SIGNALS, StopRequest, Stopped, signal_name

log = logging.getLogger(__name__)


def train_and_evaluate(config: Config, workdir: str | Path, started: Optional[float] = None) -> dict:
    """Trains one configured run to `config.epochs`, resuming from its checkpoints.

    Writes metrics.csv, results.json, learning_curves.png and TensorBoard
    summaries into `workdir` (metrics and results also into the checkpoint
    directory, which keeps the run's whole history). Returns the results.
    `started`: a time.time() to measure the wait for the first steps from (default: now).
    Under `distribute=multi_worker` every worker calls it; the chief writes those files, and
    the other workers save their checkpoints into temporary directories, removed at the end.
    Raises cnn.stopping.Stopped after a polite stop (SIGINT, SIGTERM) has saved.
    """
    started = time.time() if started is None else started
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    placement = distribute.create(config)  # before anything runs on the devices (an image folder's decoding)
    data = data_lib.load_dataset(config.dataset)
    directory, ident = run.checkpoint_dir_and_identity(config, data)
    data = data_lib.split_validation(data, config.dataset.validation_split)
    finished = run.finished_results(config, directory, ident)
    if finished is not None:
        return reporting.report_skipped(finished, directory, workdir)
    run.setup(config)
    with placement.scope():
        state = run.create_state(config, data)
    if not placement.chief:
        return train_as_worker(config, state, data, directory, ident, placement, workdir, started)
    with run.claimed(directory), reporting.summary_writer(config, workdir, state.step) as summaries:
        status = run.restore_or_start(config, state, directory, ident)
        write_identity(directory, ident, directory.name)
        trainer = Trainer(config, state, data, directory, workdir, summaries, placement)
        if summaries:
            reporting.write_hparams(ident, directory.name)
        with placement.peers_watched(state.step):
            trainer.fit(started)
        final = trainer.final_evaluation()
        results = reporting.results(config, trainer.rows, final, trainer.step, directory,
                                    trainer.manager.latest_checkpoint, status, trainer.first_step_seconds,
                                    trainer.stopped_early)
        results["weights_digest"] = state.weights_digest()  # the last checkpoint's weights
        if summaries:
            reporting.write_final_summaries(results, trainer.step)
    reporting.write_results(results, workdir, directory)
    reporting.log_results(results)
    return results


def train_as_worker(config: Config, state: TrainState, data: data_lib.Data, directory: Path, ident: dict,
                    placement: distribute.Distribution, workdir: Path, started: float) -> dict:
    """A multi-worker run's other workers: the same steps and saves as the chief (saving is
    collective), restored from the chief's directory, saved into a temporary one."""
    status = run.restore_or_start(config, state, directory, ident, owner=False)
    aside = Path(tempfile.mkdtemp(prefix=f"{directory.name}-worker{placement.worker}-"))
    try:
        trainer = Trainer(config, state, data, directory, workdir, False, placement, save_into=aside)
        with placement.peers_watched(state.step):
            trainer.fit(started)
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    digest = state.weights_digest()
    log.info("worker %d: trained to step %d (weights %s); the chief writes the results", placement.worker,
             trainer.step, digest)
    return {"status": status, "worker": placement.worker, "step": trainer.step, "weights_digest": digest,
            "objective": float("nan"), "test_accuracy": float("nan")}


class Cadence:
    """Decides when a mid-epoch checkpoint is due: every N steps and/or every M minutes."""

    def __init__(self, every_n_steps: Optional[int], every_n_minutes: Optional[float]):
        self.every_n_steps, self.every_n_minutes = every_n_steps, every_n_minutes
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        by_steps = self.every_n_steps is not None and step % self.every_n_steps == 0
        by_time = (self.every_n_minutes is not None
                   and time.monotonic() - self.last >= 60 * self.every_n_minutes)
        return by_steps or by_time

    def saved(self) -> None:
        self.last = time.monotonic()


def next_chunk(step: int, epoch_end: int, steps_per_loop: int, every_n_steps: Optional[int]) -> int:
    """Steps for the next loop call: at most steps_per_loop, never past the epoch's end
    or a step-count checkpoint."""
    n = min(steps_per_loop, epoch_end - step)
    if every_n_steps is not None:
        n = min(n, every_n_steps - step % every_n_steps)
    return n


def check_finite(state: TrainState, latest_checkpoint: Optional[str]) -> None:
    """Stops the run if a loss or a weight is NaN/Inf, before anything is saved over the last
    good checkpoint. Called at save points only, not after every step."""
    bad = int(state.nonfinite_step.numpy())
    if bad < 0 and not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in state.model.trainable_weights):
        bad = int(state.step.numpy())  # the loss was finite, but an update broke the weights
    if bad >= 0:
        raise TrainingError(f"the loss became NaN or Inf at step {bad}; stopped without saving "
                            f"(latest good checkpoint: {latest_checkpoint}). Lower lr or check the data")


def timed(fn: Callable, *args):
    """(fn(*args), seconds it took)."""
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


class EpochStats(NamedTuple):
    steps: int  # steps run in this call
    images: int
    seconds: float  # wall time of the steps (and of any mid-epoch checkpoint)


class Trainer:
    """One run's outer loop over a restored (or fresh) `TrainState`."""

    def __init__(self, config: Config, state: TrainState, data: data_lib.Data, directory: Path,
                 workdir: Path, summaries: bool, placement: Optional[distribute.Distribution] = None,
                 save_into: Optional[Path] = None):
        self.config, self.state, self.data = config, state, data
        self.directory, self.workdir, self.summaries = directory, workdir, summaries
        self.placement = placement or distribute.Distribution()
        self.chief = self.placement.chief  # writes the run's files; the others only train and save
        self.steps_per_epoch = data_lib.steps_per_epoch(len(data.x_train), config.batch_size)
        self.manager = make_manager(state, save_into or directory, config.checkpoint.keep)
        self.test_ds = data_lib.test_dataset(data.x_test, data.y_test)
        # Each epoch is evaluated on the validation set, or with none, on the test set (the book).
        self.validating = data.x_val is not None
        self.split = "val" if self.validating else "test"
        self.x_eval, self.y_eval = (data.x_val, data.y_val) if self.validating else (data.x_test, data.y_test)
        self.eval_ds = data_lib.test_dataset(self.x_eval, self.y_eval) if self.validating else self.test_ds
        self._evaluate = make_evaluate(state.model, self.test_ds.element_spec)
        self.statistics = precise_bn.create(state.model, config.precise_bn.batches, self.test_ds.element_spec)
        self.statistics_ds = data_lib.statistics_dataset(data.x_train, data.y_train, config.batch_size, config.seed,
                                                         config.precise_bn.batches) if self.statistics else None
        # Ctrl-C and SIGTERM end the compiled loop after the step it is in. Several workers must
        # stop at the same step: they agree between calls instead (`between_calls`).
        self.stop_flag = tf.Variable(False, trainable=False) if self.placement.workers == 1 else None
        self.loop = make_train_loop(state, self.test_ds.element_spec, summaries, self.placement.strategy,
                                    self.stop_flag)
        self.stop = StopRequest(self.stop_flag)
        if self.chief and self.validating and int(state.best_step.numpy()) >= 0:  # a kill between a save and its copy
            keep_best(directory, int(state.best_step.numpy()))
        self.cadence = Cadence(config.checkpoint.every_n_steps, config.checkpoint.every_n_minutes)
        done = self.step // self.steps_per_epoch  # rows of epochs past the checkpoint are dropped
        self.rows = [r for r in reporting.read_rows(directory / "metrics.csv") if r["epoch"] <= done]
        self.plotted = -math.inf  # when learning_curves.png was last drawn (time.monotonic)
        self.first_step_seconds: Optional[float] = None
        self.last_evaluation: dict = {}  # the latest epoch's evaluation (of the validation or test set)
        self.line_end = time.perf_counter()  # when the latest epoch line was written (fit starts it anew)

    @property
    def step(self) -> int:
        return int(self.state.step.numpy())

    def fit(self, started: Optional[float] = None) -> dict:
        """Trains to `config.epochs`; returns the last evaluation. `started`: a time.time() to
        measure the wait for the first steps from (default: now)."""
        config, spe = self.config, self.steps_per_epoch
        started = time.time() if started is None else started
        held_out = (f"{len(self.data.x_val)} held out to validate each epoch" if self.validating
                    else "none held out: the test set is evaluated each epoch")
        log.info("run %s: %d training images (%s), %d steps per epoch, checkpoints in %s",
                 self.directory.name, len(self.data.x_train), held_out, spe, self.directory)
        log.info("placement: %s", self.placement.describe(config.batch_size))
        step, evaluation = self.step, None
        self.line_end = time.perf_counter()  # an epoch's wall time runs from the previous epoch's line
        with self.stop:
            while step < config.epochs * spe and not self.stopped_early:
                epoch = step // spe
                if step % spe == 0:
                    self.state.reset_metrics()
                dataset = self.train_dataset(epoch, skip_batches=step % spe)
                inputs = 0.0
                if self.summaries and evaluation is None:  # once per invocation: what the network is fed
                    _, inputs = timed(lambda: reporting.write_train_inputs(next(iter(dataset))[0], step))
                stats = self.train_epoch(self.placement.distribute(dataset), step, started)
                step += stats.steps
                if step < (epoch + 1) * spe:  # only a signal ends an epoch early
                    self.stop_here(step)
                evaluation = self.end_epoch(epoch, step, stats, inputs)
                if self.between_calls(step)[0] and step < config.epochs * spe:
                    self.stop_here(step)
        if evaluation is None:  # already trained that far: report the checkpoint as it is
            log.info("already trained to epoch %d (step %d)%s; evaluating only", -(-step // spe), step,
                     ", where early stopping stopped it" if self.stopped_early else "")
            self.recompute_statistics()
            evaluation, _ = self.evaluate()
            self.last_evaluation = evaluation
            self.record()
            if self.rows:
                self.draw_curves(last_epoch=True)
        return evaluation

    @property
    def stopped_early(self) -> bool:
        """Whether early stopping has ended the run: `patience` epochs in a row (at least one)
        without an improvement of the monitor by `min_delta`, as Keras' EarlyStopping counts."""
        patience, wait = self.config.early_stopping.patience, int(self.state.wait.numpy())
        return patience is not None and wait > 0 and wait >= patience

    def train_dataset(self, epoch: int, skip_batches: int) -> tf.data.Dataset:
        """The epoch's batches (shuffled and augmented as a function of seed and epoch)."""
        c = self.config
        return data_lib.train_dataset(
            self.data.x_train, self.data.y_train, c.batch_size, c.seed, epoch, skip_batches=skip_batches,
            max_rotation=c.dataset.max_rotation if c.dataset.augment else 0.0,
            max_shift=c.dataset.max_shift if c.dataset.augment else 0.0,
            flip=c.dataset.flip and c.dataset.augment)

    def train_epoch(self, dataset: tf.data.Dataset, start_step: int, started: float) -> EpochStats:
        """Runs the batches of one epoch, or its remainder when `start_step` is inside it."""
        config, spe = self.config, self.steps_per_epoch
        epoch_start = start_step // spe * spe
        end = epoch_start + spe
        # Several workers read the metrics together (a collective): no bar but on a request for all.
        shown = config.progress if self.placement.workers == 1 else bool(config.progress)
        bar = progress_bar(shown, spe, start_step - epoch_start)
        every_bar = max(1, spe // 50)  # bar updates read the device: at most 50 an epoch
        step, iterator = start_step, iter(dataset)
        start = time.perf_counter()
        stopping = False
        while step < end and not stopping:
            n = next_chunk(step, end, config.steps_per_loop, config.checkpoint.every_n_steps)
            self.loop(iterator, tf.constant(n, tf.int32))
            if self.first_step_seconds is None:
                self.first_steps_done(n, started)
            reached = self.step  # fewer steps than asked when a signal stopped the call
            step, n = reached, reached - step
            stopping, due = self.between_calls(step)
            if step < end and due and not stopping:  # a stop saves anyway (`stop_here`)
                self.save(step)
            if bar is not None and (step // every_bar != (step - n) // every_bar or step == end):
                bar.update(step - epoch_start, [("loss", float(self.state.loss.result())),
                                                ("accuracy", float(self.state.accuracy.result()))])
        seconds = time.perf_counter() - start
        done = lambda s: min((s - epoch_start) * config.batch_size, len(self.data.x_train))  # images
        return EpochStats(step - start_step, done(step) - done(start_step), seconds)

    def between_calls(self, step: int) -> tuple[bool, bool]:
        """(stop, save): whether a signal asked to stop, and whether a mid-epoch checkpoint is
        due. Several workers must stop and save at the same steps (saving is collective): one
        all-reduce tells each what any of them saw (a signal, its clock's due checkpoint)."""
        due = self.cadence.due(step)
        if self.placement.workers == 1:
            return bool(self.stop.signum), due
        flags = self.placement.any_of([due, *(self.stop.signum == s for s in WATCHED_SIGNALS)])
        agreed = next((s for s, flag in zip(WATCHED_SIGNALS, flags[1:]) if flag), 0)
        if agreed:
            self.stop.signum = agreed
        return bool(agreed), flags[0]

    def stop_here(self, step: int) -> None:
        """Saves the step reached (unless saved already) and raises Stopped: the polite stop."""
        latest = self.manager.latest_checkpoint
        if latest is None or not latest.endswith(f"-{step}"):
            self.save(step)
        where = self.manager.latest_checkpoint if self.chief else f"with the chief's, in {self.directory}"
        spe = self.steps_per_epoch
        message = (f"stopped by {signal_name(self.stop.signum)} at step {step} (epoch {step // spe + 1}, "
                   f"{step % spe} of {spe} steps done); saved {where}; rerun the command to resume")
        if self.chief:
            history.write_json(self.workdir / "results.json", {
                "status": "stopped", "signal": signal_name(self.stop.signum), "step": step,
                "checkpoint": self.manager.latest_checkpoint})
        raise Stopped(message, self.stop.signum, self.stop.chained())

    def first_steps_done(self, steps: int, started: float) -> None:
        self.state.step.numpy()  # wait for the device
        self.first_step_seconds = time.time() - started
        log.info("first %d step(s) done %.1f s after the start", steps, self.first_step_seconds)

    # --- The epoch's end: one named call per duty ---------------------------------------

    def end_epoch(self, epoch: int, step: int, stats: EpochStats, reporting_seconds: float = 0.0) -> dict:
        """Recomputes batch-norm statistics, evaluates, selects, records, saves, summarizes, draws
        and logs; returns the evaluation. The epoch's row gets its wall time (from the previous
        epoch's line to this one's) beside the time of its parts: training, evaluation (with the
        batch-norm statistics), checkpoint and reporting (`reporting_seconds` of it spent before)."""
        timings = {"train": stats.seconds}
        if self.statistics:
            _, timings["precise_bn"] = timed(self.recompute_statistics)
        (evaluation, predictions), timings["evaluation"] = timed(self.evaluate)
        self.last_evaluation = evaluation
        s = self.split
        row = {"epoch": epoch + 1, "step": step, "loss": float(self.state.loss.result()),
               "accuracy": float(self.state.accuracy.result()), f"{s}_loss": evaluation[f"{s}_loss"],
               f"{s}_accuracy": evaluation[f"{s}_accuracy"],
               "lr": float(self.state.optimizer.learning_rate.numpy()),  # the rate of the next step
               "seconds": stats.seconds, "images_per_sec": stats.images / stats.seconds}
        self.rows.append(row)
        best = self.select(row, step) if self.validating else False  # into the state, saved below
        # The row goes first: if the save below never happens, the resumed run drops it.
        _, timings["record"] = timed(self.record)
        _, timings["checkpoint"] = timed(self.save, step)
        if best and self.chief:
            keep_best(self.directory, step)
        _, timings["summaries"] = timed(self.summarize, predictions, step)
        last_epoch = step >= self.config.epochs * self.steps_per_epoch
        _, timings["curves"] = timed(self.draw_curves, last_epoch)
        row.update(epoch_parts(timings, reporting_seconds), wall_seconds=time.perf_counter() - self.line_end)
        reporting.log_epoch(self.config, row, evaluation, timings, self.split, best)
        self.record()  # again, with the wall time and its parts
        self.line_end = time.perf_counter()
        if self.stopped_early:
            log.info("early stopping: %s has not improved by more than %g for %d epochs; best: epoch %d",
                     self.config.monitor, self.config.early_stopping.min_delta, int(self.state.wait.numpy()),
                     int(self.state.best_step.numpy()) // self.steps_per_epoch)
        return evaluation

    def select(self, row: dict, step: int) -> bool:
        """Updates the best checkpoint's record and early stopping's count with this epoch's
        validation metric (in the state, so that a resumed run continues them exactly);
        returns whether this epoch is the best so far (strictly better; a tie keeps the earlier)."""
        state, monitor = self.state, self.config.monitor
        value = row[monitor]
        best = improves(value, float(state.best_value.numpy()), monitor)
        if best:
            state.best_value.assign(value)
            state.best_step.assign(step)
        if improves(value, float(state.reference.numpy()), monitor, self.config.early_stopping.min_delta):
            state.reference.assign(value)
            state.wait.assign(0)
        else:
            state.wait.assign_add(1)
        return best

    def final_evaluation(self) -> dict:
        """The test set, evaluated once: on the selected (best) checkpoint and on the last one.

        Returns {"selected": {...}, "last": {...}}: each the epoch, step, checkpoint and
        metrics. Without a validation set the last epoch is the one reported (the book's
        protocol), with the test metrics its epoch already measured.
        """
        last_row = self.rows[-1] if self.rows else {}
        last = {"epoch": last_row.get("epoch", 0), "step": self.step,
                "checkpoint": self.manager.latest_checkpoint}
        if not self.validating:
            last.update(self.last_evaluation)  # test_loss, test_accuracy (member_test_accuracy)
            return {"selected": last, "last": last}
        last.update({k: v for k, v in last_row.items() if k.startswith("val_")})
        last.update(self.evaluate_test())  # the weights in memory are the last checkpoint's
        best_step = int(self.state.best_step.numpy())
        path = keep_best(self.directory, best_step) if best_step >= 0 else None
        if path is None:
            return {"selected": last, "last": last}
        best_row = next((r for r in self.rows if r["step"] == best_step),  # no metrics.csv: the state's record
                        {"epoch": -(-best_step // self.steps_per_epoch),
                         self.config.monitor: float(self.state.best_value.numpy())})
        if self.placement.workers == 1:
            restore(self.state.checkpoint, path)
            test = self.evaluate_test()
            restore(self.state.checkpoint, self.manager.latest_checkpoint)  # the state is the last one again
        else:  # restoring the shared state is collective, and the other workers are done: a copy of one's own
            copy = run.create_state(self.config, self.data)
            restore(copy.checkpoint, path)
            test = make_evaluate(copy.model, self.test_ds.element_spec)(self.test_ds, "test")[0]
        selected = {"epoch": best_row["epoch"], "step": best_step, "checkpoint": path,
                    **{k: v for k, v in best_row.items() if k.startswith("val_")}, **test}
        return {"selected": selected, "last": last}

    def evaluate_test(self) -> dict:
        """The test metrics of the weights in memory."""
        return self._evaluate(self.test_ds, "test")[0]

    def recompute_statistics(self) -> None:
        """Precise batch-norm statistics (cnn/precise_bn.py), when the model has batch norm."""
        if self.statistics:
            self.statistics.recompute(self.statistics_ds)

    def evaluate(self) -> tuple[dict, np.ndarray]:
        """The epoch's evaluation: the validation (or, with none, the test) metrics and the
        predicted class of every image."""
        return self._evaluate(self.eval_ds, self.split)

    def record(self) -> None:
        """metrics.csv, in the checkpoint directory (the run's whole history) and in workdir."""
        if not self.chief:
            return
        history.write_rows(self.directory / "metrics.csv", self.rows)
        history.write_rows(self.workdir / "metrics.csv", self.rows)

    def save(self, step: int) -> None:
        """A checkpoint numbered `step`, unless a loss or weight is no longer finite."""
        check_finite(self.state, self.manager.latest_checkpoint)
        self.manager.save(checkpoint_number=step)
        self.cadence.saved()

    def summarize(self, predictions: np.ndarray, step: int) -> None:
        if self.summaries:
            reporting.write_epoch_summaries(self.rows[-1], self.split, self.x_eval, predictions, self.y_eval,
                                            self.data.class_names, step)

    def draw_curves(self, last_epoch: bool) -> None:
        """learning_curves.png, after the last epoch and at most every plot_every_n_minutes."""
        if self.chief and reporting.curves_due(time.monotonic(), self.plotted, self.config.plot_every_n_minutes, last_epoch):
            plots.learning_curves(self.rows, self.workdir / "learning_curves.png")
            self.plotted = time.monotonic()


def epoch_parts(timings: dict, reporting_seconds: float = 0.0) -> dict:
    """The epoch's time by part, for metrics.csv, from `end_epoch`'s timings."""
    return {"evaluation_seconds": timings.get("precise_bn", 0.0) + timings["evaluation"],
            "checkpoint_seconds": timings["checkpoint"],
            "reporting_seconds": reporting_seconds + timings["record"] + timings["summaries"] + timings["curves"]}


def improves(value: float, reference: float, monitor: str, min_delta: float = 0.0) -> bool:
    """Whether `value` of `monitor` improves on `reference` by more than `min_delta` (any value
    improves on NaN, the reference of no epoch yet)."""
    if math.isnan(reference):
        return True
    return value - min_delta > reference if monitor.endswith("accuracy") else value + min_delta < reference


def progress_bar(enabled: Optional[bool], steps: int, done: int):
    """A Keras progress bar over the epoch's steps, by default only on a terminal."""
    if not (sys.stdout.isatty() if enabled is None else enabled):
        return None
    bar = keras.utils.Progbar(steps, stateful_metrics=["loss", "accuracy"])
    bar.update(done)
    return bar
