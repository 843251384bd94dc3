"""The benchmark's contenders and measurements: our loop, Keras `fit`, PyTorch eager, the epoch-end
actions, image folders and replicas, timed in alternating turns (`round_robin`); the tables are
`cnn.tools.bench`'s."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RUN_EPOCHS = 3


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


def train_flops_per_image(model) -> float:
    """Training FLOPs per image: 3x the forward multiply-adds of conv and dense layers."""
    import keras

    forward = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            forward += 2 * h * w * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            forward += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return 3 * forward  # backward: twice the forward (input and weight gradients)


def config_for(dataset, data_dir, precision="float32", steps_per_loop=1, batch_size=100, ckpt_dir=None,
               model="book_cnn"):
    """The config `python train.py` would run with these settings."""
    from cnn.config import compose

    return compose(f"dataset={dataset}", f"dataset.data_dir={os.path.abspath(data_dir)}", "dataset.download=false",
                   f"model={model}", f"batch_size={batch_size}", f"precision={precision}",
                   f"steps_per_loop={steps_per_loop}", "progress=false",
                   f"checkpoint.dir={'null' if ckpt_dir is None else ckpt_dir}")


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
    return run


def measure_replicas(args) -> dict:
    """Images/s of the book CNN against the number of replicas of `distribute=mirrored`: over
    that many GPUs when there are, else over logical CPUs (split once, before anything runs);
    with one device and no strategy, and with Keras fit, for reference, in the same turns."""
    import tensorflow as tf

    from cnn import data as data_lib
    from cnn.runtime.distribute import configure_logical_cpus

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        configure_logical_cpus(max(args.replicas))
    devices = [d.name for d in tf.config.list_logical_devices("GPU" if gpus else "CPU")]
    data = data_lib.load(args.dataset, args.data_dir, download=False)
    config = config_for(args.dataset, args.data_dir, "float32", max(args.steps_per_loop), args.batch_size)
    peaks = {p: matmul_peak(p) for p in ("float32", "bfloat16")}
    contenders = [("Keras `Model.fit`, one device", prepare_fit(config, data, args.steps)),
                  ("our loop, `distribute=none`", prepare_loop(config, data, args.steps))]
    for k in args.replicas:
        if k > len(devices):
            continue
        strategy = tf.distribute.MirroredStrategy(devices[:k])
        contenders.append((f"our loop, `distribute=mirrored`, {k} replica{'s' if k > 1 else ''} "
                           f"({'GPUs' if gpus else 'logical CPUs'})",
                           prepare_loop(config, data, args.steps, strategy)))
    turns = round_robin([fn for _, fn in contenders], args.repeats)
    images = args.steps * args.batch_size
    return {"peaks": peaks, "gpus": len(gpus), "config": config,
            "rows": [(what, images / statistics.median(t), images / min(t)) for (what, _), t in zip(contenders, turns)]}


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
    return run


def measure_image_folder(args) -> dict:
    """Images/s of the book CNN trained from `--image-folder` (the built-in dataset written
    out as PNGs by `python -m cnn.tools.to_folder`) with cache=memory, disk and none, against the
    built-in in-memory loader, in the same turns; and how long each takes to load the first
    time (decoding, checking, writing the disk cache)."""
    from cnn import data as data_lib
    from cnn.config import compose

    peaks = {p: matmul_peak(p) for p in ("float32", "bfloat16")}
    config = config_for(args.dataset, args.data_dir, "float32", max(args.steps_per_loop), args.batch_size)
    start = time.perf_counter()
    contenders = [(f"`dataset={args.dataset}`, in memory (IDX files)", data_lib.load(args.dataset, args.data_dir,
                                                                                     download=False))]
    loads = [time.perf_counter() - start]
    with tempfile.TemporaryDirectory() as cache_dir:
        for cache in ("memory", "disk", "none"):
            folder = compose("dataset=image_folder", f"dataset.data_dir={os.path.abspath(args.image_folder)}",
                             f"dataset.cache={cache}", f"dataset.cache_dir={cache_dir}/{cache}")
            start = time.perf_counter()
            contenders.append((f"`dataset=image_folder dataset.cache={cache}` (PNG files)",
                               data_lib.load_dataset(folder.dataset)))
            loads.append(time.perf_counter() - start)
        runs = [prepare_epochs(config, data, args.steps) for _, data in contenders]
        turns = round_robin(runs, args.repeats)
    images = args.steps * args.batch_size
    return {"peaks": peaks, "config": config, "train_images": len(contenders[0][1].x_train),
            "rows": [(what, load, images / statistics.median(t), images / min(t))
                     for (what, _), load, t in zip(contenders, loads, turns)]}


def prepare_fit(config, data, steps: int):
    """Keras Model.fit of the same model, warmed up; `run()` is one fit epoch of `steps`
    steps and returns that epoch's time, from Keras' own epoch callbacks."""
    import keras

    from cnn.training import build as run_lib

    run_lib.setup(config)
    model = run_lib.create_state(config, data).model
    model.compile(optimizer=keras.optimizers.Adam(config.lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
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
    run.self_timed = True
    return run


def prepare_torch(data, batch_size: int, steps: int):
    """The same network in PyTorch eager on the CPU, warmed up; None without torch."""
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
        nn.Flatten(), nn.Linear(2048, 256), nn.ReLU(), nn.Dropout(0.4), nn.Linear(256, 10))
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
                run = prepare_loop(config_for(dataset, data_dir, precision, 100, model="bn_cnn"), data, steps)
            finally:
                bn_cnn.BatchNormalization = fused
            contenders.append((f"`{name}`", precision, run))
    return contenders


def prepare_epoch_end(config, data, tmp: str) -> dict:
    """The duties of an epoch's end, as runs for `round_robin`: the very actions the training
    loop calls (`cnn.training.actions`), on a run in `tmp` with 15 epochs of history.
    "logging" is metrics.csv, the TensorBoard summaries and the log line; "curves" one
    drawing of learning_curves.png; "precise_bn" bn_cnn's batch-norm statistics recomputed."""
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

    bn_config = dataclasses.replace(config, model=config_for(config.dataset.name, config.dataset.data_dir,
                                                             model="bn_cnn").model)
    run_lib.setup(bn_config)
    bn_state = run_lib.create_state(bn_config, data)
    statistics = actions.RecomputeStatistics(*run_lib.statistics(bn_config, bn_state, data, evaluator.element_spec))
    return {"evaluation": evaluator.evaluate,
            "checkpoint": save,
            "logging": log_epoch,
            "curves": actions.DrawCurves(rows, Path(tmp) / "learning_curves.png", 1.0),
            "precise_bn": statistics}


