"""Where a study lives, and the trials a dead worker left behind.

`sqlite:///path.db` (one machine), any other SQLAlchemy URL (`postgresql://...`,
`mysql://...`, several machines) or `journal:<path>` (Optuna's journal file, its
recommended storage for many processes on one shared file system). Several processes that
open the same new SQLite file at once race to create its tables: the loser retries.

Each worker marks its running trials alive every `heartbeat_seconds` (a user attribute, so
it works on every storage and with ask/tell, which Optuna's own heartbeat does not); a
running trial not marked for `grace_seconds` was left by a worker that died, and is failed
and enqueued again with the same parameters (so its job resumes from its checkpoints).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

log = logging.getLogger("cnn.sweeps")

HEARTBEAT = "heartbeat"  # user attribute: when a worker last marked the trial alive (time.time())
RETRY_OF = "retry_of"  # user attribute: the trial this one repeats
SQLITE, JOURNAL = "sqlite:///", "journal:"


def open_storage(url: str):
    """The storage at `url` (its directory created for SQLite and journal files)."""
    if url.startswith(JOURNAL):
        path = Path(url[len(JOURNAL):]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if url.startswith(SQLITE):
        Path(url[len(SQLITE):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(10):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}
                                              if url.startswith(SQLITE) else None)
        except Exception:  # noqa: BLE001  (a concurrent first creation of the tables: try again)
            if attempt == 9:
                raise
            time.sleep(0.2 * (attempt + 1))


def requeue_stale(study: optuna.Study, grace_seconds: float) -> list[int]:
    """Fails the running trials no worker marked alive for `grace_seconds`, and enqueues each
    again with its parameters; returns their numbers. Two workers racing for one: one wins."""
    now, requeued = time.time(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = trial.user_attrs.get(HEARTBEAT, trial.datetime_start.timestamp() if trial.datetime_start else now)
        if now - beat < grace_seconds:
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):  # another worker failed it first
            continue
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
        requeued.append(trial.number)
    return requeued


class Heartbeat:
    """A thread marking `trials` (numbers) alive every `seconds` while the context is open."""

    def __init__(self, study: optuna.Study, trials: list[int], seconds: float):
        self.study, self.trials, self.seconds = study, trials, seconds
        self.done = threading.Event()

    def beat(self) -> None:
        storage, study_id = self.study._storage, self.study._study_id
        for number in self.trials:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
            try:
                storage.set_trial_user_attr(trial_id, HEARTBEAT, time.time())
            except RuntimeError:  # finished meanwhile (the job told its own result)
                continue

    def _run(self) -> None:
        while not self.done.wait(self.seconds):
            try:
                self.beat()
            except Exception as e:  # noqa: BLE001  (a busy database: the next beat will do)
                log.debug("heartbeat failed: %s", e)

    def __enter__(self) -> "Heartbeat":
        self.beat()
        self.thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(timeout=10)
