"""A run's lifecycle: resume policy, identity, a fresh process state between jobs."""

import json

import pytest
import tensorflow as tf
from helpers import assert_same_checkpoint, make_config

from cnn.training import build, train
from cnn.errors import CheckpointError, ConfigError


def test_resume_from_a_directory_takes_its_latest_checkpoint(tmp_path):
    train.train_and_evaluate(make_config(tmp_path / "a", epochs=2), tmp_path / "a" / "run")
    given = tmp_path / "a" / "ckpt"
    before = {p.name: p.stat().st_mtime_ns for p in given.iterdir()}
    results = train.train_and_evaluate(make_config(tmp_path / "b", epochs=3, resume=str(given)),
                                          tmp_path / "b" / "run")
    assert results["status"] == "resumed" and results["steps"] == 54
    assert {p.name: p.stat().st_mtime_ns for p in given.iterdir()} == before  # only read
    straight = train.train_and_evaluate(make_config(tmp_path / "c", epochs=3), tmp_path / "c" / "run")
    assert results["test_accuracy"] == straight["test_accuracy"]
    assert_same_checkpoint(tmp_path / "c" / "ckpt" / "ckpt-54", tmp_path / "b" / "ckpt" / "ckpt-54")


def test_a_damaged_run_json_is_one_clear_error_and_stays(tmp_path):
    train.train_and_evaluate(make_config(tmp_path), tmp_path / "run")
    record = tmp_path / "ckpt" / "run.json"
    record.write_text("{ not json")
    with pytest.raises(CheckpointError, match=r"run\.json: unreadable .*checkpoint\.dir=<another dir>"):
        train.train_and_evaluate(make_config(tmp_path, epochs=2), tmp_path / "run2")
    assert record.read_text() == "{ not json"


def test_a_rejected_run_leaves_no_directory(tmp_path):
    with pytest.raises(CheckpointError, match="resume=maybe: no such checkpoint"):
        train.train_and_evaluate(make_config(tmp_path, resume="maybe"), tmp_path / "run")
    assert not (tmp_path / "ckpt").exists()


def test_a_mistyped_resume_path_is_refused_on_a_run_that_has_checkpoints(tmp_path):
    train.train_and_evaluate(make_config(tmp_path), tmp_path / "run")  # its own checkpoints, 18 steps
    for epochs in (1, 2):  # finished (its results would be reported) and not (its own would be resumed)
        with pytest.raises(CheckpointError, match="resume=/no/such/ckpt-5: no such checkpoint"):
            train.train_and_evaluate(make_config(tmp_path, epochs=epochs, resume="/no/such/ckpt-5"), tmp_path / "again")
    assert [p.name for p in (tmp_path / "ckpt").glob("ckpt-*.index")] == ["ckpt-18.index"]


def test_an_option_the_model_does_not_take_is_refused_before_the_devices_and_the_data(tmp_path, monkeypatch):
    touched = []
    monkeypatch.setattr(train.distribute, "create", lambda config: touched.append("devices"))
    monkeypatch.setattr(build.data_lib, "load_dataset", lambda dataset: touched.append("data"))
    with pytest.raises(ConfigError, match=r"model\.size=3: book_cnn does not take it"):
        train.train_and_evaluate(make_config(tmp_path, "+model.size=3"), tmp_path / "run")
    assert touched == [] and not (tmp_path / "run").exists()


def test_a_failed_run_keeps_a_directory_it_did_not_create(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(CheckpointError):
        train.train_and_evaluate(make_config(tmp_path, resume="maybe"), tmp_path / "run")
    assert (tmp_path / "ckpt").is_dir()


def test_each_job_gets_the_determinism_it_asks_for(tmp_path):
    from tensorflow.python.framework import config as tf_config

    try:
        build.setup(make_config(tmp_path, deterministic=True))
        assert tf_config.is_op_determinism_enabled()
        with pytest.raises(RuntimeError, match="determinism is enabled"):  # nondeterminism refused
            tf.random.Generator.from_non_deterministic_state()
        build.setup(make_config(tmp_path, deterministic=False))
        assert not tf_config.is_op_determinism_enabled()
        tf.random.Generator.from_non_deterministic_state()  # allowed again
    finally:
        build.setup(make_config(tmp_path))


def test_results_name_the_first_steps_wait(tmp_path):
    results = train.train_and_evaluate(make_config(tmp_path), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["first_step_seconds"] == results["first_step_seconds"] > 0


def test_jobs_in_one_process_get_no_false_retracing_warning(tmp_path, caplog, monkeypatch):
    """Each job traces its functions once; TensorFlow's detector, keyed on the source code,
    counts every job's first trace as a retracing of the same function."""
    import logging

    import keras
    from tensorflow.python.eager.polymorphic_function import polymorphic_function as pf

    from cnn.runtime import console
    from cnn.training import steps

    config = make_config(tmp_path)
    spec = (tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32))
    batches = [(tf.zeros([2, 4]), tf.zeros([2], tf.int32))]

    def jobs(n):
        pf._frequent_tracing_detector_manager = pf._FrequentTracingDetectorManager()  # a fresh process
        for _ in range(n):
            build.setup(config)
            steps.make_evaluate(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]), spec)(batches)

    tf_logger = logging.getLogger("tensorflow")
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        jobs(7)
        assert "retracing" not in caplog.text
        ours = [f for f in tf_logger.filters if isinstance(f, console._PerRunRetracing)]
        monkeypatch.setattr(build, "hide_per_run_retracing_warnings", lambda: None)
        for f in ours:
            tf_logger.removeFilter(f)
        try:
            jobs(7)
        finally:
            for f in ours:
                tf_logger.addFilter(f)
        assert "triggered tf.function retracing" in caplog.text  # what the filter hides


def test_a_record_listing_keys_that_cannot_change_the_run_is_still_this_run(tmp_path):
    """run.json written when model.size of a single model still entered the identity."""
    train.train_and_evaluate(make_config(tmp_path), tmp_path / "run")
    record = tmp_path / "ckpt" / "run.json"
    saved = json.loads(record.read_text())
    saved["identity"].update({"model.members": "book_cnn", "model.size": 5})
    record.write_text(json.dumps(saved))
    assert train.train_and_evaluate(make_config(tmp_path, epochs=2), tmp_path / "run2")["status"] == "resumed"
    with pytest.raises(CheckpointError, match=r"different run \(lr: 0.001 there, 0.01 here\)"):
        train.train_and_evaluate(make_config(tmp_path, epochs=2, lr=0.01), tmp_path / "run3")
