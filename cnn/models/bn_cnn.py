"""The book's best network: Conv-BatchNorm-ReLU blocks, Dense-BatchNorm-ReLU, dropout."""

from __future__ import annotations

import keras
from keras import layers

from cnn.models.layers import BatchNormalization, conv_bn_relu, logits_layer
from cnn.models.registry import register_model


@register_model("bn_cnn", ranges={"dropout": (0, 1), "bn_momentum": (0, 1)})
def bn_cnn(input_shape, num_classes, *, dropout: float = 0.4, bn_momentum: float = 0.99):
    """The book's best network: Conv-BatchNorm-ReLU blocks, Dense-BatchNorm-ReLU, dropout.

    `bn_momentum`: the moving averages' momentum (Keras' 0.99 by default); the statistics
    used in evaluation are recomputed before it anyway (cnn/training/precise_bn.py)."""
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
