"""The job's output directory: a one-line error for one Hydra cannot create, and nothing left
behind by a run rejected before it wrote anything (its `outputs/<date>/<time>/`, a sweep's
`multirun.yaml`)."""

from __future__ import annotations

import logging
import shutil
import sys
import traceback
from pathlib import Path
from typing import Optional

log = logging.getLogger("train")

def existing_run_dirs(argv: list[str]) -> set[Path]:
    """The directories a `hydra.run.dir=` override of `argv` names that exist already (before
    Hydra writes there): a rejected run leaves them, emptied of what Hydra wrote."""
    named = [arg.split("=", 1)[1] for arg in argv if arg.startswith("hydra.run.dir=")]
    return {Path(d).resolve() for d in named if Path(d).is_dir()}


def reject(message: str, hydra_config, existing: set[Path] = frozenset()) -> None:
    """Ends a single run that failed with a CnnError: `error: <message>` on stderr, as every
    error before a run starts, exit 1. The output directory Hydra made for it goes when the
    run wrote nothing there, not even a log line (a rejected run); one that was there before
    (in `existing`) stays, without Hydra's files; one that holds more keeps the line in its log."""
    print(f"error: {message}", file=sys.stderr)
    output_dir, cwd = Path(hydra_config.runtime.output_dir), Path(hydra_config.runtime.cwd)
    if holds_only_hydras_own(hydra_config) and output_dir.resolve() != cwd.resolve():
        logging.shutdown()  # its log file closed first
        if output_dir.resolve() in existing:
            shutil.rmtree(output_dir / hydra_config.output_subdir, ignore_errors=True)
            (output_dir / f"{hydra_config.job.name}.log").unlink(missing_ok=True)
        else:
            remove(output_dir, cwd)
    else:
        log_to_file(message)
    sys.exit(1)


def holds_only_hydras_own(hydra_config) -> bool:
    """Whether the job's output directory holds only what Hydra writes there: its `.hydra/`
    and the job's log, still empty (no line of this run's, nor of an earlier one's)."""
    output_dir = Path(hydra_config.runtime.output_dir)
    log_file = output_dir / f"{hydra_config.job.name}.log"
    try:
        entries = {entry.name for entry in output_dir.iterdir()}
        return entries <= {hydra_config.output_subdir, log_file.name} and not (
            log_file.exists() and log_file.stat().st_size > 0)
    except OSError:
        return False


def log_to_file(message: str) -> None:
    """`message` as an ERROR line in the job's log files only (the console has its `error:` line)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def remove(directory: Path, cwd: Path) -> None:
    """Removes `directory`, and the folders above it inside `cwd` it leaves empty (Hydra's
    outputs/<date>/)."""
    shutil.rmtree(directory, ignore_errors=True)
    for parent in directory.resolve().parents:
        if parent == cwd.resolve() or cwd.resolve() not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:  # not empty: another run's
            break


def setup_error(error: BaseException, job_code) -> Optional[str]:
    """One line for an output directory Hydra cannot create or write (before the job ran:
    `hydra.run.dir` under a file, on a read-only place), or None for another error."""
    cause = error if isinstance(error, OSError) else error.__cause__  # logging's ValueError over it
    if not isinstance(cause, OSError) or cause.filename is None or in_job(error, job_code):
        return None  # not about a path (a closed pipe), or our own
    multirun = any(arg in ("-m", "--multirun") or arg.replace(" ", "") == "hydra.mode=MULTIRUN"
                   for arg in sys.argv[1:])
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    return (f"cannot create or write the output directory: {cause.filename}: "
            f"{cause.strerror or type(cause).__name__}; pass {key}=<a directory you can write>")


def in_job(error: BaseException, body) -> bool:
    """Whether `error` came out of a job (`body`: the code of the job function), not from Hydra around it."""
    return any(frame.f_code is body for frame, _ in traceback.walk_tb(error.__traceback__))


def remove_rejected_sweep(error: BaseException, started: float) -> None:
    """Removes the sweep directory of a multirun rejected before its first job (a job's config
    that does not compose: `-m lr=abc,0.1`), when it holds only the multirun.yaml Hydra wrote
    there. Hydra keeps the sweep's config only in its sweeper, found in the error's frames."""
    from hydra.plugins.sweeper import Sweeper

    sweepers = [frame.f_locals.get("self") for frame, _ in traceback.walk_tb(error.__traceback__)]
    sweeper = next((s for s in sweepers if isinstance(s, Sweeper) and getattr(s, "config", None) is not None), None)
    if sweeper is None:
        return
    sweep_dir = Path(sweeper.config.hydra.sweep.dir)
    try:
        written = (sweep_dir / "multirun.yaml").stat().st_mtime >= started - 1
        if written and [entry.name for entry in sweep_dir.iterdir()] == ["multirun.yaml"]:
            remove(sweep_dir, Path.cwd())
    except OSError:
        pass  # not there, or not ours to remove


def write_failure(error: BaseException) -> Optional[str]:
    """One line for a write the file system refused where no step says what it kept (TensorBoard's
    events written as a run goes, an evaluation's files), or None for another error. The
    checkpoints are written (and refused) apart, so those saved are whole."""
    import errno

    from cnn.errors import WriteError, errno_of

    # Only what a write alone meets: a denied or failing read (EACCES, EIO) is not a write's to report.
    if errno_of(error) not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
        return None
    where = getattr(error, "filename", None) or (getattr(error, "message", None) or str(error)).splitlines()[0][:200]
    return str(WriteError.of(where, error, "the checkpoints saved so far are kept"))
