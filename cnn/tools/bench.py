"""Throughput benchmark: our loop against Keras `Model.fit` (and PyTorch eager), one process.

    python -m cnn.tools.bench --data-dir /path/to/fashion-mnist --out docs/benchmarks.md
    python -m cnn.tools.bench --data-dir ... --model resnet --model-option depth=20 --contenders fit loop

Times a registered model (train.py's, the book CNN, unless `--model` and `--model-option`
say otherwise) at one batch size, on the same data, for each precision and
`steps_per_loop`; Keras fit of the same model; PyTorch eager of the same network (the book
CNN) when torch is installed. Reports images/s, GFLOP/s and the share of the matmul peak it
measures itself, and the per-epoch overhead of evaluation, checkpointing and logging.
Warm-up excluded; the median of several repetitions, taken in turns so that a drift in the
machine's speed affects every contender alike. `--contenders` and `--precisions` time only
some of them."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional


from cnn.errors import CnnError, ConfigError
from cnn.text import plural
from cnn.tools.bench_contenders import FLOPS_COUNTED, TORCH_TWIN, config_for
from cnn.tools.bench_measure import (FIT, PRECISIONS, RUN_EPOCHS, curve_drawings, machine, measure,
                                       measure_image_folder, measure_replicas, model_name, model_overrides)

CONTENDERS = {  # --contenders: what each name times
    "fit": "Keras Model.fit",
    "loop": "our loop at each --steps-per-loop",
    "torch": "PyTorch eager (book_cnn only; when torch is installed)",
    "batch-norm": "bn_cnn with Keras' batch normalization and with ours (fused)",
    "epoch-end": "evaluation, checkpoint, logging, learning curves and precise batch-norm statistics, per epoch",
}


def replica_table(args, m: dict) -> list[str]:
    where = plural(m['gpus'], 'GPU') if m["gpus"] else f"{os.cpu_count()} cores split into logical CPU devices"
    lines = [f"Machine: {machine()}.", "",
             f"{m['model']}, float32, global batch {args.batch_size} (split between the replicas), {args.dataset}, "
             f"steps_per_loop={m['config'].steps_per_loop}; {args.steps} steps per repetition, {args.repeats} "
             f"repetitions in turns after two warm-ups; {where}. Matmul peak measured in the same run: "
             + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in m["peaks"].items()) + ".", "",
             "| what | images/s (median) | best turn | vs `distribute=none` |", "|---|---:|---:|---:|"]
    reference = m["rows"][1][1]
    return lines + [f"| {what} | {median:,.0f} | {best:,.0f} | {median / reference:.2f}x |"
                    for what, median, best in m["rows"]]


def image_folder_table(args, m: dict) -> list[str]:
    lines = [f"Machine: {machine()}.", "",
             f"{m['model']}, float32, batch {args.batch_size}, steps_per_loop={m['config'].steps_per_loop}, trained "
             f"from the training pipeline itself (each repetition a new epoch's shuffle, its images read as "
             f"they are fed); {args.steps} steps per repetition, {args.repeats} repetitions in turns after two "
             f"warm-ups. Matmul peak measured in the same run: "
             + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in m["peaks"].items())
             + f". Loading: the first load of the {m['train_images']:,} training images and the test set "
               "(for the folder: finding, fingerprinting and decoding every file; with disk, writing the cache).",
             "", "| data | first load | images/s (median) | best turn | vs in memory |", "|---|---:|---:|---:|---:|"]
    reference = m["rows"][0][2]
    return lines + [f"| {what} | {load:.1f} s | {median:,.0f} | {best:,.0f} | {median / reference:.2f}x |"
                    for what, load, median, best in m["rows"]]


def epoch_table(rows: list[dict]) -> list[str]:
    """Each epoch's wall time beside its training time and its other parts (metrics.csv)."""
    from cnn.reporting.epoch import unaccounted

    lines = ["| epoch | training | evaluation | checkpoint | reporting | wall | outside the parts |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['epoch']} | {r['seconds']:.2f} s | {r['evaluation_seconds']:.2f} s | "
                     f"{r['checkpoint_seconds']:.2f} s | {r['reporting_seconds']:.2f} s | {r['wall_seconds']:.2f} s | "
                     f"{unaccounted(r):.2f} s ({unaccounted(r) / r['wall_seconds']:.1%}) |")
    return lines


