"""The benchmark's contenders, each warmed up and ready to time: our loop, Keras `fit`, PyTorch
eager, the epoch-end actions; and `round_robin`, which times them in alternating turns."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(dtype: str, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of an n x n matmul in `dtype`: the machine's practical peak."""
    import tensorflow as tf

    a = tf.random.stateless_uniform((n, n), (1, 2), dtype=tf.float32)
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x)[0, :1], tf.float32)))
    matmul(a).numpy()
    return 2 * n**3 / median_time(lambda: matmul(a).numpy(), repeats) / 1e9


FLOPS_COUNTED = ("3x the forward pass's convolutions and matrix products, 2 FLOP per multiply-add, read "
                 "from its traced graph; batch norm, activations, pooling and the optimizer's update not counted")


def train_flops_per_image(model, image_shape) -> float:
    """Training FLOPs per image, as FLOPS_COUNTED says: 3x the forward pass's (the backward
    pass computes the input and the weight gradients, each as costly as the forward)."""
    import tensorflow as tf

    forward = tf.function(lambda images: model(images, training=False))
    graph = forward.get_concrete_function(tf.TensorSpec((1, *image_shape), tf.float32)).graph  # one image
    return 3 * sum(op_flops(op) for op in graph.get_operations())


def op_flops(op) -> int:
    """2 x the multiply-adds of a convolution or matrix product of static shapes; 0 for any other
    op. Any model's layers come down to these ops (Sequential, functional, subclassed, nested)."""
    if op.type in ("Conv2D", "DepthwiseConv2dNative"):  # filter (kh, kw, c_in per group, c_out)
        kh, kw, c_in = op.inputs[1].shape[:3]
        return 2 * op.outputs[0].shape.num_elements() * kh * kw * (c_in if op.type == "Conv2D" else 1)
    if op.type == "MatMul":
        a = op.inputs[0].shape  # (m, k), or (k, m) transposed
        return 2 * op.outputs[0].shape.num_elements() * (a[0] if op.get_attr("transpose_a") else a[1])
    if op.type in ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
        a = op.inputs[0].shape  # (..., m, k), or (..., k, m) adjoint
        return 2 * op.outputs[0].shape.num_elements() * (a[-2] if op.get_attr("adj_x") else a[-1])
    return 0


def config_for(dataset, data_dir, precision="float32", steps_per_loop=1, batch_size=100, ckpt_dir=None,
               model=()):
    """The config `python train.py` would run with these settings; `model`: its model overrides,
    e.g. ("model=resnet", "model.depth=20"); none: train.py's model. A bad model or option is
    a ConfigError, before anything is built."""
    from cnn.config import compose
    from cnn.training.build import check_builders

    config = compose(f"dataset={dataset}", f"dataset.data_dir={os.path.abspath(data_dir)}", "dataset.download=false",
                     *model, f"batch_size={batch_size}", f"precision={precision}",
                     f"steps_per_loop={steps_per_loop}", "progress=false",
                     f"checkpoint.dir={'null' if ckpt_dir is None else ckpt_dir}")
    check_builders(config)
    return config


def input_pipeline(data, batch_size: int):
    """The batches every contender trains on: the same images, normalized, no shuffle (its
    buffer would be refilled whenever Keras fit makes a new iterator)."""
    import tensorflow as tf

    from cnn.data.pipeline import normalize

    ds = tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train)).batch(batch_size)
    return ds.map(normalize, num_parallel_calls=tf.data.AUTOTUNE).repeat().prefetch(tf.data.AUTOTUNE)


