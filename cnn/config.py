"""Configuration schema: typed dataclasses behind the YAML in `conf/`.

Hydra validates overrides against these at composition time (`lr=abc`,
`batch_sise=10`), and `validate` checks the values that types cannot
(`lr > 0`, ...). Nothing here imports TensorFlow, so `--help` stays fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


from cnn.errors import ConfigError  # noqa: F401  (raised by validate)


@dataclass
class DatasetConfig:
    name: str = MISSING  # mnist | fashion_mnist | cifar10
    data_dir: Optional[str] = None  # null: Keras cache, then download
    download: bool = True  # fetch missing files from the canonical source
    augment: bool = False  # random rotation and shift (and flip) of the training images, on the fly
    max_rotation: float = 15.0  # degrees, either way
    max_shift: float = 2.0  # pixels, each axis, either way
    flip: bool = False  # with augment: mirror half the images left to right (clothes, objects; not digits)


@dataclass
class ModelConfig:
    name: str = MISSING  # a key of cnn.models.MODELS
    dropout: float = 0.0
    members: str = "book_cnn"  # ensemble only: the registered model of each member
    size: int = 5  # ensemble only: the number of members


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant | exponential | cosine
    decay_steps: int = 600  # exponential: steps per decay; cosine: steps to the end
    decay_rate: float = 0.96  # exponential
    staircase: bool = False  # exponential: decay in steps, not continuously
    alpha: float = 0.0  # cosine: the final rate, as a fraction of lr


@dataclass
class CheckpointConfig:
    dir: Optional[str] = None  # null: checkpoints/<run name>
    keep: int = 3  # checkpoints kept on disk
    every_n_steps: Optional[int] = None  # plus one at every epoch end
    every_n_minutes: Optional[float] = 10.0


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    lr: float = 0.001
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 15
    batch_size: int = 100
    seed: int = 0
    precision: str = "float32"  # float32 | mixed_bfloat16 | mixed_float16 (Keras policies)
    steps_per_loop: int = 100  # training steps per compiled call
    mode: str = "train"  # train | eval
    resume: str = "auto"  # auto | never | <checkpoint path>
    deterministic: bool = True  # bitwise-reproducible ops (slower on GPU)
    progress: Optional[bool] = None  # progress bar; null: when on a terminal
    summaries: Optional[bool] = None  # TensorBoard event files; null: when TensorBoard is installed
    summary_every_n_steps: int = 100  # training scalars every N steps (epoch ones every epoch)
    plot_every_n_minutes: float = 1.0  # learning_curves.png redrawn at most this often, and at the end
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


MODES = ("train", "eval")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
SCHEDULES = ("constant", "exponential", "cosine")

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
    "dataset.data_dir",
    "dataset.download",
)


def register_configs() -> None:
    """Registers the schema in Hydra's ConfigStore (called by train.py)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)


def to_config(cfg: Any) -> Config:
    """Converts a composed DictConfig into a plain, validated `Config`."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_object(cfg) if not isinstance(cfg, Config) else cfg
    validate(config)
    return config


def validate(config: Config) -> None:
    """Raises ConfigError naming the first out-of-range value."""
    checks = [
        (config.lr > 0, f"lr={config.lr}: must be > 0"),
        (config.epochs >= 1, f"epochs={config.epochs}: must be >= 1"),
        (0 <= config.seed < 2**32, f"seed={config.seed}: must be in [0, 2**32)"),
        (config.batch_size >= 1, f"batch_size={config.batch_size}: must be >= 1"),
        (config.precision in PRECISIONS,
         f"precision={config.precision}: must be one of {', '.join(PRECISIONS)}"),
        (config.steps_per_loop >= 1, f"steps_per_loop={config.steps_per_loop}: must be >= 1"),
        (config.schedule.name in SCHEDULES,
         f"schedule.name={config.schedule.name}: must be one of {', '.join(SCHEDULES)}"),
        (config.schedule.decay_steps >= 1, f"schedule.decay_steps={config.schedule.decay_steps}: must be >= 1"),
        (0 < config.schedule.decay_rate <= 1, f"schedule.decay_rate={config.schedule.decay_rate}: must be in (0, 1]"),
        (config.model.size >= 1, f"model.size={config.model.size}: must be >= 1"),
        (config.dataset.max_rotation >= 0 and config.dataset.max_shift >= 0,
         "dataset.max_rotation and dataset.max_shift must be >= 0"),
        (config.summary_every_n_steps >= 1,
         f"summary_every_n_steps={config.summary_every_n_steps}: must be >= 1"),
        (config.plot_every_n_minutes >= 0,
         f"plot_every_n_minutes={config.plot_every_n_minutes}: must be >= 0 (0: every epoch)"),
        (config.mode in MODES, f"mode={config.mode}: must be one of {', '.join(MODES)}"),
        (0 <= config.model.dropout < 1, f"model.dropout={config.model.dropout}: must be in [0, 1)"),
        (config.checkpoint.keep >= 1, f"checkpoint.keep={config.checkpoint.keep}: must be >= 1"),
        (config.checkpoint.every_n_steps is None or config.checkpoint.every_n_steps >= 1,
         f"checkpoint.every_n_steps={config.checkpoint.every_n_steps}: must be >= 1 or null"),
        (config.checkpoint.every_n_minutes is None or config.checkpoint.every_n_minutes > 0,
         f"checkpoint.every_n_minutes={config.checkpoint.every_n_minutes}: must be > 0 or null"),
        (bool(config.resume), "resume='': use auto, never, or a checkpoint path"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def identity(config: Config) -> dict:
    """The settings that determine what a run computes, flattened: {'lr': 0.001, ...}."""
    flat = _flatten(dataclasses.asdict(config))
    return {
        k: v for k, v in sorted(flat.items())
        if not any(k == n or k.startswith(n + ".") for n in NOT_IDENTITY)
    }


def run_name(config: Config, data_fingerprint: Optional[str] = None) -> str:
    """A readable, unique directory name for the run's identity and data.

    e.g. 'mnist-book_cnn-lr0.001-bs100-seed0-3f2a9c1e'; the hash covers every
    identity key and the data's fingerprint, the readable part the usual keys.
    """
    ident = {**identity(config), "data": data_fingerprint}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    return (f"{config.dataset.name}-{config.model.name}-lr{config.lr:g}"
            f"-bs{config.batch_size}-seed{config.seed}-{digest}")
