"""The Hydra callback that writes the sweep report (cnn/report.py) at the end of a multirun.

Kept apart so that cnn.reporting.sweep_report, and `python -m cnn.tools.report`, never import Hydra.
Named in conf/config.yaml under hydra.callbacks.report.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from cnn.config import Config
from cnn.config.compose import schema_keys
from cnn.reporting.sweep_report import collect, swept_keys, write_report

log = logging.getLogger("cnn.report")


HPARAMS_METRICS = (("final/objective", "objective"), ("final/val_accuracy", "val accuracy"),
                   ("final/test_accuracy", "test accuracy"), ("final/selected_epoch", "selected epoch"))


def write_hparams_config(sweep_dir: Path, keys: list[str]) -> None:
    """TensorBoard's HParams experiment for `tensorboard --logdir <sweep dir>`: the swept keys
    as its columns and the jobs' `final/` metrics (without it the dashboard lists every setting
    and every scalar). Nothing without TensorBoard."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return
    import time

    from cnn.runtime.console import import_tensorflow

    import_tensorflow()  # TensorBoard imports it: without its start-up lines
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    known = set(schema_keys(Config))
    names = [k if k in known else f"{k}.name" for k in keys if k in known or f"{k}.name" in known]
    summary = hp.hparams_config_pb(hparams=[hp.HParam(name) for name in names],
                                   metrics=[hp.Metric(tag, display_name=label) for tag, label in HPARAMS_METRICS])
    writer = EventFileWriter(str(sweep_dir))
    writer.add_event(event_pb2.Event(summary=summary, wall_time=time.time()))
    writer.close()


def study_sections(config) -> list[str]:
    """The Optuna study's section of the report, when the sweep keeps one in a storage."""
    sweeper = OmegaConf.select(config, "hydra.sweeper")
    if sweeper is None or not sweeper.get("storage") or not sweeper.get("study_name"):
        return []
    try:
        from cnn.sweeps.optuna_resume import study_report

        section = study_report(str(sweeper.storage), str(sweeper.study_name), Path(config.hydra.sweep.dir))
    except Exception:  # noqa: BLE001  (the jobs' report comes first)
        log.exception("could not read the Optuna study for the report")
        return []
    return [section] if section else []


class SweepReport(Callback):
    """The report at the end of a multirun, and a failing exit if a job failed."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            jobs = write_report(sweep_dir, sections=study_sections(config))
            write_hparams_config(sweep_dir, swept_keys(jobs))
        except Exception:  # noqa: BLE001  (the sweep's exit status must still tell of failed jobs)
            log.exception("could not write the sweep report")
            jobs = collect(sweep_dir)
        counts = {}
        for job in jobs:
            counts[job["results"].get("status")] = counts.get(job["results"].get("status"), 0) + 1
        log.info("sweep of %d jobs: %s; report in %s", len(jobs),
                 ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=str)), sweep_dir / "report.md")
        failed = [job["job"] for job in jobs if job["results"].get("status") in ("failed", "unfinished", None)]
        if failed:  # SystemExit: Hydra turns exceptions in callbacks into warnings
            log.error("%d of %d jobs failed (jobs %s); see %s", len(failed), len(jobs), ", ".join(failed),
                      sweep_dir / "report.md")
            sys.exit(1)
