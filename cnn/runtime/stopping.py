"""Stopping politely: Ctrl-C (SIGINT) and SIGTERM finish the current step, save, and exit.

While a run trains, `StopRequest` catches SIGINT and SIGTERM (and SIGUSR1/SIGUSR2
where a launcher such as submitit handles them: it is called after the save, and
requeues the job). The signal is read by a watcher thread, not by a Python handler:
Python runs handlers only between its own bytecodes, and the main thread spends
the training inside TensorFlow's compiled loop. The watcher sets a variable that
the compiled loop reads before each step, so the loop ends after the step it is
in; the trainer then saves a checkpoint and raises `Stopped`. A second signal ends
the process at once, without saving (the last checkpoint stays as it was).

Exit statuses (train.py): 130 after SIGINT, 143 after SIGTERM (128 + the signal's
number, as a shell reports a process the signal killed), 138/140 after SIGUSR1/2
when the launcher's handler does not exit itself.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Callable, Optional

from cnn.errors import CnnError

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
LAUNCHER_SIGNALS = tuple(getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2") if hasattr(signal, name))
WATCHED_SIGNALS = (signal.SIGTERM, signal.SIGINT) + LAUNCHER_SIGNALS  # the first one seen wins, in this order


class Stopped(CnnError):
    """The run stopped on a signal after saving; `exit_code` is 128 + the signal's number."""

    def __init__(self, message: str, signum: int, chained: Optional[Callable] = None):
        super().__init__(message)
        self.signum, self.chained = signum, chained
        self.exit_code = 128 + signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequest:
    """A context in which SIGINT and SIGTERM request a polite stop instead of killing the run.

    `signum`: the first signal received (0: none). `variable`: a tf.Variable(bool) set when one
    arrives, for a compiled loop to read before each step (None: checked between calls only).
    Outside the main thread (where signals cannot be caught) it does nothing.
    """

    def __init__(self, variable=None):
        self.signum = 0
        self.variable = variable
        self._previous: dict = {}
        self._active = False

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            return self
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        watched = STOP_SIGNALS + tuple(s for s in LAUNCHER_SIGNALS if callable(signal.getsignal(s)))
        for signum in watched:
            self._previous[signum] = signal.signal(signum, _wake_only)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="stop-request", daemon=True)
        self._thread.start()
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        if not self._active:
            return
        self._active = False
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        os.close(self._write)  # the watcher reads end-of-file and ends
        self._thread.join(timeout=5)
        os.close(self._read)

    def chained(self) -> Optional[Callable]:
        """The launcher's own handler of the signal received (submitit's requeue), to call after
        the save; None for SIGINT and SIGTERM."""
        handler = self._previous.get(self.signum)
        return handler if self.signum in LAUNCHER_SIGNALS and callable(handler) else None

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read, 1)
            except OSError:
                return
            if not data:
                return
            signum = data[0]
            if signum not in self._previous:
                continue
            if self.signum:  # the second one: now
                sys.stderr.write(f"error: {signal_name(signum)} again: stopped at once, without saving; "
                                 "the run's last checkpoint is as it was\n")
                sys.stderr.flush()
                os._exit(128 + signum)
            self.signum = signum
            if self.variable is not None:
                self.variable.assign(True)
            log.warning("%s: finishing the current step, then saving and stopping (%s again: stop at once)",
                        signal_name(signum), signal_name(signum))


def _wake_only(signum, frame) -> None:
    """The Python-level handler: the watcher thread, woken through the wakeup fd, does the work."""
