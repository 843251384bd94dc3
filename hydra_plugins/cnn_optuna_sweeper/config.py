"""The sweeper's configs: `hydra/sweeper=cnn_optuna`, its samplers and its pruners.

Registered when Hydra scans its plugins, so `+search=optuna` (conf/search/optuna.yaml) can
select them; `hydra/sweeper/pruner=median` (or successive_halving, hyperband, threshold, none) picks a
pruner and `hydra.sweeper.pruner.<key>=...` sets its arguments, as for the sampler.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class CnnOptunaSweeperConf:
    _target_: str = "hydra_plugins.cnn_optuna_sweeper.optuna_sweeper.CnnOptunaSweeper"
    _recursive_: bool = False  # the sampler and pruner stay configs: the search builds them (reseeded per trial)
    defaults: Any = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": "none"}])
    sampler: Any = None  # an optuna.samplers class and its arguments (hydra/sweeper/sampler)
    pruner: Any = None  # an optuna.pruners class and its arguments (hydra/sweeper/pruner; none: _target_ null)
    direction: str = "maximize"  # maximize | minimize: the jobs' objective (monitor=val_loss: minimize)
    storage: str = "sqlite:///multirun/optuna/optuna.db"  # an RDB URL, or journal:<path> for Optuna's journal file
    study_name: Optional[str] = None  # null: named after what the search holds fixed (cnn.sweeps.search)
    n_trials: int = 20  # trials to complete (or prune) in the study, over every invocation and worker
    n_jobs: int = 1  # trials launched at a time (a launcher that runs jobs in parallel runs them together)
    max_failure_rate: float = 0.0  # the search stops once more than this fraction of its trials failed
    params: Dict[str, str] = field(default_factory=dict)  # key: choice(...) | interval(a, b) | tag(log, interval(a, b)) | range(a, b)
    heartbeat_seconds: float = 30.0  # how often a worker marks its running trials alive
    grace_seconds: float = 300.0  # a running trial not marked alive for this long was left by a dead worker
    trial: Optional[int] = None  # set by the sweeper on each job: its trial's number (for pruning)
    resolved_study: Optional[str] = None  # set by the sweeper on each job: the study's name


SAMPLERS = {
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": 0},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": 0},
}
PRUNERS = {
    "none": {"_target_": None},  # no pruning
    "median": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 0,
               "interval_steps": 1},
    "successive_halving": {"_target_": "optuna.pruners.SuccessiveHalvingPruner", "min_resource": "auto",
                           "reduction_factor": 4, "min_early_stopping_rate": 0},
    "threshold": {"_target_": "optuna.pruners.ThresholdPruner", "lower": None, "upper": None, "n_warmup_steps": 0,
                  "interval_steps": 1},
    "hyperband": {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 1, "max_resource": "auto",
                  "reduction_factor": 3},
}

store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="cnn_optuna", node=CnnOptunaSweeperConf, provider="cnn")
for name, node in SAMPLERS.items():
    store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="cnn")
for name, node in PRUNERS.items():
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="cnn")