def curve_drawings(epochs: int, epoch_seconds: float, every_n_minutes: float) -> int:
    """How often train_and_evaluate draws learning_curves.png in `epochs` epochs of
    `epoch_seconds` each: after the first and the last, at most every n minutes between."""
    from cnn.training.actions import curves_due

    drawn, last = 0, -math.inf
    for epoch in range(1, epochs + 1):
        if curves_due(epoch * epoch_seconds, last, every_n_minutes, epoch == epochs):
            drawn, last = drawn + 1, epoch * epoch_seconds
    return drawn


def startup_times(dataset: str, data_dir: str) -> dict:
    """`train.py --help` wall time, and a real run of RUN_EPOCHS epochs: the wait for its first
    training steps (from the process start, as its results.json reports it) and its metrics.csv
    rows (each epoch's wall time beside its parts)."""
    from cnn.reporting import history

    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], check=True, capture_output=True)
    help_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(ROOT / "train.py"), f"dataset={dataset}",
                        f"dataset.data_dir={os.path.abspath(data_dir)}", f"epochs={RUN_EPOCHS}",
                        f"checkpoint.dir={tmp}/ckpt", f"hydra.run.dir={tmp}/run"],
                       check=True, capture_output=True, text=True, cwd=tmp)
        results = json.loads((Path(tmp) / "run" / "results.json").read_text())
        rows = history.read_rows(Path(tmp) / "run" / "metrics.csv")
    return {"help": help_seconds, "first_step": results["first_step_seconds"], "rows": rows}


def machine() -> str:
    import keras
    import tensorflow as tf

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        cpuinfo = ""
    cpu = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")),
               platform.processor() or platform.machine())
    features = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in cpuinfo.split()]
    gpus = tf.config.list_physical_devices("GPU")
    return (f"{cpu}, {os.cpu_count()} cores ({', '.join(features) or 'CPU flags unknown'}), "
            f"{'GPU: ' + ', '.join(g.name for g in gpus) if gpus else 'no GPU'}; "
            f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}")


def measure(args) -> dict:
    """Every contender and epoch-end duty timed in the same turns; the matmul peaks."""
    import tensorflow as tf

    from cnn import data as data_lib
    from cnn.training import build as run_lib

    data = data_lib.load(args.dataset, args.data_dir, download=False)
    config = lambda *a, **k: config_for(args.dataset, args.data_dir, *a, **k)
    gpu = bool(tf.config.list_physical_devices("GPU"))
    precisions = ["float32", "mixed_bfloat16"] + (["mixed_float16"] if gpu else [])
    peaks = {p: matmul_peak(p.replace("mixed_", "")) for p in precisions}
    run_lib.setup(config())
    flops = train_flops_per_image(run_lib.create_state(config(), data).model)
    contenders = [("Keras `Model.fit`", p, prepare_fit(config(p, batch_size=args.batch_size), data, args.steps))
                  for p in ("float32", "mixed_bfloat16")]
    for precision in precisions:
        for spl in args.steps_per_loop:
            contenders.append((f"our loop, steps_per_loop={spl}", precision,
                               prepare_loop(config(precision, spl, args.batch_size), data, args.steps)))
    torch_run = prepare_torch(data, args.batch_size, args.steps) if data.image_shape == (28, 28, 1) else None
    if torch_run:
        contenders.append((f"PyTorch {torch_run.version} eager", "float32", torch_run))
    bn_contenders = batch_norm_contenders(args.dataset, args.data_dir, data, args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        epoch_end = prepare_epoch_end(config(), data, tmp)
        everything = [fn for _, _, fn in contenders + bn_contenders] + list(epoch_end.values())
        turns = round_robin(everything, args.repeats)
    n, m = len(contenders), len(contenders) + len(bn_contenders)
    seconds = [statistics.median(t) for t in turns]
    best = [args.steps * args.batch_size / min(t) for t in turns[:m]]  # images/s of each one's best turn
    ips = [args.steps * args.batch_size / s for s in seconds[:m]]
    return {"data": data, "peaks": peaks, "flops": flops,
            "rows": [(what, p, i) for (what, p, _), i in zip(contenders, ips[:n])],
            "bn_rows": [(what, p, i) for (what, p, _), i in zip(bn_contenders, ips[n:])],
            "best": dict(zip([(what, p) for what, p, _ in contenders + bn_contenders], best)),
            "overhead": dict(zip(epoch_end, seconds[m:])),
            "startup": startup_times(args.dataset, args.data_dir) if args.startup else None}