def prepare_loop(config, data, steps: int, strategy=None):
    """Our compiled loop, warmed up; returns `run()`: `steps` steps, timed by the caller.
    With a tf.distribute `strategy`: the same loop, `strategy.run` per step, the global batch
    split between the replicas."""
    import tensorflow as tf

    from cnn.training import build as run_lib
    from cnn.runtime.distribute import Distribution
    from cnn.training.steps import make_train_loop

    run_lib.setup(config)
    placement = Distribution(strategy, strategy.num_replicas_in_sync) if strategy else Distribution()
    with placement.scope():
        state = run_lib.create_state(config, data)
    ds = input_pipeline(data, config.batch_size)
    loop = make_train_loop(state, ds.element_spec, strategy=strategy)
    iterator = iter(placement.distribute(ds))

    def run():
        done = 0
        while done < steps:
            n = min(config.steps_per_loop, steps - done)
            loop(iterator, tf.constant(n, tf.int32))
            done += n
        state.step.numpy()  # wait for the device

    run()  # warm-up: trace, oneDNN primitive caches, tf.data buffers
    run.model = state.model
    return run


def prepare_epochs(config, data, steps: int):
    """Our compiled loop fed by the training pipeline itself (`data_lib.train_dataset`: the
    epoch's shuffle, then reading the images), warmed up; `run()` starts the next epoch's
    pipeline and trains `steps` steps of it, so reading files is timed with the steps."""
    import tensorflow as tf

    from cnn import data as data_lib
    from cnn.training import build as run_lib
    from cnn.training.steps import make_train_loop

    run_lib.setup(config)
    state = run_lib.create_state(config, data)
    epochs = iter(range(10**6))
    first = data_lib.train_dataset(data.x_train, data.y_train, config.batch_size, config.seed, 0)
    loop = make_train_loop(state, first.element_spec)

    def run():
        ds = data_lib.train_dataset(data.x_train, data.y_train, config.batch_size, config.seed, next(epochs))
        iterator, done = iter(ds), 0
        while done < steps:
            n = min(config.steps_per_loop, steps - done)
            loop(iterator, tf.constant(n, tf.int32))
            done += n
        state.step.numpy()

    run()
    run.model = state.model
    return run


def prepare_fit(config, data, steps: int):
    """Keras Model.fit of the same model, with the same optimizer (the config's), loss and
    accuracy (the model's own, as the loop's), warmed up; `run()` is one fit epoch of `steps`
    steps and returns that epoch's time, from Keras' own epoch callbacks."""
    import keras

    from cnn.training import build as run_lib

    run_lib.setup(config)
    state = run_lib.create_state(config, data)
    model = state.model
    model.compile(optimizer=state.optimizer, loss=model_loss(model), metrics=[model_accuracy(model)])
    ds = input_pipeline(data, config.batch_size)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.start

    timer = Timer()

    def run():
        model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer], shuffle=False)
        return timer.seconds

    run()
    run.self_timed, run.model = True, model
    return run


def model_loss(model):
    """The loop's loss (`cnn.models.outputs.loss`: the model's own) as a Keras loss for `compile`."""
    import keras
    import tensorflow as tf

    from cnn.models import outputs

    class Loss(keras.losses.Loss):
        def __call__(self, y_true, y_pred, sample_weight=None):  # not Loss.__call__: it casts the labels to float
            return outputs.loss(model, y_true, tf.cast(y_pred, tf.float32))

    return Loss(name="loss")


def model_accuracy(model):
    """The loop's accuracy (of the model's class scores) as a Keras metric for `compile`."""
    import keras

    from cnn.models import outputs

    class Accuracy(keras.metrics.SparseCategoricalAccuracy):
        def update_state(self, y_true, y_pred, sample_weight=None):
            return super().update_state(y_true, outputs.class_scores(model, y_pred), sample_weight)

    return Accuracy(name="accuracy")


TORCH_TWIN = "book_cnn"  # the model prepare_torch writes in PyTorch


