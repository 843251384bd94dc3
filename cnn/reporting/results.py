"""results.json: what a training invocation reports, and a finished run's results when it is rerun."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Optional

from cnn.config import Config
from cnn.reporting import history
from cnn.reporting.epoch import read_rows
from cnn.text import plural

log = logging.getLogger("cnn.reporting")


def rss_mb() -> Optional[float]:
    """This process's resident memory in MB: now, from /proc (Linux); elsewhere its peak
    (getrusage, macOS); None where neither exists (Windows)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KB elsewhere


def results(config: Config, rows: list[dict], final: dict, step: int, directory: Path,
            checkpoint: Optional[str], status: str, first_step_seconds: Optional[float],
            stopped_early: bool = False) -> dict:
    """results.json of a training invocation.

    `final`: cnn.training.protocol.final_evaluation's {"selected", "last"}. At the top level are the selected
    checkpoint's metrics (val_* and test_*) and the `objective` a sweep ranks by: the
    selected validation `monitor`, or without a validation set the last test accuracy.
    """
    selected, last = final["selected"], final["last"]
    validating = config.dataset.validation_split > 0
    monitor = config.monitor if validating else "test_accuracy"
    rates = [r["images_per_sec"] for r in rows if r["images_per_sec"] > 0]
    return {
        "status": status,  # how this invocation began, started or resumed (skipped: finished before),
        # or why an epoch-end action ended it early (pruned)
        "protocol": "validation" if validating else "test every epoch",
        "monitor": monitor,
        "objective": selected.get(monitor),
        "selected_epoch": selected["epoch"],
        **{k: v for k, v in selected.items() if k.startswith(("val_", "test_", "member_"))},
        "selected": selected,
        "last": last,
        "stopped_early": stopped_early,
        "early_stopping": dataclasses.asdict(config.early_stopping) if stopped_early else None,
        "epochs": rows[-1]["epoch"] if rows else 0,
        "steps": step,
        "train_images_per_sec": sum(rates) / len(rates) if rates else 0.0,
        "run_name": directory.name,
        "checkpoint": checkpoint,
        "best_checkpoint": selected["checkpoint"] if validating else None,
        "checkpoint_dir": str(directory),
        "tensorboard_dir": tensorboard_dir(directory),
        "first_step_seconds": first_step_seconds,  # from `started` to the first steps' end; None: none run
        "rss_mb": rss_mb(),
        "pid": os.getpid(),
    }


def tensorboard_dir(directory: Path) -> Optional[str]:
    """The run's TensorBoard run, absolute (for `tensorboard --logdir`, and the sweep's
    `--logdir_spec`, from anywhere): the checkpoint directory's tensorboard/, where
    cnn.reporting.summaries writes it; None while it has none (summaries=false)."""
    events = directory / "tensorboard"
    return str(events.absolute()) if events.is_dir() else None


def write_results(results_: dict, *directories: Path) -> None:
    for directory in directories:
        history.write_json(directory / "results.json", results_)


def report_skipped(finished: dict, directory: Path, workdir: Path) -> dict:
    """A finished run rerun (e.g. a rerun sweep): its history and results, copied into `workdir`."""
    log.info("finished earlier (%s, test accuracy %.4f): skipped; its results are in %s",
             plural(finished["epochs"], "epoch"), finished["test_accuracy"], directory)
    history.write_rows(workdir / "metrics.csv", read_rows(directory / "metrics.csv"))
    skipped = {**finished, "status": "skipped"}
    write_results(skipped, workdir)
    return skipped
