"""tf.distribute and polite stops, end to end: `mirrored` over 2 logical CPUs, `multi_worker` as
2 local processes on 127.0.0.1, SIGINT/SIGTERM/SIGKILL and resuming, and the bad inputs."""

import json
import logging
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT
from helpers import env, run_in_process, train
from helpers import assert_same_checkpoint, rows_without_timing

pytestmark = pytest.mark.slow
TIMEOUT = 240  # seconds any one process may take here


def tiny(tiny_data, *more, batch_size=12, dropout=0.0):
    """120 generated images: 108 to train, 12 held out; batch 12, 9 steps an epoch; no dropout
    unless asked (the replicas of a strategy draw the same dropout mask, one device one mask)."""
    return [f"dataset.data_dir={tiny_data}", f"batch_size={batch_size}", f"model.dropout={dropout}", *more]


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports, index) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


class Workers:
    """Two `train.py distribute=multi_worker` processes on 127.0.0.1; `stop` kills what is left."""

    def __init__(self, tmp_path: Path, tag: str, *overrides: str):
        self.ports = ports = free_ports(2)
        self.logs = [tmp_path / f"{tag}-w{i}.out" for i in range(2)]
        self.procs = []
        for i in range(2):
            with open(self.logs[i], "w") as out:
                self.procs.append(subprocess.Popen(
                    [sys.executable, str(ROOT / "train.py"), "distribute=multi_worker", f"hydra.run.dir={tag}-w{i}",
                     *overrides], cwd=tmp_path, env={**env(tmp_path), "TF_CONFIG": tf_config(ports, i)},
                    stdout=out, stderr=subprocess.STDOUT))

    def wait(self) -> list[int]:
        deadline = time.monotonic() + TIMEOUT
        try:
            return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in self.procs]
        finally:
            self.stop()

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)

    def output(self, i: int) -> str:
        return self.logs[i].read_text()


