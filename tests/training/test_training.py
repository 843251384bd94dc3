"""The training loop: the compiled step, learning, checkpoints and resuming, in-process."""

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SAMPLE, write_idx_dataset
from helpers import assert_same_checkpoint, make_config, rows_without_timing, run_in_process, variables

from cnn import data
from cnn.checkpointing import directory as checkpoint
from cnn.config import compose
from cnn.errors import CheckpointError, TrainingError
from cnn.optim import learning_rate
from cnn.reporting import history
from cnn.training import build, checkpointer, controller, steps, train
from cnn.training import evaluate as evaluation


@pytest.fixture(scope="module")
def sample():
    return data.load("mnist", str(SAMPLE))


def new_state(config, sample):
    build.setup(config)
    return build.create_state(config, sample)


def run_steps(loop, dataset, n):
    loop(iter(dataset), tf.constant(n, tf.int32))


def test_compiled_steps_lower_the_loss(tmp_path, sample):
    state = new_state(make_config(tmp_path), sample)
    batch = next(iter(data.train_dataset(sample.x_train, sample.y_train, 64, 0, 0)))
    same_batch = tf.data.Dataset.from_tensors(batch).repeat()
    loop = steps.make_train_loop(state, same_batch.element_spec)
    start = float(steps.loss_fn(state.model, *batch)[0])
    run_steps(loop, same_batch, 25)
    assert float(steps.loss_fn(state.model, *batch)[0]) < start / 2
    assert int(state.step.numpy()) == 25


def test_no_retracing_across_epochs_and_a_smaller_last_batch(tmp_path, sample):
    state = new_state(make_config(tmp_path, batch_size=300), sample)  # 2000 = 6 * 300 + 200
    ds = lambda epoch: data.train_dataset(sample.x_train, sample.y_train, 300, 0, epoch)
    loop = steps.make_train_loop(state, ds(0).element_spec)
    run_steps(loop, ds(0), 3)
    run_steps(loop, ds(0).skip(3), 4)  # one step per call, then several, and the 200-image batch
    assert loop.experimental_get_tracing_count() == 1
    run_steps(loop, ds(1), 7)
    assert loop.experimental_get_tracing_count() == 1
    assert int(state.step.numpy()) == 14


@pytest.mark.parametrize("steps_per_loop", [3, 64])
def test_steps_per_loop_gives_the_same_run(tmp_path, steps_per_loop):
    """Several steps per call keep the checkpoint cadence, the metrics and the exact result."""
    every = {"every_n_steps": 7, "keep": 100}
    one = train.train_and_evaluate(make_config(tmp_path / "a", epochs=2, checkpoint=every, steps_per_loop=1),
                                      tmp_path / "a" / "run")
    many = train.train_and_evaluate(make_config(tmp_path / "b", epochs=2, checkpoint=every,
                                                   steps_per_loop=steps_per_loop), tmp_path / "b" / "run")
    assert [Path(p).name for p in checkpoint.checkpoint_paths(tmp_path / "b" / "ckpt")] == \
        [f"ckpt-{s}" for s in (7, 14, 18, 21, 28, 35, 36)]
    assert_same_checkpoint(tmp_path / "a" / "ckpt" / "ckpt-36", tmp_path / "b" / "ckpt" / "ckpt-36")
    assert rows_without_timing(tmp_path / "b" / "run" / "metrics.csv") == \
        rows_without_timing(tmp_path / "a" / "run" / "metrics.csv")
    assert many["test_accuracy"] == one["test_accuracy"]


def test_next_chunk_stops_at_epoch_ends_and_checkpoints():
    assert controller.next_chunk(0, 20, 100, None) == 20
    assert controller.next_chunk(0, 20, 100, 7) == 7
    assert controller.next_chunk(7, 20, 100, 7) == 7
    assert controller.next_chunk(14, 20, 100, 7) == 6
    assert controller.next_chunk(20, 40, 5, 7) == 1
    assert controller.next_chunk(21, 40, 5, None) == 5


