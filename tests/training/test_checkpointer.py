"""Saving checkpoints when the disk says no: a full disk, a quota, no permission, a read-only
file system. One line naming the checkpoint and the latest good one, nothing half-written left,
the directory's lock released, and a rerun with space resumes."""

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import make_config, variables

from cnn.checkpointing import directory as checkpoint
from cnn.config import compose
from cnn.errors import WriteError
from cnn.training import train
from cnn.training.checkpointer import Checkpointer
from cnn.training.state import TrainState

KEPT = r"the latest good checkpoint, .*/ckpt-{}, is kept\. "


def tiny_state() -> TrainState:
    keras.utils.set_random_seed(0)
    return TrainState(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), keras.optimizers.Adam())


REAL_SAVE = tf.train.CheckpointManager.save


def failing_save(error, steps=(2,)):
    """CheckpointManager.save failing as TensorFlow's does at `steps`: its shards half-written into
    ckpt-<n>_temp/, a merged index begun, the state file's temporary copy, then `error`."""

    def save(manager, checkpoint_number=None, **kwargs):
        if checkpoint_number in steps:
            prefix = Path(manager.directory) / f"ckpt-{checkpoint_number}"
            Path(f"{prefix}_temp").mkdir()
            Path(f"{prefix}_temp/part-00000-of-00001.data-00000-of-00001.tempstate1").write_bytes(b"\0" * 100)
            Path(f"{prefix}.index").write_bytes(b"\0" * 10)
            (Path(manager.directory) / "checkpoint.tmp0123abcd").write_text("")
            raise error
        return REAL_SAVE(manager, checkpoint_number=checkpoint_number, **kwargs)

    return save


def enospc(path="ckpt-2_temp/part-00000-of-00001.data-00000-of-00001.tempstate1"):
    return tf.errors.ResourceExhaustedError(None, None, f"{{{{function_node __wrapped__SaveV2}}}} {path}; "
                                            "No space left on device [Op:SaveV2]")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "_temp" in p.name or ".tmp" in p.name)


@pytest.mark.parametrize("error,reason", [
    (enospc(), r"no space left on the device \(ENOSPC\)"),
    (tf.errors.PermissionDeniedError(None, None, "x; Permission denied"), r"permission denied \(EACCES\)"),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), r"the disk quota is exceeded \(EDQUOT\)"),
    (tf.errors.PermissionDeniedError(None, None, "x; Read-only file system"),
     r"the file system is read-only \(EROFS\)"),
], ids=["ENOSPC", "EACCES", "EDQUOT", "EROFS"])
def test_a_save_that_cannot_write_leaves_nothing_and_names_the_latest_good_one(tmp_path, monkeypatch, error, reason):
    state = tiny_state()
    saver = Checkpointer(state, tmp_path, compose().checkpoint)
    state.step.assign(1)
    saver.save(1)
    monkeypatch.setattr(tf.train.CheckpointManager, "save", failing_save(error))
    state.step.assign(2)
    with pytest.raises(WriteError, match=f"^cannot write {tmp_path}/ckpt-2: {reason}; {KEPT.format(1)}.*"
                                         r"or pass checkpoint\.dir=") as raised:
        saver.save(2)
    assert "\n" not in str(raised.value)
    assert leftovers(tmp_path) == [] and not list(tmp_path.glob("ckpt-2*"))
    assert [Path(p).name for p in checkpoint.checkpoint_paths(tmp_path)] == ["ckpt-1"]
    assert variables(tmp_path / "ckpt-1")["step/.ATTRIBUTES/VARIABLE_VALUE"] == 1


def test_the_first_save_failing_says_none_was_kept_and_other_errors_are_not_hidden(tmp_path, monkeypatch):
    state = tiny_state()
    saver = Checkpointer(state, tmp_path, compose().checkpoint)
    monkeypatch.setattr(tf.train.CheckpointManager, "save", failing_save(enospc(), steps=(1, 2)))
    with pytest.raises(WriteError, match=r"; no checkpoint was saved before it \(nothing half-written is left\)"):
        saver.save(1)
    assert leftovers(tmp_path) == [] and checkpoint.checkpoint_paths(tmp_path) == []
    # Not the file system's: TensorFlow's own error, whole; its shards still go.
    not_a_write = tf.errors.InvalidArgumentError(None, None, "x")
    monkeypatch.setattr(tf.train.CheckpointManager, "save", failing_save(not_a_write))
    with pytest.raises(tf.errors.InvalidArgumentError):
        saver.save(2)
    assert not (tmp_path / "ckpt-2_temp").exists()


@contextlib.contextmanager
def small_disk(where: Path, size: str):
    """A tmpfs of `size` mounted at `where` (tests run as root): yields a function remounting it
    with other options, or None where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                 capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        mounted = False
    if not mounted:
        yield None
        return
    try:
        yield lambda *options: subprocess.run(["mount", "-o", ",".join(["remount", *options]), str(where)],
                                              check=True, timeout=30)
    finally:
        subprocess.run(["umount", "-l", str(where)], timeout=30)


def fill(directory: Path) -> Path:
    """Writes a file into `directory` until its file system is full; returns it."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    return filler


