"""Precise batch-norm statistics: what they compute, that training does not see them, that
they rescue a model whose moving averages have not converged, and exact resume."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SAMPLE
from helpers import make_config, variables

from cnn import data
from cnn.checkpointing import directory as checkpoint
from cnn.reporting import history
from cnn.training import build, precise_bn
from cnn.training import evaluate as evaluation
from cnn.training import train as training  # (the test below has a helper called train)


def test_statistics_are_the_average_over_the_batches():
    """One BN layer straight on the inputs: the recomputed statistics are the mean and the
    (pooled, biased) variance of every image of the batches, per channel."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5, 5, 3)), keras.layers.BatchNormalization(), keras.layers.Flatten()])
    x = np.random.default_rng(0).normal(3.0, 2.0, (40, 5, 5, 3)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(40, np.int32))).batch(10)  # 4 equal batches
    precise_bn.create(model, 4, dataset.element_spec).recompute(dataset)
    bn = model.layers[0]
    np.testing.assert_allclose(bn.moving_mean.numpy(), x.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), x.var(axis=(0, 1, 2)), rtol=1e-4)


def test_models_without_batch_norm_or_batches_get_none():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    spec = (tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32))
    assert precise_bn.create(model, 50, spec) is None
    assert precise_bn.create(keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()]), 0, spec) is None


def test_recomputing_leaves_weights_and_dropout_state_alone(tmp_path):
    config = make_config(tmp_path, "model=ensemble", "model.members=bn_cnn", "model.size=2")
    sample = data.split_validation(data.load("mnist", str(SAMPLE)), config.dataset.validation_split)
    build.setup(config)
    state = build.create_state(config, sample)
    before = {v.path: v.numpy().copy() for v in state.model.variables}
    ds = data.statistics_dataset(sample.x_train, sample.y_train, 100, 0, 3)
    precise_bn.create(state.model, 3, ds.element_spec).recompute(ds)
    statistics = {v.path for layer in precise_bn.batch_norm_layers(state.model)
                  for v in (layer.moving_mean, layer.moving_variance)}
    assert len(statistics) == 2 * 4 * 2  # both members' four layers
    for v in state.model.variables:
        changed = not np.array_equal(v.numpy(), before[v.path])
        assert changed == (v.path in statistics), v.path  # statistics only: no weight, no seed state


def test_the_statistics_dataset_is_fixed_and_never_larger_than_the_data():
    x, y = np.arange(250 * 4, dtype=np.uint8).reshape(250, 2, 2, 1), np.zeros(250, np.int32)
    batches = lambda seed, n: [b[0].numpy() for b in data.statistics_dataset(x, y, 100, seed, n)]
    first, again = batches(0, 50), batches(0, 50)
    assert len(first) == 2 and all(len(b) == 100 for b in first)  # full batches only
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(batches(1, 50)[0], first[0])  # seeded


@pytest.mark.slow
def test_precise_statistics_make_an_unconverged_model_usable_without_changing_training(tmp_path):
    """40 steps at momentum 0.99: the moving averages still hold two thirds of their initial
    0 and 1, and the model evaluates as a constant; the recomputed ones evaluate as trained."""
    def train(where, batches):
        config = make_config(tmp_path / where, "model=bn_cnn", f"precise_bn.batches={batches}", batch_size=50)
        results = training.train_and_evaluate(config, tmp_path / where / "run")
        return results, history.read_rows(tmp_path / where / "run" / "metrics.csv")[-1]

    (moving, moving_row), (precise, precise_row) = train("moving", 0), train("precise", 50)
    assert {k: moving_row[k] for k in ("loss", "accuracy")} == {k: precise_row[k] for k in ("loss", "accuracy")}
    assert moving["test_accuracy"] < 0.3 < 0.75 < precise_row["accuracy"]
    assert precise["test_accuracy"] > precise_row["accuracy"] - 0.05
    # The checkpoint holds the recomputed statistics, and evaluating it recomputes the same.
    saved = variables(precise["checkpoint"])
    evaluated = evaluation.evaluate_checkpoint(
        make_config(tmp_path / "precise", "model=bn_cnn", "precise_bn.batches=50", "mode=eval", batch_size=50),
        tmp_path / "eval")
    assert evaluated["test_accuracy"] == precise["test_accuracy"]
    statistics = [k for k in saved if "moving_mean" in k or "moving_variance" in k]
    assert len(statistics) == 8
    moving_saved = variables(moving["checkpoint"])
    for key in statistics:  # what was saved is the recomputation, not the moving averages
        assert not np.allclose(saved[key], moving_saved[key], rtol=1e-3), key
    config = make_config(tmp_path / "precise", "model=bn_cnn", batch_size=50)
    sample = data.split_validation(data.load("mnist", str(SAMPLE)), config.dataset.validation_split)
    build.setup(config)
    state = build.create_state(config, sample)
    checkpoint.restore(state.checkpoint, moving["checkpoint"])  # the same weights, moving averages
    ds = data.statistics_dataset(sample.x_train, sample.y_train, 50, 0, 50)
    precise_bn.create(state.model, 50, ds.element_spec).recompute(ds)
    recomputed = [v.numpy() for layer in precise_bn.batch_norm_layers(state.model)
                  for v in (layer.moving_mean, layer.moving_variance)]
    for key in statistics:  # bitwise: the same batches, the same weights, deterministic ops
        assert any(np.array_equal(saved[key], value) for value in recomputed), key
    # mode=eval of a checkpoint with moving averages recomputes them, in memory only.
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "moving" / "ckpt").iterdir())
    rescued = evaluation.evaluate_checkpoint(
        make_config(tmp_path / "moving", "model=bn_cnn", "mode=eval", f"resume='{tmp_path / 'moving' / 'ckpt'}'",
                    batch_size=50), tmp_path / "eval2")
    assert rescued["test_accuracy"] == precise["test_accuracy"]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "moving" / "ckpt").iterdir()) == before


def test_bn_momentum_reaches_every_batch_norm_layer(tmp_path):
    sample = data.load("mnist", str(SAMPLE))
    for overrides, expected in ((["model=bn_cnn", "model.bn_momentum=0.9"], 0.9),
                                (["model=ensemble", "model.members=bn_cnn", "model.size=2"], 0.99),
                                (["model=ensemble", "model.members=bn_cnn", "model.size=2",
                                  "model.bn_momentum=0.5"], 0.5)):
        config = make_config(tmp_path, *overrides)
        build.setup(config)
        layers = precise_bn.batch_norm_layers(build.create_state(config, sample).model)
        assert layers and {layer.momentum for layer in layers} == {expected}, overrides
