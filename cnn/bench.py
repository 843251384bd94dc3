"""Throughput benchmark: our loop against Keras `Model.fit` (and PyTorch eager), one process.

    python -m cnn.bench --data-dir ../shared/data/fashion-mnist --out docs/benchmarks.md

Times the book CNN at one batch size, on the same data, for each precision and
`steps_per_loop`; Keras fit of the same model; PyTorch eager of the same
network when torch is installed. Reports images/s, GFLOP/s and the share of the
matmul peak it measures itself, and the per-epoch overhead of evaluation,
checkpointing and logging. Warm-up excluded; the median of several repetitions,
taken in turns so that a drift in the machine's speed affects every contender alike.
"""

from __future__ import annotations

import argparse
import logging
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]


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


def config_for(data_dir, precision="float32", steps_per_loop=1, batch_size=100, ckpt_dir=None, model="book_cnn"):
    from cnn.config import CheckpointConfig, Config, DatasetConfig, ModelConfig

    return Config(dataset=DatasetConfig("fashion_mnist", data_dir, download=False),
                  model=ModelConfig(model, 0.4), batch_size=batch_size, precision=precision,
                  steps_per_loop=steps_per_loop, progress=False,
                  checkpoint=CheckpointConfig(dir=ckpt_dir))


def input_pipeline(data, batch_size: int):
    """The batches every contender trains on: the same images, normalized, no shuffle (its
    buffer would be refilled whenever Keras fit makes a new iterator)."""
    import tensorflow as tf

    from cnn import data as data_lib

    ds = tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train)).batch(batch_size)
    return ds.map(data_lib._normalize, num_parallel_calls=tf.data.AUTOTUNE).repeat().prefetch(tf.data.AUTOTUNE)


def prepare_loop(config, data, steps: int):
    """Our compiled loop, warmed up; returns `run()`: `steps` steps, timed by the caller."""
    import tensorflow as tf

    from cnn import training

    training.setup(config)
    state = training.create_state(config, data)
    ds = input_pipeline(data, config.batch_size)
    loop = training.make_train_loop(state, ds.element_spec)
    iterator = iter(ds)

    def run():
        done = 0
        while done < steps:
            n = min(config.steps_per_loop, steps - done)
            loop(iterator, tf.constant(n, tf.int32))
            done += n
        state.step.numpy()  # wait for the device

    run()  # warm-up: trace, oneDNN primitive caches, tf.data buffers
    return run


def prepare_fit(config, data, steps: int):
    """Keras Model.fit of the same model, warmed up; `run()` is one fit epoch of `steps`
    steps and returns that epoch's time, from Keras' own epoch callbacks."""
    import keras

    from cnn import training

    training.setup(config)
    model = training.create_state(config, data).model
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


