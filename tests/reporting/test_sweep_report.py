"""The sweep report: `python -m cnn.tools.report`, its plots' axes, and the Hydra callback."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from conftest import ROOT
from omegaconf import OmegaConf

from cnn.reporting import history
from cnn.reporting import sweep_report as report
from cnn.sweeps.report_callback import SweepReport


def fake_job(sweep: Path, num: int, overrides: list, results: dict, losses=()) -> None:
    """A job directory as Hydra and train.py leave it: overrides, results.json, metrics.csv."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / "results.json").write_text(json.dumps(results))
    history.write_rows(job / "metrics.csv", [
        {"epoch": i + 1, "step": 10 * (i + 1), "loss": loss, "accuracy": 0.5, "test_loss": loss,
         "test_accuracy": results.get("test_accuracy", 0.0), "lr": 0.001, "seconds": 1.0, "images_per_sec": 9.0}
        for i, loss in enumerate(losses)])


@pytest.fixture
def sweep(tmp_path) -> Path:
    """lr=0.1,0.01,0.001,1e30: 0.1 diverged (loss 651), 1e30 failed before its first epoch."""
    for num, (lr, accuracy, losses) in enumerate([("0.1", 0.1, (651.0, 640.0)), ("0.01", 0.95, (0.4, 0.2)),
                                                  ("0.001", 0.9, (0.6, 0.3))]):
        fake_job(tmp_path, num, [f"lr={lr}", "epochs=2"], {"status": "started", "test_accuracy": accuracy}, losses)
    fake_job(tmp_path, 3, ["lr=1e30", "epochs=2"], {"status": "failed", "error": "TrainingError: NaN"})
    return tmp_path


def run_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnn.tools.report", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def assert_png(path: Path, width: int, height: int) -> None:
    """The PNG has this size in pixels and is a drawing, not a blank page."""
    pixels = matplotlib.image.imread(path)[..., :3]  # (height, width, RGB)
    assert pixels.shape[:2] == (height, width), path
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, path  # text, markers, lines in colours


def test_report_entry_point_writes_the_report_ranked_by_objective(sweep):
    proc = run_report(str(sweep))
    assert proc.returncode == 0, proc.stderr
    with open(sweep / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["lr"]) for r in rows] == [("1", "0.01"), ("2", "0.001"), ("0", "0.1"), ("3", "1e30")]
    assert "| 1 | 0.01 | started | 0.9500 |" in proc.stdout  # the report.md it printed
    assert (sweep / "report.md").read_text() in proc.stdout
    *_, last = proc.stdout.strip().splitlines()  # then where it is
    assert last == f"report: {sweep / 'report.md'} (beside it: report.csv, objective_vs_lr.png, learning_curves.png)"
    assert_png(sweep / "objective_vs_lr.png", 500, 350)
    assert_png(sweep / "learning_curves.png", 1000, 380)


@pytest.mark.parametrize("make, message", [(lambda d: None, "no such directory"),
                                           (lambda d: d.mkdir(), "no job directories")])
def test_report_entry_point_errors_in_one_line(tmp_path, make, message):
    make(tmp_path / "sweep")
    proc = run_report(str(tmp_path / "sweep"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'sweep'}: ") and message in lines[0]


def test_report_imports_no_hydra():
    code = "import cnn.tools.report, cnn.reporting.sweep_report, sys; assert 'hydra' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_training_loss_axis_is_logarithmic(sweep):
    loss_ax = report.curves_figure(report.collect(sweep)).axes[0]
    assert loss_ax.get_yscale() == "log"
    low, high = loss_ax.get_ylim()
    assert low < 0.2 and high > 651  # the diverged job and the others, both in view


def jobs_with(values: list) -> list[dict]:
    return [{"job": str(i), "overrides": {"lr": v}, "results": {"test_accuracy": 0.9 - 0.01 * i}, "rows": []}
            for i, v in enumerate(values)]


@pytest.mark.parametrize("values, scale, ticks", [
    (["0.1", "0.01", "0.001"], "log", [0.001, 0.01, 0.1]),
    (["0.01", "0.003", "0.001"], "log", [0.001, 0.003, 0.01]),  # 10x: log, though under 100x
    (["0.3", "0.03"], "log", [0.03, 0.3]),  # 0.3 / 0.03 = 9.999999999999998
    (["32", "100"], "linear", [32, 100]),
    (["0.1", "0", "-0.1"], "linear", [-0.1, 0, 0.1]),
    (["0.1", "0.05", "0.02", "0.01", "0.005", "0.002", "0.001"], "log",
     [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]),
])
def test_objective_ticks_are_exactly_the_swept_values(tmp_path, values, scale, ticks):
    fig = report.objective_figure(jobs_with(values), "lr")
    ax = fig.axes[0]
    assert ax.get_xscale() == scale
    np.testing.assert_allclose(ax.get_xticks(), ticks)
    assert [t.get_text() for t in ax.get_xticklabels()] == sorted(values, key=float)  # as written
    assert len(ax.get_xticks(minor=True)) == 0  # no unlabelled-value ticks, no 2x10^-3 labels
    assert_labels_apart(fig, tmp_path)


def assert_labels_apart(fig, tmp_path: Path, rotated: bool = False) -> None:
    """The x tick labels are all inside the figure and, unless rotated, do not run into each other."""
    fig.savefig(tmp_path / "objective.png", dpi=100)  # lays the figure out
    boxes = [t.get_window_extent() for t in fig.axes[0].get_xticklabels()]
    # The boxes of rotated labels are upright rectangles around slanted text: they overlap when the text does not.
    assert boxes and (rotated or not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:])))
    width, height = fig.bbox.width, fig.bbox.height
    assert all(0 <= b.x0 and b.x1 <= width and 0 <= b.y0 and b.y1 <= height for b in boxes)


