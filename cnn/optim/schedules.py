"""Learning-rate schedules: `schedule.name` = constant, exponential, cosine or step, each
optionally after a linear warmup (`schedule.warmup_epochs`).

Settings in epochs (the step schedule's milestones, the warmup) are turned into steps
once, here, with the run's steps per epoch; the schedules are Keras' own, indexed by
the optimizer's step, so a resumed run continues them exactly. A new schedule is one
builder registered here plus its keys in conf/config.yaml (and, in cnn/config/identity.py,
the keys it reads).
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from cnn.config.schema import ScheduleConfig
from cnn.errors import ConfigError

SCHEDULES: dict[str, Callable] = {}


def register_schedule(name: str):
    def wrap(builder):
        SCHEDULES[name] = builder
        return builder
    return wrap


@register_schedule("constant")
def constant(lr: float, s: ScheduleConfig, steps_per_epoch: int):
    return lr


@register_schedule("exponential")
def exponential(lr: float, s: ScheduleConfig, steps_per_epoch: int):
    return keras.optimizers.schedules.ExponentialDecay(lr, s.decay_steps, s.decay_rate, staircase=s.staircase)


@register_schedule("cosine")
def cosine(lr: float, s: ScheduleConfig, steps_per_epoch: int):
    return keras.optimizers.schedules.CosineDecay(lr, s.decay_steps, alpha=s.alpha)


@register_schedule("step")
def step(lr: float, s: ScheduleConfig, steps_per_epoch: int):
    """lr, multiplied by gamma at each milestone (epochs), e.g. He et al.'s /10 at 32k and 48k steps."""
    if not s.milestones:
        raise ConfigError("schedule.name=step needs schedule.milestones=[epoch, ...]")
    # Keras changes the rate after a boundary step: the first step of epoch m + 1 (index m * spe) has the new one.
    boundaries = [round(m * steps_per_epoch) - 1 for m in s.milestones]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, [lr * s.gamma**i for i in
                                                                          range(len(boundaries) + 1)])


class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` scaled by min(1, (step + 1) / warmup_steps): a linear ramp from lr / warmup_steps
    at the first step to the schedule's own rate at step warmup_steps - 1, then the schedule."""

    def __init__(self, schedule, warmup_steps: int):
        self.schedule, self.warmup_steps = schedule, warmup_steps

    def __call__(self, step):
        rate = self.schedule(step) if callable(self.schedule) else self.schedule
        ramp = tf.minimum(1.0, (tf.cast(step, tf.float32) + 1.0) / float(self.warmup_steps))
        return tf.cast(rate, tf.float32) * ramp

    def get_config(self):
        return {"schedule": self.schedule if not callable(self.schedule) else self.schedule.get_config(),
                "warmup_steps": self.warmup_steps}


def learning_rate(lr: float, s: ScheduleConfig, steps_per_epoch: int):
    """`lr`, or a Keras schedule starting at (or, with a warmup, rising to) `lr`."""
    if s.name not in SCHEDULES:
        raise ConfigError(f"schedule.name={s.name}: must be one of {', '.join(SCHEDULES)}")
    rate = SCHEDULES[s.name](lr, s, steps_per_epoch)
    warmup_steps = round(s.warmup_epochs * steps_per_epoch)
    return Warmup(rate, warmup_steps) if warmup_steps > 0 else rate
