"""`+search=optuna`: one study per search on today's Optuna, pruning (also from a launcher's own
process), several workers on one study, resuming a killed search, and the one-line refusals."""

import json
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from conftest import ROOT
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from helpers import env, train

from cnn.config import compose
from cnn.errors import ConfigError
from cnn.sweeps.search import budget_used, claim, study_record
from cnn.sweeps.space import search_space
from cnn.sweeps.storage import RETRY_OF, open_storage, requeue_stale

DB = "multirun/optuna/optuna.db"


def test_the_search_space_in_hydra_syntax():
    space, fixed = search_space({"lr": "tag(log, interval(0.0001, 0.01))", "batch_size": "choice(32, 64)"},
                                ["epochs=2", "seed=0,1", "dropout=range(0.1, 0.4, 0.1)", "batch_size=16"])
    assert space["lr"] == FloatDistribution(0.0001, 0.01, log=True)
    assert space["seed"] == CategoricalDistribution([0, 1])
    assert "batch_size" not in space and fixed == ["epochs=2", "batch_size=16"]  # the command line wins
    assert isinstance(space["dropout"], FloatDistribution) and space["dropout"].step == pytest.approx(0.1)
    assert search_space({"width": "range(8, 33, 8)"}, [])[0]["width"] == IntDistribution(8, 32, step=8)


def test_a_study_is_named_after_what_its_search_holds_fixed():
    space = {"lr": FloatDistribution(1e-4, 1e-2, log=True)}
    name, record = study_record(compose(), space, "maximize", "2000+500:aaaa")
    assert name.startswith("mnist-book_cnn-") and "lr" not in record and record["epochs"] == 15
    assert study_record(compose("lr=0.5"), space, "maximize", "2000+500:aaaa")[0] == name  # lr is searched
    for other in [study_record(compose(), space, "maximize", "60000+10000:bbbb"),  # other data
                  study_record(compose("batch_size=64"), space, "maximize", "2000+500:aaaa"),
                  study_record(compose("epochs=3"), space, "maximize", "2000+500:aaaa"),
                  study_record(compose(), {"lr": FloatDistribution(1e-3, 1e-1, log=True)}, "maximize", "2000+500:aaaa")]:
        assert other[0] != name
    assert study_record(compose(), {"model": CategoricalDistribution(["bn_cnn", "book_cnn"])}, "maximize",
                        "x")[0].startswith("mnist-models-")
    with pytest.raises(ConfigError, match="pass hydra.sweeper.direction=minimize"):
        study_record(compose("monitor=val_loss"), space, "maximize", "x")


def test_claims_stay_inside_the_budget_and_stale_trials_come_back(tmp_path):
    storage = open_storage(f"journal:{tmp_path / 'study.journal'}")
    study = optuna.create_study(storage=storage, study_name="s")
    space = {"x": FloatDistribution(0, 1)}
    trials = [claim(study, space, 3) for _ in range(4)]
    assert [t is None for t in trials] == [False, False, False, True]
    study.tell(trials[0], 1.0)
    study.tell(trials[1], state=TrialState.PRUNED)
    # trials[2] stays RUNNING: its worker "died". After the grace period it is failed and enqueued again.
    assert requeue_stale(study, grace_seconds=3600) == []
    assert requeue_stale(study, grace_seconds=0) == [trials[2].number]
    again = claim(study, space, 3)
    assert again.params == trials[2].params and again.user_attrs[RETRY_OF] == trials[2].number
    assert budget_used(study) == 3 and claim(study, space, 3) is None


