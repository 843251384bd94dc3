"""Datasets: one module per family, each registered by name (`DATASETS`), and the pipelines.

Importing this package registers the built-in families: mnist and fashion_mnist
(cnn/data/mnist.py), cifar10 (cifar10.py) and image_folder (image_folder.py).
"""

from cnn.data import cifar10, image_folder, mnist  # noqa: F401  (each registers its datasets)
from cnn.data.base import (DATASETS, Data, check, fingerprint, load, load_dataset, register_dataset,
                           split_validation, steps_per_epoch)
from cnn.data.pipeline import statistics_dataset, test_dataset, train_dataset

__all__ = ["DATASETS", "Data", "check", "fingerprint", "load", "load_dataset", "register_dataset",
           "split_validation", "statistics_dataset", "steps_per_epoch", "test_dataset", "train_dataset"]