def prepare_torch(data, batch_size: int, steps: int, dropout: float = 0.4):
    """The book CNN (TORCH_TWIN) in PyTorch eager on the CPU, warmed up; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),  # (B, 128, 4, 4)
        nn.Flatten(), nn.Linear(2048, 256), nn.ReLU(), nn.Dropout(dropout), nn.Linear(256, 10))
    assert sum(p.numel() for p in model.parameters()) == 619_786
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.from_numpy(data.x_train[: steps * batch_size].astype(np.float32) / 255).permute(0, 3, 1, 2)
    y = torch.from_numpy(data.y_train[: steps * batch_size].astype(np.int64))

    def run():
        for i in range(steps):
            xb, yb = x[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).backward()
            optimizer.step()

    run()
    run.version = torch.__version__
    return run


def round_robin(runs: list, repeats: int) -> list[list[float]]:
    """Seconds of every repetition of each `run`, timed in turns: repetition r of every run
    before repetition r + 1 of any, so that a machine whose speed drifts (a shared one) slows
    or speeds them all alike. A run with `self_timed` returns its own seconds."""
    for run in runs:  # once more before timing: later setups cleared earlier ones' caches
        run()
    times = [[] for _ in runs]
    for _ in range(repeats):
        for run, spent in zip(runs, times):
            start = time.perf_counter()
            own = run()
            spent.append(own if getattr(run, "self_timed", False) else time.perf_counter() - start)
    return times


BN_CNN = ("model=bn_cnn",)  # config_for's model overrides of the best model's network


def batch_norm_contenders(dataset, data_dir, data, steps: int) -> list[tuple[str, str, object]]:
    """bn_cnn in our loop with Keras' BatchNormalization and with ours (fused)."""
    import keras

    from cnn.models import bn_cnn

    contenders = []
    for precision in ("float32", "mixed_bfloat16"):
        for name, layer in (("keras.layers.BatchNormalization", keras.layers.BatchNormalization),
                            ("cnn.models.layers.BatchNormalization (fused)", bn_cnn.BatchNormalization)):
            fused = bn_cnn.BatchNormalization
            bn_cnn.BatchNormalization = layer  # what bn_cnn builds its normalization with
            try:
                run = prepare_loop(config_for(dataset, data_dir, precision, 100, model=BN_CNN), data, steps)
            finally:
                bn_cnn.BatchNormalization = fused
            contenders.append((f"`{name}`", precision, run))
    return contenders


def prepare_epoch_end(config, data, tmp: str, bn_config) -> dict:
    """The duties of an epoch's end, as runs for `round_robin`: the very actions the training
    loop calls (`cnn.training.actions`), on a run of `config` in `tmp` with 15 epochs of history.
    "logging" is metrics.csv, the TensorBoard summaries and the log line; "curves" one
    drawing of learning_curves.png; "precise_bn" the batch-norm statistics of `bn_config`'s
    model (one with batch norm: the timed model's own config, or bn_cnn's) recomputed."""
    import tensorflow as tf

    from cnn.reporting import history
    from cnn.training import actions
    from cnn.training import build as run_lib
    from cnn.training.checkpointer import Checkpointer
    from cnn.training.evaluator import Evaluator

    run_lib.setup(config)
    state = run_lib.create_state(config, data)
    evaluator = Evaluator(state.model, data)
    checkpointer = Checkpointer(state, Path(tmp) / "ckpt", config.checkpoint)
    rows = [{**dict.fromkeys(history.COLUMNS, 0.5), "epoch": e + 1} for e in range(15)]
    end = actions.EpochEnd(14, 1, 1.0, 100, True, row=rows[-1], timings={"evaluation": 1.0, "checkpoint": 1.0})
    end.evaluation, end.predictions = evaluator.evaluate()
    record = actions.Record(rows, Path(tmp))
    log_line = actions.LogEpoch(config, evaluator.split, None)
    summarize = actions.Summarize(evaluator, data.class_names)
    writer = tf.summary.create_file_writer(str(Path(tmp) / "tensorboard"))
    saves = iter(range(1, 10**9))

    def log_epoch():
        record()
        with writer.as_default():
            summarize(end)
        log_line(end)

    def save():
        end.step = next(saves)
        actions.Save(checkpointer, None)(end)

    run_lib.setup(bn_config)
    bn_state = run_lib.create_state(bn_config, data)
    statistics = actions.RecomputeStatistics(*run_lib.statistics(bn_config, bn_state, data, evaluator.element_spec))
    return {"evaluation": evaluator.evaluate,
            "checkpoint": save,
            "logging": log_epoch,
            "curves": actions.DrawCurves(rows, Path(tmp) / "learning_curves.png", 1.0),
            "precise_bn": statistics}
