"""The checkpoint directory's lock, where the system has file locking and where it has not."""

import logging

import pytest

from cnn.checkpointing import directory as checkpoint
from cnn.errors import CheckpointError


def test_a_second_lock_in_this_process_is_refused(tmp_path):
    with checkpoint.DirectoryLock(tmp_path):
        with pytest.raises(CheckpointError, match="in use by another training process"):
            with checkpoint.DirectoryLock(tmp_path):
                pass
    with checkpoint.DirectoryLock(tmp_path):  # released on exit
        pass


def test_without_file_locking_the_directory_is_used_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(checkpoint, "fcntl", None)  # as on Windows
    with caplog.at_level(logging.WARNING, logger="cnn.checkpointing.directory"):
        with checkpoint.DirectoryLock(tmp_path):
            assert (tmp_path / checkpoint.LOCK_FILE).read_text().isdigit()
    assert "no file locking on this system" in caplog.text
