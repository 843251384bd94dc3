"""What a command prints: our lines, not TensorFlow's C++ start-up lines.

On a machine without a GPU, importing TensorFlow prints CUDA probing errors and
oneDNN notices (some through absl before its logging is set up, which
TF_CPP_MIN_LOG_LEVEL does not reach). Entry points call `import_tensorflow()`
first. Setting TF_CPP_MIN_LOG_LEVEL yourself (0 shows everything) turns this off.
Also here: the filter for a false retracing warning in in-process multiruns.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile


def import_tensorflow() -> None:
    """Imports TensorFlow with its C++ log lines hidden, unless TF_CPP_MIN_LOG_LEVEL is set.

    An import that fails prints what TensorFlow wrote, then raises. Later C++ log lines
    are hidden too (level 3); real errors still reach Python as exceptions.
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)  # the absl lines are written straight to file descriptor 2
        try:
            import tensorflow  # noqa: F401  (imported for its side effect: loaded, quietly)
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


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