def speed_table(args, m: dict) -> list[str]:
    reference = m["rows"][0]  # Keras fit float32, unless --contenders or --precisions leave it out
    versus = f"{'fit' if reference[0] == FIT else reference[0]} {reference[1]}"
    lines = [f"Machine: {machine()}.", "",
             f"{m['model']}, batch {args.batch_size}, {args.dataset}; {args.steps} steps per "
             f"repetition, median of {args.repeats} after two warm-ups, every contender's repetition r "
             f"timed before any repetition r + 1; training step "
             f"{m['flops'] / 1e6:.1f} MFLOP per image ({FLOPS_COUNTED}). Matmul peak measured in the same run: "
             + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in m["peaks"].items()) + ".", "",
             f"| what | precision | images/s (median) | best turn | GFLOP/s | share of matmul peak | vs {versus} |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for what, precision, speed in m["rows"]:
        gflops = speed * m["flops"] / 1e9
        lines.append(f"| {what} | {precision} | {speed:,.0f} | {m['best'][what, precision]:,.0f} | {gflops:.0f} | "
                     f"{gflops / m['peaks'][precision]:.0%} | {speed / reference[2]:.2f}x |")
    if not m["bn_rows"]:
        return lines
    lines += ["", f"bn_cnn (the best model's network), batch {args.batch_size}, our loop, steps_per_loop=100, "
                  "timed in the same turns:", "",
              "| batch normalization | precision | images/s (median) | best turn |", "|---|---|---:|---:|"]
    return lines + [f"| {name} | {precision} | {i:,.0f} | {m['best'][name, precision]:,.0f} |"
                    for name, precision, i in m["bn_rows"]]


def overhead_table(args, m: dict) -> list[str]:
    from cnn.config import compose

    defaults = compose(f"dataset={args.dataset}")  # what `python train.py` runs
    spl = defaults.steps_per_loop if defaults.steps_per_loop in args.steps_per_loop else max(args.steps_per_loop)
    default_ips = next(i for what, p, i in m["rows"] if p == "float32" and what.endswith(f"steps_per_loop={spl}"))
    epoch_seconds = len(m["data"].x_train) / default_ips
    drawings = curve_drawings(defaults.epochs, epoch_seconds, defaults.plot_every_n_minutes)
    overhead = dict(m["overhead"])
    curves, recompute = overhead.pop("curves"), overhead.pop("precise_bn")
    overhead["learning_curves.png"] = curves * drawings / defaults.epochs
    lines = ["", f"Per-epoch overhead, float32, steps_per_loop={spl} (one epoch of training steps: "
                 f"{epoch_seconds:.1f} s at {default_ips:,.0f} images/s). Drawing learning_curves.png "
                 f"takes {curves:.3f} s; at this speed a {defaults.epochs}-epoch run draws it {drawings} "
                 f"times (after the first and last epochs, and at most every "
                 f"{defaults.plot_every_n_minutes:g} min between), so its row is the cost per epoch:", "",
             "| work per epoch | seconds | share of the epoch's train-step time |", "|---|---:|---:|"]
    for what, seconds in [*overhead.items(), ("all", sum(overhead.values()))]:
        lines.append(f"| {what} | {seconds:.3f} | {seconds / epoch_seconds:.1%} |")
    return lines + ["", statistics_line(m, defaults.precise_bn.batches, recompute, default_ips)]


def statistics_line(m: dict, batches: int, seconds: float, default_ips: float) -> str:
    """The precise batch-norm statistics' time, and its share of a float32 epoch of the model
    they are of (the timed one, or bn_cnn when its batch-norm rows were timed)."""
    whose = m["statistics_of"]
    line = (f"{whose}'s precise batch-norm statistics (`precise_bn.batches={batches}`, before every evaluation): "
            f"{seconds:.3f} s")
    ips = default_ips if m["batch_norm"] else next(
        (i for name, p, i in m["bn_rows"] if p == "float32" and "fused" in name), None)
    if ips is None:
        return line + "."
    epoch = len(m["data"].x_train) / ips
    return (line + f", {seconds / epoch:.1%} of a float32 {whose} epoch's train-step time "
                   f"({epoch:.1f} s at {ips:,.0f} images/s).")


