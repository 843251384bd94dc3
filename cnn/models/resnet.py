"""Residual networks for small images (He et al. 2016, section 4.2), and their pre-activation
variant (He et al. 2016, "Identity Mappings in Deep Residual Networks").

depth = 6n + 2: a 3x3 convolution of 16 filters, three stages of n basic blocks (two 3x3
convolutions each) with 16, 32 and 64 filters on maps of 32, 16 and 8 pixels (28, 14, 7 for
MNIST-sized images), global average pooling and the logits. ResNet-20 has n = 3.

At the two stage changes the shortcut is option A of the paper, as in its CIFAR-10 runs: the
identity, subsampled by 2 and zero-padded to the new width, so every shortcut is
parameter-free (`shortcut=projection`: option B, a strided 1x1 convolution with batch norm).
Weights start He-normal, as the paper's; weight decay is the optimizer's (optimizer.weight_decay).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from cnn.models.layers import BatchNormalization, logits_layer
from cnn.models.registry import register_model

STAGE_FILTERS = (16, 32, 64)


def conv3x3(x, filters, stride=1):
    """A 3x3 convolution, "same" padded (no bias: batch norm has one). Strided, Keras pads the
    bottom and right only, so output pixel i is centred on input pixel 2i + 1 while the
    shortcuts (`x[::2]`, a strided 1x1 convolution) take pixel 2i, as in Keras' own CIFAR
    ResNet example; the papers' Torch code pads both sides and centres it on 2i."""
    return layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                         kernel_initializer="he_normal")(x)


@keras.saving.register_keras_serializable(package="cnn")
class PadShortcut(layers.Layer):
    """Option A: the identity subsampled by `stride` and its channels zero-padded to `filters`."""

    def __init__(self, filters, stride, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.stride = filters, stride

    def call(self, x):  # (B, H, W, C) -> (B, H / stride, W / stride, filters)
        x = x[:, ::self.stride, ::self.stride, :]
        extra = self.filters - x.shape[-1]
        return ops.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "stride": self.stride}


def shortcut(x, filters, stride, kind, momentum):
    if stride == 1 and x.shape[-1] == filters:
        return x
    if kind == "pad":
        return PadShortcut(filters, stride)(x)
    x = layers.Conv2D(filters, 1, strides=stride, use_bias=False, kernel_initializer="he_normal")(x)
    return BatchNormalization(momentum=momentum)(x)


def basic_block(x, filters, stride, kind, momentum):
    """conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU (the original block)."""
    y = conv3x3(x, filters, stride)
    y = layers.ReLU()(BatchNormalization(momentum=momentum)(y))
    y = BatchNormalization(momentum=momentum)(conv3x3(y, filters))
    return layers.ReLU()(layers.Add()([y, shortcut(x, filters, stride, kind, momentum)]))


def preact_block(x, filters, stride, kind, momentum, dropout=0.0, first=False):
    """BN-ReLU-conv-BN-ReLU-conv, plus the shortcut; `dropout` between the convolutions (Wide
    ResNets). A projection shortcut takes the pre-activated input, as in the paper's code, and
    so does the network's `first` block (He et al. 2016b, appendix: the first activation right
    after the stem, before the two paths split)."""
    pre = layers.ReLU()(BatchNormalization(momentum=momentum)(x))
    y = conv3x3(pre, filters, stride)
    y = layers.ReLU()(BatchNormalization(momentum=momentum)(y))
    if dropout:
        y = layers.Dropout(dropout)(y)
    y = conv3x3(y, filters)
    if stride == 1 and x.shape[-1] == filters:
        skip = pre if first else x
    elif kind == "pad":
        skip = PadShortcut(filters, stride)(x)
    else:
        skip = layers.Conv2D(filters, 1, strides=stride, use_bias=False, kernel_initializer="he_normal")(pre)
    return layers.Add()([y, skip])


def depth_rule(extra: int):
    """The `rules` check of a depth of 6n + extra."""
    def rule(depth):
        if depth < 6 + extra or (depth - extra) % 6:
            return f"depth = 6n+{extra}, e.g. {', '.join(str(6 * n + extra) for n in (1, 3, 5, 9, 18))}"
        return None
    return rule


def shortcut_rule(kind):
    return None if kind in ("pad", "projection") else "shortcut = pad (option A) | projection (option B)"


def residual_network(input_shape, num_classes, *, blocks, widths, block, preact, kind, momentum, name, **extra):
    """Stem, three stages of `blocks` blocks each of `widths`, pooling and logits."""
    inputs = keras.Input(input_shape)
    x = conv3x3(inputs, 16)
    if not preact:
        x = layers.ReLU()(BatchNormalization(momentum=momentum)(x))
    for stage, filters in enumerate(widths):
        for i in range(blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            first = {"first": stage == 0 and i == 0} if preact else {}
            x = block(x, filters, stride, kind, momentum, **extra, **first)
    if preact:  # the last block's sum is not normalized yet
        x = layers.ReLU()(BatchNormalization(momentum=momentum)(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, logits_layer(num_classes)(x), name=name)


RESNET_RULES = {"depth": depth_rule(2), "shortcut": shortcut_rule}


@register_model("resnet", ranges={"bn_momentum": (0, 1)}, rules=RESNET_RULES)
def resnet(input_shape, num_classes, *, depth: int = 20, shortcut: str = "pad", bn_momentum: float = 0.9):
    """He et al.'s CIFAR ResNet: depth 20, 32, 44, 56, 110 (6n+2)."""
    return residual_network(input_shape, num_classes, blocks=(depth - 2) // 6, widths=STAGE_FILTERS,
                            block=basic_block, preact=False, kind=shortcut, momentum=bn_momentum,
                            name=f"resnet{depth}")


@register_model("preact_resnet", ranges={"bn_momentum": (0, 1)}, rules=RESNET_RULES)
def preact_resnet(input_shape, num_classes, *, depth: int = 20, shortcut: str = "pad", bn_momentum: float = 0.9):
    """The pre-activation ResNet (6n+2), the same stages."""
    return residual_network(input_shape, num_classes, blocks=(depth - 2) // 6, widths=STAGE_FILTERS,
                            block=preact_block, preact=True, kind=shortcut, momentum=bn_momentum,
                            name=f"preact_resnet{depth}")
