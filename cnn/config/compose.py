"""Composing and checking a config: `compose` (the config `python train.py <overrides>` runs),
`to_config` (a composed DictConfig into a typed `Config`) and `validate` (the ranges that
types cannot say).

Hydra checks types at composition (`lr=abc`), `to_config` the keys Hydra lets through
(`+batch_sise=10`) and `validate` the values (`lr > 0`). A model's and an optimizer's own
options are checked by their builders' signatures (`cnn.registry`) before any data is read.
Nothing here imports TensorFlow, so `--help` stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Optional

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from cnn.config.identity import SCHEDULE_KEYS, flatten
from cnn.config.schema import Config, DatasetConfig, ImageFolderConfig
from cnn.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

MODES = ("train", "eval", "export")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
MONITORS = ("val_accuracy", "val_loss")
EVAL_CHECKPOINTS = ("best", "latest")
STRATEGIES = ("none", "mirrored", "multi_worker")
OPEN_GROUPS = ("model", "optimizer")  # their keys are their builders' options, checked by cnn.registry
COLOR_MODES = ("grayscale", "rgb")
CACHES = ("memory", "disk", "none")


def register_configs() -> None:
    """Registers the schema in Hydra's ConfigStore (train.py and `compose` call it):
    `schema` for conf/config.yaml and `image_folder_schema` for conf/dataset/image_folder.yaml."""
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    store.store(name="image_folder_schema", node=ImageFolderConfig)


def compose(*overrides: str) -> Config:
    """The config `python train.py <overrides>` runs, for notebooks, tests and the benchmark.

    e.g. `compose("dataset=fashion_mnist", "dataset.data_dir=/data/fashion-mnist", "epochs=1")`.
    Raises ConfigError (one line) for a bad override.
    """
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
    if not isinstance(error, (HydraException, OmegaConfBaseException)):
        return None
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    key = getattr(cause, "full_key", None)
    text = str(cause).splitlines()[0].strip() if str(cause).strip() else type(cause).__name__
    if isinstance(error, MissingConfigException) and error.options is not None:
        group = (error.missing_cfg_file or "").rsplit("/", 1)[0]
        name = (error.missing_cfg_file or "").rsplit("/", 1)[-1]
        options = sorted(error.options)
        return f"{group}={name}: no such option; available: {', '.join(options)}"
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:
        return unknown_key_message(key)
    if key:
        return f"{key}: {text}"
    return text


def unknown_key_message(key: str) -> str:
    """'batch_sise: no such key (did you mean batch_size?) ...'."""
    group = key.split(".", 1)[0]
    if group in OPEN_GROUPS:
        return (f"{key}: no such option of this {group}; `python train.py --help {group}=NAME` shows a "
                f"{group}'s options")
    if key.startswith("dataset.") and key.split(".", 1)[1] in schema_keys(ImageFolderConfig):
        return f"{key} is for dataset=image_folder only"
    close = difflib.get_close_matches(key, schema_keys(Config) + [f"dataset.{k}" for k in schema_keys(ImageFolderConfig)],
                                      n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{key}: no such key{hint}; `python train.py --help` lists them"


def schema_keys(cls, prefix: str = "") -> list[str]:
    """Every key of the schema, flattened: ['dataset.name', ..., 'lr', ...]; an open group, its name."""
    keys = []
    for name, kind in typing.get_type_hints(cls).items():
        keys += schema_keys(kind, f"{prefix}{name}.") if dataclasses.is_dataclass(kind) else [prefix + name]
    return keys


def to_config(cfg: Any) -> Config:
    """Converts a composed DictConfig into a plain, validated `Config`.

    Keys outside the schema fail here: Hydra's `+key=value` adds them even to a typed config.
    """
    if isinstance(cfg, Config):
        config = cfg
    else:
        dataset_keys = schema_keys(ImageFolderConfig if OmegaConf.select(cfg, "dataset.name") == "image_folder"
                                   else DatasetConfig, "dataset.")
        known = set(schema_keys(Config)) | set(dataset_keys)
        given = flatten(OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False))
        unknown = [k for k in given if k not in known and k.split(".", 1)[0] not in OPEN_GROUPS]
        if unknown:
            raise ConfigError(unknown_key_message(unknown[0]))
        try:
            config = OmegaConf.to_object(cfg)
        except OmegaConfBaseException as e:
            raise ConfigError(explain(e)) from None
    validate(config)
    return config


def _checks(config: Config) -> list[tuple[bool, str]]:
    s, stop = config.schedule, config.early_stopping
    return [
        (config.lr > 0, f"lr={config.lr}: must be > 0"),
        (config.epochs >= 1, f"epochs={config.epochs}: must be >= 1"),
        (0 <= config.seed < 2**32, f"seed={config.seed}: must be in [0, 2**32)"),
        (config.batch_size >= 1, f"batch_size={config.batch_size}: must be >= 1"),
        (config.precision in PRECISIONS, f"precision={config.precision}: must be one of {', '.join(PRECISIONS)}"),
        (config.steps_per_loop >= 1, f"steps_per_loop={config.steps_per_loop}: must be >= 1"),
        (s.name in SCHEDULE_KEYS, f"schedule.name={s.name}: must be one of {', '.join(SCHEDULE_KEYS)}"),
        (s.decay_steps >= 1, f"schedule.decay_steps={s.decay_steps}: must be >= 1"),
        (0 < s.decay_rate <= 1, f"schedule.decay_rate={s.decay_rate}: must be in (0, 1]"),
        (s.warmup_epochs >= 0, f"schedule.warmup_epochs={s.warmup_epochs}: must be >= 0 (0: no warmup)"),
        (0 < s.gamma <= 1, f"schedule.gamma={s.gamma}: must be in (0, 1]"),
        (list(s.milestones) == sorted(s.milestones) and all(m > 0 for m in s.milestones),
         f"schedule.milestones={list(s.milestones)}: must be increasing epochs > 0"),
        (bool(config.model.get("name") or config.model.get("_target_")),
         "model: needs a name (a registered model) or a _target_ (your builder)"),
        (bool(config.optimizer.get("name") or config.optimizer.get("_target_")),
         "optimizer: needs a name (a registered optimizer) or a _target_"),
        (config.dataset.max_rotation >= 0 and config.dataset.max_shift >= 0,
         "dataset.max_rotation and dataset.max_shift must be >= 0"),
        (config.summary_every_n_steps >= 1, f"summary_every_n_steps={config.summary_every_n_steps}: must be >= 1"),
        (config.plot_every_n_minutes >= 0,
         f"plot_every_n_minutes={config.plot_every_n_minutes}: must be >= 0 (0: every epoch)"),
        (config.mode in MODES, f"mode={config.mode}: must be one of {', '.join(MODES)}"),
        (config.precise_bn.batches >= 0, f"precise_bn.batches={config.precise_bn.batches}: must be >= 0 (0: off)"),
        (0 <= config.dataset.validation_split < 1,
         f"dataset.validation_split={config.dataset.validation_split}: must be in [0, 1) (0: no validation "
         "set, the test set is evaluated every epoch)"),
        (config.monitor in MONITORS, f"monitor={config.monitor}: must be one of {', '.join(MONITORS)}"),
        (stop.patience is None or stop.patience >= 0,
         f"early_stopping.patience={stop.patience}: must be >= 0, or null (off)"),
        (stop.min_delta >= 0, f"early_stopping.min_delta={stop.min_delta}: must be >= 0"),
        (stop.patience is None or config.dataset.validation_split > 0,
         "early_stopping.patience needs a validation set: set dataset.validation_split > 0 "
         "(stopping on the test set would select on it)"),
        *_checkpoint_checks(config),
        *_regularizer_checks(config),
    ]


def _in_range(pair, low, high) -> bool:
    return len(pair) == 2 and low <= pair[0] <= pair[1] <= high


def _regularizer_checks(config: Config) -> list[tuple[bool, str]]:
    e, mix, cut, ema = config.erasing, config.mixup, config.cutmix, config.ema.decay
    return [
        (config.dataset.pad >= 0, f"dataset.pad={config.dataset.pad}: must be >= 0 (0: no crops)"),
        (0 <= config.label_smoothing < 1, f"label_smoothing={config.label_smoothing}: must be in [0, 1)"),
        (0 <= e.probability <= 1, f"erasing.probability={e.probability}: must be in [0, 1] (0: off)"),
        (_in_range(e.area, 1e-6, 1), f"erasing.area={list(e.area)}: must be [low, high] with 0 < low <= high <= 1"),
        (_in_range(e.aspect, 1e-6, 1e6), f"erasing.aspect={list(e.aspect)}: must be [low, high] with 0 < low <= high"),
        (config.cutout >= 0, f"cutout={config.cutout}: must be >= 0 (0: off)"),
        *[(m.alpha >= 0 and 0 <= m.probability <= 1,
           f"{key}.alpha={m.alpha}, {key}.probability={m.probability}: alpha >= 0 (0: off), probability in [0, 1]")
          for key, m in (("mixup", mix), ("cutmix", cut))],
        (not (mix.alpha and cut.alpha), f"mixup.alpha={mix.alpha} and cutmix.alpha={cut.alpha}: choose one of them "
                                        "(set the other's alpha to 0)"),
        (ema is None or 0 < ema < 1, f"ema.decay={ema}: must be in (0, 1), e.g. 0.999, or null (off)"),
        (ema is None or config.precise_bn.batches > 0,
         "ema.decay needs precise_bn.batches > 0: the averaged weights need batch-norm statistics of their own "
         "(the moving averages are the trained weights')"),
    ]


def _checkpoint_checks(config: Config) -> list[tuple[bool, str]]:
    c, d = config.checkpoint, config.distribute
    return [
        (c.eval is None or c.eval in EVAL_CHECKPOINTS, f"checkpoint.eval={c.eval}: must be best, latest or null"),
        (c.keep >= 1, f"checkpoint.keep={c.keep}: must be >= 1"),
        (c.every_n_steps is None or c.every_n_steps >= 1,
         f"checkpoint.every_n_steps={c.every_n_steps}: must be >= 1 or null"),
        (c.every_n_minutes is None or c.every_n_minutes > 0,
         f"checkpoint.every_n_minutes={c.every_n_minutes}: must be > 0 or null"),
        (bool(config.resume), "resume='': use auto, never, or a checkpoint path"),
        (d.name in STRATEGIES, f"distribute={d.name}: must be one of {', '.join(STRATEGIES)}"),
        (d.logical_cpus is None or d.logical_cpus >= 1,
         f"distribute.logical_cpus={d.logical_cpus}: must be >= 1, or null (the GPUs)"),
        (d.logical_cpus is None or d.name == "mirrored", "distribute.logical_cpus is for distribute=mirrored only"),
        (d.timeout_seconds > 0, f"distribute.timeout_seconds={d.timeout_seconds}: must be > 0"),
    ]


def validate(config: Config) -> None:
    """Raises ConfigError naming the first out-of-range value."""
    for ok, message in _checks(config):
        if not ok:
            raise ConfigError(message)
    if isinstance(config.dataset, ImageFolderConfig):
        validate_image_folder(config.dataset)


def validate_image_folder(dataset: ImageFolderConfig) -> None:
    """The image-folder keys, in range."""
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
