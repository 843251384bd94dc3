"""The training loop, in the book's vocabulary.

`loss_fn`, `grad` and `train_step` are small pure functions of (model,
optimizer, batch) that can be wrapped: compiled here with `tf.function`, later
looped several times per call or run under a distribution strategy.
`train_and_evaluate` is the outer Python loop: checkpoint cadence, logging,
metrics files. Everything a resumed run needs lives in one `TrainState`.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf

from cnn import data as data_lib
from cnn import history, plots
from cnn.checkpoint import (LOCK_FILE, DirectoryLock, TrainState, check_identity,
                            checkpoint_paths, make_manager, move_aside_contents, restore,
                            restore_latest, write_identity)
from cnn.config import Config, identity, run_name
from cnn.errors import CheckpointError, ConfigError, TrainingError
from cnn.models import MODELS, Ensemble, create_model

log = logging.getLogger(__name__)


# --- The book's functions ----------------------------------------------------------

def loss_fn(model, images, labels, training=False):
    """Mean softmax cross-entropy on the model's logits. Returns (loss, logits).

    An ensemble's logits are (members, B, classes): its loss is the sum of its
    members' losses, so that each member learns as if alone.
    """
    logits = tf.cast(model(images, training=training), tf.float32)  # ([members,] B, classes)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.broadcast_to(labels, tf.shape(logits)[:-1]), logits=logits)
    return tf.reduce_sum(tf.reduce_mean(losses, axis=-1)), logits


def predict(logits):
    """Class scores from `loss_fn`'s logits: an ensemble sums its members'."""
    return tf.reduce_sum(logits, axis=0) if logits.shape.rank == 3 else logits


def grad(model, images, labels, optimizer=None):
    """Loss, logits and the gradients of the loss for the trainable variables.

    With an `optimizer`, the loss is differentiated through `optimizer.scale_loss`:
    a no-op but for float16's LossScaleOptimizer, whose apply_gradients unscales.
    """
    with tf.GradientTape() as tape:
        loss, logits = loss_fn(model, images, labels, training=True)
        scaled = optimizer.scale_loss(loss) if optimizer is not None else loss
    return loss, logits, tape.gradient(scaled, model.trainable_variables)


def train_step(model, optimizer, batch):
    """One optimizer update on `batch` = (images, labels). Returns (loss, logits, grads)."""
    images, labels = batch
    loss, logits, grads = grad(model, images, labels, optimizer)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss, logits, grads


def make_train_loop(state: TrainState, element_spec, summaries: bool = False) -> Callable:
    """Compiles `loop(iterator, num_steps)`: `num_steps` training steps in one call.

    A `tf.range` loop inside one `tf.function`, as TF Model Garden's Orbit does, so
    the host pays one call per `steps_per_loop` steps. Each step also updates the
    epoch metrics and the step counter; with `summaries`, it writes loss, gradient norm
    and learning rate to the default tf.summary writer when its record_if holds. The
    signature is fixed (free batch size, tensor step count), so nothing retraces:
    one trace per run.
    """
    def step(batch):
        loss, logits, grads = train_step(state.model, state.optimizer, batch)
        labels = batch[1]
        if summaries:  # decided at trace time: tf.summary needs TensorBoard installed
            with tf.name_scope("train/"):  # absolute: no "while/" prefix from the loop
                tf.summary.scalar("loss", loss, step=state.step)
                tf.summary.scalar("grad_norm", tf.linalg.global_norm(grads), step=state.step)
                tf.summary.scalar("learning_rate", state.optimizer.learning_rate, step=state.step)
        state.loss.update_state(loss, sample_weight=tf.cast(tf.shape(labels)[0], tf.float32))
        state.accuracy.update_state(labels, predict(logits))
        state.step.assign_add(1)
        # Remember the first step whose loss was not finite; read at save points only.
        first_bad = tf.logical_and(tf.logical_not(tf.math.is_finite(loss)), state.nonfinite_step < 0)
        state.nonfinite_step.assign(tf.where(first_bad, state.step, state.nonfinite_step))

    @tf.function(input_signature=[tf.data.IteratorSpec(element_spec), tf.TensorSpec([], tf.int32)])
    def loop(iterator, num_steps):
        for _ in tf.range(num_steps):
            step(next(iterator))

    return loop


def make_evaluate(model, element_spec) -> Callable:
    """Returns `evaluate(dataset)` over a whole dataset, compiled once.

    `evaluate` returns (metrics, predicted classes): metrics are {"test_loss",
    "test_accuracy"}, and for an ensemble also "member_test_accuracy", one per member.
    """
    members = len(model.members) if isinstance(model, Ensemble) else 0
    loss_metric = keras.metrics.Mean()
    accuracy = keras.metrics.SparseCategoricalAccuracy()
    member_accuracy = [keras.metrics.SparseCategoricalAccuracy() for _ in range(members)]
    all_metrics = [loss_metric, accuracy, *member_accuracy]

    @tf.function(input_signature=[element_spec])
    def eval_step(batch):
        images, labels = batch
        loss, logits = loss_fn(model, images, labels, training=False)
        loss_metric.update_state(loss, sample_weight=tf.cast(tf.shape(labels)[0], tf.float32))
        accuracy.update_state(labels, predict(logits))
        for i, metric in enumerate(member_accuracy):
            metric.update_state(labels, logits[i])
        return tf.argmax(predict(logits), axis=-1, output_type=tf.int32)

    def evaluate(dataset) -> tuple[dict, np.ndarray]:
        for metric in all_metrics:
            metric.reset_state()
        predictions = [eval_step(batch) for batch in dataset]
        results = {"test_loss": float(loss_metric.result()), "test_accuracy": float(accuracy.result())}
        if members:
            results["member_test_accuracy"] = [float(m.result()) for m in member_accuracy]
        return results, np.concatenate([p.numpy() for p in predictions])

    return evaluate


# --- Setting a run up --------------------------------------------------------------

def checkpoint_dir_and_identity(config: Config, data: data_lib.Data) -> tuple[Path, dict]:
    """The run's checkpoint directory (`checkpoint.dir`, or checkpoints/<run name> from the
    identity and the data) and what that directory records about the run."""
    fingerprint = data_lib.fingerprint(data)
    directory = (Path(config.checkpoint.dir).expanduser() if config.checkpoint.dir is not None
                 else Path("checkpoints") / run_name(config, fingerprint))
    return directory, {**identity(config), "data": fingerprint}


def forget_custom_gradients() -> None:
    """Drops the gradient functions that tf.custom_gradient registered while earlier runs traced.

    Inside a tf.function, each @tf.custom_gradient call (Keras' apply_gradients makes one, in
    ReplicaContext.all_reduce) registers a "CustomGradient-<n>" entry in TensorFlow's global
    gradient registry and never removes it (tensorflow/tensorflow#97697, open in TF 2.21).
    The entry's closure holds tensors of the traced graph, so every finished run's train-loop
    graph stayed alive: about 15 MB a job in an in-process multirun. An entry is only used
    while its graph is being traced and differentiated, so at the start of a run the earlier
    ones can go. The registry has no public API; without it, this does nothing.
    """
    from tensorflow.python.framework import ops as tf_ops

    registry = getattr(getattr(tf_ops, "_gradient_registry", None), "_registry", None)
    if isinstance(registry, dict):
        for name in [n for n in registry if str(n).startswith("CustomGradient-")]:
            del registry[name]


def setup(config: Config) -> None:
    """Fresh Keras state, seeds, and (optionally) deterministic ops, before anything is built."""
    keras.backend.clear_session()  # jobs of a multirun share this process
    forget_custom_gradients()  # and with them, the earlier jobs' graphs
    logging.getLogger("absl").setLevel(logging.WARNING)  # checkpoint saves log at INFO
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(config.precision)  # also resets it to float32
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


def learning_rate(config: Config):
    """`lr`, or a Keras schedule starting at `lr` and indexed by the optimizer's step."""
    s = config.schedule
    if s.name == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(config.lr, s.decay_steps, s.decay_rate,
                                                          staircase=s.staircase)
    if s.name == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.lr, s.decay_steps, alpha=s.alpha)
    return config.lr


