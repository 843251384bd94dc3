"""One build of a run, shared by training, `mode=eval`, `mode=export` and the benchmark:
its data (the validation set held out), its identity and checkpoint directory, a fresh
process state, and its `TrainState` (the model from the registry and its optimizer).

    run = build.prepare(config)            # data, directory, identity
    build.setup(config)                    # fresh Keras state, seeds, precision, determinism
    state = build.create_state(config, run.data)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # the determinism off switch is not public
from tensorflow.python.framework import ops as tf_ops  # the gradient registry has no public API

from cnn import data as data_lib
from cnn.config import Config, identity, run_name
from cnn.errors import ConfigError
from cnn.models import MODELS, build_model
from cnn.optim import OPTIMIZERS, create_optimizer, learning_rate
from cnn.runtime.console import hide_per_run_retracing_warnings
from cnn.training import ema, precise_bn
from cnn.training.state import TrainState

log = logging.getLogger("cnn.run")


@dataclass
class Prepared:
    """What a run is: its data (validation set held out), checkpoint directory and identity."""

    data: data_lib.Data
    directory: Path
    identity: dict


def check_builders(config: Config) -> None:
    """The model's and optimizer's options against their builders (one line for a bad one),
    before any data is read; int options a builder takes as float become floats."""
    config.model.update(MODELS.check(config.model))
    config.optimizer.update(OPTIMIZERS.check(config.optimizer))


def prepare(config: Config) -> Prepared:
    """Checks the builders, loads the data, names the run and holds out the validation set."""
    check_builders(config)
    data = data_lib.load_dataset(config.dataset)
    directory, ident = checkpoint_dir_and_identity(config, data)
    return Prepared(data_lib.split_validation(data, config.dataset.validation_split), directory, ident)


def checkpoint_dir_and_identity(config: Config, data: data_lib.Data) -> tuple[Path, dict]:
    """The run's checkpoint directory (`checkpoint.dir`, or checkpoints/<run name> from the
    identity and the data) and what that directory records about the run."""
    fingerprint = data_lib.fingerprint(data)
    directory = (Path(config.checkpoint.dir).expanduser() if config.checkpoint.dir is not None
                 else Path("checkpoints") / run_name(config, fingerprint))
    return directory, {**identity(config), "data": fingerprint}


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
    registry = getattr(getattr(tf_ops, "_gradient_registry", None), "_registry", None)
    if isinstance(registry, dict):
        for name in [n for n in registry if str(n).startswith("CustomGradient-")]:
            del registry[name]


def set_determinism(deterministic: bool) -> None:
    """Turns TensorFlow's op determinism on or off, as this run says: jobs of an in-process
    multirun share the process, and the setting would otherwise stick from an earlier job."""
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

def create_state(config: Config, data: data_lib.Data) -> TrainState:
    """The model (from the registry, or the config's `_target_`) and its optimizer, in a TrainState.

    Call after `setup`: the model takes its dtypes from the global precision policy.
    """
    model = build_model(config.model, data.image_shape, data.num_classes)
    spe = data_lib.steps_per_epoch(len(data.x_train), config.batch_size)
    optimizer = create_optimizer(config.optimizer, learning_rate(config.lr, config.schedule, spe))
    ema.turn_on(optimizer, config.ema.decay)  # before the optimizer is built: its averages are its variables
    if config.precision == "mixed_float16":  # float16 gradients underflow without loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return TrainState(model, optimizer)


def statistics(config: Config, state: TrainState, data: data_lib.Data, element_spec):
    """(PreciseBN, its batches) for recomputing the model's batch-norm statistics
    (`precise_bn.batches` fixed, seeded, unaugmented training batches), or None without batch norm."""
    statistics = precise_bn.create(state.model, config.precise_bn.batches, element_spec)
    if statistics is None:
        return None
    return statistics, data_lib.statistics_dataset(data.x_train, data.y_train, config.batch_size, config.seed,
                                                   config.precise_bn.batches)


def recompute_statistics(config: Config, state: TrainState, data: data_lib.Data, element_spec) -> None:
    """Recomputes the batch-norm statistics in memory, as training does before each evaluation."""
    found = statistics(config, state, data, element_spec)
    if found is not None:
        found[0].recompute(found[1])