def test_on_a_real_full_and_read_only_disk(tmp_path):
    with small_disk(tmp_path / "disk", "1m") as remount:
        if remount is None:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        directory = tmp_path / "disk"
        state = tiny_state()
        saver = Checkpointer(state, directory, compose().checkpoint)
        saver.save(1)
        filler = fill(directory)
        with pytest.raises(WriteError, match=f"/ckpt-2: no space left on the device \\(ENOSPC\\); {KEPT.format(1)}"):
            saver.save(2)
        assert leftovers(directory) == [] and not list(directory.glob("ckpt-2*"))
        filler.unlink()
        remount("ro")
        with pytest.raises(WriteError, match=f"/ckpt-3: the file system is read-only \\(EROFS\\); {KEPT.format(1)}"
                                             "Mount its file system read-write"):
            saver.save(3)
        remount("rw")
        saver.save(4)
        assert [Path(p).name for p in checkpoint.checkpoint_paths(directory)] == ["ckpt-1", "ckpt-4"]


def assert_failed_cleanly(directory: Path, error: WriteError) -> None:
    """The one line, nothing half-written, no lock, and the previous checkpoint restorable."""
    assert str(error).startswith(f"cannot write {directory}/ckpt-18: no space left on the device (ENOSPC); "
                                 f"the latest good checkpoint, {directory}/ckpt-9, is kept. ")
    assert "\n" not in str(error)
    assert leftovers(directory) == [] and not (directory / checkpoint.LOCK_FILE).exists()
    with checkpoint.DirectoryLock(directory):  # released: another process could take it
        pass
    assert [Path(p).name for p in checkpoint.checkpoint_paths(directory)] == ["ckpt-9"]
    assert variables(directory / "ckpt-9")["step/.ATTRIBUTES/VARIABLE_VALUE"] == 9


def test_a_run_whose_disk_fills_stops_in_one_line_and_resumes_with_space(tmp_path, monkeypatch):
    """Saves at step 9 and (the epoch's end) 18; the second finds the disk full: a real one (a
    tmpfs with room for one 7.4 MB checkpoint of the book CNN) where it can be mounted, else
    TensorFlow's error injected."""
    with contextlib.ExitStack() as stack:
        remount = stack.enter_context(small_disk(tmp_path / "disk", "12m"))
        directory = tmp_path / "disk" / "run"
        if remount is None:
            directory = tmp_path / "ckpt"
            patched = stack.enter_context(monkeypatch.context())
            patched.setattr(tf.train.CheckpointManager, "save",
                            failing_save(enospc(f"{directory}/ckpt-18_temp/part-00000-of-00001"), steps=(18,)))
        config = make_config(tmp_path, checkpoint={"every_n_steps": 9, "dir": str(directory)}, summaries=False)
        with pytest.raises(WriteError) as raised:
            train.train_and_evaluate(config, tmp_path / "run")
        assert_failed_cleanly(directory, raised.value)
        if remount is not None:
            remount("size=40m")
        else:
            patched.undo()
        resumed = train.train_and_evaluate(config, tmp_path / "rerun")
        assert resumed["status"] == "resumed" and resumed["steps"] == 18
        assert np.isfinite(resumed["test_accuracy"])
        assert not (directory / checkpoint.LOCK_FILE).exists()


def test_the_lock_file_goes_with_the_lock_and_a_replaced_one_is_not_taken(tmp_path, monkeypatch):
    path = tmp_path / checkpoint.LOCK_FILE
    real_flock, calls = checkpoint.fcntl.flock, []

    def flock_after_a_release(fd, operation):
        """The first flock lands just after the owner released: the file we opened is gone."""
        calls.append(fd)
        if len(calls) == 1:
            path.unlink()
        return real_flock(fd, operation)

    monkeypatch.setattr(checkpoint.fcntl, "flock", flock_after_a_release)
    with checkpoint.DirectoryLock(tmp_path) as lock:
        assert len(calls) == 2 and os.path.samestat(os.fstat(lock._fd), os.stat(path))
        assert path.read_text() == str(os.getpid())
    assert not path.exists()


def test_a_lock_that_cannot_record_its_pid_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def refuse(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        patched.setattr(checkpoint.os, "write", refuse)
        with pytest.raises(WriteError, match=r"/\.lock: no space left on the device \(ENOSPC\); nothing in the "
                                             r"directory was changed\. Free space there"):
            checkpoint.DirectoryLock(tmp_path).__enter__()
    assert list(tmp_path.iterdir()) == []
    with checkpoint.DirectoryLock(tmp_path):  # not left locked
        pass


def test_tensorboard_events_that_cannot_be_flushed_before_a_save_are_one_line(tmp_path, monkeypatch):
    state = tiny_state()
    saver = Checkpointer(state, tmp_path, compose().checkpoint)
    saver.save(1)

    def flush():
        raise tf.errors.ResourceExhaustedError(None, None, "events.out.tfevents.1; No space left on device\n"
                                               "\tFailed to flush 11 events [Op:FlushSummaryWriter]")

    monkeypatch.setattr(tf.summary, "flush", flush)
    with pytest.raises(WriteError, match=f"^cannot write {tmp_path}/tensorboard: no space left on the device "
                                         f"\\(ENOSPC\\); {KEPT.format(1)}"):
        saver.save(2)
    assert [Path(p).name for p in checkpoint.checkpoint_paths(tmp_path)] == ["ckpt-1"]