def wait_for(predicate, procs, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert all(p.poll() is None for p in procs), f"a process ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def checkpoint_values(prefix) -> dict:
    reader = tf.train.load_checkpoint(str(prefix))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def test_mirrored_over_two_logical_cpus_matches_one_device(tmp_path, tiny_data, caplog):
    """Same global batch, same images per step: after 3 steps every weight and optimizer slot
    agrees within 1e-5 and the metrics within 1e-6. Not exactly: the replicas' gradients are
    summed (an all-reduce) where one device sums over the whole batch, so float32 additions run
    in another order, and Adam divides by the square root of tiny second moments, which turns
    last-bit differences into ~1e-6 of the weights."""
    with caplog.at_level(logging.INFO, logger="cnn"):
        run_in_process(tmp_path, *tiny(tiny_data), "epochs=1", "checkpoint.dir=one", run_dir="r1")
    mirrored = train(tmp_path, *tiny(tiny_data), "epochs=1", "distribute=mirrored", "distribute.logical_cpus=2",
                     "checkpoint.dir=two", "hydra.run.dir=r2")
    assert "one device, batch 12" in caplog.text
    assert "MirroredStrategy: 2 replicas, global batch 12 (6 per replica)" in mirrored.stdout + mirrored.stderr
    one, two = checkpoint_values(tmp_path / "one" / "ckpt-9"), checkpoint_values(tmp_path / "two" / "ckpt-9")
    assert one.keys() == two.keys()
    floats = [k for k in one if np.asarray(one[k]).dtype.kind == "f" and "/metrics/" not in k]
    assert len(floats) > 20
    for key in floats:
        np.testing.assert_allclose(two[key], one[key], rtol=0, atol=1e-5, err_msg=key)
    a, b = rows_without_timing(tmp_path / "r1" / "metrics.csv"), rows_without_timing(tmp_path / "r2" / "metrics.csv")
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert abs(float(a[0][key]) - float(b[0][key])) < 1e-6, key


def test_multi_worker_trains_resumes_after_sigkill_exactly_and_evaluates_on_one_device(tmp_path, tiny_data):
    settings = tiny(tiny_data, "epochs=3", dropout=0.5)
    straight = Workers(tmp_path, "straight", *settings, "checkpoint.dir=straight")
    assert straight.wait() == [0, 0], straight.output(0) + straight.output(1)
    results = json.loads((tmp_path / "straight-w0" / "results.json").read_text())
    assert results["steps"] == 27 and results["epochs"] == 3
    assert "MultiWorkerMirroredStrategy: 2 workers, 2 replicas, global batch 12 (6 per replica)" in straight.output(0)
    # The workers end with the same weights; the chief alone writes the run's files.
    assert f"worker 1: trained to step 27 (weights {results['weights_digest']})" in straight.output(1)
    assert not (tmp_path / "straight-w1" / "results.json").exists()
    assert not list(Path(results["checkpoint_dir"]).parent.glob("straight-worker1-*"))  # its saves, removed

    # The chief's checkpoint, on one device (this process's).
    evaluated = run_in_process(tmp_path, *settings, "checkpoint.dir=straight", "mode=eval", "checkpoint.eval=latest",
                               run_dir="eval")
    assert evaluated["steps"] == 27
    assert (evaluated["test_accuracy"], evaluated["test_loss"]) == (results["last"]["test_accuracy"],
                                                                    results["last"]["test_loss"])

    # Both workers killed after the first epoch's checkpoint, then rerun: the same run, bitwise.
    killed = Workers(tmp_path, "killed", *settings, "checkpoint.dir=killed")
    try:
        wait_for(lambda: (tmp_path / "killed" / "ckpt-9.index").exists(), killed.procs, "the first checkpoint")
    finally:
        for p in killed.procs:
            p.send_signal(signal.SIGKILL)
        killed.stop()
    assert not (tmp_path / "killed" / "ckpt-27.index").exists()
    rerun = Workers(tmp_path, "rerun", *settings, "checkpoint.dir=killed")
    assert rerun.wait() == [0, 0], rerun.output(0) + rerun.output(1)
    assert "resumed from" in rerun.output(0) and "resumed from" in rerun.output(1)
    resumed = json.loads((tmp_path / "rerun-w0" / "results.json").read_text())
    assert resumed["weights_digest"] == results["weights_digest"]
    assert_same_checkpoint(tmp_path / "straight" / "ckpt-27", tmp_path / "killed" / "ckpt-27")
    assert rows_without_timing(tmp_path / "rerun-w0" / "metrics.csv") == rows_without_timing(
        tmp_path / "straight-w0" / "metrics.csv")


def test_sigterm_to_one_worker_saves_on_both_and_a_worker_that_dies_stops_the_other(tmp_path, tiny_data):
    """One run twice: SIGTERM to the worker that is not the chief saves on both at one step;
    the rerun resumes there, and a SIGKILL of that worker stops the chief with one line."""
    settings = (*tiny(tiny_data, "epochs=500"), "checkpoint.dir=ckpt", "checkpoint.every_n_minutes=null")
    workers = Workers(tmp_path, "run", *settings)
    try:
        wait_for(lambda: "epoch 2/500" in workers.output(0), workers.procs, "the second epoch")
        workers.procs[1].send_signal(signal.SIGTERM)
    finally:
        codes = workers.wait()
    assert codes == [143, 143], workers.output(0) + workers.output(1)
    lines = [next(line for line in workers.output(i).splitlines() if "stopped by SIGTERM at step" in line)
             for i in range(2)]
    step = int(lines[0].split("at step ")[1].split()[0])
    assert f"at step {step} " in lines[1]
    assert (tmp_path / "ckpt" / f"ckpt-{step}.index").exists() and step < 500 * 9
    assert f"saved ckpt/ckpt-{step};" in lines[0] and "saved with the chief's, in ckpt;" in lines[1]
    stopped = json.loads((tmp_path / "run-w0" / "results.json").read_text())
    assert stopped == {"status": "stopped", "signal": "SIGTERM", "step": step, "checkpoint": f"ckpt/ckpt-{step}"}

    rerun = Workers(tmp_path, "rerun", *settings)
    try:
        next_epoch = f"epoch {step // 9 + 2}/500"  # an epoch ended after the resume
        wait_for(lambda: next_epoch in rerun.output(0), rerun.procs, next_epoch)
        rerun.procs[1].kill()
    finally:
        codes = rerun.wait()
    assert re.search(rf"resumed from \S*ckpt-{step}\n", rerun.output(0)), rerun.output(0)
    assert codes[0] == 1 and "Traceback" not in rerun.output(0)
    (line,) = [line for line in rerun.output(0).splitlines() if line.startswith("error: ")]
    assert f"worker 1 (127.0.0.1:{rerun.ports[1]}) stopped answering at step" in line
    assert "restart every worker to resume" in line


def test_sigint_and_sigterm_save_the_step_and_the_rerun_ends_bitwise_equal(tmp_path, tiny_data):
    """One run stopped twice: by SIGINT in its first invocation, by SIGTERM in the rerun that
    resumed it; the third invocation ends it bitwise equal to a run never stopped."""
    settings = tiny(tiny_data, "epochs=6", "checkpoint.every_n_minutes=null", batch_size=4, dropout=0.5)
    run_in_process(tmp_path, *settings, "checkpoint.dir=straight", run_dir="straight")  # never stopped
    saved = lambda: [int(p.name[5:-6]) for p in (tmp_path / "stopped").glob("ckpt-*.index") if p.name[5:-6].isdigit()]
    step = 0
    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        name = signal.Signals(signum).name
        with open(tmp_path / f"{name}.out", "w") as out:
            proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *settings, "checkpoint.dir=stopped",
                                     f"hydra.run.dir={name}"], cwd=tmp_path, env=env(tmp_path), stdout=out,
                                    stderr=subprocess.STDOUT)
        try:  # an epoch's checkpoint (27 steps) after the last stop's
            wait_for(lambda: any(s >= step + 27 for s in saved()), [proc], f"an epoch after step {step}")
            proc.send_signal(signum)
            assert proc.wait(timeout=TIMEOUT) == code, name
        finally:
            if proc.poll() is None:
                proc.kill()
        output = (tmp_path / f"{name}.out").read_text()
        assert "Traceback" not in output
        (line,) = [line for line in output.splitlines() if "stopped by" in line]
        stopped_at = int(line.split("at step ")[1].split()[0])
        assert f"stopped by {name} at step {stopped_at} " in line and "rerun the command to resume" in line
        assert (tmp_path / "stopped" / f"ckpt-{stopped_at}.index").exists() and step + 27 <= stopped_at < 6 * 27
        step = stopped_at
    train(tmp_path, *settings, "checkpoint.dir=stopped", "hydra.run.dir=rerun")
    assert_same_checkpoint(tmp_path / "straight" / "ckpt-162", tmp_path / "stopped" / "ckpt-162")
    assert rows_without_timing(tmp_path / "rerun" / "metrics.csv") == rows_without_timing(
        tmp_path / "straight" / "metrics.csv")