def create_state(config: Config, data: data_lib.Data) -> TrainState:
    """The model (from the registry) and its Adam optimizer, wrapped in a TrainState.

    Call after `setup`: the model takes its dtypes from the global precision policy.
    """
    if config.model.name not in MODELS:
        raise ConfigError(f"model.name={config.model.name}: unknown; known: {', '.join(sorted(MODELS))}")
    try:
        model = create_model(config.model.name, data.image_shape, data.num_classes,
                             dropout=config.model.dropout, members=config.model.members,
                             size=config.model.size)
    except KeyError as e:
        raise ConfigError(e.args[0]) from None
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate(config))
    if config.precision == "mixed_float16":  # float16 gradients underflow without loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return TrainState(model, optimizer)


def restore_given(state: TrainState, resume: str, ident: dict) -> str:
    """Restores `resume`: a checkpoint prefix (<dir>/ckpt-600) or a directory (its latest).
    The directory is another run's: it is read, never repaired."""
    given = Path(resume).expanduser()
    check_identity(given if given.is_dir() else given.parent, ident)
    if given.is_dir():
        path = restore_latest(state.checkpoint, given, repair=False)
        if path is None:
            raise CheckpointError(f"resume={resume}: no checkpoint in that directory")
        return path
    if not Path(str(given) + ".index").exists():
        raise CheckpointError(f"resume={resume}: no such checkpoint "
                              "(give a directory or a prefix like <dir>/ckpt-600)")
    try:
        restore(state.checkpoint, str(given))
    except Exception as e:  # damaged, or written by another model
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise CheckpointError(f"resume={resume}: cannot restore it ({reason})") from None
    return str(given)