def startup_table(args, m: dict) -> list[str]:
    command = " ".join([f"python train.py dataset={args.dataset} dataset.data_dir=... epochs={RUN_EPOCHS}",
                        *model_overrides(args)])
    return ["", f"`python train.py --help`: {m['startup']['help']:.2f} s. First training steps of "
                f"`{command}` done {m['startup']['first_step']:.1f} s after the process started. "
                "Its epochs, wall time (from one epoch line to the next) beside the parts:", "",
            *epoch_table(m["startup"]["rows"])]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the dataset's files (as dataset.data_dir)")
    parser.add_argument("--dataset", default="fashion_mnist", help="mnist, fashion_mnist (default) or cifar10")
    parser.add_argument("--model", help="a registered model (conf/model/: book_cnn, bn_cnn, resnet, wide_resnet, ...); "
                                        "default: train.py's, book_cnn")
    parser.add_argument("--model-option", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="the model's options, as train.py's model.KEY=VALUE, e.g. --model-option depth=20")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100, help="steps per timed repetition")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps-per-loop", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, metavar="NAME",
                        help="time only these (default: all): "
                             + "; ".join(f"{name}: {what}" for name, what in CONTENDERS.items()))
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, metavar="PRECISION",
                        help="of fit and our loop: " + ", ".join(PRECISIONS) + " (default: float32 mixed_bfloat16, and mixed_float16 for our loop "
                             "on a GPU)")
    parser.add_argument("--no-startup", dest="startup", action="store_false",
                        help="skip timing `train.py --help` and a real run's first steps (3 epochs of the model: "
                             "long for a ResNet)")
    parser.add_argument("--replicas", type=int, nargs="+",
                        help="instead: images/s against the replicas of distribute=mirrored, e.g. --replicas 1 2 "
                             "(GPUs, or logical CPUs without them); in a fresh process")
    parser.add_argument("--image-folder",
                        help="instead: images/s of dataset=image_folder on this folder (the same data as --data-dir, "
                             "written out by `python -m cnn.tools.to_folder`) with each cache, against --data-dir in memory")
    parser.add_argument("--out", help="also write the Markdown report here")
    return parser.parse_args(argv)


def check_args(args) -> Optional[str]:
    """What is wrong with the arguments, in one line, or None."""
    bad = next((o for o in args.model_option if "=" not in o or o.startswith("=")), None)
    if bad is not None:
        return f"--model-option {bad}: must be KEY=VALUE, e.g. depth=20"
    chosen = args.contenders or list(CONTENDERS)
    if not {"fit", "loop"} & set(chosen):
        return "--contenders: name fit or loop (or both); the table compares them"
    if "epoch-end" in chosen and ("loop" not in chosen or "float32" not in (args.precisions or ["float32"])):
        return ("--contenders epoch-end: needs loop and float32 (its shares are of a float32 epoch of our loop); "
                "add them, or leave epoch-end out")
    return None


def main(argv=None) -> None:
    args = parse_args(argv)
    problem = check_args(args)
    if problem:
        sys.exit(f"error: {problem}")
    from cnn.runtime.console import import_tensorflow

    import_tensorflow()
    try:
        report = run(args)
    except CnnError as e:
        sys.exit(f"error: {e}")
    print(report)
    if args.out:
        Path(args.out).write_text(report)


def run(args) -> str:
    """The measurements `args` ask for, as the Markdown report."""
    model = model_name(config_for(args.dataset, args.data_dir, model=model_overrides(args)))  # a bad one: one line
    if args.contenders and "torch" in args.contenders and model != TORCH_TWIN:
        raise ConfigError(f"--contenders torch: the PyTorch network is {TORCH_TWIN}'s, not {model}'s; leave torch out")
    args.contenders = args.contenders or list(CONTENDERS)  # torch: for TORCH_TWIN only (`contenders_of`)
    if args.replicas or args.image_folder:
        m = measure_replicas(args) if args.replicas else measure_image_folder(args)
        return "\n".join(replica_table(args, m) if args.replicas else image_folder_table(args, m)) + "\n"
    m = measure(args)
    for what, precision, i in m["rows"] + m["bn_rows"]:
        print(f"  {what:<40} {precision:<15} {i:8.0f} images/s", flush=True)
    lines = speed_table(args, m) + (overhead_table(args, m) if m["overhead"] else [])
    return "\n".join(lines + (startup_table(args, m) if m["startup"] else [])) + "\n"


if __name__ == "__main__":
    main()