@pytest.mark.parametrize("monitor", ["val_accuracy", "val_loss"])
def test_jobs_rank_by_their_validation_objective_never_by_test(tmp_path, monitor):
    """The job with the best test accuracy ranks last when its validation objective is worst."""
    for num, (val, test) in enumerate([(0.90, 0.99), (0.95, 0.80), (0.92, 0.85)]):
        fake_job(tmp_path, num, [f"lr={num}"], {"status": "started", "monitor": monitor, "objective": val,
                                                monitor: val, "test_accuracy": test})
    proc = run_report(str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "report.csv") as f:
        rows = list(csv.DictReader(f))
    order = ["1", "2", "0"] if monitor == "val_accuracy" else ["0", "2", "1"]  # a loss: lowest first
    assert [r["job"] for r in rows] == order
    assert [float(r["test_accuracy"]) for r in rows] == [{"0": 0.99, "1": 0.80, "2": 0.85}[j] for j in order]
    assert f"Ranked by {monitor} of each job's selected checkpoint" in proc.stdout


def test_objective_against_a_categorical_key_rotates_its_labels(tmp_path):
    names = ["book_cnn_sequential_long_name", "book_cnn_functional_long_name", "bn_cnn"]
    fig = report.objective_figure(jobs_with(names), "lr")
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [0, 1, 2]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert all(t.get_rotation() == 30 and t.get_fontsize() < 10 for t in ax.get_xticklabels())
    assert_labels_apart(fig, tmp_path, rotated=True)


def test_sweep_callback_writes_the_report_and_fails_the_sweep_on_a_failed_job(sweep, caplog):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with pytest.raises(SystemExit) as exit_info:
        SweepReport().on_multirun_end(config)
    assert exit_info.value.code == 1
    assert "1 of 4 jobs failed (job 3)" in caplog.text
    assert (sweep / "report.md").exists() and (sweep / "learning_curves.png").exists()


def test_the_hparams_columns_are_the_keys_the_runs_record(tmp_path):
    """The sweep's HParams columns name the settings as each run's record does (cnn.config.identity):
    a swept group by its name, a model's or an optimizer's own option by itself."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import plugin_data_pb2

    from cnn.sweeps.report_callback import write_hparams_config

    write_hparams_config(tmp_path, ["dataset", "lr", "model", "model.dropout", "optimizer", "optimizer.momentum",
                                    "hydra.launcher.n_jobs"])
    (experiment,) = [plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content).experiment
                     for path in tmp_path.glob("events.out.tfevents.*")
                     for event in tf.compat.v1.train.summary_iterator(str(path))
                     for value in event.summary.value if value.tag == "_hparams_/experiment"]
    assert [h.name for h in experiment.hparam_infos] == ["dataset.name", "lr", "model.name", "model.dropout",
                                                         "optimizer.name", "optimizer.momentum"]


def test_a_searchs_drawn_values_get_readable_ticks():
    """Optuna draws values like 0.0012520653814999472: matplotlib's ticks, not one 19-digit label each."""
    fig = report.objective_figure(jobs_with(["0.0012520653814999472", "0.00031622776601683794",
                                             "0.006812920690579613", "0.0001983755"]), "lr")
    ax = fig.axes[0]
    fig.canvas.draw()
    assert ax.get_xscale() == "log"
    labels = [label.get_text() for label in ax.get_xticklabels()]
    assert labels == ["$\\mathdefault{10^{-4}}$", "$\\mathdefault{10^{-3}}$", "$\\mathdefault{10^{-2}}$"]


def test_a_one_job_sweep_keeps_its_settings_in_the_table_and_the_legend(tmp_path):
    """Nothing differs between jobs when there is one: its overrides are still what the sweep set."""
    fake_job(tmp_path, 0, ["lr=0.01", "epochs=1"], {"status": "started", "test_accuracy": 0.9, "epochs": 1}, (0.5,))
    jobs = report.collect(tmp_path)
    header, rows = report.table(jobs)
    assert header[:3] == ["job", "epochs (override)", "lr"] and "epochs" in header  # the metric: epochs trained
    assert rows[0][:3] == ["0", "1", "0.01"]
    loss_ax, acc_ax = report.curves_figure(jobs).axes
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == ["epochs=1 lr=0.01"]
    for ax in (loss_ax, acc_ax):  # one epoch: a disc at a whole epoch's tick
        low, high = ax.get_xlim()
        assert [t for t in ax.get_xticks() if low <= t <= high] == [1] and ax.lines[0].get_marker() == "o"
    assert report.objective_keys(jobs) == []  # one point against a key says nothing
    fake_job(tmp_path, 1, ["epochs=1"], {"status": "started", "test_accuracy": 0.8}, (0.6,))
    assert report.job_label(report.collect(tmp_path)[1], []) == "job 1"
