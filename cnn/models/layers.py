"""Layers the built-in models share: the float32 logits layer and a fused batch normalization."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops


def logits_layer(num_classes):
    return layers.Dense(num_classes, dtype="float32")  # float32 in mixed precision


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
