"""Configuration: the typed schema behind the YAML in `conf/`, and the run's identity.

`conf/` is the one source of every value; these dataclasses give only the
types (no defaults but None, "not used by this model"), so a config built in
Python (`compose`) and one built on the command line are the same config.
Hydra checks types at composition (`lr=abc`), `to_config` the keys Hydra lets
through (`+batch_sise=10`) and `validate` the values that types cannot
(`lr > 0`). Nothing here imports TensorFlow, so `--help` stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from cnn.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@dataclass
class DatasetConfig:
    name: str  # mnist | fashion_mnist | cifar10
    data_dir: Optional[str]  # null: Keras cache, then download
    download: bool  # fetch missing files from the canonical source
    augment: bool  # random rotation and shift (and flip) of the training images, on the fly
    max_rotation: float  # with augment: degrees, either way
    max_shift: float  # with augment: pixels, each axis, either way
    flip: bool  # with augment: mirror half the images left to right
    validation_split: float  # fraction of the training set held out (stratified, seed-free); 0: none
    # dataset=image_folder only (None for the built-in datasets):
    test_split: Optional[float] = None  # class folders directly under data_dir: the test set's fraction
    image_size: Optional[List[int]] = None  # [height, width] every image is resized to; null: the first's
    color_mode: Optional[str] = None  # grayscale | rgb; null: the first training image's
    cache: Optional[str] = None  # memory | disk | none: where decoded images live while training
    cache_dir: Optional[str] = None  # cache=disk|none: the decoded pixels and checks; null: the Keras home
    skip_bad_files: Optional[bool] = None  # train without files that do not decode (else an error)


@dataclass
class ModelConfig:
    name: str  # a key of cnn.models.MODELS
    dropout: float
    members: Optional[str] = None  # ensemble only: the registered model of each member
    size: Optional[int] = None  # ensemble only: the number of members
    bn_momentum: Optional[float] = None  # models with batch norm: the moving averages' momentum


@dataclass
class ScheduleConfig:
    name: str  # constant | exponential | cosine
    decay_steps: int  # exponential: steps per decay; cosine: steps to the end
    decay_rate: float  # exponential
    staircase: bool  # exponential: decay in steps, not continuously
    alpha: float  # cosine: the final rate, as a fraction of lr


@dataclass
class PreciseBNConfig:
    batches: int  # training batches averaged for batch-norm statistics before evaluating; 0: off


@dataclass
class EarlyStoppingConfig:
    patience: Optional[int]  # epochs without an improvement of `monitor` before stopping; null: off
    min_delta: float  # the smallest change that counts as an improvement


@dataclass
class CheckpointConfig:
    dir: Optional[str]  # null: checkpoints/<run name>
    keep: int  # checkpoints kept on disk (the best one is kept apart, besides)
    every_n_steps: Optional[int]  # plus one at every epoch end
    every_n_minutes: Optional[float]
    eval: Optional[str]  # mode=eval: best | latest; null: best when the run keeps one, else latest


@dataclass
class DistributeConfig:
    name: str  # none | mirrored | multi_worker
    logical_cpus: Optional[int]  # mirrored without GPUs: this many logical CPU devices; null: the GPUs
    timeout_seconds: float  # multi_worker: how long to wait for the other workers at the start


@dataclass
class Config:
    dataset: DatasetConfig
    model: ModelConfig
    lr: float
    schedule: ScheduleConfig
    epochs: int
    batch_size: int
    seed: int
    precision: str  # float32 | mixed_bfloat16 | mixed_float16 (Keras policies)
    steps_per_loop: int  # training steps per compiled call
    mode: str  # train | eval | export
    resume: str  # auto | never | <checkpoint path>
    deterministic: bool  # bitwise-reproducible ops
    progress: Optional[bool]  # progress bar; null: when on a terminal
    summaries: Optional[bool]  # TensorBoard event files; null: when TensorBoard is installed
    summary_every_n_steps: int  # training scalars every N steps (epoch ones every epoch)
    plot_every_n_minutes: float  # learning_curves.png redrawn at most this often, and at the end
    precise_bn: PreciseBNConfig
    monitor: str  # val_accuracy | val_loss: selects the best checkpoint (and drives early stopping)
    early_stopping: EarlyStoppingConfig
    checkpoint: CheckpointConfig
    distribute: DistributeConfig


MODES = ("train", "eval", "export")
IMAGE_FOLDER_KEYS = ("test_split", "image_size", "color_mode", "cache", "cache_dir", "skip_bad_files")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
SCHEDULES = ("constant", "exponential", "cosine")
MONITORS = ("val_accuracy", "val_loss")
EVAL_CHECKPOINTS = ("best", "latest")
STRATEGIES = ("none", "mirrored", "multi_worker")

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
                 "cosine": ("decay_steps", "alpha")}


def register_configs() -> None:
    """Registers the schema in Hydra's ConfigStore (train.py and `compose` call it)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="schema", node=Config)


