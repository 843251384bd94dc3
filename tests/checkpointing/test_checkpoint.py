"""The checkpoint directory's lock, where the system has file locking and where it has not; what
`resume=<path>` may name."""

import logging

import pytest

from cnn.checkpointing import directory as checkpoint
from cnn.checkpointing.resume import given_checkpoint
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


def test_resume_must_name_a_checkpoint_prefix_or_a_directory_with_one(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ckpt-5.index").write_bytes(b"")
    assert given_checkpoint(str(tmp_path / "run" / "ckpt-5")) == tmp_path / "run" / "ckpt-5"
    assert given_checkpoint(str(tmp_path / "run")) == tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"resume=.*ckpt-6: no such checkpoint \(use auto, never"):
        given_checkpoint(str(tmp_path / "run" / "ckpt-6"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"resume=.*empty: no checkpoint in that directory"):
        given_checkpoint(str(tmp_path / "empty"))
