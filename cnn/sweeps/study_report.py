"""Optuna searches that survive being stopped: the study lives in SQLite, and rerunning the
command finishes it.

    python train.py -m +search=optuna            # run, interrupt, run again: same study

hydra-optuna-sweeper loads an existing study (`load_if_exists`) but then runs
`n_trials` *new* trials. The `ResumeStudy` callback (named in conf/search/optuna.yaml)
reads the study first, so that the sweeper runs only what is missing:

- completed trials are not run again, and count toward `n_trials`;
- a trial left RUNNING by a killed process is marked failed and enqueued again with
  the same parameters, so its job resumes from that run's checkpoints;
- the sampler's seed moves on by the number of trials so far, so a resumed study draws
  new points (TPE sees every finished trial, being read from the storage).

Each invocation writes its jobs into its own sweep directory under the study's
(multirun/optuna/<study>/<date>/<time>/), next to the study's optuna.db.

`study_report` adds the study's trials and Optuna's optimization history to the sweep
report. Imports Optuna and Hydra: used only by sweeps that ask for it.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Optional

# Optuna 2's storage predates SQLAlchemy 2 (hence sqlalchemy<2): without this, SQLAlchemy 1.4
# warns of it on every sweep.
os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")

import optuna  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict, read_write  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

log = logging.getLogger(__name__)

SQLITE = "sqlite:///"


class ResumeStudy(Callback):
    """Before an Optuna multirun, continues the study in `hydra.sweeper.storage` (see above).

    It changes the sweep's config before Hydra builds the sweeper from it: `n_trials` becomes
    the number of trials still to complete, the sampler's seed moves on by the number of
    trials so far, and trials a killed sweep left running are failed and enqueued again.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweeper = config.hydra.sweeper
        if not sweeper.get("storage") or "n_trials" not in sweeper:
            return  # not an Optuna sweep with a storage: nothing to continue
        storage = str(sweeper.storage)
        if storage.startswith(SQLITE):
            Path(storage[len(SQLITE):]).parent.mkdir(parents=True, exist_ok=True)
        directions = sweeper.direction if OmegaConf.is_list(sweeper.direction) else [sweeper.direction]
        study = optuna.create_study(study_name=sweeper.study_name, storage=storage, load_if_exists=True,
                                    directions=[str(d) for d in directions])
        trials = study.get_trials(deepcopy=False)
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        interrupted = [t for t in trials if t.state == TrialState.RUNNING]  # their process is gone
        for trial in interrupted:
            study.tell(trial.number, state=TrialState.FAIL)
            if trial.params:  # (killed before its parameters were drawn: a new trial replaces it)
                study.enqueue_trial(trial.params)
        todo = max(sweeper.n_trials - complete, 0)
        if trials:
            log.info("study %s (%s): %d of %d trials complete, %d interrupted (retried with the same "
                     "parameters); %d to run", study.study_name, storage, complete, sweeper.n_trials,
                     len(interrupted), todo)
        with read_write(config.hydra), open_dict(config.hydra):
            sweeper.n_trials = todo
            if trials and sweeper.get("sampler") is not None and sweeper.sampler.get("seed") is not None:
                sweeper.sampler.seed = int(sweeper.sampler.seed) + len(trials)  # new draws, reproducibly


def study_report(storage: str, study_name: str, sweep_dir: Path) -> Optional[str]:
    """A markdown section on the study: its trials, and Optuna's plots in `sweep_dir`:
    optuna_history.png (the optimization history) and, with scikit-learn installed (Optuna 2's
    fANOVA needs it), optuna_importances.png. None when the study does not exist."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no such study in this storage
        return None
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    lines = [f"## Optuna study `{study_name}` ({storage})", "",
             f"{sum(t.state == TrialState.COMPLETE for t in trials)} trials complete of {len(trials)}; "
             f"direction {', '.join(d.name.lower() for d in study.directions)}.", "",
             "| trial | state | value | " + " | ".join(names) + " |", "|" + "---|" * (3 + len(names))]
    for t in trials:
        value = "" if t.values is None else ", ".join(f"{v:.4f}" for v in t.values)
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | "
                     + " | ".join(_short(t.params.get(n)) for n in names) + " |")
    if any(t.state == TrialState.COMPLETE for t in trials) and len(study.directions) == 1:
        import matplotlib.pyplot as plt  # Optuna's plots draw with pyplot

        plots = {"optuna_history": optuna.visualization.matplotlib.plot_optimization_history}
        if sum(t.state == TrialState.COMPLETE for t in trials) >= 2 and len(names) >= 2:
            plots["optuna_importances"] = optuna.visualization.matplotlib.plot_param_importances
        for name, plot in plots.items():
            # rc_context: Optuna's plots switch matplotlib's global style, for our figures too.
            with plt.rc_context(), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # Optuna 2
                try:
                    ax = plot(study)
                except ImportError as e:  # Optuna 2's importances need scikit-learn
                    lines += ["", f"({name}: {str(e).split('.')[0]}; `pip install scikit-learn` adds it.)"]
                    continue
                ax.figure.savefig(sweep_dir / f"{name}.png", dpi=100, bbox_inches="tight")
                plt.close(ax.figure)
            lines += ["", f"![{name}]({name}.png)"]
    return "\n".join(lines) + "\n"


def _short(value) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
