"""Errors the user can fix. Each message is one line: what is wrong and how to fix it.

No TensorFlow here: the entry point catches these without importing it.
"""


class CnnError(Exception):
    """Base class: train.py prints the message as one line and exits non-zero."""


class ConfigError(CnnError, ValueError):
    """A configuration value is out of range."""


class DataError(CnnError):
    """Data missing or unreadable."""


class CheckpointError(CnnError):
    """A checkpoint directory cannot be used as asked."""


class TrainingError(CnnError):
    """Training cannot go on (e.g. the loss diverged)."""
