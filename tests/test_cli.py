"""`python train.py ...` end to end, as a user runs it: run dirs, errors, multirun, SIGKILL."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf
from conftest import ROOT, SAMPLE
from helpers import SAMPLE_RUN, env, sigkill_then_rerun, train

pytestmark = pytest.mark.slow


def test_missing_data_is_one_clear_line(tmp_path):
    proc = train(tmp_path, "dataset=fashion_mnist", "dataset.download=false", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in output
    (line,) = [l for l in output.splitlines() if l.startswith("error: ")]
    assert "train-images-idx3-ubyte" in line and "dataset.data_dir=" in line
    assert not (tmp_path / "outputs").exists()  # its empty output directory removed


@pytest.mark.parametrize("override,message", [
    ("batch_size=0", "batch_size=0: must be >= 1"),
    ("batch_sise=10", "batch_sise: no such key (did you mean batch_size?)"),
    ("+batch_sise=10", "batch_sise: no such key (did you mean batch_size?)"),
    ("lr=abc", "lr: Value 'abc' of type 'str' could not be converted to Float"),
    ("dataset=foo", "dataset=foo: no such option; available: cifar10, fashion_mnist, image_folder, mnist"),
    ("model.size=3", "model.size: no such option of this model"),  # not in book_cnn's YAML: at composition
    ("+model.size=3", "model.size=3: book_cnn does not take it"),  # added: by the builder check, before the data
    ("dataset.validation_split=1.5", "dataset.validation_split=1.5: must be in [0, 1)"),
    ("early_stopping.patience=-1", "early_stopping.patience=-1: must be >= 0"),
    ("monitor=accuracy", "monitor=accuracy: must be one of val_accuracy, val_loss"),
])
def test_bad_input_is_one_clear_line(tmp_path, override, message):
    proc = train(tmp_path, f"dataset.data_dir={SAMPLE}", override, check=False)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 1, output
    assert len(output.splitlines()) == 1 and message in output, output
    assert proc.stderr.startswith("error: "), output  # one format, from Hydra's composition or from the run
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "outputs").exists()


def test_rejected_runs_leave_no_output_directory_but_keep_one_with_results(tmp_path):
    """Quick rejections (none imports TensorFlow): output directories that cannot be created, a
    multirun whose jobs do not compose, and reruns into directories that already hold something."""
    (tmp_path / "afile").write_text("")
    # A log that cannot be opened: what a read-only directory is to a user other than root.
    (tmp_path / "unwritable" / "train.log").mkdir(parents=True)
    for args, path, key in ((["hydra.run.dir=afile/run"], "afile/run: Not a directory", "hydra.run.dir="),
                            (["-m", "hydra.sweep.dir=afile/sweep", "lr=0.1"], "afile/sweep", "hydra.sweep.dir="),
                            (["hydra.run.dir=unwritable"], "unwritable/train.log: Is a directory", "hydra.run.dir=")):
        proc = train(tmp_path, *args, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = proc.stderr.splitlines()
        assert line.startswith("error: cannot create or write the output directory: ") and path in line, line
        assert f"; pass {key}<a directory you can write>" in line and (tmp_path / "afile").is_file(), line
    proc = train(tmp_path, "-m", "lr=abc,0.1", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: lr: "), proc.stderr
    assert not (tmp_path / "multirun").exists()  # the sweep directory Hydra made for it, removed
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text("{}")  # an earlier run's results
    (tmp_path / "killed" / ".hydra").mkdir(parents=True)
    (tmp_path / "killed" / "train.log").write_text("an earlier run's lines\n")
    for kept in ("done", "killed"):
        proc = train(tmp_path, "+batch_sise=10", f"hydra.run.dir={kept}", check=False)
        assert proc.returncode == 1 and proc.stderr.startswith("error: batch_sise: no such key"), proc.stderr
        log = (tmp_path / kept / "train.log").read_text()
        assert "[train][ERROR] - batch_sise: no such key" in log  # the line kept with what was there
    assert (tmp_path / "done" / "results.json").read_text() == "{}"
    assert (tmp_path / "killed" / "train.log").read_text().startswith("an earlier run's lines\n")
    (tmp_path / "empty").mkdir()  # the user's own, empty: it stays, without what Hydra wrote there
    proc = train(tmp_path, "+batch_sise=10", "hydra.run.dir=empty", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: batch_sise: no such key"), proc.stderr
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    assert {p.name for p in tmp_path.iterdir()} <= {"afile", "unwritable", "done", "killed", "empty", "keras-home"}


def test_a_rejected_resume_leaves_nothing_behind(tmp_path):
    proc = train(tmp_path, f"dataset.data_dir={SAMPLE}", "resume=maybe", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: resume=maybe: no such checkpoint"), proc.stdout + proc.stderr
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
    assert not (tmp_path / "outputs").exists()


def test_help_explains_every_key(tmp_path):
    import inspect

    from cnn.config import Config, ImageFolderConfig
    from cnn.config.compose import OPEN_GROUPS, schema_keys
    from cnn.models import MODELS

    proc = train(tmp_path, "--help")
    for key in dict.fromkeys(schema_keys(Config) + schema_keys(ImageFolderConfig, "dataset.")):  # image folders' too
        if key in OPEN_GROUPS:  # the model's and the optimizer's options: one entry each, `model.*`
            assert f"\n{key}.* " in proc.stdout, key
        elif key not in ("dataset.name", "distribute.name", "schedule.decay_steps",
                         "schedule.decay_rate", "schedule.staircase", "schedule.alpha",
                         "schedule.milestones", "schedule.gamma",
                         "checkpoint.every_n_steps", "checkpoint.every_n_minutes"):
            assert f"\n{key} " in proc.stdout, key
    models = proc.stdout.split("\nmodel.* ", 1)[1].split("\nmodel._target_ ", 1)[0]  # the model.* entry
    for name in MODELS:  # names every option of every built-in model (dropout, members, size, bn_momentum)
        for option in inspect.signature(MODELS[name]).parameters:
            assert option in MODELS.context or option in models, (name, option)
    assert "model=ensemble: members," in models and "decay_steps, decay_rate, staircase" in proc.stdout
    assert "step (milestones, gamma)" in proc.stdout
    assert "checkpoint.every_n_steps, checkpoint.every_n_minutes" in proc.stdout


def test_help_into_a_reader_that_stopped_ends_quietly(tmp_path):
    """`python train.py --help | head`: a pipe whose reader is gone is no traceback and no
    message; exit 1 (what was written was not all read), as Python's own recipe."""
    import os

    read, write = os.pipe()
    os.close(read)  # the reader stopped before the first line
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], cwd=tmp_path, env=env(tmp_path),
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 1 and proc.stderr == ""