def restore_or_start(config: Config, state: TrainState, directory: Path, ident: dict) -> Optional[str]:
    """Applies `resume`: the run's own latest checkpoint, else a given path, else scratch.

    `resume=<path>` seeds a run whose own directory is still empty; once the run has
    saved, rerunning the command continues from its own checkpoints.
    Returns the restored checkpoint path, or None for a fresh start; logs which.
    """
    if config.resume == "never":
        if any(entry.name != LOCK_FILE for entry in directory.iterdir()):
            log.info("resume=never: moved what was in %s to %s", directory, move_aside_contents(directory))
        log.info("starting from scratch")
        return None
    check_identity(directory, ident)
    path = restore_latest(state.checkpoint, directory)
    if path is not None:
        log.info("resumed from %s", path)
    elif config.resume != "auto":
        path = restore_given(state, config.resume, ident)
        log.info("started from %s (resume=%s)", path, config.resume)
    else:
        log.info("no checkpoint in %s: starting from scratch", directory)
    return path


# --- The outer loop ----------------------------------------------------------------

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


def check_finite(state: TrainState, manager) -> None:
    """Stops the run if a loss or a weight is NaN/Inf; nothing is saved over the last good
    checkpoint. Called at save points only: one device read, not one per step."""
    bad = int(state.nonfinite_step.numpy())
    if bad < 0 and not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in state.model.trainable_weights):
        bad = int(state.step.numpy())  # the loss was finite, but an update broke the weights
    if bad >= 0:
        raise TrainingError(f"the loss became NaN or Inf at step {bad}; stopped without saving "
                            f"(latest good checkpoint: {manager.latest_checkpoint}). "
                            "Lower lr or check the data")


def save(state: TrainState, manager, step: int) -> None:
    check_finite(state, manager)
    manager.save(checkpoint_number=step)


def _progress_bar(enabled: Optional[bool], steps: int, done: int):
    if not (sys.stdout.isatty() if enabled is None else enabled):
        return None
    bar = keras.utils.Progbar(steps, stateful_metrics=["loss", "accuracy"])
    bar.update(done)
    return bar


def next_chunk(step: int, epoch_end: int, steps_per_loop: int, every_n_steps: Optional[int]) -> int:
    """Steps for the next loop call: at most steps_per_loop, never past the epoch's end
    or a step-count checkpoint."""
    n = min(steps_per_loop, epoch_end - step)
    if every_n_steps is not None:
        n = min(n, every_n_steps - step % every_n_steps)
    return n


class EpochStats(NamedTuple):
    steps: int  # steps run in this call
    images: int
    seconds: float  # wall time of the steps (and of any mid-epoch checkpoint)
    first_call_done: float  # time.time() when the first loop call returned


