"""`python train.py ...` end to end, as a user runs it: run dirs, errors, multirun, SIGKILL."""

import json
import os
import random
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SAMPLE
from test_training import assert_same_checkpoint, rows_without_timing

pytestmark = pytest.mark.slow
SAMPLE_RUN = [f"dataset.data_dir={SAMPLE}", "epochs=3", "batch_size=50"]


def env(tmp_path):
    return {**os.environ, "KERAS_HOME": str(tmp_path / "keras-home"), "TF_CPP_MIN_LOG_LEVEL": "2",
            "HYDRA_FULL_ERROR": "0"}


def train(tmp_path, *overrides, check=True):
    """Runs train.py in `tmp_path` (so checkpoints/ lands there); returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=tmp_path,
                          env=env(tmp_path), capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_a_run_writes_its_run_directory(tmp_path, tiny_data):
    train(tmp_path, f"dataset.data_dir={tiny_data}", "epochs=2", "batch_size=32", "hydra.run.dir=run")
    run = tmp_path / "run"
    assert (run / ".hydra" / "config.yaml").exists()
    log = (run / "train.log").read_text()
    assert "epoch 2/2" in log and "test accuracy" in log
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs
    results = json.loads((run / "results.json").read_text())
    assert {"test_accuracy", "test_loss", "epochs", "steps", "train_images_per_sec"} <= results.keys()
    assert results["steps"] == 8 and results["epochs"] == 2  # 120 examples / 32 = 4 steps
    (ckpt,) = (tmp_path / "checkpoints").iterdir()
    assert ckpt.name.startswith("mnist-book_cnn-lr0.001-bs32-seed0-") and (ckpt / "ckpt-8.index").exists()


def test_missing_data_is_one_clear_line(tmp_path):
    proc = train(tmp_path, "dataset=fashion_mnist", "dataset.download=false", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in output
    (line,) = [l for l in output.splitlines() if "ERROR" in l]
    assert "train-images-idx3-ubyte" in line and "dataset.data_dir=" in line


def test_bad_value_is_one_clear_line(tmp_path):
    proc = train(tmp_path, "batch_size=0", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    assert "batch_size=0: must be >= 1" in proc.stdout + proc.stderr


def test_multirun_2x2_gives_each_job_its_own_checkpoints(tmp_path, tiny_data):
    train(tmp_path, "-m", "lr=0.01,0.001", "batch_size=64,128", f"dataset.data_dir={tiny_data}",
          "epochs=1", "hydra.sweep.dir=sweep")
    dirs = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert len(dirs) == 4, dirs
    for d in dirs:
        assert list((tmp_path / "checkpoints" / d).glob("ckpt-*.index")), d
    for job in range(4):
        assert json.loads((tmp_path / "sweep" / str(job) / "results.json").read_text())["epochs"] == 1


def test_sigkill_at_a_random_step_then_rerun_is_bitwise_exact(tmp_path):
    common = [*SAMPLE_RUN, "checkpoint.every_n_steps=5", "checkpoint.keep=2"]
    train(tmp_path, *common, "checkpoint.dir=straight", "hydra.run.dir=r0")

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kill_after = rng.randrange(5, 110, 5)  # of 120 steps
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *common, "checkpoint.dir=killed",
                             "hydra.run.dir=r1"], cwd=tmp_path, env=env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not any(int(p.name[5:-6]) >= kill_after for p in (tmp_path / "killed").glob("ckpt-*.index")
                  if p.name[5:-6].isdigit()):
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before the kill"
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.2))  # land anywhere: between saves or inside one
    proc.kill()
    assert proc.wait() == -9, f"finished before SIGKILL (seed {seed})"

    train(tmp_path, *common, "checkpoint.dir=killed", "hydra.run.dir=r2")
    assert_same_checkpoint(tmp_path / "straight" / "ckpt-120", tmp_path / "killed" / "ckpt-120")
    assert rows_without_timing(tmp_path / "r2" / "metrics.csv") == rows_without_timing(tmp_path / "r0" / "metrics.csv")
