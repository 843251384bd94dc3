"""An exponential moving average of the weights (`ema.decay`), kept by the Keras optimizer
itself (`use_ema`: after each update, average = decay * average + (1 - decay) * weight; the
first update copies the weights), checkpointed with the optimizer's variables.

With it on, what is evaluated is the average: every epoch's evaluation (and the batch-norm
statistics recomputed before it), the selection of the best checkpoint, the final test of the
selected checkpoint, mode=eval and the export. Training goes on from the weights themselves:
`averaged(state)` swaps the two in and back out, exactly.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import tensorflow as tf


def turn_on(optimizer, decay: Optional[float]) -> None:
    """Makes `optimizer` (not built yet) keep the average, for any Keras optimizer."""
    if decay is None:
        return
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # mixed_float16's LossScaleOptimizer
    inner.use_ema, inner.ema_momentum, inner.ema_overwrite_frequency = True, float(decay), None


def averages(state) -> list:
    """The averages, one per trainable variable, or [] when the run keeps none."""
    inner = getattr(state.optimizer, "inner_optimizer", state.optimizer)
    if not getattr(inner, "use_ema", False):
        return []
    return list(inner._model_variables_moving_average)  # Keras keeps them under this private name


def swap(state) -> None:
    """Exchanges the trainable weights with their averages (twice: as they were, bit for bit)."""
    for variable, average in zip(state.model.trainable_variables, averages(state)):
        held = tf.identity(variable)
        variable.assign(average)
        average.assign(held)


@contextlib.contextmanager
def averaged(state):
    """The averages in the model inside the block (a no-op without `ema.decay`)."""
    swap(state)
    try:
        yield
    finally:
        swap(state)


def use_averages(state) -> None:
    """The averages into the model for good: what mode=eval and the export read."""
    for variable, average in zip(state.model.trainable_variables, averages(state)):
        variable.assign(average)
