"""The plugin's class: Hydra's Sweeper interface over `cnn.sweeps.search.Search`."""

from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class CnnOptunaSweeper(Sweeper):
    """An Optuna search of the study its settings name; see cnn/sweeps/search.py."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from cnn.sweeps.search import Search  # noqa: PLC0415  (Hydra imports every plugin for every command)

        self.search = Search(self.settings, hydra_context, task_function, config)

    def sweep(self, arguments: List[str]) -> Any:
        return self.search.run(arguments)
