"""Wide residual networks (Zagoruyko and Komodakis 2016): WRN-depth-k.

depth = 6n + 4: a 3x3 convolution of 16 filters, three stages of n pre-activation blocks of
16k, 32k and 64k filters (dropout between each block's convolutions), BN-ReLU, global average
pooling and the logits. Where a stage changes the width, the shortcut is a 1x1 convolution
(the paper's), e.g. WRN-16-4 (2.7M parameters) or WRN-28-10 (36.5M).
"""

from __future__ import annotations

from cnn.models.registry import register_model
from cnn.models.resnet import STAGE_FILTERS, depth_rule, preact_block, residual_network


@register_model("wide_resnet", ranges={"widen": (1, None), "dropout": (0, 1), "bn_momentum": (0, 1)},
                rules={"depth": depth_rule(4)})
def wide_resnet(input_shape, num_classes, *, depth: int = 16, widen: int = 4, dropout: float = 0.0,
                bn_momentum: float = 0.9):
    """WRN-`depth`-`widen`, with `dropout` in every block."""
    return residual_network(input_shape, num_classes, blocks=(depth - 4) // 6,
                            widths=tuple(widen * f for f in STAGE_FILTERS), block=preact_block, preact=True,
                            kind="projection", momentum=bn_momentum, dropout=dropout,
                            name=f"wide_resnet{depth}_{widen}")
