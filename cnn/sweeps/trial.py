"""A search's trial, seen from its job: each epoch's monitored value reported to the trial,
and the trial pruned when the study's pruner says so.

The sweeper (cnn/sweeps/search.py) gives each job `hydra.sweeper.trial=<number>` and the
study's name; the job reaches its trial through the storage, so this works in the
sweeper's process and in a launcher's own (joblib, submitit). A pruned trial stops at that
epoch's end, with the epoch's checkpoint saved; its results.json says `pruned`, and so does
the study, so a rerun of the search does not train it again.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from hydra.utils import instantiate
from optuna.trial import TrialState

from cnn.sweeps.search import RUN_DIR, quiet_optuna
from cnn.sweeps.storage import open_storage
from cnn.training.actions import EpochEnd


class ReportToTrial:
    """An epoch-end action: `monitor`'s value to the trial, at the epoch's number; ends the
    run when the pruner prunes it."""

    name = "search"

    def __init__(self, sweeper, monitor: str, workdir: Path):
        quiet_optuna()
        pruner = (instantiate(sweeper.pruner) if sweeper.get("pruner") and sweeper.pruner.get("_target_")
                  else optuna.pruners.NopPruner())
        self.study = optuna.load_study(study_name=str(sweeper.resolved_study), storage=open_storage(str(sweeper.storage)),
                                       pruner=pruner, sampler=optuna.samplers.RandomSampler())
        self.number, self.monitor = int(sweeper.trial), monitor
        trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, self.number)
        self.trial = optuna.trial.Trial(self.study, trial_id)  # the job's handle on a trial the sweeper asked
        self.trial.set_user_attr(RUN_DIR, str(workdir))

    def __call__(self, end: EpochEnd) -> None:
        value = end.row.get(self.monitor)
        if value is None:  # dataset.validation_split=0: no validation value to prune on
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a resumed job reports an epoch again: Optuna keeps the first
            self.trial.report(value, end.epoch + 1)
        if end.last_epoch or not self.trial.should_prune():
            return
        self.study.tell(self.number, state=TrialState.PRUNED, skip_if_finished=True)
        end.stop = "pruned"


def search_actions(sweeper, monitor: str, workdir: Path) -> list:
    """The actions a search's job adds to its run: [ReportToTrial] when it is a trial's job."""
    if sweeper is None or sweeper.get("trial") is None or sweeper.get("resolved_study") is None:
        return []
    return [ReportToTrial(sweeper, monitor, workdir)]
