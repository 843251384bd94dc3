"""A run's lifecycle: its identity and directory, a fresh process state, the model and
optimizer, and the resume policy (own checkpoints, a given one, or scratch).

The order, written once in `restore_or_start`: the run's own latest checkpoint,
else `resume=<path>`, else scratch; the log says which happened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Iterator, Optional

import keras
import tensorflow as tf

from cnn import data as data_lib
from cnn import history
from cnn.checkpoint import (LOCK_FILE, DirectoryLock, check_identity, checkpoint_paths,
                            move_aside_contents, restore, restore_latest)
from cnn.config import Config, identity, model_options, run_name, weights_identity
from cnn.console import hide_per_run_retracing_warnings
from cnn.errors import CheckpointError, ConfigError
from cnn.models import create_model
from cnn.state import TrainState

log = logging.getLogger(__name__)


def checkpoint_dir_and_identity(config: Config, data: data_lib.Data) -> tuple[Path, dict]:
    """The run's checkpoint directory (`checkpoint.dir`, or checkpoints/<run name> from the
    identity and the data) and what that directory records about the run."""
    fingerprint = data_lib.fingerprint(data)
    directory = (Path(config.checkpoint.dir).expanduser() if config.checkpoint.dir is not None
                 else Path("checkpoints") / run_name(config, fingerprint))
    return directory, {**identity(config), "data": fingerprint}


def finished_results(config: Config, directory: Path, ident: dict) -> Optional[dict]:
    """The saved results of this run if it already trained to `config.epochs` (or early stopping,
    with the same settings, ended it before) and nothing has been saved since; else None. Raises CheckpointError for another run's directory."""
    results = history.read_json(directory / "results.json")
    if config.resume == "never" or not results or "test_accuracy" not in results:
        return None
    stopped_here = results.get("early_stopping") == dataclasses.asdict(config.early_stopping)
    if results.get("epochs") != config.epochs and not (stopped_here and results["epochs"] <= config.epochs):
        return None
    check_identity(directory, ident)
    paths = checkpoint_paths(directory)
    return results if paths and results.get("checkpoint") == paths[-1] else None


# --- A fresh start in this process ---------------------------------------------------

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


def set_determinism(deterministic: bool) -> None:
    """Turns TensorFlow's op determinism on or off, as this run says: jobs of an in-process
    multirun share the process, and the setting would otherwise stick from an earlier job."""
    from tensorflow.python.framework import config as tf_config  # the off switch is not public

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    elif getattr(tf_config, "is_op_determinism_enabled", lambda: False)():
        disable = getattr(tf_config, "disable_op_determinism", None)
        if disable is None:
            raise ConfigError("deterministic=false after a deterministic job in the same process: this "
                              "TensorFlow cannot turn it off; run jobs in their own processes "
                              "(hydra/launcher=submitit_local)")
        disable()


def setup(config: Config) -> None:
    """Fresh Keras state, seeds, precision policy and determinism, before anything is built."""
    keras.backend.clear_session()  # jobs of a multirun share this process
    forget_custom_gradients()  # and with them, the earlier jobs' graphs
    hide_per_run_retracing_warnings()  # each job traces its loops once: not a retracing
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(config.precision)  # also resets it to float32
    set_determinism(config.deterministic)


# --- The model and its optimizer -------------------------------------------------------

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
    model = create_model(config.model.name, data.image_shape, data.num_classes, **model_options(config.model))
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate(config))
    if config.precision == "mixed_float16":  # float16 gradients underflow without loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return TrainState(model, optimizer)


# --- The checkpoint directory and the resume policy -----------------------------------

@contextlib.contextmanager
def claimed(directory: Path) -> Iterator[None]:
    """Creates and locks the run's checkpoint directory for the duration of the run.

    A run rejected before it wrote anything there (a bad `resume=`, another run's
    checkpoints) leaves no empty directory behind.
    """
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = DirectoryLock(directory)
    except OSError as e:
        raise CheckpointError(f"checkpoint.dir={directory}: cannot use it ({e})") from None
    try:
        with lock:
            yield
    except BaseException:
        if created and all(entry.name == LOCK_FILE for entry in directory.iterdir()):
            shutil.rmtree(directory, ignore_errors=True)
        raise


def restore_given(state: TrainState, resume: str, ident: dict) -> str:
    """Restores `resume`: a checkpoint prefix (<dir>/ckpt-600) or a directory (its latest).
    The directory is another run's: it is read, never repaired, and must match this run's
    identity but for batch-norm statistics settings (it is read for its weights)."""
    given, ident = Path(resume).expanduser(), weights_identity(ident)
    if given.is_dir():
        check_identity(given, ident)
        path = restore_latest(state.checkpoint, given, repair=False)
        if path is None:
            raise CheckpointError(f"resume={resume}: no checkpoint in that directory")
        return path
    if not Path(str(given) + ".index").exists():
        raise CheckpointError(f"resume={resume}: no such checkpoint (use auto, never, a checkpoint "
                              "directory or a prefix like <dir>/ckpt-600)")
    check_identity(given.parent, ident)
    try:
        restore(state.checkpoint, str(given))
    except Exception as e:  # damaged, or written by another model
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise CheckpointError(f"resume={resume}: cannot restore it ({reason})") from None
    return str(given)


def restore_or_start(config: Config, state: TrainState, directory: Path, ident: dict, owner: bool = True) -> str:
    """Applies `resume`: the run's own latest checkpoint, else a given path, else scratch.

    `resume=<path>` seeds a run whose own directory is still empty; once the run has
    saved, rerunning the command continues from its own checkpoints.
    `owner`: this process writes the directory (False: a multi-worker run's other workers,
    which read the chief's checkpoints and change nothing there).
    Returns how the run begins, "resumed" or "started"; logs which checkpoint, if any.
    """
    if config.resume == "never":
        if owner and any(entry.name != LOCK_FILE for entry in directory.iterdir()):
            log.info("resume=never: moved what was in %s to %s", directory, move_aside_contents(directory))
        log.info("starting from scratch")
        return "started"
    if directory.is_dir():
        check_identity(directory, ident)
    path = restore_latest(state.checkpoint, directory, repair=owner) if directory.is_dir() else None
    if path is not None:
        log.info("resumed from %s", path)
    elif config.resume != "auto":
        path = restore_given(state, config.resume, ident)
        log.info("started from %s (resume=%s)", path, config.resume)
    else:
        log.info("no checkpoint in %s: starting from scratch", directory)
    return "started" if path is None else "resumed"