SIGNAL_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
from cnn.runtime.stopping import StopRequest
calls = []
signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))  # a launcher's handler (submitit requeues)
with StopRequest() as stop:
    for signum in {signals}:
        os.kill(os.getpid(), signum)
        time.sleep(0.5)
    print("signum", stop.signum, "chained", stop.chained() is not None, flush=True)
signal.raise_signal(signal.SIGUSR2)
print("launcher handler restored", calls == [signal.SIGUSR2], flush=True)
"""


def run_signal_script(*signals):
    script = SIGNAL_SCRIPT.format(root=str(ROOT), signals=[int(s) for s in signals])
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_a_second_ctrl_c_stops_at_once():
    proc = run_signal_script(signal.SIGINT, signal.SIGINT)
    assert proc.returncode == 130
    assert "SIGINT again: stopped at once, without saving" in proc.stderr
    assert "signum" not in proc.stdout


def test_a_launchers_signal_is_caught_and_its_handler_called_after_the_save():
    proc = run_signal_script(signal.SIGUSR2)
    assert proc.returncode == 0, proc.stderr
    assert f"signum {int(signal.SIGUSR2)} chained True" in proc.stdout
    assert "launcher handler restored True" in proc.stdout


@pytest.mark.parametrize("settings,tf_config_value,message", [
    (["distribute=multi_worker"], None, "distribute=multi_worker needs the cluster: set TF_CONFIG"),
    (["distribute=multi_worker"], "{cluster: 1", "TF_CONFIG is not valid JSON"),
    (["distribute=multi_worker"], '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
     "TF_CONFIG: task index 3 is out of range"),
    (["distribute=mirrored", "distribute.logical_cpus=2", "batch_size=25"], None,
     "batch_size=25: the global batch must divide evenly between the 2 replicas"),
    (["distribute=none", "distribute.logical_cpus=2"], None, "distribute.logical_cpus is for distribute=mirrored"),
], ids=["no-cluster", "bad-json", "bad-index", "indivisible-batch", "logical-cpus-alone"])
def test_bad_distribution_settings_are_one_clear_line(tmp_path, tiny_data, settings, tf_config_value, message):
    environment = {k: v for k, v in env(tmp_path).items() if k not in ("TF_CONFIG", "SLURM_PROCID")}
    if tf_config_value is not None:
        environment["TF_CONFIG"] = tf_config_value
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"dataset.data_dir={tiny_data}", *settings,
                           "hydra.run.dir=run"], cwd=tmp_path, env=environment, capture_output=True, text=True,
                          timeout=TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output
    (line,) = [line for line in output.splitlines() if "ERROR" in line or line.startswith("error:")]
    assert message in line
    assert not (tmp_path / "checkpoints").exists()


def test_a_worker_whose_peer_never_comes_names_it_instead_of_hanging(tmp_path, tiny_data):
    ports = free_ports(2)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"dataset.data_dir={tiny_data}",
                           "distribute=multi_worker", "distribute.timeout_seconds=3", "hydra.run.dir=run"],
                          cwd=tmp_path, env={**env(tmp_path), "TF_CONFIG": tf_config(ports, 0)},
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL  # TensorFlow holds on while it waits: a watchdog ends it
    (line,) = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert f"no answer within 3 s from 127.0.0.1:{ports[1]}" in line


def test_an_in_process_sweep_of_mirrored_jobs_shares_the_logical_cpus_it_set_once(tmp_path, tiny_data):
    """Jobs in one process: the CPU is split once, for the first job; a later job asking for
    another split fails with one line (and the sweep goes on), as TensorFlow allows one split."""
    proc = train(tmp_path, "-m", *tiny(tiny_data, "epochs=1"), "distribute=mirrored",
                 "distribute.logical_cpus=2,1", "lr=0.01,0.001", "checkpoint.dir=ckpt-${hydra:job.num}",
                 "hydra.sweep.dir=sweep", check=False)
    assert proc.returncode == 1 and "2 of 4 jobs failed" in proc.stdout + proc.stderr
    results = [json.loads((tmp_path / "sweep" / str(i) / "results.json").read_text()) for i in range(4)]
    assert [r["status"] for r in results] == ["started", "started", "failed", "failed"]
    assert results[0]["steps"] == results[1]["steps"] == 9 and results[0]["pid"] == results[1]["pid"]
    assert "distribute.logical_cpus=1: this process already runs on 2 CPU devices" in results[2]["error"]
