"""The Optuna study's section of a sweep's report: its trials (complete, pruned, failed) and
Optuna's plots of its history and parameter importances."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import matplotlib
import matplotlib.pyplot  # noqa: F401  (Optuna's matplotlib plots)
import optuna
from optuna.trial import TrialState

from cnn.sweeps.search import quiet_optuna
from cnn.sweeps.storage import open_storage
from cnn.text import plural


def study_report(storage: str, study_name: str, sweep_dir: Path) -> Optional[str]:
    """A markdown section on the study: its trials, and Optuna's plots in `sweep_dir`:
    optuna_history.png (the optimization history) and optuna_importances.png (fANOVA, with
    two or more complete trials and parameters). None when the study does not exist."""
    quiet_optuna()
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:  # no such study in this storage
        return None
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    lines = [f"## Optuna study `{study_name}` ({storage})", "",
             f"{sum(t.state == TrialState.COMPLETE for t in trials)} of {plural(len(trials), 'trial')} complete"
             f"{f', {pruned} pruned' if pruned else ''}; direction "
             f"{', '.join(d.name.lower() for d in study.directions)}.", "",
             "| trial | state | value | " + " | ".join(names) + " |", "|" + "---|" * (3 + len(names))]
    for t in trials:
        value = "" if t.values is None else ", ".join(f"{v:.4f}" for v in t.values)
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | "
                     + " | ".join(_short(t.params.get(n)) for n in names) + " |")
    if any(t.state == TrialState.COMPLETE for t in trials) and len(study.directions) == 1:
        plt = matplotlib.pyplot  # Optuna's plots draw with pyplot
        plots = {"optuna_history": optuna.visualization.matplotlib.plot_optimization_history}
        if sum(t.state == TrialState.COMPLETE for t in trials) >= 2 and len(names) >= 2:
            plots["optuna_importances"] = optuna.visualization.matplotlib.plot_param_importances
        for name, plot in plots.items():
            # rc_context: Optuna's plots switch matplotlib's global style, for our figures too.
            with plt.rc_context(), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot(study)
                ax.figure.savefig(sweep_dir / f"{name}.png", dpi=100, bbox_inches="tight")
                plt.close(ax.figure)
            lines += ["", f"![{name}]({name}.png)"]
    return "\n".join(lines) + "\n"


def _short(value) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
