"""Model registry: `create_model(name, input_shape, num_classes, **options)`.

Every model maps float32 images in [0, 1], (batch, H, W, C), to logits
(batch, num_classes): no softmax at the end, the loss takes logits. The last
layer computes in float32 under mixed precision. An ensemble returns its
members' logits stacked, (members, batch, num_classes).
"""

from __future__ import annotations

import inspect
from typing import Callable

import keras
import tensorflow as tf
from keras import layers, ops

from cnn.errors import ConfigError

MODELS: dict[str, Callable] = {}


def register(name: str):
    """Adds a model builder to MODELS under `name`."""
    def wrap(builder):
        MODELS[name] = builder
        return builder
    return wrap


def logits_layer(num_classes):
    return layers.Dense(num_classes, dtype="float32")  # float32 in mixed precision


# --- The book's CNN, in the three Keras API styles ---------------------------------

@register("book_cnn")
def book_cnn(input_shape, num_classes, dropout=0.4):
    """The book chapter's CNN (Sequential API): 619,786 parameters on 28x28x1, 10 classes."""
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(32, 3, padding="same", activation="relu"),   # (B, 28, 28, 32)
        layers.MaxPool2D(padding="same"),                         # (B, 14, 14, 32)
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPool2D(padding="same"),                         # (B, 7, 7, 64)
        layers.Conv2D(128, 3, padding="same", activation="relu"),
        layers.MaxPool2D(padding="same"),                         # (B, 4, 4, 128)
        layers.Flatten(),                                         # (B, 2048)
        layers.Dense(256, activation="relu"),
        layers.Dropout(dropout),
        logits_layer(num_classes),
    ], name="book_cnn")


