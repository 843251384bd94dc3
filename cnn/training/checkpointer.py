"""Saving the run's `TrainState`: the CheckpointManager, the mid-epoch cadence, the refusal
to save over a good checkpoint once a loss or weight is no longer finite, and a save that
cannot write (a full disk) ending in one line with nothing half-written left."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Optional

import tensorflow as tf

from cnn.checkpointing.directory import checkpoint_paths, make_manager
from cnn.config.schema import CheckpointConfig
from cnn.errors import TrainingError, WriteError, errno_of
from cnn.reporting.summaries import EVENTS_DIR
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
        kept = (f"the latest good checkpoint, {latest_checkpoint}, is kept" if latest_checkpoint
                else "no checkpoint was saved before it: a rerun starts from scratch")
        raise TrainingError(f"the loss became NaN or Inf at step {bad}; stopped without saving ({kept}). "
                            "Lower lr or check the data")


class Checkpointer:
    """`save(step)`: a checkpoint numbered `step` into `directory` (the last `keep` kept), every
    save (the epoch's, mid-epoch, a stop's) after flushing the TensorBoard events."""

    def __init__(self, state: TrainState, directory: Path, settings: CheckpointConfig):
        self.state, self.directory = state, Path(directory)
        self.manager = make_manager(state, self.directory, settings.keep)
        self.cadence = Cadence(settings.every_n_steps, settings.every_n_minutes)

    @property
    def latest(self) -> Optional[str]:
        return self.manager.latest_checkpoint

    def save(self, step: int) -> None:
        """Saves the checkpoint of `step`. A save that cannot write (a full disk, no permission)
        leaves nothing of itself and raises WriteError naming the latest good checkpoint."""
        check_finite(self.state, self.latest)
        instead = "checkpoint.dir=<a directory with room>"
        try:
            # The summaries written so far on disk before the checkpoint is: a run resumed from it
            # does not write them again (a no-op without a default writer: the other workers).
            tf.summary.flush()
        except tf.errors.OpError as e:
            if errno_of(e) is None:
                raise
            raise WriteError.of(self.directory / EVENTS_DIR, e, kept_message(self.directory), instead) from None
        prefix = self.directory / f"ckpt-{step}"
        existed = Path(f"{prefix}.index").exists()
        try:
            self.manager.save(checkpoint_number=step)
        except BaseException as e:
            failed_write = isinstance(e, OSError) or (isinstance(e, tf.errors.OpError) and errno_of(e) is not None)
            discard_partial(self.directory, step, existed or not failed_write)
            if failed_write:
                raise WriteError.of(prefix, e, kept_message(self.directory), instead) from None
            raise
        self.cadence.saved()


def discard_partial(directory: Path, step: int, keep_merged: bool) -> None:
    """Removes what a failed save of `step` left: TensorFlow's `ckpt-<step>_temp/` shards, the
    merged `ckpt-<step>.*` files unless `keep_merged` (they were there before the save, or the save
    was interrupted rather than refused), the state file's temporary copy."""
    shutil.rmtree(directory / f"ckpt-{step}_temp", ignore_errors=True)
    partial = [] if keep_merged else list(directory.glob(f"ckpt-{step}.*"))
    for path in partial + list(directory.glob("checkpoint.tmp*")):
        with contextlib.suppress(OSError):
            path.unlink()


def kept_message(directory: Path) -> str:
    """What a failed save leaves to resume from: the newest checkpoint file on disk."""
    paths = checkpoint_paths(directory)
    if not paths:
        return "no checkpoint was saved before it (nothing half-written is left)"
    return f"the latest good checkpoint, {paths[-1]}, is kept"
