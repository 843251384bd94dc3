"""The TensorFlow CIFAR-10 tutorial's CNN."""

from __future__ import annotations

import keras
from keras import layers

from cnn.models.layers import logits_layer
from cnn.models.registry import register_model


@register_model("tutorial_cnn", ranges={"dropout": (0, 1)})
def tutorial_cnn(input_shape, num_classes, *, dropout: float = 0.0):
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
