"""Precise batch-norm statistics on any Keras network: functional graphs with skips,
subclassed and nested models, ensembles of members; only the moving statistics change,
a Sequential network gets exactly what the former layer-by-layer walk computed, and the
batch-norm layers are themselves again afterwards."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cnn.training import precise_bn

layers = keras.layers
SHAPE = (6, 6, 3)


def dataset(batches=3, batch=8, shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 2.0, (batches * batch, *shape)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x), np.int32))).batch(batch)


def pooled(inputs):
    """NumPy: the mean of the per-batch means, and E[var + mean^2] - mean^2, per channel."""
    inputs = [np.asarray(x, np.float64) for x in inputs]
    axes = tuple(range(inputs[0].ndim - 1))
    means = np.stack([x.mean(axis=axes) for x in inputs])
    squares = np.stack([x.var(axis=axes) for x in inputs]) + means ** 2
    mean = means.mean(axis=0)
    return mean, squares.mean(axis=0) - mean ** 2


def assert_statistics(bn, inputs):
    mean, variance = pooled(inputs)
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), variance, rtol=1e-4, atol=1e-5)


def residual_net(dropout=0.5, name=None):
    """Conv-BN-ReLU-Conv-BN, + the skip, ReLU, dropout, pooling, logits: a functional graph."""
    inputs = keras.Input(SHAPE)
    skip = layers.Conv2D(4, 1)(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(4, 3, padding="same")(skip)))
    x = layers.BatchNormalization()(layers.Conv2D(4, 3, padding="same")(x))
    x = layers.Dropout(dropout)(layers.ReLU()(layers.Add()([x, skip])))
    return keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(x)), name=name)


def functional_inputs(net, ds):
    """Each BN layer's input, batch by batch, through a probe of the same graph run in
    training mode (no dropout upstream of a BN layer)."""
    bns = precise_bn.batch_norm_layers(net)
    probe = keras.Model(net.inputs, [bn.input for bn in bns])
    per_batch = [[y.numpy() for y in probe(images, training=True)] for images, _ in ds]
    return bns, [list(column) for column in zip(*per_batch)]


def test_a_residual_functional_network():
    keras.utils.set_random_seed(0)
    net, ds = residual_net(), dataset()
    bns, inputs = functional_inputs(net, ds)  # before: the probe moves the moving averages
    assert len(bns) == 2
    precise_bn.create(net, 3, ds.element_spec).recompute(ds)
    for bn, seen in zip(bns, inputs):
        assert_statistics(bn, seen)


class Block(keras.layers.Layer):
    """Conv-BN-ReLU-Conv-BN + the input: BN layers as attributes, the skip in call()."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.conv1, self.bn1 = layers.Conv2D(filters, 3, padding="same"), layers.BatchNormalization()
        self.conv2, self.bn2 = layers.Conv2D(filters, 3, padding="same"), layers.BatchNormalization()

    def call(self, x, training=None):
        y = keras.ops.relu(self.bn1(self.conv1(x), training=training))
        return keras.ops.relu(x + self.bn2(self.conv2(y)))  # training from the call context


class Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stem, self.bn = layers.Conv2D(4, 1), layers.BatchNormalization()
        self.block, self.dropout = Block(4), layers.Dropout(0.5)
        self.head = keras.Sequential([layers.GlobalAveragePooling2D(), layers.Dense(3)])

    def call(self, x, training=None):
        x = self.block(keras.ops.relu(self.bn(self.stem(x), training=training)), training=training)
        return self.head(self.dropout(x, training=training))


def net_inputs(net, images):
    """By hand, Net's forward pass with BN in training mode: [input of bn, bn1, bn2]."""
    a = net.stem(images)
    x = keras.ops.relu(net.bn(a, training=True))
    b = net.block.conv1(x)
    c = net.block.conv2(keras.ops.relu(net.block.bn1(b, training=True)))
    return [a.numpy(), b.numpy(), c.numpy()]