def test_a_short_run_learns_real_digits(tmp_path):
    results = train.train_and_evaluate(make_config(tmp_path, epochs=3, batch_size=50), tmp_path / "run")
    assert results["test_accuracy"] >= 0.9, results
    rows = history.read_rows(tmp_path / "run" / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["step"] for r in rows] == [36, 72, 108]
    assert rows[-1]["loss"] < rows[0]["loss"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["test_accuracy"] == results["test_accuracy"]
    assert saved["val_accuracy"] == next(r["val_accuracy"] for r in rows if r["epoch"] == saved["selected_epoch"])
    assert "test_accuracy" not in rows[-1]  # the test set is evaluated once, at the end
    assert saved["steps"] == 108 and saved["epochs"] == 3 and saved["train_images_per_sec"] > 0


def test_restart_continues_and_matches_an_uninterrupted_run(tmp_path):
    straight = train.train_and_evaluate(make_config(tmp_path / "a", epochs=2), tmp_path / "a" / "run")
    train.train_and_evaluate(make_config(tmp_path / "b", epochs=1), tmp_path / "b" / "run1")
    resumed = train.train_and_evaluate(make_config(tmp_path / "b", epochs=2), tmp_path / "b" / "run2")
    assert resumed["steps"] == 36 and resumed["test_accuracy"] == straight["test_accuracy"]
    assert_same_checkpoint(tmp_path / "a" / "ckpt" / "ckpt-36", tmp_path / "b" / "ckpt" / "ckpt-36")
    # The second invocation's run dir holds the whole history, the first epoch included.
    assert rows_without_timing(tmp_path / "b" / "run2" / "metrics.csv") == \
        rows_without_timing(tmp_path / "a" / "run" / "metrics.csv")
    # Asked for fewer epochs than it has: refused in one line, not reported as a run of 1 epoch.
    with pytest.raises(CheckpointError, match=r"is trained to epoch 2 \(step 36\), past epochs=1; .* Pass epochs=2"):
        train.train_and_evaluate(make_config(tmp_path / "b", epochs=1), tmp_path / "b" / "run3")


def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path):
    """Restores model, Adam slots, Dropout seeds, epoch metrics and the data position."""
    every = {"every_n_steps": 7, "keep": 100}
    train.train_and_evaluate(make_config(tmp_path / "a", epochs=2, checkpoint=every), tmp_path / "a" / "run")
    # Make "b" look like a run killed at step 28 (mid epoch 1) after saving ckpt-28.
    shutil.copytree(tmp_path / "a" / "ckpt", tmp_path / "b" / "ckpt")
    for f in (tmp_path / "b" / "ckpt").glob("ckpt-*"):
        if int(f.name.split(".")[0].split("-")[1]) > 28:
            f.unlink()
    train.train_and_evaluate(make_config(tmp_path / "b", epochs=2, checkpoint=every), tmp_path / "b" / "run")
    assert_same_checkpoint(tmp_path / "a" / "ckpt" / "ckpt-36", tmp_path / "b" / "ckpt" / "ckpt-36")
    assert rows_without_timing(tmp_path / "b" / "run" / "metrics.csv") == \
        rows_without_timing(tmp_path / "a" / "run" / "metrics.csv")


def test_dropout_seed_state_is_in_the_checkpoint(tmp_path, sample):
    state = new_state(make_config(tmp_path), sample)
    keys = variables(state.checkpoint.write(str(tmp_path / "state")))
    assert any(k.startswith("rng/") for k in keys), keys


def test_corrupt_latest_checkpoint_falls_back(tmp_path, caplog):
    straight = train.train_and_evaluate(make_config(tmp_path / "a", epochs=3), tmp_path / "a" / "run")
    train.train_and_evaluate(make_config(tmp_path / "b", epochs=2), tmp_path / "b" / "run1")
    ckpt = tmp_path / "b" / "ckpt"
    data_file = next(ckpt.glob("ckpt-36.data-*"))
    data_file.write_bytes(data_file.read_bytes()[:1000])  # truncated
    resumed = train.train_and_evaluate(make_config(tmp_path / "b", epochs=3), tmp_path / "b" / "run2")
    assert "ckpt-36 is unusable" in caplog.text
    assert (ckpt / "broken" / data_file.name).exists()
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert_same_checkpoint(tmp_path / "a" / "ckpt" / "ckpt-54", ckpt / "ckpt-54")


def test_all_checkpoints_corrupt_stops_and_keeps_them(tmp_path):
    train.train_and_evaluate(make_config(tmp_path, epochs=1), tmp_path / "run")
    for f in (tmp_path / "ckpt").glob("ckpt-*.data-*"):
        f.write_bytes(b"garbage")
    before = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    with pytest.raises(CheckpointError, match="no usable checkpoint.*resume=never"):
        train.train_and_evaluate(make_config(tmp_path, epochs=2), tmp_path / "run2")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == before


