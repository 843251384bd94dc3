"""The model registry: `create_model(name, input_shape, num_classes, **options)` and
`build_model(spec, ...)` for a config's `model` node (a registered name or a `_target_`).

Every model maps float32 images in [0, 1], (batch, H, W, C), to logits: no softmax at
the end, the loss takes logits. The last layer computes in float32 under mixed
precision. A model that predicts otherwise (an ensemble: several networks' logits)
says so itself (`cnn.models.outputs`): generic code asks the model, never its class.
A new model is one file in this folder (its builder, registered with `@MODELS.register`)
plus conf/model/<name>.yaml with its options; a builder outside the repository needs only
the YAML, with `_target_`.
"""

from __future__ import annotations

import keras

from cnn.errors import ConfigError
from cnn.registry import Registry

MODELS = Registry("model", context=("input_shape", "num_classes"))
register_model = MODELS.register


def create_model(name: str, input_shape, num_classes: int, **options) -> keras.Model:
    """Builds registered model `name`; `options` are its builder's keyword arguments.
    An unknown name or an option the model does not take is a ConfigError that lists what is known."""
    return build_model({"name": name, **options}, input_shape, num_classes)


def build_model(spec: dict, input_shape, num_classes: int) -> keras.Model:
    """The model a config's `model` node describes, built for images of `input_shape`."""
    model = MODELS.build(spec, tuple(input_shape), num_classes)
    if not isinstance(model, keras.Model):
        where = f"_target_={spec['_target_']}" if spec.get("_target_") else f"name={spec.get('name')}"
        raise ConfigError(f"model.{where}: returned {type(model).__name__}, not a keras.Model; a builder takes "
                          "(input_shape, num_classes, **options) and returns the model")
    return model