def test_a_subclassed_model_with_a_nested_block():
    keras.utils.set_random_seed(1)
    net, ds = Net(), dataset()
    net(np.zeros((1, *SHAPE), np.float32))
    bns = precise_bn.batch_norm_layers(net)
    assert bns == [net.bn, net.block.bn1, net.block.bn2]
    inputs = list(zip(*(net_inputs(net, images) for images, _ in ds)))
    precise_bn.create(net, 3, ds.element_spec).recompute(ds)
    for bn, seen in zip(bns, inputs):
        assert_statistics(bn, seen)


class Pair(keras.Model):
    """Ensemble-like: members as attributes, their outputs stacked."""

    def __init__(self, members, **kwargs):
        super().__init__(**kwargs)
        self.member_0, self.member_1 = members

    def call(self, x, training=False):
        return keras.ops.stack([self.member_0(x, training=training), self.member_1(x, training=training)])


def test_every_member_of_an_ensemble():
    keras.utils.set_random_seed(2)
    members, ds = [residual_net(name="m0"), residual_net(name="m1")], dataset()
    model = Pair(members)
    model(np.zeros((1, *SHAPE), np.float32))
    found = [functional_inputs(member, ds) for member in members]
    bns = precise_bn.batch_norm_layers(model)
    assert bns == found[0][0] + found[1][0] and len({id(bn) for bn in bns}) == 4
    precise_bn.create(model, 3, ds.element_spec).recompute(ds)
    for member_bns, member_inputs in found:
        for bn, seen in zip(member_bns, member_inputs):
            assert_statistics(bn, seen)


@pytest.mark.parametrize("build", [residual_net, Net, lambda: Pair([residual_net(), residual_net()])])
def test_only_the_moving_statistics_change(build):
    keras.utils.set_random_seed(3)
    model, ds = build(), dataset()
    model(np.zeros((1, *SHAPE), np.float32))
    before = [v.numpy().copy() for v in model.variables]
    assert any("seed_generator" in v.path for v in model.variables)  # the dropout's random state is checked
    precise_bn.create(model, 3, ds.element_spec).recompute(ds)
    statistics = {id(v) for bn in precise_bn.batch_norm_layers(model) for v in (bn.moving_mean, bn.moving_variance)}
    assert len(statistics) == 2 * len(precise_bn.batch_norm_layers(model))
    for v, value in zip(model.variables, before):
        assert np.array_equal(v.numpy(), value) != (id(v) in statistics), v.path


class CallingBN(layers.BatchNormalization):
    """A subclass with its own call (inputs, training=None, mask=None), like the project's."""

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=training, mask=mask)


def sequential_net():
    return keras.Sequential([
        keras.Input(SHAPE), layers.BatchNormalization(),  # on the float32 images, also under mixed precision
        layers.Conv2D(4, 3, padding="same", use_bias=False), layers.BatchNormalization(),
        layers.ReLU(), layers.MaxPool2D(), layers.Conv2D(8, 3, padding="same"), CallingBN(), layers.ReLU(),
        layers.Flatten(), layers.Dense(6, use_bias=False), layers.BatchNormalization(momentum=0.9),
        layers.ReLU(), layers.Dropout(0.4), layers.Dense(3)])


def layer_walk_statistics(net, ds):
    """The former implementation for a Sequential network: each layer in turn, BN layers in
    training mode, the moments of their inputs summed in one tf.function."""
    bns = [layer for layer in net.layers if isinstance(layer, layers.BatchNormalization)]
    sums = [(tf.Variable(tf.zeros(bn.moving_mean.shape)), tf.Variable(tf.zeros(bn.moving_mean.shape))) for bn in bns]
    count = tf.Variable(0.0)

    def batch_moments(images):
        x, moments = images, []
        for layer in net.layers:
            if isinstance(layer, layers.BatchNormalization):
                moments.append(tf.nn.moments(tf.cast(x, tf.float32), axes=list(range(len(x.shape) - 1))))
                x = layer(x, training=True)
            else:
                x = layer(x, training=False)
        return moments

    @tf.function(input_signature=[tf.data.DatasetSpec(ds.element_spec)])
    def accumulate(dataset):
        for images, _ in dataset:
            for (mean, variance), (sum_mean, sum_square) in zip(batch_moments(images), sums):
                sum_mean.assign_add(mean)
                sum_square.assign_add(variance + tf.square(mean))
            count.assign_add(1.0)

    accumulate(ds)
    result = []
    for bn, (sum_mean, sum_square) in zip(bns, sums):
        mean = sum_mean / count
        result.append((tf.cast(mean, bn.moving_mean.dtype).numpy(),
                       tf.cast(sum_square / count - tf.square(mean), bn.moving_variance.dtype).numpy()))
    return result


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_a_sequential_network_gets_exactly_the_layer_walks_statistics(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(4)
        net, ds = sequential_net(), dataset(batches=4)
        expected = layer_walk_statistics(net, ds)
        precise_bn.create(net, 4, ds.element_spec).recompute(ds)
    finally:
        keras.config.set_dtype_policy(previous)
    bns = precise_bn.batch_norm_layers(net)
    assert len(bns) == 4 and isinstance(bns[2], CallingBN)
    for bn, (mean, variance) in zip(bns, expected):
        np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)
        np.testing.assert_array_equal(bn.moving_variance.numpy(), variance)