def test_multirun_2x2_gives_each_job_its_own_checkpoints(tmp_path, tiny_data):
    train(tmp_path, "-m", "lr=0.01,0.001", "batch_size=64,128", f"dataset.data_dir={tiny_data}",
          "epochs=1", "hydra.sweep.dir=sweep")
    dirs = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert len(dirs) == 4, dirs
    for d in dirs:
        assert list((tmp_path / "checkpoints" / d).glob("ckpt-*.index")), d
    for job in range(4):
        assert json.loads((tmp_path / "sweep" / str(job) / "results.json").read_text())["epochs"] == 1
    # TensorBoard's HParams dashboard: the sweep's columns, and each job's settings and final metrics.
    from tensorboard.plugins.hparams import plugin_data_pb2

    def hparams(directory, tag):
        found = [plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                 for path in directory.glob("events.out.tfevents.*")
                 for event in tf.compat.v1.train.summary_iterator(str(path))
                 for value in event.summary.value if value.tag == tag]
        assert len(found) == 1, (directory, tag)
        return found[0]

    experiment = hparams(tmp_path / "sweep" / "tensorboard", "_hparams_/experiment").experiment
    assert [h.name for h in experiment.hparam_infos] == ["batch_size", "lr"]
    assert [m.name.tag for m in experiment.metric_infos][:3] == ["final/objective", "final/val_accuracy",
                                                                  "final/test_accuracy"]
    events = Path(json.loads((tmp_path / "sweep" / "0" / "results.json").read_text())["tensorboard_dir"])
    session = hparams(events, "_hparams_/session_start_info").session_start_info
    assert session.hparams["lr"].number_value == 0.01 and session.hparams["batch_size"].number_value == 64
    final = {value.tag for path in events.glob("events.out.tfevents.*")
             for event in tf.compat.v1.train.summary_iterator(str(path)) for value in event.summary.value}
    assert {"final/objective", "final/val_accuracy", "final/test_accuracy"} <= final


