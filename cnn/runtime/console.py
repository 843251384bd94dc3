"""What a command prints: our lines, not TensorFlow's C++ start-up lines.

On a machine without a GPU, importing TensorFlow prints CUDA probing errors and
oneDNN notices, some through absl before its logging is set up: straight to file
descriptor 2, whatever TF_CPP_MIN_LOG_LEVEL says. `import_tensorflow()` captures
them and shows only what the user's TF_CPP_MIN_LOG_LEVEL would (0 everything, 1
no INFO, 2 no INFO or WARNING, 3 only FATAL); unset, none of them. Entry points,
and the modules of `cnn.training`, call it first. Also here: a default handler for
our log lines where nothing configured logging (the Python API, outside Hydra), and
the filter for a false retracing warning in in-process multiruns.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from typing import Optional

SEVERITIES = "IWEF"  # absl's INFO, WARNING, ERROR, FATAL: TF_CPP_MIN_LOG_LEVEL counts them from 0
HIDE_ALL = len(SEVERITIES)  # our level when the user set none: every start-up line hidden
# An absl line, "E0000 00:00:1796127156.385183   19739 cuda_platform.cc:52] ..." (before its
# logging is set up: no date, the seconds since 1970), or one in TensorFlow's own format,
# "2025-01-01 12:00:00.000000: I tensorflow/core/util/port.cc:113] ...".
ABSL_LINE = re.compile(r"(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+|"
                       r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF])) \S+:\d+\] ")
PYTHON_WARNING = re.compile(r"[^\s:][^:]*:\d+: \w+: ")  # "path.py:3: UserWarning: ...": not an absl line's
ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def user_log_level() -> Optional[int]:
    """The user's TF_CPP_MIN_LOG_LEVEL (0..3; a larger one as 3), or None when unset; a value
    that is not a whole number counts as 0 (everything shown)."""
    value = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    if value is None:
        return None
    return min(max(int(value), 0), 3) if value.strip().lstrip("-").isdigit() else 0


def shown_lines(text: str, level: int) -> str:
    """The lines of `text` (what TensorFlow wrote while importing) that `level` shows: an absl
    line, and the lines it continues onto, when its severity is at least `level`; absl's
    preamble only before a line shown; Python's own warnings, and lines before any absl line,
    always."""
    kept, keep, preamble = [], True, False
    for line in text.splitlines(keepends=True):
        if line.rstrip("\r\n") == ABSL_PREAMBLE:
            preamble = True
            continue
        header = ABSL_LINE.match(line)
        if header is not None:
            keep = SEVERITIES.index(header.group(1) or header.group(2)) >= level
            if keep and preamble:
                kept.append(ABSL_PREAMBLE + "\n")
                preamble = False
        elif PYTHON_WARNING.match(line):
            keep = True
        if keep:
            kept.append(line)
    return "".join(kept)


def import_tensorflow() -> None:
    """Imports TensorFlow, showing of its start-up lines what the user's TF_CPP_MIN_LOG_LEVEL
    shows (unset: none).

    Unset, TF_CPP_MIN_LOG_LEVEL becomes 3: later C++ log lines are hidden too (real errors
    still reach Python as exceptions). An import that fails prints all TensorFlow wrote,
    then raises.
    """
    if "tensorflow" in sys.modules:
        return
    level = user_log_level()
    if level == 0:  # everything, as TensorFlow prints it
        import tensorflow  # noqa: F401
        return
    if level is None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)  # the absl lines are written straight to file descriptor 2
        imported = False
        try:
            import tensorflow  # noqa: F401  (imported for its side effect: loaded, quietly)
            imported = True
        finally:
            sys.stderr.flush()  # Python's own writes to the capture first
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            sys.stderr.write(shown_lines(text, HIDE_ALL if level is None else level) if imported else text)
            sys.stderr.flush()


class _DefaultHandler(logging.StreamHandler):
    """The handler `default_logging` adds (told apart from the user's own)."""

    set_level = False  # whether it set the "cnn" logger's level, to undo with it


def default_logging() -> None:
    """Our INFO lines (the "cnn" loggers) on stderr, in Hydra's format, when nothing configured
    logging (the root logger has no handler: the Python API outside Hydra). On the root logger,
    as `logging.basicConfig` would put it (absl does, at TensorFlow's first log line); other
    loggers keep their levels. Once something else has configured logging, it goes again, so
    no line is shown twice."""
    root, ours = logging.getLogger(), logging.getLogger("cnn")
    added = [h for h in root.handlers if isinstance(h, _DefaultHandler)]
    if added and len(added) < len(root.handlers):
        for handler in added:
            root.removeHandler(handler)
            if handler.set_level:
                ours.setLevel(logging.NOTSET)
    if root.handlers:
        return
    handler = _DefaultHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)
        handler.set_level = True
    root.addHandler(handler)


# Functions each run compiles once; a process that runs several jobs (an in-process
# multirun) compiles them again per job, which TensorFlow's frequent-retracing detector
# (keyed on the Python source, not the function object) reports from the fifth job on.
_PER_RUN_FUNCTIONS = ("make_train_loop.<locals>.loop", "make_evaluate.<locals>.eval_step")


class _PerRunRetracing(logging.Filter):
    """Drops TensorFlow's retracing warning for the functions each run traces once."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message
                    and any(name in message for name in _PER_RUN_FUNCTIONS))


def hide_per_run_retracing_warnings() -> None:
    """Installs the filter on the "tensorflow" logger, once."""
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _PerRunRetracing) for f in logger.filters):
        logger.addFilter(_PerRunRetracing())
