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


from cnn.tools.bench_contenders import (BN_CNN, TORCH_TWIN, batch_norm_contenders, config_for, matmul_peak,
                                       prepare_epoch_end, prepare_epochs, prepare_fit, prepare_loop, prepare_torch,
                                       round_robin, train_flops_per_image)

ROOT = Path(__file__).resolve().parents[2]
RUN_EPOCHS = 3
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # the order of the peaks
FIT = "Keras `Model.fit`"


def model_overrides(args) -> list[str]:
    """The model's config overrides of `--model` and `--model-option`: ["model=resnet", "model.depth=20"]."""
    return ([f"model={args.model}"] if args.model else []) + [f"model.{option}" for option in args.model_option]


def model_name(config) -> str:
    """The registered name of the config's model (or its `_target_`'s)."""
    from cnn.models import MODELS

    return MODELS.resolve(config.model)[0]


def model_label(config, model) -> str:
    """The model as the tables name it: `resnet` (depth=20, shortcut=pad, bn_momentum=0.9; 270,810 parameters)."""
    from cnn.models import MODELS

    options = ", ".join(f"{k}={v}" for k, v in MODELS.resolve(config.model)[2].items())
    return f"`{model_name(config)}` ({options}{'; ' if options else ''}{model.count_params():,} parameters)"


def measure_replicas(args) -> dict:
    """Images/s of the model against the number of replicas of `distribute=mirrored`: over
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
    config = config_for(args.dataset, args.data_dir, "float32", max(args.steps_per_loop), args.batch_size,
                        model=model_overrides(args))
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
    return {"peaks": peaks, "gpus": len(gpus), "config": config, "model": model_label(config, contenders[0][1].model),
            "rows": [(what, images / statistics.median(t), images / min(t)) for (what, _), t in zip(contenders, turns)]}


def measure_image_folder(args) -> dict:
    """Images/s of the model trained from `--image-folder` (the built-in dataset written
    out as PNGs by `python -m cnn.tools.to_folder`) with cache=memory, disk and none, against the
    built-in in-memory loader, in the same turns; and how long each takes to load the first
    time (decoding, checking, writing the disk cache)."""
    from cnn import data as data_lib
    from cnn.config import compose

    peaks = {p: matmul_peak(p) for p in ("float32", "bfloat16")}
    config = config_for(args.dataset, args.data_dir, "float32", max(args.steps_per_loop), args.batch_size,
                        model=model_overrides(args))
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
    return {"peaks": peaks, "config": config, "model": model_label(config, runs[0].model),
            "train_images": len(contenders[0][1].x_train),
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


def startup_times(dataset: str, data_dir: str, model: list[str]) -> dict:
    """`train.py --help` wall time, and a real run of RUN_EPOCHS epochs (of the model of the
    `model` overrides): the wait for its first training steps (from the process start, as its
    results.json reports it) and its metrics.csv rows (each epoch's wall time beside its parts)."""
    from cnn.reporting import history

    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], check=True, capture_output=True)
    help_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(ROOT / "train.py"), f"dataset={dataset}",
                        f"dataset.data_dir={os.path.abspath(data_dir)}", f"epochs={RUN_EPOCHS}", *model,
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


def precisions(args, gpu: bool) -> tuple[list[str], list[str]]:
    """The precisions of Keras fit and of our loop: `--precisions`, else float32 and
    mixed_bfloat16 (and mixed_float16 for our loop on a GPU)."""
    if args.precisions:
        return list(args.precisions), list(args.precisions)
    return ["float32", "mixed_bfloat16"], ["float32", "mixed_bfloat16"] + (["mixed_float16"] if gpu else [])


def timed_model(config, data) -> dict:
    """What the tables say of the timed model: its label, training FLOPs per image, and whether
    it has batch norm."""
    from cnn.training import build as run_lib
    from cnn.training.precise_bn import batch_norm_layers

    run_lib.setup(config)
    model = run_lib.create_state(config, data).model
    return {"model": model_label(config, model), "flops": train_flops_per_image(model, data.image_shape),
            "batch_norm": bool(batch_norm_layers(model))}


def contenders_of(args, data, gpu: bool) -> list[tuple[str, str, object]]:
    """The timed model's contenders `--contenders` asks for: (what, precision, run)."""
    config = lambda *a, **k: config_for(args.dataset, args.data_dir, *a, model=model_overrides(args), **k)
    fit_precisions, loop_precisions = precisions(args, gpu)
    contenders = []
    if "fit" in args.contenders:
        contenders += [(FIT, p, prepare_fit(config(p, batch_size=args.batch_size), data, args.steps))
                       for p in fit_precisions]
    if "loop" in args.contenders:
        contenders += [(f"our loop, steps_per_loop={spl}", p,
                        prepare_loop(config(p, spl, args.batch_size), data, args.steps))
                       for p in loop_precisions for spl in args.steps_per_loop]
    model = config().model
    if "torch" in args.contenders and model.get("name") == TORCH_TWIN and data.image_shape == (28, 28, 1):
        torch_run = prepare_torch(data, args.batch_size, args.steps, model["dropout"])
        if torch_run:
            contenders.append((f"PyTorch {torch_run.version} eager", "float32", torch_run))
    return contenders


def measure(args) -> dict:
    """Every contender and epoch-end duty `--contenders` names timed in the same turns; the
    matmul peaks. Precise batch-norm statistics are the timed model's when it has batch norm,
    else bn_cnn's."""
    import tensorflow as tf

    from cnn import data as data_lib

    data = data_lib.load(args.dataset, args.data_dir, download=False)
    config = config_for(args.dataset, args.data_dir, model=model_overrides(args))
    gpu = bool(tf.config.list_physical_devices("GPU"))
    timed = set().union(*precisions(args, gpu))
    peaks = {p: matmul_peak(p.replace("mixed_", "")) for p in PRECISIONS if p in timed}
    model = timed_model(config, data)
    contenders = contenders_of(args, data, gpu)
    bn_contenders = (batch_norm_contenders(args.dataset, args.data_dir, data, args.steps)
                     if "batch-norm" in args.contenders else [])
    bn_config = config if model["batch_norm"] else config_for(args.dataset, args.data_dir, model=BN_CNN)
    with tempfile.TemporaryDirectory() as tmp:
        epoch_end = prepare_epoch_end(config, data, tmp, bn_config) if "epoch-end" in args.contenders else {}
        everything = [fn for _, _, fn in contenders + bn_contenders] + list(epoch_end.values())
        turns = round_robin(everything, args.repeats)
    n, m = len(contenders), len(contenders) + len(bn_contenders)
    seconds = [statistics.median(t) for t in turns]
    best = [args.steps * args.batch_size / min(t) for t in turns[:m]]  # images/s of each one's best turn
    ips = [args.steps * args.batch_size / s for s in seconds[:m]]
    return {"data": data, "peaks": peaks, **model, "statistics_of": model_name(bn_config),
            "rows": [(what, p, i) for (what, p, _), i in zip(contenders, ips[:n])],
            "bn_rows": [(what, p, i) for (what, p, _), i in zip(bn_contenders, ips[n:])],
            "best": dict(zip([(what, p) for what, p, _ in contenders + bn_contenders], best)),
            "overhead": dict(zip(epoch_end, seconds[m:])),
            "startup": startup_times(args.dataset, args.data_dir, model_overrides(args)) if args.startup else None}
