"""A run's identity: the settings that determine what it computes, and its directory name.

Two commands with the same identity are the same run (one checkpoint directory), whatever
else differs (epochs, where it runs, how often it saves). Keys left at the values every run
had before they existed (the book's Adam, no warmup) stay out, so that adding an option
never renames the runs that do not use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Optional

from cnn.config.schema import Config

# Keys that do not change what a run computes: changing them continues the
# same run (same checkpoint directory). Everything else is the run's identity.
NOT_IDENTITY = (
    "epochs",
    "steps_per_loop",
    "mode",
    "resume",
    "deterministic",
    "progress",
    "summaries",
    "summary_every_n_steps",
    "plot_every_n_minutes",
    "checkpoint",
    "early_stopping",  # decides when to stop, like `epochs`: the epochs it runs are the same
    "distribute",  # where the steps run: a run may move between devices (same results up to rounding)
    "dataset.data_dir",
    "dataset.download",
    "dataset.cache",  # every cache feeds the same pixels in the same order
    "dataset.cache_dir",
    "dataset.skip_bad_files",  # bad files end a run without it: the runs that exist used the same files
)
# Keys that change only the batch-norm statistics a checkpoint holds, never the weights (training
# does not read the moving averages): another run's checkpoint, read for its weights (mode=eval,
# resume=<path>), may differ in them.
STATISTICS_ONLY = ("model.bn_momentum", "precise_bn.batches")
# Schedule parameters each schedule reads; the others cannot change a run.
SCHEDULE_KEYS = {"constant": (), "exponential": ("decay_steps", "decay_rate", "staircase"),
                 "cosine": ("decay_steps", "alpha"), "step": ("milestones", "gamma")}
# Values every run had before the key existed: such a key stays out of the identity.
LEGACY = {"optimizer.name": "adam", "schedule.warmup_epochs": 0.0, "dataset.pad": 0, "label_smoothing": 0.0,
          "erasing.probability": 0.0, "cutout": 0, "mixup.alpha": 0.0, "cutmix.alpha": 0.0}
# Keys read only when another is on: {key: (the key that turns it on, its value when off)}.
READ_WITH = {"erasing.area": ("erasing.probability", 0.0), "erasing.aspect": ("erasing.probability", 0.0),
             "mixup.probability": ("mixup.alpha", 0.0), "cutmix.probability": ("cutmix.alpha", 0.0)}


def flatten(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _matters(key: str, value, config: Config, flat: dict) -> bool:
    """Whether `key` can change what the run computes."""
    if any(key == n or key.startswith(n + ".") for n in NOT_IDENTITY) or LEGACY.get(key, ...) == value:
        return False
    if key in ("dataset.max_rotation", "dataset.max_shift"):
        return config.dataset.augment
    if key == "dataset.flip":
        return config.dataset.augment or config.dataset.pad > 0
    if key in READ_WITH:
        switch, off = READ_WITH[key]
        return flat.get(switch) != off
    if key.startswith("schedule.") and key not in ("schedule.name", "schedule.warmup_epochs"):
        return key.split(".", 1)[1] in SCHEDULE_KEYS.get(config.schedule.name, ())
    if key == "monitor":  # what selects the best checkpoint, when there is a validation set
        return config.dataset.validation_split > 0
    return True


def identity(config: Config) -> dict:
    """The settings that determine what a run computes, flattened: {'lr': 0.001, ...}.

    Unset options (None) and keys the run does not read (augmentation parameters
    without `augment`, another schedule's parameters) are left out.
    """
    flat = flatten(dataclasses.asdict(config))
    return {k: v for k, v in sorted(flat.items()) if v is not None and _matters(k, v, config, flat)}


def weights_identity(ident: dict) -> dict:
    """The identity without the keys that change only batch-norm statistics."""
    return {k: v for k, v in ident.items() if k not in STATISTICS_ONLY}


def run_name(config: Config, data_fingerprint: Optional[str] = None) -> str:
    """A readable, unique directory name for the run's identity and data.

    e.g. 'mnist-book_cnn-lr0.001-bs100-seed0-3f2a9c1e'; the hash covers every
    identity key and the data's fingerprint, the readable part the usual keys.
    """
    ident = {**identity(config), "data": data_fingerprint}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    return (f"{config.dataset.name}-{config.model_name}-lr{config.lr:g}"
            f"-bs{config.batch_size}-seed{config.seed}-{digest}")
