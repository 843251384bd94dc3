"""The checkpoint directory: what `tf.train.CheckpointManager` does not do itself.

A lock against a second writer (`DirectoryLock`), a record of the run identity
that refuses mismatched weights (`run.json`), and restoring the newest usable
checkpoint, falling back past a corrupt latest one (`restore_latest`). What is
saved is `cnn.training.state.TrainState`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

import tensorflow as tf

from cnn.errors import CheckpointError, WriteError
from cnn.reporting.history import atomic_write

log = logging.getLogger(__name__)

IDENTITY_FILE = "run.json"
LOCK_FILE = ".lock"
BEST_DIR = "best"  # the best checkpoint by the validation monitor, out of the rotation's reach
# Identity keys added after runs were recorded without them, with the value those runs had.
RECORDED_WITHOUT = {"dataset.validation_split": 0.0}

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def _differences(saved: dict, current: dict) -> list[str]:
    """The identity keys whose values differ. Keys only the saved record has are not compared:
    the current rules say which keys matter, and an older record may also list keys that cannot
    change a run (model.size of a single model); a key that mattered comes with one that differs."""
    saved = {**RECORDED_WITHOUT, **saved}
    return [f"{k}: {saved.get(k, '<absent>')!r} there, {current[k]!r} here"
            for k in sorted(current) if saved.get(k, "<absent>") != current[k]]


def check_identity(directory: Path, identity: dict) -> None:
    """Raises CheckpointError when `directory` was written by a run of another identity."""
    path = directory / IDENTITY_FILE
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())["identity"]
        if not isinstance(saved, dict):
            raise TypeError("'identity' is not an object")
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); it records which run owns {directory}. "
                              "Fix it or pass checkpoint.dir=<another dir>") from None
    diff = _differences(saved, identity)
    if diff:
        raise CheckpointError(f"{directory} holds checkpoints of a different run ({'; '.join(diff)}); "
                              "refusing to load mismatched weights. Pass checkpoint.dir=<another dir>, "
                              "or the settings of that run")


class DirectoryLock:
    """An exclusive lock on a checkpoint directory, held by one process.

    flock is released by the kernel when its owner dies, so a killed run never
    leaves a stale lock behind; the file records the owner's pid for the message,
    and is removed when the lock is released (on an error too). Where flock does
    not exist (Windows), the directory is used unlocked, with a warning.
    """

    def __init__(self, directory: Path):
        self.path = directory / LOCK_FILE
        self._fd: Optional[int] = None

    def __enter__(self):
        if fcntl is None:
            log.warning("no file locking on this system: nothing stops a second process "
                        "from training into %s at the same time", self.path.parent)
        fd = None
        try:  # a read-only or full file system: one line, and no lock left held
            fd = self._locked() if fcntl is not None else self._open()
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as e:
            if fd is not None:
                self._release(fd)
            raise WriteError.of(self.path, e, "nothing in the directory was changed",
                                instead="checkpoint.dir=<a writable directory>") from None
        self._fd = fd
        return self

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def _locked(self) -> int:
        """A descriptor of the lock file, flocked. A file removed (by its owner's release) between
        our open and our flock is not the lock any more: open the one in its place."""
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise CheckpointError(f"{self.path.parent} is in use by another training process "
                                      f"(pid {owner}); wait for it to finish or stop it") from None
            try:
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _release(self, fd: int) -> None:
        """Removes the file while still holding the lock (so no other process locks it meanwhile),
        then closes it, which releases the flock; without flock (Windows), after closing it."""
        if fcntl is not None:
            self._remove()
        os.close(fd)
        if fcntl is None:
            self._remove()

    def _remove(self) -> None:
        with contextlib.suppress(OSError):  # gone with its directory, or a read-only file system
            self.path.unlink()

    def __exit__(self, *exc):
        self._release(self._fd)
        self._fd = None


def checkpoint_paths(directory: Path) -> list[str]:
    """Checkpoint prefixes in `directory`, oldest first, from the files themselves.

    Not from the `checkpoint` state file alone, so a damaged state file does not
    hide the checkpoints that are still good.
    """
    prefixes = [p.with_suffix("") for p in directory.glob("ckpt-*.index")]
    numbered = [(int(p.name.split("-")[1]), str(p)) for p in prefixes if p.name.split("-")[1].isdigit()]
    return [path for _, path in sorted(numbered)]


def restore(checkpoint: tf.train.Checkpoint, path: str) -> None:
    """Restores `path` into `checkpoint`, checking that every saved value found its variable."""
    checkpoint.restore(path).assert_consumed()


def restore_latest(checkpoint: tf.train.Checkpoint, directory: Path, repair: bool = True) -> Optional[str]:
    """Restores the newest usable checkpoint in `directory`, falling back past broken ones.

    With `repair` (only for a directory this process has locked), broken checkpoints
    newer than the restored one are moved into `broken/`, so the next save cannot be
    ordered behind them. Returns the restored path, or None when the directory has
    no checkpoint. Raises CheckpointError when none can be restored (moving nothing).
    """
    paths = checkpoint_paths(directory)
    broken = []
    for path in reversed(paths):
        try:
            restore(checkpoint, path)
        except Exception as e:  # a damaged file fails in many ways (DataLossError, IndexError, ...)
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.warning("checkpoint %s is unusable (%s); trying the one before it", path, reason[:300])
            broken.append(path)
            continue
        if repair:
            for bad in broken:
                _move_into(directory / "broken", bad)
            _write_state_file(directory)
        return path
    if paths:
        raise CheckpointError(f"no usable checkpoint in {directory} ({len(paths)} tried); "
                              "pass resume=never to start over (the old ones are moved aside)")
    return None


def _move_into(folder: Path, prefix: str) -> None:
    folder.mkdir(exist_ok=True)
    for f in Path(prefix).parent.glob(Path(prefix).name + ".*"):
        os.replace(f, folder / f.name)
    log.warning("moved the unusable checkpoint %s into %s", prefix, folder)


def _write_state_file(directory: Path) -> None:
    """Rewrites TensorFlow's `checkpoint` state file (a CheckpointState text proto) from the
    checkpoint files present, when it is missing, unreadable or lists other files."""
    names = [Path(p).name for p in checkpoint_paths(directory)]
    if not names:
        return
    try:
        state = tf.train.get_checkpoint_state(str(directory))
        listed = [Path(p).name for p in state.all_model_checkpoint_paths] if state else []
    except (tf.errors.OpError, ValueError):  # garbled text proto
        listed = []
    if listed != names:
        lines = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
        atomic_write(directory / "checkpoint", "\n".join(lines) + "\n")


def move_aside_contents(directory: Path) -> Path:
    """Moves everything in a checkpoint directory (but its lock) to a new sibling; returns it."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = directory.with_name(f"{directory.name}.old-{stamp}")
    n = 1
    while target.exists():
        target = directory.with_name(f"{directory.name}.old-{stamp}-{n}")
        n += 1
    target.mkdir()
    for entry in directory.iterdir():
        if entry.name != LOCK_FILE:
            os.replace(entry, target / entry.name)
    return target


def write_identity(directory: Path, identity: dict, run_name: str) -> None:
    path = directory / IDENTITY_FILE
    if not path.exists():
        atomic_write(path, json.dumps({"run_name": run_name, "identity": identity}, indent=2) + "\n")


def keep_best(directory: Path, step: int) -> Optional[str]:
    """Makes `directory`/best hold the checkpoint of `step`, and only it; returns its prefix.

    The files are hard links to (or, where links fail, copies of) the run's own `ckpt-<step>`,
    so the rotation of the latest checkpoints never deletes the best one. Idempotent: a run
    killed between its save and this call repairs it on resume. Returns None (with a
    warning) when neither copy of the checkpoint exists.
    """
    best = directory / BEST_DIR
    target = best / f"ckpt-{step}"
    if not Path(str(target) + ".index").exists():
        sources = sorted(directory.glob(f"ckpt-{step}.*"), key=lambda f: f.suffix == ".index")  # index last
        if not any(f.suffix == ".index" for f in sources):
            log.warning("the best checkpoint (step %d) is neither in %s nor in %s", step, directory, best)
            return None
        try:
            best.mkdir(exist_ok=True)
            for source in sources:
                _place(source, best / source.name)
        except OSError as e:  # what was best stays; the new files, without their index, go
            for placed in best.glob(f"ckpt-{step}.*"):
                placed.unlink(missing_ok=True)
            previous = best_checkpoint(directory)
            kept = (f"the previous best checkpoint, {previous}, is kept" if previous
                    else "no best checkpoint was kept before")
            raise WriteError.of(target, e, kept) from None
    for old in best.glob("ckpt-*"):
        if not old.name.startswith(f"ckpt-{step}."):
            old.unlink()
    atomic_write(best / "checkpoint", f'model_checkpoint_path: "{target.name}"\n'
                                      f'all_model_checkpoint_paths: "{target.name}"\n')
    return str(target)


def _place(source: Path, target: Path) -> None:
    """`target` becomes a hard link to (or a copy of) `source`, whole or not at all."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def best_checkpoint(directory: Path) -> Optional[str]:
    """The prefix of the run's best checkpoint (in `directory`/best), or None."""
    paths = checkpoint_paths(directory / BEST_DIR)
    return paths[-1] if paths else None


def make_manager(state, directory: Path, keep: int) -> tf.train.CheckpointManager:
    """A CheckpointManager saving `state` (a TrainState) as `ckpt-<step>` files into `directory`,
    keeping the last `keep`."""
    _write_state_file(directory)  # also repairs a garbled state file
    return tf.train.CheckpointManager(state.checkpoint, str(directory), max_to_keep=keep,
                                      step_counter=state.step)
