"""The typed schema behind the YAML in `conf/`: types only, no defaults but None.

`conf/` is the one source of every value. The open groups (`model`, `optimizer`) are
plain mappings here: each model and optimizer types its own options by its builder's
signature (cnn/registry.py), so no schema holds the union of every model's options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional


@dataclass
class DatasetConfig:
    name: str  # a registered dataset (cnn/data/): mnist | fashion_mnist | cifar10 | image_folder
    data_dir: Optional[str]  # null: Keras cache, then download
    download: bool  # fetch missing files from the canonical source
    augment: bool  # random rotation and shift (and flip) of the training images, on the fly
    max_rotation: float  # with augment: degrees, either way
    max_shift: float  # with augment: pixels, each axis, either way
    flip: bool  # with augment or pad: mirror half the images left to right
    pad: int  # random crops after zero padding by this many pixels (He et al.); 0: none
    validation_split: float  # fraction of the training set held out (stratified, seed-free); 0: none


@dataclass
class ImageFolderConfig(DatasetConfig):
    """dataset=image_folder: a folder of the user's images (cnn/data/image_folder.py)."""

    test_split: float  # class folders directly under data_dir: the test set's fraction
    image_size: Optional[List[int]]  # [height, width] every image is resized to; null: the first's
    color_mode: Optional[str]  # grayscale | rgb; null: the first training image's
    cache: str  # memory | disk | none: where decoded images live while training
    cache_dir: Optional[str]  # cache=disk|none: the decoded pixels and checks; null: the Keras home
    skip_bad_files: bool  # train without files that do not decode (else an error)


@dataclass
class ScheduleConfig:
    name: str  # constant | exponential | cosine | step (cnn/optim/schedules.py)
    decay_steps: int  # exponential: steps per decay; cosine: steps to the end
    decay_rate: float  # exponential
    staircase: bool  # exponential: decay in steps, not continuously
    alpha: float  # cosine: the final rate, as a fraction of lr
    milestones: List[float]  # step: the epochs at which the rate is multiplied by gamma
    gamma: float  # step
    warmup_epochs: float  # any schedule: a linear warmup from 0 over this many epochs first; 0: none


@dataclass
class ErasingConfig:
    probability: float  # random erasing (Zhong et al.) of each training image; 0: off
    area: List[float]  # [low, high]: the rectangle's share of the image
    aspect: List[float]  # [low, high]: its height / width, drawn log-uniformly


@dataclass
class MixConfig:
    alpha: float  # mixup, cutmix: lambda ~ Beta(alpha, alpha) per batch; 0: off
    probability: float  # the share of batches mixed


@dataclass
class EMAConfig:
    decay: Optional[float]  # a moving average of the weights, evaluated instead of them; null: off


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
    model: Dict[str, Any]  # name (a registered model) or _target_ (the user's builder), and its options
    optimizer: Dict[str, Any]  # name (a registered optimizer) or _target_, and its options
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
    label_smoothing: float  # training targets (1 - eps) one-hot + eps / classes; 0: off
    erasing: ErasingConfig
    cutout: int  # a square of this many pixels zeroed in each training image (DeVries and Taylor); 0: off
    mixup: MixConfig
    cutmix: MixConfig
    ema: EMAConfig
    monitor: str  # val_accuracy | val_loss: selects the best checkpoint (and drives early stopping)
    early_stopping: EarlyStoppingConfig
    checkpoint: CheckpointConfig
    distribute: DistributeConfig

    @property
    def model_name(self) -> str:
        """The model's name in run names: `model.name`, or for a `_target_`, its module's last part."""
        return self.model.get("name") or target_name(self.model.get("_target_", "model"))


def target_name(target: str) -> str:
    """A short readable name for a `_target_`: its module's last part ("resnet" for my_models.resnet.build)."""
    parts = str(target).split(".")
    return parts[-2] if len(parts) > 1 else parts[-1]
