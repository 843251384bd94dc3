"""The benchmark's measurements: every contender timed in the same turns with the matmul peaks,
replicas, image folders, start-up; the tables are `cnn.tools.bench`'s."""

from __future__ import annotations

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


from cnn.tools.bench_contenders import (batch_norm_contenders, config_for, matmul_peak, prepare_epoch_end,
                                       prepare_epochs, prepare_fit, prepare_loop, prepare_torch, round_robin,
                                       train_flops_per_image)

ROOT = Path(__file__).resolve().parents[2]
RUN_EPOCHS = 3


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