def test_garbled_state_file_is_rebuilt(tmp_path):
    train.train_and_evaluate(make_config(tmp_path, epochs=1), tmp_path / "run")
    (tmp_path / "ckpt" / "checkpoint").write_text("{{{ not a proto")
    results = train.train_and_evaluate(make_config(tmp_path, epochs=2), tmp_path / "run2")
    assert results["steps"] == 36


def test_checkpoints_of_another_run_are_refused(tmp_path):
    train.train_and_evaluate(make_config(tmp_path, epochs=1), tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"different run \(lr: 0.001 there, 0.01 here\)"):
        train.train_and_evaluate(make_config(tmp_path, epochs=1, lr=0.01), tmp_path / "run2")


def test_resume_never_moves_old_checkpoints_aside(tmp_path):
    train.train_and_evaluate(make_config(tmp_path, epochs=1), tmp_path / "run")
    results = train.train_and_evaluate(make_config(tmp_path, epochs=1, resume="never"), tmp_path / "run2")
    assert results["steps"] == 18 and results["status"] == "started"
    (old,) = tmp_path.glob("ckpt.old-*")
    assert (old / "ckpt-18.index").exists() and (old / "metrics.csv").exists()


def test_resume_from_a_given_path(tmp_path):
    train.train_and_evaluate(make_config(tmp_path / "a", epochs=1), tmp_path / "run")
    config = make_config(tmp_path / "b", epochs=2, resume=str(tmp_path / "a" / "ckpt" / "ckpt-18"))
    results = train.train_and_evaluate(config, tmp_path / "run2")
    assert results["steps"] == 36 and results["status"] == "resumed"
    assert [r["epoch"] for r in history.read_rows(tmp_path / "run2" / "metrics.csv")] == [2]  # trained epoch 2 only
    # Rerunning the same command continues from the run's own checkpoints, not the given one.
    again = train.train_and_evaluate(make_config(tmp_path / "b", epochs=3, resume=config.resume), tmp_path / "run3")
    assert again["steps"] == 54 and again["status"] == "resumed"
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        train.train_and_evaluate(make_config(tmp_path / "c", resume=str(tmp_path / "nope")), tmp_path / "r")


def test_nonfinite_loss_stops_without_saving_over_the_last_good(tmp_path):
    config = make_config(tmp_path, lr=1e30, checkpoint={"every_n_steps": 1, "keep": 50})
    with pytest.raises(TrainingError, match=r"NaN or Inf at step (\d+)") as e:
        train.train_and_evaluate(config, tmp_path / "run")
    bad = int(e.value.args[0].split("at step ")[1].split(";")[0])
    saved = checkpoint.checkpoint_paths(tmp_path / "ckpt")
    assert int(saved[-1].rsplit("-", 1)[1]) == bad - 1
    for key, value in variables(saved[-1]).items():
        if key.startswith(("model/", "optimizer/")):  # (the selection record starts as NaN: no epoch yet)
            assert np.all(np.isfinite(value)), key


def test_a_second_process_is_locked_out(tmp_path):
    import subprocess
    import sys

    (tmp_path / "ckpt").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('locked', flush=True);"
        "time.sleep(60)"), str(tmp_path / "ckpt" / checkpoint.LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointError, match=f"in use by another training process \\(pid {holder.pid}\\)"):
            train.train_and_evaluate(make_config(tmp_path), tmp_path / "run")
    finally:
        holder.kill()
        holder.wait()
    # A dead owner holds nothing.
    assert train.train_and_evaluate(make_config(tmp_path), tmp_path / "run")["steps"] == 18


def test_eval_mode_reports_what_training_reported(tmp_path):
    trained = train.train_and_evaluate(make_config(tmp_path, epochs=1), tmp_path / "run")
    evaluated = evaluation.evaluate_checkpoint(make_config(tmp_path, mode="eval"), tmp_path / "eval")
    assert evaluated["test_accuracy"] == trained["test_accuracy"]
    assert evaluated["test_loss"] == trained["test_loss"]
    assert evaluated["steps"] == 18 and evaluated["status"] == "evaluated"


def test_eval_without_a_checkpoint_says_train_first(tmp_path):
    with pytest.raises(CheckpointError, match="train first"):
        evaluation.evaluate_checkpoint(make_config(tmp_path, mode="eval"), tmp_path / "eval")


