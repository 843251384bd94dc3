"""Multirun sweeps: rerun after an interruption, failing jobs, the report, launchers and sweepers."""

import contextlib
import csv
import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from test_cli import train

from cnn.config import register_configs
from cnn.reporting.sweep_report import write_report

CONF = str(Path(__file__).resolve().parents[1] / "conf")
register_configs()


def job_results(sweep: Path) -> dict:
    return {int(p.name): json.loads((p / "results.json").read_text())
            for p in sweep.iterdir() if (p / "results.json").exists()}


@pytest.mark.slow
def test_rerun_sweep_skips_finished_jobs_and_resumes_the_interrupted(tmp_path, tiny_data):
    sweep = ["-m", "lr=0.01,0.001", f"dataset.data_dir={tiny_data}", "epochs=2", "batch_size=40",
             "checkpoint.every_n_steps=1", "checkpoint.keep=10"]
    train(tmp_path, *sweep, "hydra.sweep.dir=first")
    first = job_results(tmp_path / "first")
    assert [first[j]["status"] for j in (0, 1)] == ["started", "started"]
    # Interrupt job 1 after step 4 of 6: drop what it saved later.
    ckpt1 = Path(tmp_path / first[1]["checkpoint_dir"])
    for f in ckpt1.glob("ckpt-*"):
        if int(f.name.split(".")[0].split("-")[1]) > 4:
            f.unlink()
    (ckpt1 / "results.json").unlink()
    ckpt0 = Path(tmp_path / first[0]["checkpoint_dir"])
    before = {f.name: f.stat().st_mtime_ns for f in ckpt0.iterdir()}

    proc = train(tmp_path, *sweep, "hydra.sweep.dir=second")
    second = job_results(tmp_path / "second")
    assert second[0]["status"] == "skipped" and second[1]["status"] == "resumed"
    assert {f.name: f.stat().st_mtime_ns for f in ckpt0.iterdir()} == before  # not trained again
    for job in (0, 1):
        assert second[job]["test_accuracy"] == first[job]["test_accuracy"]
        assert second[job]["steps"] == 6
    assert "1 resumed, 1 skipped" in proc.stdout + proc.stderr
    with open(tmp_path / "second" / "report.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep(tmp_path, tiny_data):
    proc = train(tmp_path, "-m", "lr=1e30,0.001", f"dataset.data_dir={tiny_data}", "epochs=1",
                 "hydra.sweep.dir=sweep", check=False)
    assert proc.returncode == 1
    assert "1 of 2 jobs failed" in proc.stdout + proc.stderr
    results = job_results(tmp_path / "sweep")
    assert results[0]["status"] == "failed" and "NaN or Inf at step" in results[0]["error"]
    assert results[1]["status"] == "started" and results[1]["epochs"] == 1
    with open(tmp_path / "sweep" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["started", "failed"]  # failures sort last


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_their_own_processes(tmp_path, tiny_data):
    train(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "lr=0.01,0.001",
          f"dataset.data_dir={tiny_data}", "epochs=1", "hydra.sweep.dir=sweep")
    results = job_results(tmp_path / "sweep")
    assert len(results) == 2 and results[0]["pid"] != results[1]["pid"]
    assert os.getpid() not in (results[0]["pid"], results[1]["pid"])
    assert (tmp_path / "sweep" / "report.md").exists()


def fake_job(sweep: Path, num: int, overrides: list, results: dict, accuracies: list):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / "results.json").write_text(json.dumps(results))
    rows = ["epoch,step,loss,accuracy,test_loss,test_accuracy,lr,seconds,images_per_sec"]
    rows += [f"{i + 1},{10 * (i + 1)},{1 / (i + 1)},{a},{1 - a},{a},0.001,1.0,100.0" for i, a in enumerate(accuracies)]
    (job / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_report_table_and_plots(tmp_path):
    import matplotlib.image

    sweep = tmp_path / "sweep"
    fake_job(sweep, 0, ["lr=0.01", "batch_size=32", "epochs=2"], {"status": "started", "test_accuracy": 0.80}, [0.7, 0.8])
    fake_job(sweep, 1, ["lr=0.001", "batch_size=32", "epochs=2"], {"status": "started", "test_accuracy": 0.90}, [0.85, 0.9])
    fake_job(sweep, 2, ["lr=1e30", "batch_size=64", "epochs=2"], {"status": "failed", "error": "TrainingError: NaN"}, [])
    write_report(sweep)
    with open(sweep / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["1", "0", "2"]
    assert list(rows[0])[:4] == ["job", "batch_size", "lr", "status"]  # swept keys only, not epochs=2
    assert rows[0]["lr"] == "0.001" and rows[2]["error"] == "TrainingError: NaN"
    markdown = (sweep / "report.md").read_text()
    assert "| 1 | 32 | 0.001 | started | 0.9000 |" in markdown
    for name in ("objective_vs_lr.png", "objective_vs_batch_size.png", "learning_curves.png"):
        image = matplotlib.image.imread(sweep / name)
        assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 500, name


@pytest.mark.parametrize("overrides,target", [
    (["hydra/launcher=joblib"], "JoblibLauncher"),
    (["hydra/launcher=slurm"], "SlurmLauncher"),
    (["hydra/launcher=submitit_local"], "LocalLauncher"),
    (["+search=optuna"], "OptunaSweeper"),
])
def test_launcher_and_sweeper_configs_compose(overrides, target):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    assert target in cfg.hydra.launcher._target_ + cfg.hydra.sweeper._target_
    if overrides == ["+search=optuna"]:
        assert cfg.hydra.sweeper.direction == "maximize" and "lr" in cfg.hydra.sweeper.params


@pytest.mark.slow
def test_submitit_local_gives_every_job_a_fresh_process(tmp_path, tiny_data):
    """The SLURM launcher's local twin: one new process per job, so memory cannot pile up."""
    train(tmp_path, "-m", "hydra/launcher=submitit_local", "lr=0.01,0.001", f"dataset.data_dir={tiny_data}",
          "epochs=1", "hydra.sweep.dir=sweep")
    results = job_results(tmp_path / "sweep")
    assert len(results) == 2 and results[0]["pid"] != results[1]["pid"]
    assert {r["status"] for r in results.values()} == {"started"}


def study_db(tmp_path) -> Path:
    return tmp_path / "multirun" / "optuna" / "cnn" / "optuna.db"


def study_trials(tmp_path) -> list:
    """The study's trials, read through Optuna (only once no sweep writes to it)."""
    import cnn.sweeps.optuna_resume  # noqa: F401  (before optuna: quiets SQLAlchemy's 2.0 warning)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="cnn", storage=f"sqlite:///{study_db(tmp_path)}").get_trials(deepcopy=False)


def trials_so_far(tmp_path) -> tuple[int, bool]:
    """(complete trials, whether a running trial has its parameters), read-only from the SQLite
    file while a sweep writes it: opening it through Optuna would create its tables, racing the
    sweep's own creation of them."""
    import sqlite3

    if not study_db(tmp_path).exists():
        return 0, False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{study_db(tmp_path)}?mode=ro", uri=True, timeout=5)) as db:
            complete = db.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
            running = db.execute("SELECT COUNT(*) FROM trials t WHERE t.state = 'RUNNING' AND EXISTS "
                                 "(SELECT 1 FROM trial_params p WHERE p.trial_id = t.trial_id)").fetchone()[0]
    except sqlite3.OperationalError:  # its tables are not there yet, or it is locked for a write
        return 0, False
    return complete, running > 0


@pytest.mark.slow
def test_an_optuna_study_killed_midway_finishes_when_rerun_without_repeating_a_trial(tmp_path, tiny_data):
    """4 trials in SQLite, SIGKILL once 2 are complete, rerun: exactly 4 complete, none run twice."""
    import subprocess
    import sys
    import time

    from conftest import ROOT
    from optuna.trial import TrialState
    from test_cli import env

    search = ["-m", "+search=optuna", "hydra.sweeper.n_trials=4", f"dataset.data_dir={tiny_data}", "epochs=2",
              "checkpoint.every_n_steps=1"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *search], cwd=tmp_path, env=env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # Kill inside the third trial, once it has its parameters and has had time to save a step.
    while True:
        complete, running = trials_so_far(tmp_path)
        if complete >= 2 and running:
            break
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before the kill"
        time.sleep(0.05)
    time.sleep(1.5)
    proc.kill()
    assert proc.wait() == -9
    before = study_trials(tmp_path)
    complete_before = {t.number: t.params for t in before if t.state == TrialState.COMPLETE}
    assert 2 <= len(complete_before) < 4

    time.sleep(1.1)  # the rerun's sweep directory is named by the second
    out = train(tmp_path, *search)
    after = study_trials(tmp_path)
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    assert {t.number: t.params for t in complete if t.number in complete_before} == complete_before
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == 4  # no completed trial was run again
    interrupted = [t for t in before if t.state == TrialState.RUNNING]
    for trial in interrupted:  # failed, and (once it had parameters) retried with them
        assert [t.state for t in after if t.number == trial.number] == [TrialState.FAIL]
        assert not trial.params or trial.params in [t.params for t in complete if t.number not in complete_before]
    (rerun,) = [d for d in (tmp_path / "multirun" / "optuna" / "cnn").glob("*/*") if (d / "report.md").exists()]
    statuses = [json.loads(p.read_text())["status"] for p in rerun.glob("*/results.json")]
    assert len(statuses) == 4 - len(complete_before) and "skipped" not in statuses
    assert f"{len(complete_before)} of 4 trials complete, {len(interrupted)} interrupted" in out.stdout + out.stderr
    assert "Optuna study `cnn`" in (rerun / "report.md").read_text() and (rerun / "optuna_history.png").exists()
