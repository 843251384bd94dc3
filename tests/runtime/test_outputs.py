"""The output directory's one-line errors: a write the file system refused anywhere in a run."""

import errno
import os

import tensorflow as tf

from cnn.runtime.outputs import write_failure


def test_a_refused_write_anywhere_is_one_line_naming_the_file_and_what_is_kept():
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/confusion_matrix.csv")
    line = write_failure(full)
    assert line.startswith("cannot write /runs/x/confusion_matrix.csv: no space left on the device (ENOSPC)")
    assert "the checkpoints saved so far are kept" in line and "\n" not in line
    events = tf.errors.ResourceExhaustedError(None, None, "tensorboard/events.out.tfevents.1; No space left on device")
    assert "(ENOSPC)" in write_failure(events) and "tensorboard/events.out" in write_failure(events)
    read_only = OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/metrics.csv")
    assert "read-only" in write_failure(read_only) and "Mount its file system read-write" in write_failure(read_only)


def test_other_errors_are_left_to_show_whole():
    assert write_failure(ValueError("a bug")) is None
    assert write_failure(OSError(errno.ECONNREFUSED, "refused")) is None
    assert write_failure(PermissionError(errno.EACCES, "Permission denied", "/data/train.npz")) is None  # a read
