"""Helpers the tests share: a config as `python train.py` composes it, checkpoints compared
value by value, and the command line run as a user runs it (with a SIGKILL and a rerun)."""

import contextlib
import dataclasses
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf
from conftest import ROOT, SAMPLE

from cnn.config import Config, compose, validate
from cnn.reporting import history


def make_config(tmp_path, *overrides: str, data_dir=SAMPLE, **fields) -> Config:
    """What `python train.py dataset.data_dir=<data_dir> epochs=1 <overrides>` runs, with
    checkpoints in tmp_path/ckpt; `fields` replace top-level values (a dict: nested ones)."""
    config = compose(f"dataset.data_dir='{data_dir}'", "epochs=1", "progress=false",
                     f"checkpoint.dir='{tmp_path / 'ckpt'}'", *overrides)
    for key, value in fields.items():
        if isinstance(value, dict):
            value = dataclasses.replace(getattr(config, key), **value)
        config = dataclasses.replace(config, **{key: value})
    validate(config)
    return config


def variables(path) -> dict:
    """Every value saved in a checkpoint, but the save counter (it counts saves, not steps)."""
    reader = tf.train.load_checkpoint(str(path))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if not k.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))}


def assert_same_checkpoint(a, b):
    va, vb = variables(a), variables(b)
    assert va.keys() == vb.keys()
    for key in va:
        np.testing.assert_array_equal(va[key], vb[key], err_msg=key)


def rows_without_timing(path):
    return [{k: v for k, v in r.items() if k not in history.TIMING_COLUMNS} for r in history.read_rows(path)]


SAMPLE_RUN = [f"dataset.data_dir={SAMPLE}", "epochs=3", "batch_size=50"]


def env(tmp_path):
    """A user's environment: no TF_CPP_MIN_LOG_LEVEL or HYDRA_FULL_ERROR of ours."""
    clean = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "HYDRA_FULL_ERROR")}
    return {**clean, "KERAS_HOME": str(tmp_path / "keras-home")}


def train(tmp_path, *overrides, check=True):
    """Runs train.py in `tmp_path` (so checkpoints/ lands there); returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=tmp_path,
                          env=env(tmp_path), capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@contextlib.contextmanager
def working_directory(path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_in_process(tmp_path, *overrides, run_dir: str) -> dict:
    """What `python train.py <overrides> hydra.run.dir=<run_dir>` run in `tmp_path` does (trains,
    or mode=eval, mode=export), in this process, as a multirun's jobs share theirs: relative
    paths land in tmp_path. Returns the results (an export's: {})."""
    from cnn.training.job import run_job

    config = compose(*overrides)
    (tmp_path / run_dir).mkdir(parents=True, exist_ok=True)  # as Hydra makes it
    with working_directory(tmp_path):
        return run_job(config, tmp_path / run_dir)


def sigkill_then_rerun(tmp_path, common) -> dict:
    """Trains `common` straight through (in this process: the command line's run is the killed
    one), and again from the command line with a SIGKILL at a random step (after a checkpoint
    of at least step 5) and a rerun; asserts the two end bitwise equal, in every variable,
    metrics.csv row and result. Returns the straight run's results."""
    run_in_process(tmp_path, *common, "checkpoint.dir=straight", run_dir="r0")
    straight = json.loads((tmp_path / "r0" / "results.json").read_text())
    steps = straight["steps"]  # 36 an epoch

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kill_after = rng.randrange(5, steps - 10, 5)
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
    resumed = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert_same_checkpoint(tmp_path / "straight" / f"ckpt-{steps}", tmp_path / "killed" / f"ckpt-{steps}")
    assert rows_without_timing(tmp_path / "r2" / "metrics.csv") == rows_without_timing(tmp_path / "r0" / "metrics.csv")
    for key in ("steps", "epochs", "stopped_early", "selected_epoch", "objective", "test_accuracy", "val_loss"):
        assert resumed[key] == straight[key], key
    assert_same_checkpoint(straight["best_checkpoint"].replace("straight", str(tmp_path / "straight"), 1),
                           resumed["best_checkpoint"].replace("killed", str(tmp_path / "killed"), 1))
    return straight