@register("book_cnn_functional")
def book_cnn_functional(input_shape, num_classes, dropout=0.4):
    """The same network with the Functional API."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPool2D(padding="same")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.MaxPool2D(padding="same")(x)
    x = layers.Conv2D(128, 3, padding="same", activation="relu")(x)
    x = layers.MaxPool2D(padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, logits_layer(num_classes)(x), name="book_cnn_functional")


class BookCNN(keras.Model):
    """The same network by subclassing keras.Model."""

    def __init__(self, num_classes, dropout=0.4, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = layers.Conv2D(32, 3, padding="same", activation="relu")
        self.pool1 = layers.MaxPool2D(padding="same")
        self.conv2 = layers.Conv2D(64, 3, padding="same", activation="relu")
        self.pool2 = layers.MaxPool2D(padding="same")
        self.conv3 = layers.Conv2D(128, 3, padding="same", activation="relu")
        self.pool3 = layers.MaxPool2D(padding="same")
        self.flatten = layers.Flatten()
        self.dense = layers.Dense(256, activation="relu")
        self.dropout = layers.Dropout(dropout)
        self.logits = logits_layer(num_classes)

    def call(self, x, training=False):
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.pool3(self.conv3(x))
        x = self.dropout(self.dense(self.flatten(x)), training=training)
        return self.logits(x)


@register("book_cnn_subclass")
def book_cnn_subclass(input_shape, num_classes, dropout=0.4):
    model = BookCNN(num_classes, dropout, name="book_cnn_subclass")
    model(ops.zeros((1, *input_shape)))  # create the weights
    return model


# --- The book's best model and the tutorial's -----------------------------------------

@keras.saving.register_keras_serializable(package="cnn")  # a .keras file of bn_cnn loads after `import cnn.models`
class BatchNormalization(layers.BatchNormalization):
    """keras.layers.BatchNormalization computed by TensorFlow's fused kernel.

    Keras 3 normalizes with separate ops (moments, casts to float32, scale, shift),
    which made bn_cnn train about 2.1x slower than this in mixed_bfloat16 on CPU
    (1.4x in float32; docs/benchmarks.md). Same variables, same checkpoint, same results up to
    rounding: the batch statistics, the moving averages (of the biased batch
    variance, as Keras keeps them) and the float32 statistics under mixed precision.
    Configurations the fused kernel does not cover fall back to the Keras layer.
    """

    def call(self, inputs, training=None, mask=None):
        if (mask is not None or self.renorm or not (self.center and self.scale)
                or self.axis not in (-1, len(inputs.shape) - 1) or len(inputs.shape) not in (2, 4)):
            return super().call(inputs, training=training, mask=mask)
        x = inputs if len(inputs.shape) == 4 else inputs[:, None, None, :]  # (B, 1, 1, C)
        training = bool(training and self.trainable)
        y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=ops.cast(self.gamma, "float32"), offset=ops.cast(self.beta, "float32"),
            mean=[] if training else ops.cast(self.moving_mean, "float32"),
            variance=[] if training else ops.cast(self.moving_variance, "float32"),
            epsilon=self.epsilon, data_format="NHWC", is_training=training)
        if training:
            count = ops.cast(ops.size(x) // ops.shape(x)[-1], "float32")
            variance = variance * (count - 1.0) / count  # the kernel returns the unbiased variance
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum
                                        + variance * (1.0 - self.momentum))
        return ops.cast(y if len(inputs.shape) == 4 else y[:, 0, 0, :], self.compute_dtype)


def conv_bn_relu(filters, momentum):
    return [layers.Conv2D(filters, 3, padding="same", use_bias=False),  # BN has the bias
            BatchNormalization(momentum=momentum), layers.ReLU()]


@register("bn_cnn")
def bn_cnn(input_shape, num_classes, dropout=0.4, bn_momentum=0.99):
    """The book's best network: Conv-BatchNorm-ReLU blocks, Dense-BatchNorm-ReLU, dropout.

    `bn_momentum`: the moving averages' momentum (Keras' 0.99 by default); the statistics
    used in evaluation are recomputed before it anyway (cnn/precise_bn.py)."""
    return keras.Sequential([
        keras.Input(input_shape),
        *conv_bn_relu(32, bn_momentum), layers.MaxPool2D(padding="same"),     # (B, 14, 14, 32)
        *conv_bn_relu(64, bn_momentum), layers.MaxPool2D(padding="same"),     # (B, 7, 7, 64)
        *conv_bn_relu(128, bn_momentum), layers.MaxPool2D(padding="same"),    # (B, 4, 4, 128)
        layers.Flatten(),
        layers.Dense(256, use_bias=False), BatchNormalization(momentum=bn_momentum), layers.ReLU(),
        layers.Dropout(dropout),
        logits_layer(num_classes),
    ], name="bn_cnn")


@register("tutorial_cnn")
def tutorial_cnn(input_shape, num_classes, dropout=0.0):
    """The TensorFlow CIFAR-10 tutorial's CNN, with logits out (the tutorial's softmax is a bug)."""
    head = [layers.Dropout(dropout)] if dropout else []
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(32, 3, activation="relu"),                  # (B, 30, 30, 32) on CIFAR-10
        layers.MaxPool2D(),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPool2D(),
        layers.Conv2D(64, 3, activation="relu"),                  # (B, 4, 4, 64)
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        *head,
        logits_layer(num_classes),
    ], name="tutorial_cnn")


# --- Ensembles ---------------------------------------------------------------------

class Ensemble(keras.Model):
    """Members trained side by side on the same batches.

    Returns the members' logits stacked, (members, batch, classes): each member
    learns from its own loss, and the ensemble predicts with their sum.
    """

    def __init__(self, members, **kwargs):
        super().__init__(**kwargs)
        # One attribute each: tf.train.Checkpoint follows attributes, not Keras' tracked lists.
        for i, member in enumerate(members):
            setattr(self, f"member_{i}", member)
        self.size = len(members)

    @property
    def members(self):
        return [getattr(self, f"member_{i}") for i in range(self.size)]

    def call(self, x, training=False):
        return ops.stack([member(x, training=training) for member in self.members])


@register("ensemble")
def ensemble(input_shape, num_classes, members="book_cnn", size=5, dropout=0.4, bn_momentum=None):
    """`size` independently initialized copies of registered model `members`; `dropout` and
    `bn_momentum` (when given) are the members' options."""
    if members == "ensemble" or members not in MODELS:
        raise ConfigError(f"model.members={members}: not an ensemble member; known: "
                          f"{', '.join(sorted(set(MODELS) - {'ensemble'}))}")
    options = {"dropout": dropout, **({"bn_momentum": bn_momentum} if bn_momentum is not None else {})}
    nets = [create_model(members, input_shape, num_classes, **options) for _ in range(size)]
    model = Ensemble(nets, name=f"ensemble_{members}_x{size}")
    model(ops.zeros((1, *input_shape)))
    return model


def create_model(name: str, input_shape, num_classes: int, **options):
    """Builds registered model `name`; `options` are its builder's keyword arguments
    (model.dropout, ...). An unknown name or an option the model does not take is a
    ConfigError that lists what is known."""
    if name not in MODELS:
        raise ConfigError(f"model.name={name}: unknown model; known: {', '.join(sorted(MODELS))}")
    builder = MODELS[name]
    accepted = [p for p in inspect.signature(builder).parameters if p not in ("input_shape", "num_classes")]
    refused = sorted(set(options) - set(accepted))
    if refused:
        raise ConfigError(f"model.{refused[0]}={options[refused[0]]}: {name} does not take it "
                          f"(its options: {', '.join(accepted) or 'none'})")
    return builder(tuple(input_shape), num_classes, **options)
