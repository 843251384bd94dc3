"""`TrainState`: everything a run needs to continue exactly where it stopped, in one
checkpointable object."""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import tensorflow as tf


class TrainState:
    """Everything a run needs to continue exactly where it stopped.

    Attributes:
      model, optimizer: the Keras model and its (built) optimizer.
      step: int64 count of training steps taken.
      nonfinite_step: first step whose loss was NaN/Inf, or -1 (never saved).
      loss, accuracy: the running epoch's Keras metrics.
      best_value, best_step: the best validation `monitor` value so far and the step of its
        checkpoint (NaN and -1: none yet).
      reference, wait: early stopping's reference value (the last improvement by at least
        min_delta) and the epochs since it.
      checkpoint: the tf.train.Checkpoint over all of the above.
    """

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer):
        self.model, self.optimizer = model, optimizer
        # Keras 3 optimizers create slots lazily; build now so a restore fills them.
        optimizer.build(model.trainable_variables)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.nonfinite_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
        self.loss = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.best_value = tf.Variable(float("nan"), dtype=tf.float64, trainable=False)
        self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
        self.reference = tf.Variable(float("nan"), dtype=tf.float64, trainable=False)
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False)
        weights = {id(w) for w in model.weights}
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, step=self.step,
            # Dropout's SeedGenerator states: in model.variables, not model.weights,
            # and not saved with the model.
            rng=[v for v in model.variables if id(v) not in weights],
            metrics=[v for m in (self.loss, self.accuracy) for v in m.variables],
            selection={"best_value": self.best_value, "best_step": self.best_step,
                       "reference": self.reference, "wait": self.wait},
        )
        # Weights must be reachable from the model itself (the optimizer also references the
        # trainable ones, which hides a gap until BatchNorm statistics go missing).
        tracked = {id(t) for t in tf.train.TrackableView(model).descendants()}
        missing = [v.path for v in model.weights if id(v) not in tracked]
        if missing:  # e.g. models kept in a list: Keras sees them, tf.train.Checkpoint does not
            raise ValueError(f"model variables a checkpoint would not save: {', '.join(missing[:5])}")

    def weights_digest(self) -> str:
        """A short SHA-256 of the model's weights, to compare runs (and workers) at a glance."""
        digest = hashlib.sha256()
        for weight in self.model.weights:
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
        return digest.hexdigest()[:16]

    def reset_metrics(self) -> None:
        self.loss.reset_state()
        self.accuracy.reset_state()
