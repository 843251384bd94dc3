"""One job of `python train.py`, for its `mode`: train, `mode=eval` or `mode=export`.

The entry point and the Python API run the same dispatch (a multirun's in-process jobs, tests).
Each mode's module is imported only when its job runs: they import TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from cnn.config import Config


def run_job(config: Config, workdir: str | Path, started: Optional[float] = None, actions: Sequence = ()) -> dict:
    """Runs `config.mode` into `workdir` and returns its results: training's
    (`cnn.training.train.train_and_evaluate`, which takes `started` and `actions`), the
    evaluation's (`cnn.training.evaluate.evaluate_checkpoint`), or {} for an export
    (`cnn.serving.export.export_checkpoint`)."""
    if config.mode == "export":
        from cnn.serving import export

        export.export_checkpoint(config, workdir)
        return {}
    if config.mode == "eval":
        from cnn.training import evaluate

        return evaluate.evaluate_checkpoint(config, workdir)
    from cnn.training import train

    return train.train_and_evaluate(config, workdir, started=started, actions=actions)
