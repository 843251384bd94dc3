"""The book's functions and the compiled loops built from them.

`loss_fn`, `grad` and `train_step` are small functions of (model, optimizer,
batch), as the chapter writes them: `train_step` is the one per-batch update
(it changes the model and the optimizer), so it can be wrapped, run several
times per compiled call (`make_train_loop`), or under a distribution strategy.
`make_evaluate` compiles the chapter's `evaluate` over a whole dataset.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from cnn.models import outputs


def loss_fn(model, images, labels, training=False):
    """The model's loss on its float32 logits (mean softmax cross-entropy, unless the model
    says otherwise: an ensemble sums its members'). Returns (loss, logits)."""
    logits = tf.cast(model(images, training=training), tf.float32)  # (B, classes), or the model's own
    return outputs.loss(model, labels, logits), logits


def predict(model, logits):
    """Class scores from `loss_fn`'s logits (an ensemble sums its members')."""
    return outputs.class_scores(model, logits)


def grad(model, images, labels, optimizer=None):
    """Loss, logits and the gradients of the loss for the trainable variables.

    With an `optimizer`, the loss is differentiated through `optimizer.scale_loss`:
    a no-op but for float16's LossScaleOptimizer, whose apply_gradients unscales.
    On one of several replicas (tf.distribute), each replica differentiates its share of
    the global batch's mean loss, as `tf.nn.compute_average_loss` scales it, so that the
    gradients the optimizer sums over the replicas are those of the global batch.
    """
    with tf.GradientTape() as tape:
        loss, logits = loss_fn(model, images, labels, training=True)
        share = replica_share(labels)
        objective = loss if share is None else loss * share
        scaled = optimizer.scale_loss(objective) if optimizer is not None else objective
    return loss, logits, tape.gradient(scaled, model.trainable_variables)


def replica_share(labels):
    """This replica's fraction of the global batch under a distribution strategy with several
    replicas (its images over all replicas' images, which may differ in the last batch);
    None on one device."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    count = tf.cast(tf.shape(labels)[0], tf.float32)
    return tf.math.divide_no_nan(count, context.all_reduce(tf.distribute.ReduceOp.SUM, count))


def train_step(model, optimizer, batch):
    """One optimizer update on `batch` = (images, labels). Returns (loss, logits, grads)."""
    images, labels = batch
    loss, logits, grads = grad(model, images, labels, optimizer)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss, logits, grads


def make_train_loop(state, element_spec, summaries: bool = False, strategy=None, stop=None) -> Callable:
    """Compiles `loop(iterator, num_steps)`: `num_steps` training steps of `state` (a
    cnn.training.state.TrainState) in one call.

    A `tf.range` loop inside one `tf.function`, as Orbit does: the host pays one call per
    `steps_per_loop` steps. Each step also updates the epoch metrics and the step counter;
    with `summaries`, it writes loss, gradient norm and learning rate to the default
    tf.summary writer when its record_if holds. The signature is fixed: one trace per run.

    With a `strategy` (cnn.distribute), `train_step` runs on every replica (`strategy.run`)
    on its part of a distributed batch; the metrics sum over the replicas (Keras metric
    variables are synchronized on read), and the loss written to the summaries is the mean of
    the replicas' (the gradient norm is left out: the optimizer sums the replicas' gradients
    inside apply_gradients). `stop`: a tf.Variable(bool) read before each step; when set, the
    call ends early (state.step says how far it went).
    """
    def replica_step(batch):
        loss, logits, grads = train_step(state.model, state.optimizer, batch)
        labels = batch[1]
        state.loss.update_state(loss, sample_weight=tf.cast(tf.shape(labels)[0], tf.float32))
        state.accuracy.update_state(outputs.hard_labels(labels), predict(state.model, logits))  # (B,) classes
        return loss, grads

    def step(batch):
        if strategy is None:
            loss, grads = replica_step(batch)
        else:
            loss = strategy.reduce(tf.distribute.ReduceOp.MEAN,
                                   strategy.run(lambda b: replica_step(b)[0], args=(batch,)), axis=None)
            grads = None
        if summaries:  # decided at trace time: tf.summary needs TensorBoard installed
            with tf.name_scope("train/"):  # absolute: no "while/" prefix from the loop
                tf.summary.scalar("loss", loss, step=state.step)
                if grads is not None:
                    tf.summary.scalar("grad_norm", tf.linalg.global_norm(grads), step=state.step)
                tf.summary.scalar("learning_rate", state.optimizer.learning_rate, step=state.step)
        state.step.assign_add(1)
        # Remember the first step whose loss was not finite; read at save points only.
        first_bad = tf.logical_and(tf.logical_not(tf.math.is_finite(loss)), state.nonfinite_step < 0)
        state.nonfinite_step.assign(tf.where(first_bad, state.step, state.nonfinite_step))

    def loop(iterator, num_steps):
        for _ in tf.range(num_steps):
            if stop is not None and stop:
                break
            step(next(iterator))

    if strategy is None:
        return tf.function(loop, input_signature=[tf.data.IteratorSpec(element_spec), tf.TensorSpec([], tf.int32)])
    return tf.function(loop)  # traced once per run too: every epoch's distributed iterator has one type


def make_evaluate(model, element_spec) -> Callable:
    """Returns `evaluate(dataset, split)` over a whole dataset, compiled once.

    `evaluate` returns (metrics, predicted classes): metrics are {"<split>_loss",
    "<split>_accuracy"} (split: "val" or "test"), and for an ensemble also
    "member_<split>_accuracy", one per member.
    """
    networks = len(outputs.networks(model))
    members = networks if networks > 1 else 0  # a model of several networks: each one's accuracy too
    loss_metric = keras.metrics.Mean()
    accuracy = keras.metrics.SparseCategoricalAccuracy()
    member_accuracy = [keras.metrics.SparseCategoricalAccuracy() for _ in range(members)]
    all_metrics = [loss_metric, accuracy, *member_accuracy]

    @tf.function(input_signature=[element_spec])
    def eval_step(batch):
        images, labels = batch
        loss, logits = loss_fn(model, images, labels, training=False)
        loss_metric.update_state(loss, sample_weight=tf.cast(tf.shape(labels)[0], tf.float32))
        scores = predict(model, logits)
        accuracy.update_state(labels, scores)
        for metric, member in zip(member_accuracy, outputs.member_scores(model, logits)):
            metric.update_state(labels, member)
        return tf.argmax(scores, axis=-1, output_type=tf.int32)

    def evaluate(dataset, split: str = "test") -> tuple[dict, np.ndarray]:
        for metric in all_metrics:
            metric.reset_state()
        predictions = [eval_step(batch) for batch in dataset]
        results = {f"{split}_loss": float(loss_metric.result()), f"{split}_accuracy": float(accuracy.result())}
        if members:
            results[f"member_{split}_accuracy"] = [float(m.result()) for m in member_accuracy]
        return results, np.concatenate([p.numpy() for p in predictions])

    return evaluate
