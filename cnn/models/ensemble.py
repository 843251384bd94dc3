"""Ensembles: members of a registered model trained side by side on the same batches."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from cnn.errors import ConfigError
from cnn.models.outputs import cross_entropy
from cnn.models.registry import MODELS, create_model, register_model


class Ensemble(keras.Model):
    """Members trained side by side on the same batches.

    Returns the members' logits stacked, (members, batch, classes). It owns what that means
    (cnn/models/outputs.py): each member learns from its own loss (the loss is their sum),
    and the ensemble predicts with the sum of their logits.
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

    def logits_loss(self, labels, logits):
        """The sum of the members' mean cross-entropies: (members, B, classes) logits."""
        return tf.reduce_sum(cross_entropy(labels, logits))

    def class_scores(self, logits):
        return ops.sum(logits, axis=0)  # keras.ops: also on the symbolic tensors of the export's functional model

    def member_scores(self, logits) -> list:
        return [logits[i] for i in range(self.size)]

    def networks(self) -> list:
        return self.members


@register_model("ensemble", ranges={"size": (1, None), "dropout": (0, 1), "bn_momentum": (0, 1)})
def ensemble(input_shape, num_classes, *, members: str = "book_cnn", size: int = 5, dropout: float = 0.4,
             bn_momentum: float = None):
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
