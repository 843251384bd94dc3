"""The optimizer registry: `optimizer=adam` (the book's), `adamw`, `sgd`; one builder each.

A builder takes the learning rate (a float or a Keras schedule) and its own options,
and returns a Keras optimizer. Weight decay, per optimizer:
  adam, sgd  L2, coupled (as the classic recipes, He et al. for ResNets): weight_decay * w
             is added to each kernel's gradient before the update (so momentum and Adam's
             moments see it);
  adamw      decoupled (Loshchilov and Hutter; Keras' own `weight_decay`): after each
             update, w -= lr * weight_decay * w.
Either way only kernels (variables of rank 2 or more: conv and dense weights) decay, not
biases or batch-norm parameters. `global_clipnorm` is Keras' own. A new optimizer is one
builder here (or in a file of its own that registers with `OPTIMIZERS.register`) plus
conf/optimizer/<name>.yaml.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from cnn.registry import Registry

OPTIMIZERS = Registry("optimizer", context=("learning_rate",))
register_optimizer = OPTIMIZERS.register


def decays(variable) -> bool:
    """Whether weight decay applies to `variable`: kernels, not biases or batch-norm parameters."""
    return len(variable.shape) >= 2


class CoupledL2:
    """Mixin for a Keras optimizer: `l2 * w` added to the gradient of every kernel `w` before the
    update. Under tf.distribute each replica adds its share (1 / replicas): the optimizer sums
    the replicas' gradients."""

    l2: float = 0.0

    def apply(self, grads, trainable_variables=None):
        if self.l2 and trainable_variables is not None:
            context = tf.distribute.get_replica_context()
            share = 1.0 / (context.num_replicas_in_sync if context is not None else 1)
            grads = [g if g is None or not decays(v) else g + tf.cast(self.l2 * share, g.dtype) * v
                     for g, v in zip(grads, trainable_variables)]
        return super().apply(grads, trainable_variables)


class AdamL2(CoupledL2, keras.optimizers.Adam):
    """Adam with coupled L2 weight decay."""


class SGDL2(CoupledL2, keras.optimizers.SGD):
    """SGD (with momentum) with coupled L2 weight decay."""


def _with_l2(cls, plain, weight_decay, **kwargs):
    if weight_decay is None:
        return plain(**kwargs)  # the Keras optimizer itself: the same checkpoint and numbers as always
    optimizer = cls(**kwargs)
    optimizer.l2 = weight_decay
    return optimizer


@register_optimizer("adam", ranges={"weight_decay": (0, None), "global_clipnorm": (0, None)})
def adam(learning_rate, *, weight_decay: float = None, global_clipnorm: float = None):
    """Adam (Kingma and Ba), Keras' defaults; `weight_decay`: coupled L2."""
    return _with_l2(AdamL2, keras.optimizers.Adam, weight_decay, learning_rate=learning_rate,
                    global_clipnorm=global_clipnorm)


@register_optimizer("adamw", ranges={"weight_decay": (0, None), "global_clipnorm": (0, None)})
def adamw(learning_rate, *, weight_decay: float = 0.004, global_clipnorm: float = None):
    """AdamW: Keras' decoupled weight decay, on kernels only."""
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay,
                                       global_clipnorm=global_clipnorm)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


@register_optimizer("sgd", ranges={"momentum": (0, 1), "weight_decay": (0, None), "global_clipnorm": (0, None)})
def sgd(learning_rate, *, momentum: float = 0.9, nesterov: bool = False, weight_decay: float = None,
        global_clipnorm: float = None):
    """SGD with (Nesterov) momentum; `weight_decay`: coupled L2."""
    return _with_l2(SGDL2, keras.optimizers.SGD, weight_decay, learning_rate=learning_rate, momentum=momentum,
                    nesterov=nesterov, global_clipnorm=global_clipnorm)
