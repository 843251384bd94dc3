"""The weights' moving average (ema.decay): its arithmetic, the exact swap, and that every reader
of a run (each epoch's evaluation, the selected checkpoint's test, mode=eval, the export) reads it."""

import json

import keras
import numpy as np
from helpers import make_config

from cnn.models import create_model
from cnn.serving import export
from cnn.checkpointing.directory import restore
from cnn.training import build, ema, train
from cnn.training import evaluate as evaluation
from cnn.training.state import TrainState
from cnn.training.steps import train_step


def small_state(decay):
    keras.utils.set_random_seed(0)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    ema.turn_on(optimizer, decay)
    return TrainState(create_model("bn_cnn", (28, 28, 1), 10), optimizer)


def test_the_average_is_the_decayed_mean_of_the_weights_after_each_step():
    state = small_state(0.8)
    rng = np.random.default_rng(0)
    expected = None
    for _ in range(3):
        batch = (rng.random((8, 28, 28, 1), np.float32), rng.integers(0, 10, 8))
        train_step(state.model, state.optimizer, batch)
        weights = [w.numpy() for w in state.model.trainable_variables]
        expected = weights if expected is None else [0.8 * e + 0.2 * w for e, w in zip(expected, weights)]
    for average, wanted in zip(ema.averages(state), expected):
        np.testing.assert_allclose(average.numpy(), wanted, rtol=1e-5, atol=1e-7)


def test_swapping_in_and_out_restores_the_weights_bit_for_bit():
    state = small_state(0.9)
    rng = np.random.default_rng(1)
    for _ in range(2):
        train_step(state.model, state.optimizer, (rng.random((8, 28, 28, 1), np.float32), rng.integers(0, 10, 8)))
    before = [w.numpy().copy() for w in state.model.trainable_variables]
    averages = [a.numpy().copy() for a in ema.averages(state)]
    with ema.averaged(state):
        for w, a in zip(state.model.trainable_variables, averages):
            np.testing.assert_array_equal(w.numpy(), a)
    for w, b in zip(state.model.trainable_variables, before):
        np.testing.assert_array_equal(w.numpy(), b)
    for a, b in zip(ema.averages(state), averages):
        np.testing.assert_array_equal(a.numpy(), b)
    assert ema.averages(small_state(None)) == []  # off: nothing kept, nothing swapped


def test_selection_eval_and_export_read_the_average(tmp_path):
    config = make_config(tmp_path, "model=bn_cnn", "ema.decay=0.9", "epochs=2")
    results = train.train_and_evaluate(config, tmp_path / "run")
    rows = (tmp_path / "run" / "metrics.csv").read_text()
    assert "val_accuracy" in rows
    evaluated = evaluation.evaluate_checkpoint(make_config(tmp_path, "model=bn_cnn", "ema.decay=0.9", "epochs=2",
                                                           mode="eval"), tmp_path / "eval")
    assert evaluated["test_accuracy"] == results["test_accuracy"]  # the same average, the same statistics
    assert evaluated["test_loss"] == results["test_loss"]

    (tmp_path / "export").mkdir()
    export.export_checkpoint(make_config(tmp_path, "model=bn_cnn", "ema.decay=0.9", "epochs=2", mode="export"),
                             tmp_path / "export")
    out = tmp_path / "ckpt" / "export"
    assert json.loads((out / "export.json").read_text())["which"] == "best"
    # The best checkpoint holds the weights and their average apart; the export has the average.
    run = build.prepare(config)
    build.setup(config)
    state = build.create_state(config, run.data)
    restore(state.checkpoint, results["best_checkpoint"])
    weight, average = state.model.trainable_variables[0].numpy(), ema.averages(state)[0].numpy()
    assert not np.array_equal(weight, average)
    served = keras.saving.load_model(out / "model.keras")
    kernel = next(v for v in served.weights if tuple(v.shape) == weight.shape).numpy()
    np.testing.assert_array_equal(kernel, average)


def test_the_average_without_batch_norm_statistics_of_its_own_is_refused():
    import pytest

    from cnn.config import compose
    from cnn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"ema.decay needs precise_bn.batches > 0"):
        compose("ema.decay=0.99", "precise_bn.batches=0")
