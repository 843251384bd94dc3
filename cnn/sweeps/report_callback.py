"""The Hydra callback that writes the sweep report (cnn/reporting/sweep_report.py) at the end of a multirun.

Kept apart so that cnn.reporting.sweep_report, and `python -m cnn.tools.report`, never import Hydra.
Named in conf/config.yaml under hydra.callbacks.report.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from cnn.config import Config
from cnn.config.compose import OPEN_GROUPS, schema_keys
from cnn.reporting.sweep_report import collect, swept_keys, write_report
from cnn.text import plural

log = logging.getLogger("cnn.report")


HPARAMS_METRICS = (("final/objective", "objective"), ("final/val_accuracy", "val accuracy"),
                   ("final/test_accuracy", "test accuracy"), ("final/selected_epoch", "selected epoch"))


def write_hparams_config(directory: Path, keys: list[str]) -> None:
    """TensorBoard's HParams experiment, into `directory` (the sweep's tensorboard/, a run of
    its own beside the jobs' in `tensorboard_command`: the jobs' runs are their checkpoint
    directories', which are not the sweep's to write): the swept keys as its columns and the
    jobs' `final/` metrics (without it the dashboard lists every setting and every scalar).
    Nothing without TensorBoard."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return

    from cnn.runtime.console import import_tensorflow

    import_tensorflow()  # TensorBoard imports it: without its start-up lines
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    known = set(schema_keys(Config))  # an open group (model, optimizer) is one key: its options are its own
    names = [f"{k}.name" if f"{k}.name" in known or k in OPEN_GROUPS else k for k in keys
             if k in known or f"{k}.name" in known or k.split(".", 1)[0] in OPEN_GROUPS]  # as the runs record them
    summary = hp.hparams_config_pb(hparams=[hp.HParam(name) for name in names],
                                   metrics=[hp.Metric(tag, display_name=label) for tag, label in HPARAMS_METRICS])
    for earlier in Path(directory).glob("*tfevents*"):  # a rerun's: TensorBoard would read the first experiment
        earlier.unlink()
    writer = EventFileWriter(str(directory))
    writer.add_event(event_pb2.Event(summary=summary, wall_time=time.time()))
    writer.close()


def tensorboard_command(sweep_dir: Path, jobs: list[dict]) -> str:
    """The command that shows the sweep in TensorBoard, one HParams row per job: each job's run
    (results.json's tensorboard_dir) named after its job number, and the sweep's experiment
    (`write_hparams_config`). Jobs that were one run (the same checkpoint directory) share it."""
    numbers: dict[str, list[str]] = {}
    for job in jobs:
        if job["results"].get("tensorboard_dir"):
            numbers.setdefault(job["results"]["tensorboard_dir"], []).append(job["job"])
    spec = [f"job{'+'.join(names)}:{path}" for path, names in numbers.items()]
    spec.append(f"hparams:{(sweep_dir / 'tensorboard').absolute()}")
    return f"tensorboard --logdir_spec {shlex.quote(','.join(spec))}"


def study_sections(sweep_dir: Path) -> list[str]:
    """The Optuna study's section of the report, when the sweep was a search (its sweeper wrote
    study.json into `sweep_dir`: the study's name and storage)."""
    try:
        record = json.loads((sweep_dir / "study.json").read_text())
    except (OSError, ValueError):
        return []
    try:
        from cnn.sweeps.study_report import study_report  # Optuna: an optional dependency

        section = study_report(str(record["storage"]), str(record["study_name"]), sweep_dir)
    except Exception as e:  # noqa: BLE001  (the jobs' report comes first)
        log.warning("the report has no section on the Optuna study: %s: %s", type(e).__name__, e)
        return []
    return [section] if section else []


class SweepReport(Callback):
    """The report at the end of a multirun, and a failing exit if a job failed."""

    started = 0.0

    def on_multirun_start(self, config, **kwargs) -> None:
        self.started = time.time()

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not collect(sweep_dir):  # a search with nothing left to run has said so itself
            return
        try:
            jobs = write_report(sweep_dir, sections=study_sections(sweep_dir))
            write_hparams_config(sweep_dir / "tensorboard", swept_keys(jobs))
            log.info("TensorBoard: %s", tensorboard_command(sweep_dir, jobs))
        except Exception:  # noqa: BLE001  (the sweep's exit status must still tell of failed jobs)
            log.exception("could not write the sweep report")
            jobs = collect(sweep_dir)
        counts = {}
        for job in jobs:
            counts[job["results"].get("status")] = counts.get(job["results"].get("status"), 0) + 1
        log.info("sweep of %s: %s; report in %s", plural(len(jobs), "job"),
                 ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=str)), sweep_dir / "report.md")
        failed = [job["job"] for job in jobs if job["results"].get("status") in ("failed", "unfinished", None)
                  and not self.left_over(sweep_dir / job["job"])]
        if failed:  # SystemExit: Hydra turns exceptions in callbacks into warnings
            log.error("%d of %s failed (%s %s); see %s", len(failed), plural(len(jobs), "job"),
                      "job" if len(failed) == 1 else "jobs", ", ".join(failed), sweep_dir / "report.md")
            sys.exit(1)

    def left_over(self, job_dir: Path) -> bool:
        """Whether an unfinished job's directory was left by an earlier invocation (a rerun with the
        same hydra.sweep.dir): its job was this invocation's to redo, not a failure of it."""
        try:
            return job_dir.stat().st_mtime < self.started - 1
        except OSError:
            return False
