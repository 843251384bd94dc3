"""`train_and_evaluate`: one configured run, from its data to its results.

It reads top to bottom: the builders' options checked, the placement, the run (data,
directory, identity) and, when it has finished, its results; a fresh state, restored or
started; the controller over the epoch-end actions; the test protocol; results.json.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from cnn.runtime.console import default_logging, import_tensorflow

import_tensorflow()  # before the imports below load it: the Python API starts as quietly as train.py

from cnn.checkpointing import resume  # noqa: E402
from cnn.checkpointing.directory import keep_best, write_identity  # noqa: E402
from cnn.config import Config  # noqa: E402
from cnn.errors import CheckpointError  # noqa: E402
from cnn.reporting import epoch as epoch_lines  # noqa: E402
from cnn.reporting import results as results_lib  # noqa: E402
from cnn.reporting import summaries  # noqa: E402
from cnn.reporting.epoch import read_rows  # noqa: E402
from cnn.runtime import distribute  # noqa: E402
from cnn.training import actions as actions_lib  # noqa: E402
from cnn import data as data_lib  # noqa: E402
from cnn.training import build, ema  # noqa: E402
from cnn.training.checkpointer import Checkpointer  # noqa: E402
from cnn.training.controller import Controller  # noqa: E402
from cnn.training.evaluator import Evaluator  # noqa: E402
from cnn.training.protocol import final_evaluation  # noqa: E402
from cnn.text import plural  # noqa: E402

log = logging.getLogger("cnn.training")


def train_and_evaluate(config: Config, workdir: str | Path, started: Optional[float] = None,
                       actions: Sequence = ()) -> dict:
    """Trains one configured run to `config.epochs`, resuming from its checkpoints.

    Writes metrics.csv, results.json and learning_curves.png into `workdir` (metrics and
    results also into the checkpoint directory, which keeps the run's whole history, as it
    keeps the TensorBoard summaries, in tensorboard/). Returns the results.
    `started`: a time.time() to measure the wait for the first steps from (default: now).
    Under `distribute=multi_worker` every worker calls it; the chief writes those files, and
    the other workers save their checkpoints into temporary directories, removed at the end.
    Raises cnn.runtime.stopping.Stopped after a polite stop (SIGINT, SIGTERM) has saved.
    `actions`: more epoch-end actions, called after the run's own (cnn/training/actions.py); one
    that sets `end.stop` ends the run after that epoch, and results.json's status says why.
    Its lines go to the "cnn" loggers: where nothing configured logging, to stderr.
    """
    started = time.time() if started is None else started
    default_logging()  # the Python API's lines, where nothing configured logging
    build.check_builders(config)  # the model's and optimizer's options: one line, before any device or data
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    placement = distribute.create(config)  # before anything runs on the devices (an image folder's decoding)
    run = build.prepare(config)
    finished = resume.finished_results(config, run.directory, run.identity)
    if finished is not None:
        return results_lib.report_skipped(finished, run.directory, workdir)
    build.setup(config)
    with placement.scope():
        state = build.create_state(config, run.data)
    if not placement.chief:
        return train_as_worker(config, state, run, placement, workdir, started)
    with resume.claimed(run.directory):
        status = resume.restore_or_start(config, state, run.directory, run.identity)
        write_identity(run.directory, run.identity, run.directory.name)
        # After the restore: the run's one TensorBoard run, cut back to the restored step.
        with summaries.summary_writer(config, run.directory, state.step, run.identity) as summaries_on:
            trained = Training(config, state, run, placement, workdir, summaries_on, actions=actions)
            with placement.peers_watched(state.step):
                trained.fit(started)
            results = trained.results(trained.stopped or status)
            if summaries_on:
                summaries.write_final_summaries(results, results["steps"])
    results_lib.write_results(results, workdir, run.directory)
    epoch_lines.log_results(results)
    return results


def train_as_worker(config: Config, state, run: build.Prepared, placement: distribute.Distribution,
                    workdir: Path, started: float) -> dict:
    """A multi-worker run's other workers: the same steps and saves as the chief (saving is
    collective), restored from the chief's directory, saved into a temporary one."""
    status = resume.restore_or_start(config, state, run.directory, run.identity, owner=False)
    aside = Path(tempfile.mkdtemp(prefix=f"{run.directory.name}-worker{placement.worker}-"))
    try:
        trained = Training(config, state, run, placement, workdir, False, save_into=aside)
        with placement.peers_watched(state.step):
            trained.fit(started)
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    digest, step = state.weights_digest(), int(state.step.numpy())
    log.info("worker %d: trained to step %d (weights %s); the chief writes the results", placement.worker,
             step, digest)
    return {"status": status, "worker": placement.worker, "step": step, "weights_digest": digest,
            "objective": float("nan"), "test_accuracy": float("nan")}