def study(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / DB}")
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def search(tiny_data, *more):
    return ["-m", "+search=optuna", f"dataset.data_dir={tiny_data}", "batch_size=40", *more]


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path, tiny_data):
    command = [sys.executable, str(ROOT / "train.py"), *search(tiny_data, "hydra.sweeper.n_trials=3", "epochs=1")]
    workers = [subprocess.Popen([*command, f"hydra.sweep.dir=worker{i}"], cwd=tmp_path, env=env(tmp_path),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outputs = [w.communicate(timeout=600)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = study(tmp_path).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    ran = [yaml.safe_load(p.read_text())["hydra"]["sweeper"]["trial"] for p in tmp_path.glob("worker*/*/.hydra/hydra.yaml")]
    assert sorted(ran) == sorted(t.number for t in trials if t.state == TrialState.COMPLETE)  # each trial once
    assert not any("Traceback" in out or "\x1b[" in out for out in outputs)
    # (A rerun of a study whose budget is spent runs nothing: the pruned test's rerun.)


@pytest.mark.slow
def test_a_pruned_trial_stops_saved_and_is_not_trained_again(tmp_path, tiny_data):
    # A pruner that prunes every trial at its second epoch (steps are epochs); the jobs run in joblib's processes.
    prune = ["hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=2.0", "hydra.sweeper.pruner.n_warmup_steps=2"]
    settings = search(tiny_data, "hydra.sweeper.n_trials=2", "epochs=3", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=1", *prune)
    proc = train(tmp_path, *settings, "hydra.sweep.dir=first")
    trials = study(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(sorted(t.intermediate_values) == [1, 2] for t in trials)
    for path in (tmp_path / "first").glob("*/results.json"):
        results = json.loads(path.read_text())
        assert results["status"] == "pruned" and results["epochs"] == 2
        assert results["checkpoint"].endswith(f"ckpt-{results['steps']}")
    assert "2 pruned" in proc.stdout + proc.stderr and "pruned" in (tmp_path / "first" / "report.md").read_text()
    rerun = train(tmp_path, *settings, "hydra.sweep.dir=second")  # the budget spent: it says so, runs nothing
    assert "0 of 2 trials complete, 2 pruned; this invocation ran 0 trials" in rerun.stdout + rerun.stderr
    assert not list((tmp_path / "second").glob("*/results.json"))


@pytest.mark.slow
def test_a_killed_search_resumes_its_trial_and_a_study_name_of_other_settings_is_refused(tmp_path, tiny_data):
    settings = search(tiny_data, "hydra.sweeper.n_trials=2", "epochs=2", "checkpoint.every_n_steps=1",
                      "hydra.sweeper.grace_seconds=2", "hydra.sweeper.heartbeat_seconds=0.5",
                      "hydra.sweeper.study_name=mine")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *settings, "hydra.sweep.dir=killed"],
                            cwd=tmp_path, env=env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("checkpoints/*/ckpt-2.index")):  # inside the first trial, saved
        assert proc.poll() is None and time.monotonic() < deadline, "the search ended before the kill"
        time.sleep(0.05)
    proc.kill()
    assert proc.wait() == -9
    time.sleep(2.5)  # past the grace period: the trial's worker is gone
    out = train(tmp_path, *settings, "hydra.sweep.dir=killed")  # the same sweep directory: its job 0 is left over
    trials = study(tmp_path).get_trials()
    assert [t.state for t in trials][:1] == [TrialState.FAIL] and sum(t.state == TrialState.COMPLETE for t in trials) == 2
    statuses = {p.parent.name: json.loads(p.read_text())["status"] for p in (tmp_path / "killed").glob("*/results.json")}
    assert statuses == {"1": "resumed", "2": "started"}  # trial 1 repeats the killed trial 0, from its checkpoints
    assert "left running by a worker that stopped" in out.stdout + out.stderr
    best = study(tmp_path).best_trial
    assert f"2 of 2 trials complete; this invocation ran 2 trials; best: trial {best.number}" in (
        out.stdout + out.stderr)

    other = train(tmp_path, *settings, "batch_size=50", "hydra.sweep.dir=other", check=False)
    assert other.returncode == 1 and "Traceback" not in other.stdout + other.stderr
    (line,) = [l for l in (other.stdout + other.stderr).splitlines() if "study_name=mine" in l]
    assert "that study searched other settings (batch_size: 40 there, 50 here)" in line