def compose(*overrides: str) -> Config:
    """The config `python train.py <overrides>` runs, for notebooks, tests and the benchmark.

    e.g. `compose("dataset=fashion_mnist", "dataset.data_dir=/data/fashion-mnist", "epochs=1")`.
    Raises ConfigError (one line) for a bad override.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except Exception as e:  # noqa: BLE001  (Hydra and OmegaConf errors, reworded)
        message = explain(e)
        if message is None:
            raise
        raise ConfigError(message) from None
    return to_config(cfg)


def explain(error: BaseException) -> Optional[str]:
    """One line for a Hydra/OmegaConf composition error (what is wrong, how to fix it), or None
    for an exception that is not one."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if not isinstance(error, (HydraException, OmegaConfBaseException)):
        return None
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    key = getattr(cause, "full_key", None)
    text = str(cause).splitlines()[0].strip() if str(cause).strip() else type(cause).__name__
    if isinstance(error, MissingConfigException) and error.options is not None:
        group = (error.missing_cfg_file or "").rsplit("/", 1)[0]
        name = (error.missing_cfg_file or "").rsplit("/", 1)[-1]
        return f"{group}={name}: no such option; available: {', '.join(sorted(error.options))}"
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:
        return unknown_key_message(key)
    if key:
        return f"{key}: {text}"
    return text