def train_epoch(state, loop, dataset, manager, cadence, config: Config, start_step: int,
                num_examples: int) -> EpochStats:
    """Runs the batches of one epoch, or its remainder when `start_step` is inside it."""
    spe = data_lib.steps_per_epoch(num_examples, config.batch_size)
    epoch_start = start_step // spe * spe
    end = epoch_start + spe
    bar = _progress_bar(config.progress, spe, start_step - epoch_start)
    every_bar = max(1, spe // 50)
    step, iterator, first_call_done = start_step, iter(dataset), None
    start = time.perf_counter()
    while step < end:
        n = next_chunk(step, end, config.steps_per_loop, config.checkpoint.every_n_steps)
        loop(iterator, tf.constant(n, tf.int32))
        first_call_done = first_call_done or time.time()
        step += n
        if step < end and cadence.due(step):
            save(state, manager, step)
            cadence.saved()
        if bar is not None and (step // every_bar != (step - n) // every_bar or step == end):
            bar.update(step - epoch_start, [("loss", float(state.loss.result())),
                                            ("accuracy", float(state.accuracy.result()))])
    seconds = time.perf_counter() - start
    done = lambda s: min((s - epoch_start) * config.batch_size, num_examples)  # images, by position
    return EpochStats(step - start_step, done(step) - done(start_step), seconds, first_call_done)


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def finished_results(config: Config, directory: Path, ident: dict) -> Optional[dict]:
    """The saved results of this run if it already trained to `config.epochs` and nothing
    has been saved since; else None. Raises CheckpointError for another run's directory."""
    results = history.read_json(directory / "results.json")
    if config.resume == "never" or not results or results.get("epochs") != config.epochs \
            or "test_accuracy" not in results:
        return None
    check_identity(directory, ident)
    paths = checkpoint_paths(directory)
    return results if paths and results.get("checkpoint") == paths[-1] else None


def _results(rows: list[dict], evaluation: dict, step: int, name: str, directory: Path, manager,
             status: str) -> dict:
    rates = [r["images_per_sec"] for r in rows if r["images_per_sec"] > 0]
    return {
        "status": status,  # how this invocation began: started, resumed (or skipped, when finished)
        **evaluation,  # test_accuracy, test_loss (and member_test_accuracy)
        "epochs": rows[-1]["epoch"] if rows else 0,
        "steps": step,
        "train_images_per_sec": sum(rates) / len(rates) if rates else 0.0,
        "run_name": name,
        "checkpoint": manager.latest_checkpoint,
        "checkpoint_dir": str(directory),
        "rss_mb": rss_mb(),
        "pid": os.getpid(),
    }


def _read_rows(path: Path) -> list[dict]:
    try:
        return history.read_rows(path)
    except ValueError as e:
        raise CheckpointError(f"{e}; repair or delete it (the checkpoints do not depend on it)") from None


def _log_epoch(config: Config, row: dict, evaluation: dict, eval_seconds: float, save_seconds: float):
    members = evaluation.get("member_test_accuracy")
    log.info("epoch %d/%d  loss %.4f  accuracy %.4f  test loss %.4f  test accuracy %.4f  %.1f s  "
             "%.0f images/s  (evaluation %.2f s, checkpoint %.2f s)%s", row["epoch"], config.epochs,
             row["loss"], row["accuracy"], row["test_loss"], row["test_accuracy"], row["seconds"],
             row["images_per_sec"], eval_seconds, save_seconds,
             "  members " + " ".join(f"{a:.4f}" for a in members) if members else "")


def write_epoch_summaries(row: dict, test_images, predictions, labels, class_names, step: int) -> None:
    """Per-epoch scalars and up to 8 misclassified test images for TensorBoard."""
    with tf.summary.record_if(True):  # every epoch, whatever summary_every_n_steps says
        for key in ("loss", "accuracy", "test_loss", "test_accuracy", "lr"):
            tf.summary.scalar(f"epoch/{key}", row[key], step=step)
        wrong = np.flatnonzero(predictions != labels)[:8]
        if len(wrong):
            tf.summary.image("misclassified_test_images", test_images[wrong], step=step, max_outputs=8,
                             description="; ".join(f"#{i}: predicted {class_names[predictions[i]]}, "
                                                   f"true {class_names[labels[i]]}" for i in wrong))


def summaries_enabled(config: Config) -> bool:
    """`summaries`, where null means: when TensorBoard (which tf.summary needs) is installed."""
    installed = importlib.util.find_spec("tensorboard") is not None
    if config.summaries and not installed:
        raise ConfigError("summaries=true needs TensorBoard: pip install -e \".[tensorboard]\" "
                          "(or pass summaries=false)")
    return installed if config.summaries is None else config.summaries


def curves_due(now: float, drawn_at: float, every_n_minutes: float, last_epoch: bool) -> bool:
    """Whether an epoch end redraws learning_curves.png: after the last epoch, and otherwise
    once `every_n_minutes` have passed since the last drawing (-inf: never drawn)."""
    return last_epoch or now - drawn_at >= 60 * every_n_minutes


def train_and_evaluate(config: Config, workdir: str | Path, started: Optional[float] = None) -> dict:
    """Trains one configured run to `config.epochs`, resuming from its checkpoints.

    Writes metrics.csv, results.json, learning_curves.png and TensorBoard
    summaries into `workdir` (metrics and results also into the checkpoint
    directory, which keeps the run's whole history). Returns the results.
    `started`: when the process started (time.time()), to log the wait for the first step.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = data_lib.load(config.dataset.name, config.dataset.data_dir, config.dataset.download)
    directory, ident = checkpoint_dir_and_identity(config, data)
    finished = finished_results(config, directory, ident)
    if finished is not None:  # e.g. a rerun sweep: report it, train nothing
        log.info("finished earlier (%d epochs, test accuracy %.4f): skipped; its results are in %s",
                 finished["epochs"], finished["test_accuracy"], directory)
        history.write_rows(workdir / "metrics.csv", _read_rows(directory / "metrics.csv"))
        history.write_json(workdir / "results.json", {**finished, "status": "skipped"})
        return {**finished, "status": "skipped"}
    setup(config)
    state = create_state(config, data)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = DirectoryLock(directory)
    except OSError as e:
        raise CheckpointError(f"checkpoint.dir={directory}: cannot use it ({e})") from None
    spe = data_lib.steps_per_epoch(len(data.x_train), config.batch_size)
    augment = config.dataset.augment
    summaries = summaries_enabled(config)
    writer = (tf.summary.create_file_writer(str(workdir / "tensorboard")) if summaries
              else tf.summary.create_noop_writer())
    with lock, writer.as_default(), \
            tf.summary.record_if(lambda: state.step % config.summary_every_n_steps == 0):
        status = "resumed" if restore_or_start(config, state, directory, ident) else "started"
        write_identity(directory, ident, directory.name)
        manager = make_manager(state, directory, config.checkpoint.keep)
        step = int(state.step.numpy())
        rows = [r for r in _read_rows(directory / "metrics.csv") if r["epoch"] <= step // spe]
        test_ds = data_lib.test_dataset(data.x_test, data.y_test)
        evaluate = make_evaluate(state.model, test_ds.element_spec)
        loop = make_train_loop(state, test_ds.element_spec, summaries)
        cadence = Cadence(config.checkpoint.every_n_steps, config.checkpoint.every_n_minutes)
        log.info("run %s: %d examples, %d steps per epoch, checkpoints in %s",
                 directory.name, len(data.x_train), spe, directory)
        evaluation = None
        plotted = -math.inf  # when learning_curves.png was last drawn (time.monotonic)
        while step < config.epochs * spe:
            epoch = step // spe
            if step % spe == 0:
                state.reset_metrics()
            dataset = data_lib.train_dataset(
                data.x_train, data.y_train, config.batch_size, config.seed, epoch, skip_batches=step % spe,
                max_rotation=config.dataset.max_rotation if augment else 0.0,
                max_shift=config.dataset.max_shift if augment else 0.0,
                flip=config.dataset.flip and augment)
            if summaries and evaluation is None:  # once per invocation: what the network is fed
                with tf.summary.record_if(True):
                    tf.summary.image("train_inputs", next(iter(dataset))[0][:8], step=step, max_outputs=8)
            stats = train_epoch(state, loop, dataset, manager, cadence, config, step, len(data.x_train))
            if started is not None and step == 0:
                log.info("first %d step(s) done %.1f s after the process started",
                         next_chunk(0, spe, config.steps_per_loop, config.checkpoint.every_n_steps),
                         stats.first_call_done - started)
            step += stats.steps
            eval_start = time.perf_counter()
            evaluation, predictions = evaluate(test_ds)
            eval_seconds = time.perf_counter() - eval_start
            rows.append({"epoch": epoch + 1, "step": step, "loss": float(state.loss.result()),
                         "accuracy": float(state.accuracy.result()), "test_loss": evaluation["test_loss"],
                         "test_accuracy": evaluation["test_accuracy"],
                         "lr": float(state.optimizer.learning_rate.numpy()),  # the rate of the next step
                         "seconds": stats.seconds, "images_per_sec": stats.images / stats.seconds})
            # The row goes first: if the save below never happens, the resumed run drops it.
            history.write_rows(directory / "metrics.csv", rows)
            history.write_rows(workdir / "metrics.csv", rows)
            save_start = time.perf_counter()
            save(state, manager, step)
            cadence.saved()
            save_seconds = time.perf_counter() - save_start
            if summaries:
                write_epoch_summaries(rows[-1], data.x_test, predictions, data.y_test, data.class_names, step)
            if curves_due(time.monotonic(), plotted, config.plot_every_n_minutes, step >= config.epochs * spe):
                plots.learning_curves(rows, workdir / "learning_curves.png")
                plotted = time.monotonic()
            _log_epoch(config, rows[-1], evaluation, eval_seconds, save_seconds)
        if evaluation is None:  # already trained that far: report the checkpoint as it is
            log.info("already trained to epoch %d (step %d); evaluating only", step // spe, step)
            evaluation, _ = evaluate(test_ds)
            history.write_rows(workdir / "metrics.csv", rows)
            if rows:
                plots.learning_curves(rows, workdir / "learning_curves.png")
        results = _results(rows, evaluation, step, directory.name, directory, manager, status)
    writer.close()
    history.write_json(workdir / "results.json", results)
    history.write_json(directory / "results.json", results)
    log.info("test accuracy %.4f, test loss %.4f after %d steps", results["test_accuracy"],
             results["test_loss"], step)
    return results


def evaluation_plots(data: data_lib.Data, predictions: np.ndarray, workdir: Path) -> dict:
    """confusion_matrix.{png,csv}, per_class_accuracy.png and misclassified.png in `workdir`."""
    matrix = plots.confusion_matrix(data.y_test, predictions, data.num_classes)
    np.savetxt(workdir / "confusion_matrix.csv", matrix, fmt="%d", delimiter=",",
               header=",".join(data.class_names))
    plots.plot_confusion_matrix(matrix, data.class_names, workdir / "confusion_matrix.png")
    plots.plot_per_class_accuracy(matrix, data.class_names, workdir / "per_class_accuracy.png")
    wrong = np.flatnonzero(predictions != data.y_test)[:32]
    plots.image_grid(data.x_test[wrong], [f"#{i} {data.class_names[predictions[i]]}\n(true {data.class_names[data.y_test[i]]})"
                                          for i in wrong], workdir / "misclassified.png")
    return {"per_class_accuracy": dict(zip(data.class_names, (np.diag(matrix) / matrix.sum(axis=1)).tolist()))}


def evaluate_checkpoint(config: Config, workdir: str | Path) -> dict:
    """mode=eval: restores the run's latest checkpoint (or `resume=<path>`), evaluates it on
    the test set and writes results.json and the evaluation plots into `workdir`.
    Reads checkpoint directories, never changes them."""
    workdir = Path(workdir)
    data = data_lib.load(config.dataset.name, config.dataset.data_dir, config.dataset.download)
    directory, ident = checkpoint_dir_and_identity(config, data)
    setup(config)
    state = create_state(config, data)
    if config.resume not in ("auto", "never"):
        path = restore_given(state, config.resume, ident)
    else:
        check_identity(directory, ident)
        path = restore_latest(state.checkpoint, directory, repair=False) if directory.is_dir() else None
    if path is None:
        raise CheckpointError(f"mode=eval: no checkpoint in {directory}; train first "
                              "(same settings, mode=train) or pass resume=<checkpoint path>")
    test_ds = data_lib.test_dataset(data.x_test, data.y_test)
    evaluation, predictions = make_evaluate(state.model, test_ds.element_spec)(test_ds)
    workdir.mkdir(parents=True, exist_ok=True)
    results = {"status": "evaluated", "checkpoint": path, "steps": int(state.step.numpy()), **evaluation,
               **evaluation_plots(data, predictions, workdir)}
    log.info("%s (step %d): test loss %.4f, test accuracy %.4f; plots in %s", path, results["steps"],
             results["test_loss"], results["test_accuracy"], workdir)
    history.write_json(workdir / "results.json", results)
    return results
