"""The configuration: its schema (`schema`), composing and checking it (`compose`), and the
run's identity (`identity`). Nothing here imports TensorFlow."""

from cnn.config.compose import compose, explain, register_configs, to_config, validate
from cnn.config.identity import identity, run_name, weights_identity
from cnn.config.schema import Config, DatasetConfig, ImageFolderConfig

__all__ = ["Config", "DatasetConfig", "ImageFolderConfig", "compose", "explain", "identity", "register_configs",
           "run_name", "to_config", "validate", "weights_identity"]
