"""Precise batch-norm statistics: before an evaluation, every batch-norm layer's moving
mean and variance are replaced by their true average over a fixed set of training batches.

Keras, like every framework, evaluates with exponential moving averages (momentum 0.99):
after a few hundred steps they still carry much of their initial 0 and 1, and a model that
is right on 99 % of its training batches calls every test image one class. pycls and
detectron2 ("PreciseBN") recompute the statistics instead; so does this, per network (each
member of an ensemble), all layers in one pass per batch as they do: each layer's input
is what training feeds it (batch statistics upstream). Training itself never reads the
moving averages, so a run's training curve is the same with this on or off.
"""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from cnn.models import Ensemble


def batch_norm_layers(model: keras.Model) -> list:
    """The model's batch-norm layers, network by network, in call order."""
    nets = model.members if isinstance(model, Ensemble) else [model]
    return [layer for net in nets for layer in _layers(net) if isinstance(layer, keras.layers.BatchNormalization)]


def _layers(net: keras.Model) -> list:
    if any(isinstance(layer, keras.layers.BatchNormalization) for layer in net._flatten_layers(include_self=False)) \
            and not isinstance(net, keras.Sequential):
        raise NotImplementedError(f"precise batch-norm statistics need a keras.Sequential network; "
                                  f"{net.name} is not (pass precise_bn.batches=0)")
    return net.layers if isinstance(net, keras.Sequential) else []


def _batch_moments(model: keras.Model, images) -> list:
    """[(mean, variance)] of every batch-norm layer's input over the batch, float32 (channels,)."""
    nets = model.members if isinstance(model, Ensemble) else [model]
    moments = []
    for net in nets:
        x = images
        for layer in _layers(net):
            if isinstance(layer, keras.layers.BatchNormalization):
                moments.append(tf.nn.moments(tf.cast(x, tf.float32), axes=list(range(len(x.shape) - 1))))
                x = layer(x, training=True)  # normalized by the batch, as in training
            else:
                x = layer(x, training=False)  # no dropout: its random state stays untouched
    return moments


class PreciseBN:
    """`recompute(dataset)`: sets every batch-norm layer's moving statistics to the average
    of its batch statistics over `dataset` (pooled variance: E[var + mean^2] - mean^2)."""

    def __init__(self, model: keras.Model, element_spec):
        self.layers = batch_norm_layers(model)
        # Accumulators outside the model: never in a checkpoint.
        self.sums = [(tf.Variable(tf.zeros(layer.moving_mean.shape)), tf.Variable(tf.zeros(layer.moving_mean.shape)))
                     for layer in self.layers]
        self.count = tf.Variable(0.0)

        @tf.function(input_signature=[tf.data.DatasetSpec(element_spec)])
        def accumulate(dataset):
            for images, _ in dataset:
                for (mean, variance), (sum_mean, sum_square) in zip(_batch_moments(model, images), self.sums):
                    sum_mean.assign_add(mean)
                    sum_square.assign_add(variance + tf.square(mean))
                self.count.assign_add(1.0)

        self._accumulate = accumulate

    def recompute(self, dataset) -> None:
        for sum_mean, sum_square in self.sums:
            sum_mean.assign(tf.zeros_like(sum_mean))
            sum_square.assign(tf.zeros_like(sum_square))
        self.count.assign(0.0)
        self._accumulate(dataset)
        for layer, (sum_mean, sum_square) in zip(self.layers, self.sums):
            mean = sum_mean / self.count
            layer.moving_mean.assign(tf.cast(mean, layer.moving_mean.dtype))
            layer.moving_variance.assign(tf.cast(sum_square / self.count - tf.square(mean),
                                                 layer.moving_variance.dtype))


def create(model: keras.Model, batches: int, element_spec) -> Optional[PreciseBN]:
    """A PreciseBN for `model`, or None when it has no batch norm or `batches` is 0."""
    if batches == 0 or not batch_norm_layers(model):
        return None
    return PreciseBN(model, element_spec)
