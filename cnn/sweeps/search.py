"""An Optuna search as a Hydra sweep: `python train.py -m +search=optuna [hydra.sweeper.n_trials=N]`.

One study per search. Its name and record come from what the search holds fixed: the run
identity less the searched keys, plus the search space, the direction, the monitor, the
epochs and early stopping (what each trial's value measures) and the data's fingerprint (`<dataset>-<model>-<hash>`, as run names read). A search never
continues another's study; `hydra.sweeper.study_name=mine` names it, and is refused in one
line when the study of that name was made by a search of other settings.

Rerunning the command, or running it in several processes at once (on SQLite on one
machine, on a shared PostgreSQL/MySQL URL or journal file on several), works on the same
study until `n_trials` trials are complete or pruned in total, each trial once: a worker
claims a trial (`claim`) only while the study's budget has room. A trial a dead worker left
running is enqueued again with its parameters, so that its job resumes from its run's
checkpoints. A finished study says so in one line, with its best trial, and exits 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Optional

import optuna
from hydra.core.plugins import Plugins
from hydra.utils import instantiate
from omegaconf import open_dict
from optuna.trial import TrialState

from cnn.config import identity, to_config
from cnn.errors import ConfigError
from cnn.sweeps.space import search_space
from cnn.sweeps.storage import RETRY_OF, Heartbeat, open_storage, requeue_stale
from cnn.text import plural

log = logging.getLogger("cnn.sweeps")

OVER_BUDGET = "over_budget"  # user attribute of a trial asked after the budget was spent: discarded
IDENTITY = "identity"  # study user attribute: what the search holds fixed
RUN_DIR = "run_dir"  # trial user attribute: the job's run directory (set by the job)


def quiet_optuna() -> None:
    """Optuna's own lines through our logging (no colour codes in log files), warnings only."""
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def consumes_budget(trial, retried: set) -> bool:
    """Whether a trial counts toward n_trials: done, running or waiting, or failed as a job
    (not a discarded claim, not a trial a dead worker left and that was enqueued again)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get(OVER_BUDGET) and trial.number not in retried


def budget_used(study: optuna.Study, below: Optional[int] = None) -> int:
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    return sum(consumes_budget(t, retried) for t in trials if below is None or t.number < below)


def claim(study: optuna.Study, space: dict, n_trials: int) -> Optional[optuna.Trial]:
    """A new (or enqueued) trial inside the study's budget, or None when it is spent. Trial
    numbers are given out atomically, so every worker ranks a trial the same way."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if not waiting and budget_used(study) >= n_trials:
        return None
    trial = study.ask(space)
    if budget_used(study, below=trial.number) >= n_trials:  # another worker took the last one first
        trial.set_user_attr(OVER_BUDGET, True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial


def study_record(config, space: dict, direction: str, fingerprint: str) -> tuple[str, dict]:
    """(the default study name, the record) of a search of `space` over `config`: the run identity
    less the searched keys, the space, direction, monitor, epochs, early stopping and data."""
    wanted = "minimize" if config.monitor.endswith("loss") else "maximize"
    if direction != wanted:
        raise ConfigError(f"hydra.sweeper.direction={direction}, but monitor={config.monitor} is best "
                          f"{'low' if wanted == 'minimize' else 'high'}: pass hydra.sweeper.direction={wanted}")
    searched = lambda key: any(key == k or key.startswith(k + ".") for k in space)
    record = {**{k: v for k, v in identity(config).items() if not searched(k)},
              **{f"search.{k}": describe(d) for k, d in sorted(space.items())},
              "direction": direction, "monitor": config.monitor, "data": fingerprint,
              # not a run's identity (a run continues past them), but what each trial's value measures:
              "epochs": config.epochs, "early_stopping": dataclasses.asdict(config.early_stopping)}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:8]
    model = "models" if searched("model") else config.model_name
    return f"{config.dataset.name}-{model}-{digest}", record


class SeededPerTrial(optuna.samplers.BaseSampler):
    """The configured sampler, seeded anew for each trial by `seed + trial number`: reproducible
    for one worker, and workers drawing at the same moment (each trial number is given out once)
    draw different points, where one shared seed would give them the same ones."""

    def __init__(self, conf):
        self.conf, self.seed = conf, (conf.get("seed") if conf else None)
        self.inner = instantiate(conf)

    def before_trial(self, study, trial) -> None:
        if self.seed is not None:
            self.inner = instantiate(self.conf, seed=int(self.seed) + trial.number)
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)


def describe(distribution) -> str:
    return json.dumps(optuna.distributions.distribution_to_json(distribution), sort_keys=True)


def differences(stored: dict, wanted: dict) -> list[str]:
    keys = sorted(set(stored) | set(wanted))
    return [f"{k}: {stored.get(k, '<absent>')!r} there, {wanted.get(k, '<absent>')!r} here"
            for k in keys if stored.get(k, "<absent>") != wanted.get(k, "<absent>")]


