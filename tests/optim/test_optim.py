"""Optimizers and schedules: the group's options, coupled L2 against decoupled decay, warmup and
step decay in epochs, and the identity of runs that do not use them (their exact resume after a
SIGKILL: tests/data/test_augment.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cnn.config import compose, run_name
from cnn.config.schema import ScheduleConfig
from cnn.errors import ConfigError
from cnn.optim import create_optimizer, learning_rate


def schedule(**fields) -> ScheduleConfig:
    base = dict(name="constant", decay_steps=600, decay_rate=0.96, staircase=False, alpha=0.0, milestones=[],
                gamma=0.1, warmup_epochs=0.0)
    return ScheduleConfig(**{**base, **fields})


def rates(rate, steps):
    return [float(rate(tf.constant(s, tf.int64))) if callable(rate) else rate for s in steps]


def test_step_decay_and_warmup_are_set_in_epochs():
    step = learning_rate(0.1, schedule(name="step", milestones=[2, 3], gamma=0.1), steps_per_epoch=10)
    np.testing.assert_allclose(rates(step, [0, 19, 20, 29, 30, 99]), [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    warm = learning_rate(0.1, schedule(warmup_epochs=0.5), steps_per_epoch=10)  # 5 steps: 0.02, 0.04, ... 0.1
    np.testing.assert_allclose(rates(warm, [0, 1, 4, 5, 50]), [0.02, 0.04, 0.1, 0.1, 0.1], rtol=1e-6)
    assert learning_rate(0.1, schedule(), 10) == 0.1  # constant, no warmup: a float, as every run before
    with pytest.raises(ConfigError, match="schedule.milestones"):
        learning_rate(0.1, schedule(name="step"), 10)


def one_update(optimizer_spec, lr=0.1):
    """A kernel, a bias and one SGD/Adam step on a zero gradient: what weight decay alone does."""
    kernel = keras.Variable(np.full((2, 2), 1.0, np.float32), name="kernel")  # named as Keras layers name them
    bias = keras.Variable(np.ones(2, np.float32), name="bias")
    optimizer = create_optimizer(optimizer_spec, lr)
    optimizer.build([kernel, bias])
    optimizer.apply_gradients([(tf.zeros_like(kernel), kernel), (tf.zeros_like(bias), bias)])
    return kernel.numpy(), bias.numpy(), optimizer


def test_weight_decay_per_optimizer():
    # SGD, coupled L2: the gradient becomes 0 + wd * w, so w = 1 - lr * wd * 1; biases untouched.
    kernel, bias, _ = one_update({"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 0.5})
    np.testing.assert_allclose(kernel, 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(bias, 1.0)
    # Adam, coupled: Adam normalizes the L2 gradient, so the first step moves w by lr (sign of the gradient).
    kernel, bias, _ = one_update({"name": "adam", "weight_decay": 0.5})
    np.testing.assert_allclose(kernel, 1 - 0.1, rtol=1e-4)
    np.testing.assert_array_equal(bias, 1.0)
    # AdamW, decoupled: with a zero gradient the update is the decay alone, w -= lr * wd * w.
    kernel, bias, _ = one_update({"name": "adamw", "weight_decay": 0.5})
    np.testing.assert_allclose(kernel, 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(bias, 1.0)
    # Without weight decay: Keras' own classes, so checkpoints keep their layout.
    assert type(one_update({"name": "adam"})[2]) is keras.optimizers.Adam
    assert type(one_update({"name": "sgd", "momentum": 0.0})[2]) is keras.optimizers.SGD


def test_the_group_on_the_command_line_and_the_identity_of_old_runs():
    sgd = compose("optimizer=sgd", "optimizer.nesterov=true", "optimizer.weight_decay=1e-4")
    assert sgd.optimizer == {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4,
                             "global_clipnorm": None}
    # Runs that use the book's Adam and no warmup keep the names they had before these keys existed.
    assert run_name(compose(), "2000+500:9ee1c80bd47b").endswith("-f6449fdc")
    assert run_name(compose("schedule.warmup_epochs=1"), "x") != run_name(compose(), "x")
    assert run_name(sgd, "x") != run_name(compose(), "x")
    with pytest.raises(ConfigError, match="optimizer.momentum: no such option of this optimizer"):
        compose("optimizer.momentum=0.5")  # adam has none
    with pytest.raises(ConfigError, match="optimizer=rmsprop: no such option; available: adam, adamw, sgd"):
        compose("optimizer=rmsprop")


def test_resnet20_cifar10_is_he_et_als_recipe_in_iterations():
    from cnn.data.base import steps_per_epoch
    from cnn.optim.schedules import SCHEDULES

    config = compose("+experiment=resnet20_cifar10")
    spe = steps_per_epoch(45_000, config.batch_size)  # the 50,000 training images less the 5,000 held out
    assert (spe, config.dataset.validation_split, config.model["depth"], config.dataset.pad) == (352, 0.1, 20, 4)
    assert config.optimizer == {"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
                                "global_clipnorm": None}
    schedule = SCHEDULES["step"](config.lr, config.schedule, spe)
    rates = [float(schedule(step)) for step in (0, 31_999, 32_000, 47_999, 48_000)]
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-6)  # /10 at 32k and 48k iterations
    assert abs(config.epochs * spe - 64_000) < spe  # stopping at 64k