def round_robin(runs: list, repeats: int) -> list[float]:
    """Median seconds of each `run`, timed in turns: repetition r of every run before
    repetition r + 1 of any, so that a machine whose speed drifts (a shared one) slows
    or speeds them all alike. A run with `self_timed` returns its own seconds."""
    for run in runs:  # once more before timing: later setups cleared earlier ones' caches
        run()
    times = [[] for _ in runs]
    for _ in range(repeats):
        for run, spent in zip(runs, times):
            start = time.perf_counter()
            own = run()
            spent.append(own if getattr(run, "self_timed", False) else time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def batch_norm_contenders(data_dir, data, steps: int) -> list[tuple[str, str, object]]:
    """bn_cnn in our loop with Keras' BatchNormalization and with ours (fused)."""
    import keras

    from cnn import models

    contenders = []
    for precision in ("float32", "mixed_bfloat16"):
        for name, layer in (("keras.layers.BatchNormalization", keras.layers.BatchNormalization),
                            ("cnn.models.BatchNormalization (fused)", models.BatchNormalization)):
            fused = models.BatchNormalization
            models.BatchNormalization = layer  # what bn_cnn builds its normalization with
            try:
                run = prepare_loop(config_for(data_dir, precision, 100, model="bn_cnn"), data, steps)
            finally:
                models.BatchNormalization = fused
            contenders.append((f"`{name}`", precision, run))
    return contenders


def prepare_epoch_end(config, data, tmp: str) -> dict:
    """What train_and_evaluate does at an epoch end, as runs for `round_robin`: evaluation,
    one checkpoint save, the epoch's logging (metrics files, TensorBoard summaries, log
    line), and one drawing of learning_curves.png. Files go to `tmp`."""
    import tensorflow as tf

    from cnn import checkpoint as ckpt_lib
    from cnn import data as data_lib
    from cnn import history, plots, training

    training.setup(config)
    state = training.create_state(config, data)
    test_ds = data_lib.test_dataset(data.x_test, data.y_test)
    evaluate = training.make_evaluate(state.model, test_ds.element_spec)
    _, predictions = evaluate(test_ds)
    manager = ckpt_lib.make_manager(state, Path(tmp) / "ckpt", keep=3)
    rows = [{**dict.fromkeys(history.COLUMNS, 0.5), "epoch": e + 1} for e in range(15)]
    log = logging.getLogger("cnn.bench.quiet")
    log.disabled = True
    writer = tf.summary.create_file_writer(str(Path(tmp) / "tensorboard"))

    def log_epoch():  # the rest of an epoch end: metrics files, summaries, the log line
        history.write_rows(Path(tmp) / "metrics.csv", rows)
        history.write_rows(Path(tmp) / "metrics2.csv", rows)
        with writer.as_default():
            training.write_epoch_summaries(rows[-1], data.x_test, predictions, data.y_test,
                                           data.class_names, 1)
        log.info("epoch %d/%d  loss %.4f", 1, 15, float(state.loss.result()))

    return {"evaluation": lambda: evaluate(test_ds),
            "checkpoint": lambda: training.save(state, manager, int(time.time() * 1e6)),
            "logging": log_epoch,
            "curves": lambda: plots.learning_curves(rows, Path(tmp) / "curves.png")}


def curve_drawings(epochs: int, epoch_seconds: float, every_n_minutes: float) -> int:
    """How often train_and_evaluate draws learning_curves.png in `epochs` epochs of
    `epoch_seconds` each: after the first and the last, at most every n minutes between."""
    from cnn.training import curves_due

    drawn, last = 0, -math.inf
    for epoch in range(1, epochs + 1):
        if curves_due(epoch * epoch_seconds, last, every_n_minutes, epoch == epochs):
            drawn, last = drawn + 1, epoch * epoch_seconds
    return drawn


def startup_times(data_dir: str) -> dict:
    """`train.py --help` wall time, and the wait for the first training step of a real run."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], check=True, capture_output=True, env=env)
    help_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, str(ROOT / "train.py"), "dataset=fashion_mnist",
                              f"dataset.data_dir={os.path.abspath(data_dir)}", "epochs=1",
                              f"checkpoint.dir={tmp}/ckpt", f"hydra.run.dir={tmp}/run"],
                             check=True, capture_output=True, text=True, env=env, cwd=tmp)
    line = next(l for l in (out.stdout + out.stderr).splitlines() if "after the process started" in l)
    return {"help": help_seconds, "first_step": float(line.split(" done ")[1].split(" s ")[0])}


def machine() -> str:
    import keras
    import tensorflow as tf

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    flags = open("/proc/cpuinfo").read()
    features = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    gpus = tf.config.list_physical_devices("GPU")
    return (f"{cpu}, {os.cpu_count()} cores ({', '.join(features)}), "
            f"{'GPU: ' + ', '.join(g.name for g in gpus) if gpus else 'no GPU'}; "
            f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="Fashion-MNIST IDX files")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100, help="steps per timed repetition")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps-per-loop", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--out", help="also write the Markdown report here")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from cnn import data as data_lib
    from cnn import training

    data = data_lib.load("fashion_mnist", args.data_dir, download=False)
    gpu = bool(tf.config.list_physical_devices("GPU"))
    precisions = ["float32", "mixed_bfloat16"] + (["mixed_float16"] if gpu else [])
    peaks = {"float32": matmul_peak("float32"), "mixed_bfloat16": matmul_peak("bfloat16")}
    if gpu:
        peaks["mixed_float16"] = matmul_peak("float16")
    training.setup(config_for(args.data_dir))
    flops = train_flops_per_image(training.create_state(config_for(args.data_dir), data).model)

    contenders = [("Keras `Model.fit`", p, prepare_fit(config_for(args.data_dir, p, batch_size=args.batch_size),
                                                       data, args.steps)) for p in ("float32", "mixed_bfloat16")]
    for precision in precisions:
        for spl in args.steps_per_loop:
            config = config_for(args.data_dir, precision, spl, args.batch_size)
            contenders.append((f"our loop, steps_per_loop={spl}", precision, prepare_loop(config, data, args.steps)))
    torch_run = prepare_torch(data, args.batch_size, args.steps)
    if torch_run:
        contenders.append((f"PyTorch {torch_run.version} eager", "float32", torch_run))
    bn_contenders = batch_norm_contenders(args.data_dir, data, args.steps)
    everything = contenders + bn_contenders
    tmp = tempfile.TemporaryDirectory()
    epoch_end = prepare_epoch_end(config_for(args.data_dir), data, tmp.name)
    seconds = round_robin([run for _, _, run in everything] + list(epoch_end.values()), args.repeats)
    tmp.cleanup()
    overhead = dict(zip(epoch_end, seconds[len(everything):]))
    seconds = seconds[:len(everything)]
    ips = [args.steps * args.batch_size / s for s in seconds]
    rows = [(what, precision, i) for (what, precision, _), i in zip(contenders, ips)]
    bn_rows = [(what, precision, i) for (what, precision, _), i in zip(bn_contenders, ips[len(contenders):])]
    fit_f32 = rows[0][2]
    for what, precision, i in rows + bn_rows:
        print(f"  {what:<40} {precision:<15} {i:8.0f} images/s", flush=True)

    lines = [f"Machine: {machine()}.", "",
             f"Book CNN (619,786 parameters), batch {args.batch_size}, Fashion-MNIST; {args.steps} steps per "
             f"repetition, median of {args.repeats} after two warm-ups, every contender's repetition r "
             f"timed before any repetition r + 1; training step "
             f"{flops / 1e6:.1f} MFLOP per image. Matmul peak measured here: "
             + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()) + ".", "",
             "| what | precision | images/s | GFLOP/s | share of matmul peak | vs fit float32 |",
             "|---|---|---:|---:|---:|---:|"]
    for what, precision, speed in rows:
        gflops = speed * flops / 1e9
        lines.append(f"| {what} | {precision} | {speed:,.0f} | {gflops:.0f} | "
                     f"{gflops / peaks[precision]:.0%} | {speed / fit_f32:.2f}x |")

    lines += ["", f"bn_cnn (the best model's network), batch {args.batch_size}, our loop, steps_per_loop=100, "
                  "timed in the same turns:", "",
              "| batch normalization | precision | images/s |", "|---|---|---:|"]
    lines += [f"| {name} | {precision} | {i:,.0f} |" for name, precision, i in bn_rows]

    from cnn.config import Config

    defaults = Config()
    spl = defaults.steps_per_loop if defaults.steps_per_loop in args.steps_per_loop else max(args.steps_per_loop)
    default_ips = next(ips for what, p, ips in rows if p == "float32" and what.endswith(f"steps_per_loop={spl}"))
    epoch_seconds = len(data.x_train) / default_ips
    drawings = curve_drawings(defaults.epochs, epoch_seconds, defaults.plot_every_n_minutes)
    curves = overhead.pop("curves")
    overhead["learning_curves.png"] = curves * drawings / defaults.epochs
    lines += ["", f"Per-epoch overhead, float32, steps_per_loop={spl} (one epoch of training steps: "
                  f"{epoch_seconds:.1f} s at {default_ips:,.0f} images/s). Drawing learning_curves.png "
                  f"takes {curves:.3f} s; at this speed a {defaults.epochs}-epoch run draws it {drawings} "
                  f"times (after the first and last epochs, and at most every "
                  f"{defaults.plot_every_n_minutes:g} min between), so its row is the cost per epoch:", "",
              "| work per epoch | seconds | share of the epoch's train-step time |", "|---|---:|---:|"]
    for what, seconds in [*overhead.items(), ("all", sum(overhead.values()))]:
        lines.append(f"| {what} | {seconds:.3f} | {seconds / epoch_seconds:.1%} |")
    startup = startup_times(args.data_dir)
    lines += ["", f"`python train.py --help`: {startup['help']:.2f} s. First training step of "
                  f"`python train.py dataset=fashion_mnist dataset.data_dir=... epochs=1` done "
                  f"{startup['first_step']:.1f} s after the process started."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