def test_checkpoint_cadence(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(checkpointer.time, "monotonic", lambda: now[0])
    by_steps = checkpointer.Cadence(every_n_steps=5, every_n_minutes=None)
    assert [s for s in range(1, 16) if by_steps.due(s)] == [5, 10, 15]
    by_time = checkpointer.Cadence(every_n_steps=None, every_n_minutes=2)
    now[0] = 119.0
    assert not by_time.due(1)
    now[0] = 120.0
    assert by_time.due(2)
    by_time.saved()
    now[0] = 200.0
    assert not by_time.due(3)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_float32_logits_and_resumes(tmp_path, precision):
    # float16 kernels are slow on CPUs (about 10 images/s; GPUs are its place): 40 generated training
    # images of 12x12 pixels (the stratified split holds 13 out) and 10 test images; two steps an
    # epoch at batch 15.
    if precision == "mixed_bfloat16":
        data_dir, batch, split = SAMPLE, 100, "dataset.validation_split=0.1"
    else:
        data_dir = write_idx_dataset(tmp_path / "f16", 40, 10, shape=(12, 12))
        batch, split = 15, "dataset.validation_split=0.25"
    config = lambda where, epochs: make_config(tmp_path / where, split, data_dir=data_dir, epochs=epochs,
                                               batch_size=batch, precision=precision)
    try:
        straight = train.train_and_evaluate(config("a", 2), tmp_path / "a" / "run")
        train.train_and_evaluate(config("b", 1), tmp_path / "b" / "r1")
        resumed = train.train_and_evaluate(config("b", 2), tmp_path / "b" / "r2")
        state = new_state(config("c", 1), data.load("mnist", str(data_dir)))
    finally:
        keras.mixed_precision.set_global_policy("float32")  # for the other tests, whatever happened
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert np.isfinite(resumed["test_loss"])
    (last,) = [Path(p).name for p in checkpoint.checkpoint_paths(tmp_path / "a" / "ckpt")][-1:]
    assert_same_checkpoint(tmp_path / "a" / "ckpt" / last, tmp_path / "b" / "ckpt" / last)
    assert state.model.layers[0].compute_dtype == precision.split("_")[1]
    assert state.model.layers[-1].compute_dtype == "float32"
    assert isinstance(state.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")


@pytest.mark.parametrize("schedule,at,expected", [
    ({"name": "constant"}, [0, 1000], [0.01, 0.01]),
    ({"name": "exponential", "decay_steps": 100, "decay_rate": 0.5, "staircase": True},
     [0, 99, 100, 250], [0.01, 0.01, 0.005, 0.0025]),
    ({"name": "exponential", "decay_steps": 100, "decay_rate": 0.5}, [50], [0.01 * 0.5 ** 0.5]),
    ({"name": "cosine", "decay_steps": 100, "alpha": 0.1}, [0, 50, 100, 200], [0.01, 0.0055, 0.001, 0.001]),
])
def test_learning_rate_schedules(tmp_path, schedule, at, expected):
    config = make_config(tmp_path, *(f"schedule.{k}={v}" for k, v in schedule.items()), lr=0.01)
    rate = learning_rate(config.lr, config.schedule, 18)  # 18 steps an epoch (none of these reads it)
    values = [float(rate(s)) if callable(rate) else rate for s in at]
    np.testing.assert_allclose(values, expected, rtol=1e-5)


def test_ensemble_trains_reports_members_and_round_trips(tmp_path):
    config = lambda where, epochs, **kw: make_config(tmp_path / where, "model=ensemble", "model.size=2",
                                                     epochs=epochs, **kw)
    straight = train.train_and_evaluate(config("a", 2), tmp_path / "a" / "run")
    assert len(straight["member_test_accuracy"]) == 2
    assert straight["test_accuracy"] >= max(straight["member_test_accuracy"]) - 0.05
    # Every member is in the checkpoint under the model: restore the model alone, evaluate.
    sample = data.load("mnist", str(SAMPLE))
    fresh = new_state(config("c", 1), sample).model
    tf.train.Checkpoint(model=fresh).read(str(tmp_path / "a" / "ckpt" / "ckpt-36")).assert_existing_objects_matched()
    test_ds = data.test_dataset(sample.x_test, sample.y_test)
    assert steps.make_evaluate(fresh, test_ds.element_spec)(test_ds)[0]["member_test_accuracy"] == \
        straight["member_test_accuracy"]
    train.train_and_evaluate(config("b", 1), tmp_path / "b" / "r1")
    resumed = train.train_and_evaluate(config("b", 2), tmp_path / "b" / "r2")
    same = ("test_accuracy", "test_loss", "member_test_accuracy", "epochs", "steps", "run_name")
    assert {k: resumed[k] for k in same} == {k: straight[k] for k in same} and resumed["status"] == "resumed"
    assert_same_checkpoint(tmp_path / "a" / "ckpt" / "ckpt-36", tmp_path / "b" / "ckpt" / "ckpt-36")
    evaluated = evaluation.evaluate_checkpoint(config("b", 2, mode="eval"), tmp_path / "b" / "eval")
    assert evaluated["member_test_accuracy"] == straight["member_test_accuracy"]


def test_an_ensemble_of_bn_cnn_with_augmentation_trains_and_evaluates(tmp_path, tiny_data):
    """`model=ensemble model.members=bn_cnn model.size=2 dataset.augment=true`, then `mode=eval`:
    the same numbers, and the evaluation's figures."""
    settings = [f"dataset.data_dir={tiny_data}", "model=ensemble", "model.members=bn_cnn", "model.size=2",
                "epochs=2", "batch_size=40", "dataset.augment=true", "progress=false"]
    trained = run_in_process(tmp_path, *settings, run_dir="run")
    assert len(trained["member_test_accuracy"]) == 2 and trained["steps"] == 6
    evaluated = run_in_process(tmp_path, *settings, "mode=eval", run_dir="eval")
    assert evaluated["status"] == "evaluated" and evaluated["steps"] == 6
    for key in ("test_accuracy", "test_loss", "member_test_accuracy"):
        assert evaluated[key] == trained[key], key
    for name in ("confusion_matrix.png", "per_class_accuracy.png", "misclassified.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 1000, name


def test_augmented_run_with_cutmix_resumes_exactly_mid_epoch(tmp_path):
    """The book's augmentation and cutmix on half the batches: the draws of (seed, epoch, batch)."""
    every = {"every_n_steps": 7, "keep": 100}
    cfg = lambda where: make_config(tmp_path / where, "dataset.augment=true", "cutmix.alpha=1.0",
                                    "cutmix.probability=0.5", epochs=2, checkpoint=every)
    train.train_and_evaluate(cfg("a"), tmp_path / "a" / "run")
    shutil.copytree(tmp_path / "a" / "ckpt", tmp_path / "b" / "ckpt")
    for f in (tmp_path / "b" / "ckpt").glob("ckpt-*"):
        if int(f.name.split(".")[0].split("-")[1]) > 28:
            f.unlink()
    train.train_and_evaluate(cfg("b"), tmp_path / "b" / "run")
    assert_same_checkpoint(tmp_path / "a" / "ckpt" / "ckpt-36", tmp_path / "b" / "ckpt" / "ckpt-36")


def test_other_data_gets_its_own_checkpoint_directory(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default checkpoints/ root
    config = lambda data_dir: compose(f"dataset.data_dir='{data_dir}'", "epochs=1", "progress=false",
                                      "summaries=false")
    real = train.train_and_evaluate(config(SAMPLE), tmp_path / "r1")
    toy = train.train_and_evaluate(config(tiny_data), tmp_path / "r2")
    assert real["checkpoint_dir"] != toy["checkpoint_dir"] and toy["status"] == "started"
    assert Path(real["checkpoint_dir"]).name.startswith("mnist-book_cnn-lr0.001-bs100-seed0-")


def test_a_damaged_given_checkpoint_is_one_clear_error(tmp_path):
    train.train_and_evaluate(make_config(tmp_path / "a", epochs=1), tmp_path / "run")
    data_file = next((tmp_path / "a" / "ckpt").glob("ckpt-18.data-*"))
    data_file.write_bytes(b"garbage")
    config = make_config(tmp_path / "b", resume=str(tmp_path / "a" / "ckpt" / "ckpt-18"))
    with pytest.raises(CheckpointError, match="cannot restore it"):
        train.train_and_evaluate(config, tmp_path / "run2")
    assert data_file.read_bytes() == b"garbage"  # another run's directory: read, not repaired


def test_jobs_in_one_process_do_not_keep_each_others_graphs(tmp_path):
    """An in-process multirun: a finished job's traced graphs must be freed, or memory grows
    job after job (TensorFlow's custom-gradient registry used to keep every one alive)."""
    import gc

    from tensorflow.python.framework.func_graph import FuncGraph

    def live_graphs() -> int:
        gc.collect()
        return sum(isinstance(o, FuncGraph) for o in gc.get_objects())

    counts = []
    for seed in range(3):
        train.train_and_evaluate(make_config(tmp_path / str(seed), seed=seed, summaries=False),
                                    tmp_path / f"run{seed}")
        build.setup(make_config(tmp_path, seed=seed))  # what the next job starts with
        counts.append(live_graphs())
    assert counts[2] == counts[1] == counts[0], counts
