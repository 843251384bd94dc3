"""The book chapter's CNN in the three Keras API styles: Sequential, Functional, subclassed."""

from __future__ import annotations

import keras
from keras import layers, ops

from cnn.models.layers import logits_layer
from cnn.models.registry import register_model


@register_model("book_cnn", ranges={"dropout": (0, 1)})
def book_cnn(input_shape, num_classes, *, dropout: float = 0.4):
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


@register_model("book_cnn_functional", ranges={"dropout": (0, 1)})
def book_cnn_functional(input_shape, num_classes, *, dropout: float = 0.4):
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


@register_model("book_cnn_subclass", ranges={"dropout": (0, 1)})
def book_cnn_subclass(input_shape, num_classes, *, dropout: float = 0.4):
    model = BookCNN(num_classes, dropout, name="book_cnn_subclass")
    model(ops.zeros((1, *input_shape)))  # create the weights
    return model
