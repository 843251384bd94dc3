"""The lines a run logs: each epoch's and the final results'."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from cnn.reporting import history
from cnn.config import Config
from cnn.errors import CheckpointError
from cnn.text import plural

log = logging.getLogger("cnn.reporting")  # the name the epoch lines have always carried


def read_rows(path: Path) -> list[dict]:
    """The rows of a run's metrics.csv, or one clear error when it is damaged."""
    try:
        return history.read_rows(path)
    except ValueError as e:
        raise CheckpointError(f"{e}; repair or delete it (the checkpoints do not depend on it)") from None


def log_epoch(config: Config, row: dict, evaluation: dict, timings: dict, split: str = "test",
              best: bool = False) -> None:
    """The epoch's line: training and `split` ("val" or "test") metrics, speed, timings."""
    members = evaluation.get(f"member_{split}_accuracy")
    precise = f", precise BN {timings['precise_bn']:.2f} s" if "precise_bn" in timings else ""
    log.info("epoch %d/%d  loss %.4f  accuracy %.4f  %s loss %.4f  %s accuracy %.4f%s  %.1f s  "
             "%.0f images/s  (evaluation %.2f s, checkpoint %.2f s%s)%s%s", row["epoch"], config.epochs,
             row["loss"], row["accuracy"], split, row[f"{split}_loss"], split, row[f"{split}_accuracy"],
             "  (best)" if best else "", row["seconds"], row["images_per_sec"], timings["evaluation"],
             timings["checkpoint"], precise, "  members " + " ".join(f"{a:.4f}" for a in members) if members else "",
             unaccounted_note(row))


UNACCOUNTED = 0.03  # of the wall time: more than this outside the epoch's parts is worth a word


def unaccounted(row: dict) -> float:
    """Seconds of the epoch's wall time outside its parts (training, evaluation, checkpoint, reporting)."""
    parts = row["seconds"] + row["evaluation_seconds"] + row["checkpoint_seconds"] + row["reporting_seconds"]
    return row["wall_seconds"] - parts


def unaccounted_note(row: dict) -> str:
    """'  wall 45.1 s: 20.3 s outside training, evaluation, checkpoint and reporting', when that is
    more than 3 % of the wall time (and 0.5 s); else ''."""
    if "wall_seconds" not in row:
        return ""
    gap = unaccounted(row)
    if gap <= max(UNACCOUNTED * row["wall_seconds"], 0.5):
        return ""
    return (f"  wall {row['wall_seconds']:.1f} s: {gap:.1f} s outside training, evaluation, checkpoint and "
            "reporting")


def log_results(results_: dict) -> None:
    """The run's last lines: what was selected, and its test metrics, reported once."""
    selected, last = results_["selected"], results_["last"]
    if results_["protocol"] == "validation":
        log.info("selected epoch %d of %d by %s (%.4f; its checkpoint in best/): test accuracy %.4f, "
                 "test loss %.4f", selected["epoch"], last["epoch"], results_["monitor"], results_["objective"],
                 selected["test_accuracy"], selected["test_loss"])
        if last["step"] != selected["step"]:
            log.info("last epoch %d: val accuracy %.4f, test accuracy %.4f", last["epoch"],
                     last.get("val_accuracy", math.nan), last["test_accuracy"])
    else:
        log.info("test accuracy %.4f, test loss %.4f after %s (dataset.validation_split=0: the test "
                 "set was evaluated every epoch; nothing was selected)", results_["test_accuracy"],
                 results_["test_loss"], plural(results_["steps"], "step"))