class Training:
    """A run's controller, evaluator, checkpointer and epoch-end actions, assembled."""

    def __init__(self, config: Config, state, run: build.Prepared, placement: distribute.Distribution,
                 workdir: Path, summaries_on: bool, save_into: Optional[Path] = None, actions: Sequence = ()):
        self.config, self.state, self.run, self.placement = config, state, run, placement
        data, directory, chief = run.data, run.directory, placement.chief
        self.evaluator = Evaluator(state.model, data)
        self.checkpointer = Checkpointer(state, save_into or directory, config.checkpoint)
        if chief and self.evaluator.validating and int(state.best_step.numpy()) >= 0:  # a kill between a save and its copy
            keep_best(directory, int(state.best_step.numpy()))
        spe = data_lib.steps_per_epoch(len(data.x_train), config.batch_size)
        done = int(state.step.numpy()) // spe  # rows of epochs past the checkpoint are dropped
        self.rows = [r for r in read_rows(directory / "metrics.csv") if r["epoch"] <= done]
        statistics = build.statistics(config, state, data, self.evaluator.element_spec)
        self.statistics = self.averaged(actions_lib.RecomputeStatistics(*statistics)) if statistics else None
        self.record = actions_lib.Record(self.rows, directory, workdir) if chief else None
        self.curves = actions_lib.DrawCurves(self.rows, workdir / "learning_curves.png",
                                             config.plot_every_n_minutes) if chief else None
        self.controller = Controller(config, state, data, directory, self.checkpointer,
                                     [*self.actions(summaries_on), *actions], placement, workdir, summaries_on,
                                     self.evaluator.element_spec)
        self.last_evaluation: dict = {}
        self.stopped: Optional[str] = None  # why an action ended the run early (e.g. "pruned")

    def actions(self, summaries_on: bool) -> list:
        """The epoch's duties, in order: statistics, evaluation, selection, metrics.csv, TensorBoard,
        checkpoint, curves, the log line."""
        config, chief = self.config, self.placement.chief
        self.log_epoch = actions_lib.LogEpoch(config, self.evaluator.split, self.record)
        optional = lambda action, on: [action] if on else []
        return [*optional(self.statistics, self.statistics is not None),
                self.averaged(actions_lib.Evaluate(self.evaluator, self.state, self.rows)),
                *optional(actions_lib.Select(self.state, config), self.evaluator.validating),
                *optional(self.record, chief),
                # TensorBoard's epoch points flushed before the checkpoint: a kill between them loses none.
                *optional(actions_lib.Summarize(self.evaluator, self.run.data.class_names), summaries_on),
                actions_lib.Save(self.checkpointer, self.run.directory if chief else None),
                *optional(self.curves, chief),
                self.log_epoch]

    def averaged(self, action):
        """`action` on the weights' moving average when the run keeps one (ema.decay)."""
        return actions_lib.Averaged(action, self.state) if self.config.ema.decay is not None else action

    def fit(self, started: float) -> None:
        c, data = self.controller, self.run.data
        held_out = (f"{len(data.x_val)} held out to validate each epoch" if self.evaluator.validating
                    else "none held out: the test set is evaluated each epoch")
        log.info("run %s: %s (%s), %s per epoch, checkpoints in %s", self.run.directory.name,
                 plural(len(data.x_train), "training image"), held_out, plural(c.steps_per_epoch, "step"),
                 self.run.directory)
        log.info("placement: %s", self.placement.describe(self.config.batch_size))
        self.log_epoch.line_end = time.perf_counter()  # an epoch's wall time runs from the previous epoch's line
        end = c.fit(started)
        if end is not None:
            self.last_evaluation, self.stopped = end.evaluation, end.stop
            return
        step, spe = c.step, c.steps_per_epoch  # already trained that far: report the checkpoint as it is
        if step > self.config.epochs * spe:  # not the run asked for: say so rather than report it
            raise CheckpointError(f"{self.run.directory} is trained to epoch {-(-step // spe)} (step {step}), past "
                                  f"epochs={self.config.epochs}; its results would not be of "
                                  f"{plural(self.config.epochs, 'epoch')}. Pass epochs={-(-step // spe)} to report it, mode=eval to evaluate it, or "
                                  "resume=never to train anew (the old checkpoints are moved aside)")
        log.info("already trained to epoch %d (step %d)%s; evaluating only", -(-step // spe), step,
                 ", where early stopping stopped it" if c.stopped_early else "")
        if self.statistics is not None:
            self.statistics()
        with ema.averaged(self.state):
            self.last_evaluation, _ = self.evaluator.evaluate()
        if self.record is not None:
            self.record()
        if self.rows and self.curves is not None:
            self.curves()

    def results(self, status: str) -> dict:
        c = self.controller
        final = final_evaluation(self.state, self.evaluator, self.rows, self.last_evaluation, self.checkpointer,
                                 self.run.directory, c.steps_per_epoch, self.placement.workers, self.config,
                                 self.run.data)
        results = results_lib.results(self.config, self.rows, final, c.step, self.run.directory,
                                      self.checkpointer.latest, status, c.first_step_seconds, c.stopped_early)
        results["weights_digest"] = self.state.weights_digest()  # the last checkpoint's weights
        return results
