"""Saving the run's `TrainState`: the CheckpointManager, the mid-epoch cadence and the refusal
to save over a good checkpoint once a loss or weight is no longer finite."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import tensorflow as tf

from cnn.checkpointing.directory import make_manager
from cnn.config.schema import CheckpointConfig
from cnn.errors import TrainingError
from cnn.training.state import TrainState


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


def check_finite(state: TrainState, latest_checkpoint: Optional[str]) -> None:
    """Stops the run if a loss or a weight is NaN/Inf, before anything is saved over the last
    good checkpoint. Called at save points only, not after every step."""
    bad = int(state.nonfinite_step.numpy())
    if bad < 0 and not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in state.model.trainable_weights):
        bad = int(state.step.numpy())  # the loss was finite, but an update broke the weights
    if bad >= 0:
        raise TrainingError(f"the loss became NaN or Inf at step {bad}; stopped without saving "
                            f"(latest good checkpoint: {latest_checkpoint}). Lower lr or check the data")


class Checkpointer:
    """`save(step)`: a checkpoint numbered `step` into `directory` (the last `keep` kept), every
    save (the epoch's, mid-epoch, a stop's) after flushing the TensorBoard events."""

    def __init__(self, state: TrainState, directory: Path, settings: CheckpointConfig):
        self.state = state
        self.manager = make_manager(state, directory, settings.keep)
        self.cadence = Cadence(settings.every_n_steps, settings.every_n_minutes)

    @property
    def latest(self) -> Optional[str]:
        return self.manager.latest_checkpoint

    def save(self, step: int) -> None:
        check_finite(self.state, self.latest)
        # The summaries written so far on disk before the checkpoint is: a run resumed from it
        # does not write them again (a no-op without a default writer: the other workers).
        tf.summary.flush()
        self.manager.save(checkpoint_number=step)
        self.cadence.saved()
