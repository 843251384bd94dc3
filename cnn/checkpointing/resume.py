"""The resume policy, written once: the run's own latest checkpoint, else `resume=<path>`,
else scratch; the log says which happened. Also: claiming (creating and locking) the run's
directory, restoring the checkpoint `mode=eval` and `mode=export` read, and recognizing a
run that has finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from cnn.checkpointing.directory import (LOCK_FILE, DirectoryLock, best_checkpoint, check_identity,
                                         checkpoint_paths, move_aside_contents, restore, restore_latest)
from cnn.config import Config, weights_identity
from cnn.errors import CheckpointError
from cnn.reporting import history

if TYPE_CHECKING:
    from cnn.training.state import TrainState

log = logging.getLogger("cnn.run")  # the name these lines have always carried


def finished_results(config: Config, directory: Path, ident: dict) -> Optional[dict]:
    """The saved results of this run if it already trained to `config.epochs` (or early stopping,
    with the same settings, ended it before) and nothing has been saved since; else None. Raises CheckpointError for another run's directory."""
    results = history.read_json(directory / "results.json")
    if config.resume == "never" or not results or "test_accuracy" not in results:
        return None
    if config.resume != "auto":
        given_checkpoint(config.resume)
    stopped_here = results.get("early_stopping") == dataclasses.asdict(config.early_stopping)
    if results.get("epochs") != config.epochs and not (stopped_here and results["epochs"] <= config.epochs):
        return None
    check_identity(directory, ident)
    paths = checkpoint_paths(directory)
    return results if paths and results.get("checkpoint") == paths[-1] else None


@contextlib.contextmanager
def claimed(directory: Path) -> Iterator[None]:
    """Creates and locks the run's checkpoint directory for the duration of the run.

    A run rejected before it wrote anything there (a bad `resume=`, another run's
    checkpoints) leaves no empty directory behind.
    """
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = DirectoryLock(directory)
    except OSError as e:
        raise CheckpointError(f"checkpoint.dir={directory}: cannot use it ({e})") from None
    try:
        with lock:
            yield
    except BaseException:
        if created and all(entry.name == LOCK_FILE for entry in directory.iterdir()):
            shutil.rmtree(directory, ignore_errors=True)
        raise


def given_checkpoint(resume: str) -> Path:
    """The checkpoint directory or prefix `resume=<path>` names; CheckpointError (one line)
    when it names none, whether or not the run has checkpoints of its own."""
    given = Path(resume).expanduser()
    if given.is_dir():
        if not checkpoint_paths(given):
            raise CheckpointError(f"resume={resume}: no checkpoint in that directory")
        return given
    if not Path(str(given) + ".index").exists():
        raise CheckpointError(f"resume={resume}: no such checkpoint (use auto, never, a checkpoint "
                              "directory or a prefix like <dir>/ckpt-600)")
    return given


def restore_given(state: TrainState, resume: str, ident: dict) -> str:
    """Restores `resume`: a checkpoint prefix (<dir>/ckpt-600) or a directory (its latest).
    The directory is another run's: it is read, never repaired, and must match this run's
    identity but for batch-norm statistics settings (it is read for its weights)."""
    given, ident = given_checkpoint(resume), weights_identity(ident)
    if given.is_dir():
        check_identity(given, ident)
        return restore_latest(state.checkpoint, given, repair=False)  # it has one: given_checkpoint
    check_identity(given.parent, ident)
    try:
        restore(state.checkpoint, str(given))
    except Exception as e:  # damaged, or written by another model
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise CheckpointError(f"resume={resume}: cannot restore it ({reason})") from None
    return str(given)


def restore_or_start(config: Config, state: TrainState, directory: Path, ident: dict, owner: bool = True) -> str:
    """Applies `resume`: the run's own latest checkpoint, else a given path, else scratch.

    `resume=<path>` seeds a run whose own directory is still empty; once the run has
    saved, rerunning the command continues from its own checkpoints (the path must still
    name a checkpoint: a mistyped one is refused, not ignored).
    `owner`: this process writes the directory (False: a multi-worker run's other workers,
    which read the chief's checkpoints and change nothing there).
    Returns how the run begins, "resumed" or "started"; logs which checkpoint, if any.
    """
    if config.resume == "never":
        if owner and any(entry.name != LOCK_FILE for entry in directory.iterdir()):
            log.info("resume=never: moved what was in %s to %s", directory, move_aside_contents(directory))
        log.info("starting from scratch")
        return "started"
    if config.resume != "auto":
        given_checkpoint(config.resume)
    if directory.is_dir():
        check_identity(directory, ident)
    path = restore_latest(state.checkpoint, directory, repair=owner) if directory.is_dir() else None
    if path is not None:
        log.info("resumed from %s", path)
    elif config.resume != "auto":
        path = restore_given(state, config.resume, ident)
        log.info("started from %s (resume=%s)", path, config.resume)
    else:
        log.info("no checkpoint in %s: starting from scratch", directory)
    return "started" if path is None else "resumed"


def restore_chosen(state, directory: Path, choice: Optional[str], mode: str = "eval") -> tuple[str, str]:
    """Restores the run's best checkpoint (choice "best"), its latest ("latest"), or with None
    the best when the run keeps one, else the latest. Returns (path, "best" or "latest")."""
    best = best_checkpoint(directory) if directory.is_dir() else None
    if choice == "best" and best is None:
        raise CheckpointError(f"checkpoint.eval=best: {directory} has no best checkpoint (it is kept in best/ by "
                              "runs with dataset.validation_split > 0, from their first epoch on); pass "
                              "checkpoint.eval=latest")
    if best is not None and choice != "latest":
        restore(state.checkpoint, best)
        return best, "best"
    path = restore_latest(state.checkpoint, directory, repair=False) if directory.is_dir() else None
    if path is None:
        raise CheckpointError(f"mode={mode}: no checkpoint in {directory}; train first "
                              "(same settings, mode=train) or pass resume=<checkpoint path>")
    return path, "latest"
