"""Optimizers (a config group, `optimizer=adam|adamw|sgd`) and learning-rate schedules."""

from cnn.optim.optimizers import OPTIMIZERS, register_optimizer
from cnn.optim.schedules import SCHEDULES, learning_rate, register_schedule

__all__ = ["OPTIMIZERS", "SCHEDULES", "create_optimizer", "learning_rate", "register_optimizer", "register_schedule"]


def create_optimizer(spec: dict, rate):
    """The optimizer a config's `optimizer` node describes, at learning rate `rate`."""
    return OPTIMIZERS.build(spec, rate)
