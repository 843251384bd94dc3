"""Multirun sweeps: rerun after an interruption, failing jobs, the report, launchers and sweepers
(the Optuna search: tests/test_search.py)."""

import csv
import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from conftest import ROOT
from helpers import train

from cnn.config import register_configs
from cnn.reporting.sweep_report import write_report

CONF = str(ROOT / "conf")
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
def test_joblib_runs_jobs_in_their_own_processes_and_a_failing_job_does_not_stop_the_sweep(tmp_path, tiny_data):
    proc = train(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "lr=1e30,0.001",
                 f"dataset.data_dir={tiny_data}", "epochs=1", "hydra.sweep.dir=sweep", check=False)
    assert proc.returncode == 1
    assert "1 of 2 jobs failed" in proc.stdout + proc.stderr
    results = job_results(tmp_path / "sweep")
    assert results[0]["status"] == "failed" and "NaN or Inf at step" in results[0]["error"]
    assert results[1]["status"] == "started" and results[1]["epochs"] == 1
    assert results[0]["pid"] != results[1]["pid"] and os.getpid() not in (results[0]["pid"], results[1]["pid"])
    with open(tmp_path / "sweep" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["started", "failed"]  # failures sort last
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
    (["+search=optuna"], "CnnOptunaSweeper"),
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