def unknown_key_message(key: str) -> str:
    """'batch_sise: no such key (did you mean batch_size?) ...'."""
    close = difflib.get_close_matches(key, _schema_keys(Config), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{key}: no such key{hint}; `python train.py --help` lists them"


def _schema_keys(cls, prefix: str = "") -> list[str]:
    """Every key of the schema, flattened: ['dataset.name', ..., 'lr', ...]."""
    keys = []
    for name, kind in typing.get_type_hints(cls).items():
        keys += _schema_keys(kind, f"{prefix}{name}.") if dataclasses.is_dataclass(kind) else [prefix + name]
    return keys


def to_config(cfg: Any) -> Config:
    """Converts a composed DictConfig into a plain, validated `Config`.

    Keys outside the schema fail here: Hydra's `+key=value` adds them even to a typed config.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, Config):
        config = cfg
    else:
        known = set(_schema_keys(Config))
        given = _flatten(OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False))
        unknown = [k for k in given if k not in known]
        if unknown:
            raise ConfigError(unknown_key_message(unknown[0]))
        try:
            config = OmegaConf.to_object(cfg)
        except OmegaConfBaseException as e:
            raise ConfigError(explain(e)) from None
    validate(config)
    return config


def validate(config: Config) -> None:
    """Raises ConfigError naming the first out-of-range value."""
    model, s = config.model, config.schedule
    checks = [
        (config.lr > 0, f"lr={config.lr}: must be > 0"),
        (config.epochs >= 1, f"epochs={config.epochs}: must be >= 1"),
        (0 <= config.seed < 2**32, f"seed={config.seed}: must be in [0, 2**32)"),
        (config.batch_size >= 1, f"batch_size={config.batch_size}: must be >= 1"),
        (config.precision in PRECISIONS,
         f"precision={config.precision}: must be one of {', '.join(PRECISIONS)}"),
        (config.steps_per_loop >= 1, f"steps_per_loop={config.steps_per_loop}: must be >= 1"),
        (s.name in SCHEDULES, f"schedule.name={s.name}: must be one of {', '.join(SCHEDULES)}"),
        (s.decay_steps >= 1, f"schedule.decay_steps={s.decay_steps}: must be >= 1"),
        (0 < s.decay_rate <= 1, f"schedule.decay_rate={s.decay_rate}: must be in (0, 1]"),
        (model.size is None or model.size >= 1, f"model.size={model.size}: must be >= 1"),
        (config.dataset.max_rotation >= 0 and config.dataset.max_shift >= 0,
         "dataset.max_rotation and dataset.max_shift must be >= 0"),
        (config.summary_every_n_steps >= 1,
         f"summary_every_n_steps={config.summary_every_n_steps}: must be >= 1"),
        (config.plot_every_n_minutes >= 0,
         f"plot_every_n_minutes={config.plot_every_n_minutes}: must be >= 0 (0: every epoch)"),
        (config.mode in MODES, f"mode={config.mode}: must be one of {', '.join(MODES)}"),
        (0 <= model.dropout < 1, f"model.dropout={model.dropout}: must be in [0, 1)"),
        (model.bn_momentum is None or 0 <= model.bn_momentum < 1,
         f"model.bn_momentum={model.bn_momentum}: must be in [0, 1)"),
        (config.precise_bn.batches >= 0, f"precise_bn.batches={config.precise_bn.batches}: must be >= 0 (0: off)"),
        (0 <= config.dataset.validation_split < 1,
         f"dataset.validation_split={config.dataset.validation_split}: must be in [0, 1) (0: no validation "
         "set, the test set is evaluated every epoch)"),
        (config.monitor in MONITORS, f"monitor={config.monitor}: must be one of {', '.join(MONITORS)}"),
        (config.early_stopping.patience is None or config.early_stopping.patience >= 0,
         f"early_stopping.patience={config.early_stopping.patience}: must be >= 0, or null (off)"),
        (config.early_stopping.min_delta >= 0,
         f"early_stopping.min_delta={config.early_stopping.min_delta}: must be >= 0"),
        (config.early_stopping.patience is None or config.dataset.validation_split > 0,
         "early_stopping.patience needs a validation set: set dataset.validation_split > 0 "
         "(stopping on the test set would select on it)"),
        (config.checkpoint.eval is None or config.checkpoint.eval in EVAL_CHECKPOINTS,
         f"checkpoint.eval={config.checkpoint.eval}: must be best, latest or null"),
        (config.checkpoint.keep >= 1, f"checkpoint.keep={config.checkpoint.keep}: must be >= 1"),
        (config.checkpoint.every_n_steps is None or config.checkpoint.every_n_steps >= 1,
         f"checkpoint.every_n_steps={config.checkpoint.every_n_steps}: must be >= 1 or null"),
        (config.checkpoint.every_n_minutes is None or config.checkpoint.every_n_minutes > 0,
         f"checkpoint.every_n_minutes={config.checkpoint.every_n_minutes}: must be > 0 or null"),
        (bool(config.resume), "resume='': use auto, never, or a checkpoint path"),
        (config.distribute.name in STRATEGIES,
         f"distribute={config.distribute.name}: must be one of {', '.join(STRATEGIES)}"),
        (config.distribute.logical_cpus is None or config.distribute.logical_cpus >= 1,
         f"distribute.logical_cpus={config.distribute.logical_cpus}: must be >= 1, or null (the GPUs)"),
        (config.distribute.logical_cpus is None or config.distribute.name == "mirrored",
         "distribute.logical_cpus is for distribute=mirrored only"),
        (config.distribute.timeout_seconds > 0,
         f"distribute.timeout_seconds={config.distribute.timeout_seconds}: must be > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    validate_image_folder(config.dataset)


def validate_image_folder(dataset: DatasetConfig) -> None:
    """The image-folder keys: set only with dataset=image_folder, and in range."""
    if dataset.name != "image_folder":
        given = [k for k in IMAGE_FOLDER_KEYS if getattr(dataset, k) is not None]
        if given:
            raise ConfigError(f"dataset.{given[0]} is for dataset=image_folder only (dataset={dataset.name})")
        return
    from cnn.image_folder import CACHES, COLOR_MODES

    size = dataset.image_size
    checks = [
        (size is None or (len(size) == 2 and min(size) >= 1),
         f"dataset.image_size={size}: must be [height, width], both >= 1, or null (the first image's)"),
        (dataset.color_mode is None or dataset.color_mode in COLOR_MODES,
         f"dataset.color_mode={dataset.color_mode}: must be grayscale, rgb, or null (the first image's)"),
        (dataset.cache in CACHES, f"dataset.cache={dataset.cache}: must be one of {', '.join(CACHES)}"),
        (dataset.test_split is not None and 0 < dataset.test_split < 1,
         f"dataset.test_split={dataset.test_split}: must be in (0, 1)"),
        (dataset.skip_bad_files is not None, "dataset.skip_bad_files: must be true or false"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def model_options(model: ModelConfig) -> dict:
    """The options given to the model's builder: every set key but the name."""
    return {k: v for k, v in dataclasses.asdict(model).items() if k != "name" and v is not None}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _matters(key: str, config: Config) -> bool:
    """Whether `key` can change what the run computes."""
    if any(key == n or key.startswith(n + ".") for n in NOT_IDENTITY):
        return False
    if key in ("dataset.max_rotation", "dataset.max_shift", "dataset.flip"):
        return config.dataset.augment
    if key.startswith("schedule.") and key != "schedule.name":
        return key.split(".", 1)[1] in SCHEDULE_KEYS.get(config.schedule.name, ())
    if key == "monitor":  # what selects the best checkpoint, when there is a validation set
        return config.dataset.validation_split > 0
    return True


def identity(config: Config) -> dict:
    """The settings that determine what a run computes, flattened: {'lr': 0.001, ...}.

    Unset model options (None) and keys the run does not read (augmentation parameters
    without `augment`, another schedule's parameters) are left out.
    """
    flat = _flatten(dataclasses.asdict(config))
    return {k: v for k, v in sorted(flat.items()) if v is not None and _matters(k, config)}


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
    return (f"{config.dataset.name}-{config.model.name}-lr{config.lr:g}"
            f"-bs{config.batch_size}-seed{config.seed}-{digest}")