def test_sigkill_at_a_random_step_then_rerun_is_bitwise_exact(tmp_path):
    """bn_cnn's batch-norm statistics, a decaying learning rate restored mid-schedule, and early
    stopping's count and the best checkpoint's record: the same stopping epoch. (The book's CNN
    with Adam; tests/data/test_augment.py's regularizers with an SGD recipe, test_registry.py's own
    model and tests/data/test_image_folder.py's folder are the same check on other settings.)"""
    settings = ["model=bn_cnn", "schedule.name=exponential", "schedule.decay_steps=10", "schedule.decay_rate=0.8",
                "lr=0.01", "epochs=12", "early_stopping.patience=1"]
    straight = sigkill_then_rerun(tmp_path, [*SAMPLE_RUN, *settings, "checkpoint.every_n_steps=5", "checkpoint.keep=2"])
    assert straight["stopped_early"] and straight["epochs"] < 12


def test_the_readmes_train_command_works_verbatim_prints_what_it_shows_and_writes_its_run_directory(tmp_path):
    """The README's first command, as written, from a directory with the repository's tests/
    (so nothing lands in the checkout): its epoch lines are the README's but for the timings,
    none of TensorFlow's C++ start-up lines shows, and its run directory (Hydra's default,
    outputs/<date>/<time>) and checkpoint directory hold what a run writes."""
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up and train", 1)[1].split("```", 2)[1]
    (command,) = [line for line in setup.splitlines() if line.startswith("python train.py")]
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *command.split()[2:]], cwd=tmp_path,
                          env=env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = readme.split("## Set up and train", 1)[1].split("```\n[...]", 1)[1].split("```", 1)[0]
    untimed = lambda text: [line.split(" - ", 1)[1].rsplit("  ", 3)[0] for line in text.splitlines()
                            if " - epoch " in line]
    assert untimed(proc.stdout + proc.stderr) == untimed("[...]" + shown) != []
    for noise in ("cuInit", "cuda", "oneDNN", "absl::InitializeLog", "I0000", "E0000", "W0000"):
        assert noise not in proc.stdout + proc.stderr, noise  # our lines only
    (run,) = (tmp_path / "outputs").glob("*/*")
    assert (run / ".hydra" / "config.yaml").exists()
    log = (run / "train.log").read_text()
    assert "epoch 3/3" in log and "test accuracy" in log
    assert len((run / "metrics.csv").read_text().splitlines()) == 4  # header + 3 epochs
    results = json.loads((run / "results.json").read_text())
    assert {"test_accuracy", "test_loss", "epochs", "steps", "train_images_per_sec"} <= results.keys()
    assert results["steps"] == 54 and results["epochs"] == 3  # 1,800 training images / 100 = 18 steps
    (ckpt,) = (tmp_path / "checkpoints").iterdir()
    assert ckpt.name.startswith("mnist-book_cnn-lr0.001-bs100-seed0-") and (ckpt / "ckpt-54.index").exists()
