"""Precise batch-norm statistics: before an evaluation, every batch-norm layer's moving
mean and variance are replaced by their true average over a fixed set of training batches.

Keras, like every framework, evaluates with exponential moving averages (momentum 0.99):
after a few hundred steps they still carry much of their initial 0 and 1, and a model that
is right on 99 % of its training batches calls every test image one class. pycls and
detectron2 ("PreciseBN") recompute the statistics instead; so does this, all layers in one
pass per batch as they do: each layer's input is what training feeds it (batch statistics
upstream). Training itself never reads the moving averages, so a run's training curve is
the same with this on or off.

Any network works (Sequential, functional, subclassed, nested: an ensemble's members): it
runs its own forward pass, model(images, training=False), while each batch-norm layer's
`call` is, only while that pass is traced, a wrapper that records the moments of its input
and normalizes by the batch; no other layer trains (no dropout, no random state advanced).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator, Optional

import keras
import tensorflow as tf


def batch_norm_layers(model: keras.Model) -> list:
    """The model's batch-norm layers, each once, depth first in the order the layers were
    tracked (network by network for an ensemble, call order for a Sequential)."""
    found, seen = [], set()

    def visit(layer):
        for sub in layer._flatten_layers(include_self=False, recursive=False):
            if id(sub) not in seen:
                seen.add(id(sub))
                if isinstance(sub, keras.layers.BatchNormalization):
                    found.append(sub)
                visit(sub)

    visit(model)
    return found


def _recording_call(layer, sums):
    """`layer.call` with training=True, after adding the batch mean and mean square of its
    input (float32, per channel) to `sums` (sum, sum of squares, calls). The input is taken
    before the layer's dtype cast, as the former layer-by-layer walk took it, then cast as
    Layer.__call__ would have (bitwise the same statistics under mixed precision)."""
    original, signature, convert = layer.call, inspect.signature(layer.call), layer._convert_input_args
    first = next(iter(signature.parameters))

    def call(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        x = bound.arguments[first]
        mean, variance = tf.nn.moments(tf.cast(x, tf.float32), axes=list(range(len(x.shape) - 1)))
        sum_mean, sum_square, count = sums
        sum_mean.assign_add(mean)
        sum_square.assign_add(variance + tf.square(mean))
        count.assign_add(1.0)
        if convert:
            bound.arguments[first] = layer.dtype_policy.convert_input(x, layer.autocast, layer.input_dtype)
        bound.arguments["training"] = True  # normalized by the batch, as in training
        return original(*bound.args, **bound.kwargs)

    return call


@contextlib.contextmanager
def _recording(layers: list, sums: list) -> Iterator[None]:
    """Within: every layer in `layers` records its input (`_recording_call`). Keras' Layer
    __call__ reads `self.call`, so an instance attribute shadows the class's method (set and
    removed with object's own setattr/delattr, past Keras' attribute tracking), and it casts
    the input only when `_convert_input_args`, which the recording call does instead."""
    saved = [(layer.__dict__.get("call"), layer._convert_input_args) for layer in layers]
    try:
        for layer, layer_sums in zip(layers, sums):
            object.__setattr__(layer, "call", _recording_call(layer, layer_sums))
            layer._convert_input_args = False
        yield
    finally:
        for layer, (call, convert) in zip(layers, saved):
            layer._convert_input_args = convert
            if call is not None:
                object.__setattr__(layer, "call", call)
            elif "call" in layer.__dict__:
                object.__delattr__(layer, "call")


class PreciseBN:
    """`recompute(dataset)`: sets every batch-norm layer's moving statistics to the average
    of its batch statistics over `dataset` (pooled variance: E[var + mean^2] - mean^2)."""

    def __init__(self, model: keras.Model, element_spec):
        self.layers = batch_norm_layers(model)
        # Outside the model: never in a checkpoint. A count per layer: a shared one adds each call.
        self.sums = [(tf.Variable(tf.zeros(layer.moving_mean.shape)), tf.Variable(tf.zeros(layer.moving_mean.shape)),
                      tf.Variable(0.0)) for layer in self.layers]

        @tf.function(input_signature=[tf.data.DatasetSpec(element_spec)])
        def accumulate(dataset):
            for images, _ in dataset:
                model(images, training=False)  # the BN layers record and return training's output

        self._accumulate = accumulate

    def recompute(self, dataset) -> None:
        for variable in (v for sums in self.sums for v in sums):
            variable.assign(tf.zeros_like(variable))
        with _recording(self.layers, self.sums):  # traced on the first call only
            self._accumulate(dataset)
        if not any(count.numpy() for *_, count in self.sums):  # rather than silently keep them
            raise RuntimeError("precise BN: no batch-norm layer was called (an empty dataset?)")
        for layer, (sum_mean, sum_square, count) in zip(self.layers, self.sums):
            if count.numpy() == 0:
                continue  # never called by the forward pass: its statistics stay as they are
            mean = sum_mean / count
            layer.moving_mean.assign(tf.cast(mean, layer.moving_mean.dtype))
            layer.moving_variance.assign(tf.cast(sum_square / count - tf.square(mean),
                                                 layer.moving_variance.dtype))


def create(model: keras.Model, batches: int, element_spec) -> Optional[PreciseBN]:
    """A PreciseBN for `model`, or None when it has no batch norm or `batches` is 0."""
    if batches == 0 or not batch_norm_layers(model):
        return None
    return PreciseBN(model, element_spec)