class Search:
    """One invocation of a search: this worker's share of the study's trials."""

    def __init__(self, settings: dict, hydra_context, task_function, config):
        self.settings, self.hydra_context, self.config = settings, hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)
        self.job_idx = 0

    def run(self, arguments: list[str]) -> Any:
        quiet_optuna()
        s = self.settings
        space, fixed = search_space(dict(s.get("params") or {}), arguments)
        if not space:
            raise ConfigError("+search=optuna: nothing to search; give hydra.sweeper.params or key=choice(...)")
        name, record = self.study_identity(space, fixed)
        storage = open_storage(str(s["storage"]))
        study = self.open_study(storage, name, record)
        requeued = requeue_stale(study, float(s["grace_seconds"]))
        if requeued:
            log.info("%s %s %s left running by a worker that stopped: enqueued again, to resume",
                     "trial" if len(requeued) == 1 else "trials", ", ".join(map(str, requeued)),
                     "was" if len(requeued) == 1 else "were")
        self.write_study_record(name)
        failed = launched = 0
        while True:
            batch = self.claim_batch(study, space, int(s["n_trials"]))
            if not batch:
                break
            failed += self.launch(study, batch, fixed, name)
            launched += len(batch)
            if launched and failed / launched > float(s["max_failure_rate"]):
                raise ConfigError(f"{failed} of {plural(launched, 'trial')} failed (more than "
                                  f"hydra.sweeper.max_failure_rate={s['max_failure_rate']}); see their results.json")
        return self.summary(study, name, launched)

    def study_identity(self, space: dict, fixed: list[str]) -> tuple[str, dict]:
        """The study's name and record, from the config the fixed overrides compose."""
        from cnn.runtime.console import import_tensorflow  # noqa: PLC0415

        import_tensorflow()  # quietly, before cnn.data and cnn.training import it
        from cnn import data as data_lib  # noqa: PLC0415
        from cnn.training import build  # noqa: PLC0415

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(fixed))
        with open_dict(cfg):
            del cfg["hydra"]
        config = to_config(cfg)
        build.check_builders(config)
        fingerprint = data_lib.fingerprint(data_lib.load_dataset(config.dataset))
        name, record = study_record(config, space, str(self.settings["direction"]), fingerprint)
        return str(self.settings.get("study_name") or name), record

    def open_study(self, storage, name: str, record: dict) -> optuna.Study:
        study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                    direction=str(self.settings["direction"]))
        stored = study.user_attrs.get(IDENTITY)
        if stored is None:
            study.set_user_attr(IDENTITY, record)
        elif stored != record:
            raise ConfigError(f"hydra.sweeper.study_name={name}: that study searched other settings "
                              f"({'; '.join(differences(stored, record)[:4])}); pick another study_name, or "
                              "leave it unset to name the study after the settings")
        return study

    def claim_batch(self, study: optuna.Study, space: dict, n_trials: int) -> list:
        study.sampler = SeededPerTrial(self.settings["sampler"])
        batch = []
        for _ in range(int(self.settings["n_jobs"])):
            trial = claim(study, space, n_trials)
            if trial is None:
                break
            batch.append(trial)
        return batch

    def launch(self, study: optuna.Study, batch: list, fixed: list[str], name: str) -> int:
        """Runs the batch's jobs and tells the study their values; returns how many failed."""
        overrides = [[*fixed, *(f"{k}={_value(v)}" for k, v in t.params.items()), f"hydra.sweeper.trial={t.number}",
                      f"hydra.sweeper.resolved_study={name}", f"hydra.sweep.subdir={t.number}"]  # a job dir per trial
                     for t in batch]
        with Heartbeat(study, [t.number for t in batch], float(self.settings["heartbeat_seconds"])):
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        self.job_idx += len(batch)
        failed = 0
        for trial, ret in zip(batch, returns):
            try:
                value = float(ret.return_value)
            except Exception:  # noqa: BLE001  (the job raised: it is a failed trial)
                value = math.nan
            if math.isfinite(value):
                study.tell(trial.number, value, skip_if_finished=True)  # a pruned job told its own state
            else:
                failed += 1
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        return failed

    def write_study_record(self, name: str) -> None:
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "study.json").write_text(json.dumps({"study_name": name, "storage": self.settings["storage"]}))

    def summary(self, study: optuna.Study, name: str, launched: int):
        trials = study.get_trials(deepcopy=False)
        count = lambda state: sum(t.state == state for t in trials)
        n = int(self.settings["n_trials"])
        pruned = count(TrialState.PRUNED)
        line = (f"study {name} ({self.settings['storage']}): {count(TrialState.COMPLETE)} of {plural(n, 'trial')} "
                f"complete{f', {pruned} pruned' if pruned else ''}; this invocation ran {plural(launched, 'trial')}")
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete:
            log.info("%s; no trial complete yet", line)
            return None
        best = study.best_trial
        params = ", ".join(f"{k}={_value(v)}" for k, v in best.params.items())
        log.info("%s; best: trial %d, %.4f (%s), run %s", line, best.number, best.value, params,
                 best.user_attrs.get(RUN_DIR, "?"))
        return {"best_trial": best.number, "best_value": best.value, "best_params": best.params}


def _value(value) -> str:
    """A parameter as a command-line override's value."""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)
