"""Model registry: `create_model(name, input_shape, num_classes)`.

Every model maps float32 images in [0, 1], (batch, H, W, C), to logits
(batch, num_classes): no softmax at the end, the loss takes logits.
"""

from __future__ import annotations

from typing import Callable

MODELS: dict[str, Callable] = {}


def register(name: str):
    """Adds a model builder to MODELS under `name`."""
    def wrap(builder):
        MODELS[name] = builder
        return builder
    return wrap


@register("book_cnn")
def book_cnn(input_shape, num_classes, dropout=0.4):
    """The book chapter's CNN: 619,786 parameters on 28x28x1 with 10 classes."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(32, 3, padding="same", activation="relu"),   # (B, 28, 28, 32)
        layers.MaxPool2D(padding="same"),                         # (B, 14, 14, 32)
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPool2D(padding="same"),                         # (B, 7, 7, 64)
        layers.Conv2D(128, 3, padding="same", activation="relu"),
        layers.MaxPool2D(padding="same"),                         # (B, 4, 4, 128)
        layers.Flatten(),
        layers.Dense(256, activation="relu"),
        layers.Dropout(dropout),
        layers.Dense(num_classes, dtype="float32"),               # logits, float32 in mixed precision
    ], name="book_cnn")


@register("tutorial_cnn")
def tutorial_cnn(input_shape, num_classes, dropout=0.0):
    """The TensorFlow CIFAR-10 tutorial's CNN, with logits out (the tutorial's softmax is a bug)."""
    import keras
    from keras import layers

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
        layers.Dense(num_classes, dtype="float32"),               # logits, float32 in mixed precision
    ], name="tutorial_cnn")


def create_model(name: str, input_shape, num_classes: int, **options):
    """Builds registered model `name`; an unknown name lists the known ones."""
    if name not in MODELS:
        raise KeyError(f"unknown model '{name}'; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](tuple(input_shape), num_classes, **options)
