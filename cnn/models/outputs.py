"""What generic code asks of a model about its outputs: its loss, its class scores, its
members' scores and the networks it is made of.

A plain Keras model's logits are (batch, classes): one network, the mean cross-entropy,
the logits as scores. A model whose outputs mean something else defines the methods
below itself (`logits_loss`, `class_scores`, `member_scores`, `networks`; see
cnn/models/ensemble.py): the training loop, evaluation, export, precise batch norm and
feature maps call these functions, never `isinstance` on a model class.
"""

from __future__ import annotations

import tensorflow as tf


def cross_entropy(labels, logits):
    """Mean softmax cross-entropy of (..., batch, classes) float32 logits, against (batch,) int
    labels or (batch, classes) target distributions (label smoothing, mixup, cutmix)."""
    labels = tf.convert_to_tensor(labels)
    if labels.dtype.is_floating:
        targets = tf.broadcast_to(labels, tf.shape(logits))
        losses = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    else:
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.broadcast_to(labels, tf.shape(logits)[:-1]), logits=logits)
    return tf.reduce_mean(losses, axis=-1)


def hard_labels(labels):
    """The class each target names: itself for int labels, the largest share of a distribution
    (the true class under label smoothing, the larger share of a mixup or cutmix pair)."""
    labels = tf.convert_to_tensor(labels)
    return tf.argmax(labels, axis=-1, output_type=tf.int32) if labels.dtype.is_floating else labels


def loss(model, labels, logits):
    """The loss a training step minimizes, from the model's float32 logits."""
    own = getattr(model, "logits_loss", None)
    return own(labels, logits) if own is not None else cross_entropy(labels, logits)


def class_scores(model, logits):
    """(batch, classes) scores whose argmax is the prediction."""
    own = getattr(model, "class_scores", None)
    return own(logits) if own is not None else logits


def member_scores(model, logits) -> list:
    """Each member's (batch, classes) scores, for a model of several networks; [] for one."""
    own = getattr(model, "member_scores", None)
    return own(logits) if own is not None else []


def networks(model) -> list:
    """The networks a model is made of (feature maps show the first)."""
    own = getattr(model, "networks", None)
    return own() if own is not None else [model]
