"""metrics.csv, results.json and the figures written whole or not at all: a write that fails
(a full disk, a quota, no permission, a read-only file system) keeps the old file, leaves no
temporary one, and says so in one line."""

import errno
import os
from pathlib import Path

import pytest

from cnn.errors import WriteError
from cnn.reporting import history, plots, results

ROWS = [{"epoch": 1, "step": 18, "loss": 1.5, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.7}]


def refuse(code: int):
    def write(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return write


@pytest.mark.parametrize("code,reason,remedy", [
    (errno.ENOSPC, r"no space left on the device \(ENOSPC\)", "Free space there"),
    (errno.EDQUOT, r"the disk quota is exceeded \(EDQUOT\)", "Free space within the quota"),
    (errno.EACCES, r"permission denied \(EACCES\)", "Make it writable"),
    (errno.EROFS, r"the file system is read-only \(EROFS\)", "Mount its file system read-write"),
], ids=["ENOSPC", "EDQUOT", "EACCES", "EROFS"])
def test_a_failed_rename_keeps_the_old_file_and_leaves_no_temporary_one(tmp_path, monkeypatch, code, reason, remedy):
    path = tmp_path / "metrics.csv"
    history.write_rows(path, ROWS)
    before = path.read_text()
    monkeypatch.setattr(os, "replace", refuse(code))
    with pytest.raises(WriteError, match=f"^cannot write {path}: {reason}; the previous metrics.csv is kept. "
                                         f"{remedy} and rerun the command$"):
        history.write_rows(path, ROWS + ROWS)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_a_write_failing_half_way_leaves_nothing_of_itself(tmp_path, monkeypatch):
    def half_then_full(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[:5])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(WriteError, match=r"results\.json: no space left .*; no half-written file is left\. "):
        results.write_results({"status": "started"}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_figure_that_cannot_be_written_keeps_the_previous_one(tmp_path, monkeypatch):
    path = plots.learning_curves(ROWS, tmp_path / "learning_curves.png")
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")
    from matplotlib.figure import Figure

    real = Figure.savefig

    def savefig_then_full(fig, fname, **kwargs):
        real(fig, fname, **kwargs)
        Path(fname).write_bytes(Path(fname).read_bytes()[:100])  # a truncated PNG, then the error
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", savefig_then_full)
    with pytest.raises(WriteError, match=r"learning_curves\.png: no space left on the device \(ENOSPC\); "
                                         r"the previous learning_curves\.png is kept"):
        plots.learning_curves(ROWS + ROWS, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learning_curves.png"]


def test_an_error_other_than_the_disks_is_raised_as_it_is_and_leaves_no_temporary_file(tmp_path):
    with pytest.raises(TypeError):
        with history.replacing(tmp_path / "x.json") as tmp:
            tmp.write_text("partial")
            raise TypeError("not a write failure")
    assert list(tmp_path.iterdir()) == []


def test_a_tensorflow_writers_error_naming_the_errno_is_a_write_error_too(tmp_path):
    class ResourceExhaustedError(Exception):  # as tf.errors reports a file system's errno: its text
        pass

    with pytest.raises(WriteError, match=r"events: no space left on the device \(ENOSPC\); no half-written file"):
        with history.replacing(tmp_path / "events") as tmp:
            tmp.write_bytes(b"\0")
            raise ResourceExhaustedError(f"{tmp}; No space left on device [Op:WriteSummary]")
    assert list(tmp_path.iterdir()) == []