def test_batch_norm_is_itself_again_afterwards():
    keras.utils.set_random_seed(5)
    net, ds = residual_net(), dataset()
    statistics = precise_bn.create(net, 3, ds.element_spec)
    statistics.recompute(ds)
    recomputed = [bn.moving_mean.numpy().copy() for bn in statistics.layers]
    for bn in statistics.layers:
        assert "call" not in vars(bn) and bn.call.__func__ is type(bn).call and bn._convert_input_args
    counts = [count.numpy() for *_, count in statistics.sums]
    images = next(iter(ds))[0]
    bn = statistics.layers[0]
    x = keras.Model(net.inputs, bn.input)(images).numpy()
    expected = (x - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon) \
        * bn.gamma.numpy() + bn.beta.numpy()
    np.testing.assert_allclose(bn(x, training=False).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(net(images, training=False).numpy(), net(images, training=False).numpy())
    net(images, training=True)  # training updates the moving averages as usual, records nothing
    assert not np.array_equal(bn.moving_mean.numpy(), recomputed[0])
    assert [count.numpy() for *_, count in statistics.sums] == counts == [3.0, 3.0]
    statistics.recompute(ds)  # again, through the traced function: the same statistics
    for bn, mean in zip(statistics.layers, recomputed):
        np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)


class WithUnused(keras.Model):
    """A network, and a BN layer it holds but never calls."""

    def __init__(self, net, **kwargs):
        super().__init__(**kwargs)
        self.net, self.unused = net, layers.BatchNormalization()
        self.unused.build((None, 4))

    def call(self, x, training=None):
        return self.net(x, training=training)


def test_a_shared_layer_accumulates_every_call_and_an_unused_one_is_left_alone():
    keras.utils.set_random_seed(6)
    inputs, shared, first, second = keras.Input((5,)), layers.BatchNormalization(), layers.Dense(4), layers.Dense(4)
    model = WithUnused(keras.Model(inputs, shared(second(shared(first(inputs))))))  # shared: called twice
    x = np.random.default_rng(6).normal(2.0, 3.0, (24, 5)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(24, np.int32))).batch(8)
    seen = []
    for images, _ in ds:
        a = first(images)
        seen += [a.numpy(), second(shared(a, training=True)).numpy()]
    statistics = precise_bn.create(model, 3, ds.element_spec)
    assert statistics.layers == [shared, model.unused]
    statistics.recompute(ds)
    assert [count.numpy() for *_, count in statistics.sums] == [6.0, 0.0]
    assert_statistics(shared, seen)
    np.testing.assert_array_equal(model.unused.moving_mean.numpy(), np.zeros(4))
    np.testing.assert_array_equal(model.unused.moving_variance.numpy(), np.ones(4))


def test_no_batch_norm_or_no_batches_gives_none():
    spec = (tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32))
    assert precise_bn.create(keras.Sequential([keras.Input((4,)), layers.Dense(2)]), 50, spec) is None
    assert precise_bn.create(keras.Sequential([keras.Input((4,)), layers.BatchNormalization()]), 0, spec) is None


def test_an_empty_dataset_is_an_error():
    net, ds = residual_net(), dataset().take(0)
    with pytest.raises(RuntimeError, match="no batch-norm layer was called"):
        precise_bn.create(net, 3, ds.element_spec).recompute(ds)
