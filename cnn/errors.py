"""Errors the user can fix. Each message is one line: what is wrong and how to fix it.

No TensorFlow here: the entry point catches these without importing it.
"""

from __future__ import annotations

import errno
import os
from typing import Optional


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


# What a failed write's errno means, and what the user can do about it.
WRITE_ERRNOS = {
    errno.ENOSPC: ("no space left on the device", "free space there"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space within the quota"),
    errno.EACCES: ("permission denied", "make it writable"),
    errno.EPERM: ("operation not permitted", "make it writable"),
    errno.EROFS: ("the file system is read-only", "mount its file system read-write"),
    errno.EFBIG: ("the file is too large for the file system", "write it to another file system"),
    errno.EIO: ("an input/output error (the device may be failing)", "check the device"),
}


def errno_of(error: BaseException) -> Optional[int]:
    """The errno of a failed write: an OSError's own, or one a TensorFlow error names (TensorFlow
    reports the file system's errno as its text, `strerror`); None if neither says."""
    if isinstance(error, WriteError):
        return error.errno
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno
    text = str(error)
    return next((code for code in WRITE_ERRNOS if os.strerror(code) in text), None)


class WriteError(CnnError):
    """A file or directory could not be written (a full disk, a quota, no permission, a read-only
    file system); made by `WriteError.of`, whose message names the path, what the errno means
    and what was kept."""

    errno: Optional[int] = None
    reason: str = ""

    @classmethod
    def of(cls, path, error: BaseException, kept: str, instead: Optional[str] = None) -> "WriteError":
        """The error of writing `path` failing with `error` (an OSError, a TensorFlow error or a
        WriteError of a file inside it); `kept`: what is still there, `instead`: another setting."""
        code = errno_of(error)
        reason = error.reason if isinstance(error, WriteError) else _reason(error, code)
        remedy = WRITE_ERRNOS.get(code, (None, "fix the cause"))[1]
        fix = f"{remedy[0].upper()}{remedy[1:]} and rerun the command" + (f", or pass {instead}" if instead else "")
        made = cls(f"cannot write {path}: {reason}; {kept}. {fix}")
        made.errno, made.reason = code, reason
        return made


def _reason(error: BaseException, code: Optional[int]) -> str:
    """`error` in words: what its errno means (and the errno's name), else its first line."""
    if code in WRITE_ERRNOS:
        return f"{WRITE_ERRNOS[code][0]} ({errno.errorcode[code]})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f" ({errno.errorcode[code]})" if code in errno.errorcode else "")
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text.strip().splitlines()[0][:200]
