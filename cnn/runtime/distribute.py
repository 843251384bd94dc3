"""Where the steps run: one device, the devices of one machine, or several machines.

`distribute=none` is the book's loop on one device. `distribute=mirrored` is
`tf.distribute.MirroredStrategy` over this machine's GPUs, or with
`distribute.logical_cpus=N` over the CPU split into N logical devices (to try it
anywhere; no faster). `distribute=multi_worker` is
`tf.distribute.MultiWorkerMirroredStrategy`, one process per machine, the cluster
read from `TF_CONFIG` or, under SLURM, from SLURM's variables.

Everything else stays as on one device: `batch_size` is the global batch, each
global batch holds the images it holds on one device (split between the replicas),
and the checkpoint is the same `TrainState` checkpoint, readable on one device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from typing import Optional

import tensorflow as tf

from cnn.config import Config
from cnn.errors import ConfigError, TrainingError
from cnn.text import plural

log = logging.getLogger(__name__)

_STRATEGIES: dict = {}  # one strategy per setting and process: an in-process multirun reuses it


@dataclasses.dataclass
class Distribution:
    """The strategy a run uses (None: one device, no strategy) and this process's part in it."""

    strategy: Optional[tf.distribute.Strategy] = None
    replicas: int = 1
    workers: int = 1
    worker: int = 0  # this process's index among the workers; 0 is the chief
    _sum: Optional[object] = dataclasses.field(default=None, repr=False)  # any_of's compiled all-reduce

    @property
    def chief(self) -> bool:
        """Whether this process writes the run's files (the others only train and save aside)."""
        return self.worker == 0

    def scope(self):
        """Where the model, optimizer and state are created: their variables on every replica."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def distribute(self, dataset: tf.data.Dataset):
        """The global batches of `dataset`, each split between the replicas; a worker reads only
        its replicas' parts (sharded by data: every worker runs the same in-memory pipeline)."""
        if self.strategy is None:
            return dataset
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return self.strategy.experimental_distribute_dataset(dataset.with_options(options))

    def any_of(self, flags: list[bool]) -> list[bool]:
        """Each flag, true when it is true on any worker: what one worker saw (a signal, a due
        checkpoint), every worker then acts on, at the same step. Every worker must call it at
        the same point (it is a collective). One worker: the flags."""
        if self.workers == 1:
            return list(flags)
        if self._sum is None:
            strategy = self.strategy

            @tf.function
            def total(local):
                per_replica = strategy.run(tf.identity, args=(local,))
                return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

            self._sum = total
        return [bool(v > 0) for v in self._sum(tf.constant([int(f) for f in flags], tf.int32)).numpy()]

    @contextlib.contextmanager
    def peers_watched(self, step: tf.Variable):
        """Turns the error of a collective whose peer died (TensorFlow notices a worker that stopped
        sending heartbeats within seconds) into one line: who, where, and how to go on."""
        try:
            yield
        except (tf.errors.UnavailableError, tf.errors.AbortedError) as e:
            if self.workers == 1:
                raise
            resolver = self.strategy.cluster_resolver
            spec, own = resolver.cluster_spec().as_dict(), (resolver.task_type, resolver.task_id)
            lost = sorted({f"{job} {task} ({spec[job][int(task)]})" for job, task in
                           re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", e.message)
                           if job in spec and int(task) < len(spec[job]) and (job, int(task)) != own})
            who = ", ".join(lost) if lost else "a worker"
            raise TrainingError(f"distribute=multi_worker: {who} stopped answering at step {int(step.numpy())}; "
                                "restart every worker to resume from the run's last checkpoint") from None

    def describe(self, batch_size: int) -> str:
        if self.strategy is None:
            return f"one device, batch {batch_size}"
        where = f"{self.workers} workers, " if self.workers > 1 else ""
        name = "MultiWorkerMirroredStrategy" if self.workers > 1 else type(self.strategy).__name__
        return (f"{name}: {where}{plural(self.replicas, 'replica')}, global batch {batch_size} "
                f"({batch_size // self.replicas} per replica)")


def create(config: Config) -> Distribution:
    """The run's distribution (`config.distribute`), created before anything else touches the
    devices. Raises ConfigError (one line) for a setting this process or cluster cannot run."""
    name = config.distribute.name
    if name == "none":
        return Distribution()
    key = (name, config.distribute.logical_cpus)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = (_mirrored(config.distribute.logical_cpus) if name == "mirrored"
                            else _multi_worker(config.distribute.timeout_seconds))
    strategy = _STRATEGIES[key]
    resolver = getattr(strategy, "cluster_resolver", None)
    workers, worker = 1, 0
    if name == "multi_worker":
        spec = resolver.cluster_spec().as_dict()
        workers = sum(len(tasks) for job, tasks in spec.items() if job in ("chief", "worker"))
        worker = (0 if resolver.task_type == "chief" else
                  resolver.task_id + (1 if "chief" in spec else 0))
    distribution = Distribution(strategy, strategy.num_replicas_in_sync, workers, worker)
    if config.batch_size % distribution.replicas:
        raise ConfigError(f"batch_size={config.batch_size}: the global batch must divide evenly between the "
                          f"{distribution.replicas} replicas; use a multiple of {distribution.replicas}")
    return distribution


def _mirrored(logical_cpus: Optional[int]) -> tf.distribute.Strategy:
    if logical_cpus is None:
        return tf.distribute.MirroredStrategy()  # every visible GPU (the CPU when there is none)
    configure_logical_cpus(logical_cpus)
    return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")][:logical_cpus])


def configure_logical_cpus(n: int) -> None:
    """Splits the CPU into `n` logical devices. TensorFlow allows this once per process, before
    it first runs an op: a second job of an in-process multirun must ask for the same number."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have != n:
            raise ConfigError(f"distribute.logical_cpus={n}: this process already runs on {plural(have, 'CPU device')}, "
                              "and TensorFlow sets them once per process; run each job in its own process "
                              "(hydra/launcher=submitit_local)") from None


def cluster_resolver():
    """The cluster from TF_CONFIG, else from SLURM (under `srun`); ConfigError when neither is set."""
    raw = os.environ.get("TF_CONFIG")
    if raw:
        check_tf_config(raw)
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if "SLURM_PROCID" in os.environ:
        try:
            return tf.distribute.cluster_resolver.SlurmClusterResolver()
        except Exception as e:  # noqa: BLE001  (missing variables, scontrol not found)
            raise ConfigError(f"distribute=multi_worker under SLURM: cannot read the cluster ({e})") from None
    raise ConfigError("distribute=multi_worker needs the cluster: set TF_CONFIG on every machine (README: "
                      "\"Several machines\") or start the workers with SLURM's srun")


def check_tf_config(raw: str) -> dict:
    """Parses TF_CONFIG; raises ConfigError naming what is wrong."""
    example = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos}); e.g. {example}") from None
    cluster, task = (spec.get("cluster"), spec.get("task")) if isinstance(spec, dict) else (None, None)
    if not isinstance(cluster, dict) or not cluster or not all(isinstance(v, list) and v for v in cluster.values()):
        raise ConfigError(f"TF_CONFIG: \"cluster\" must map job names to lists of host:port; e.g. {example}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError(f"TF_CONFIG: \"task\" must give this process's type and index; e.g. {example}")
    kind, index = task["type"], task["index"]
    if kind not in ("chief", "worker") or kind not in cluster:
        raise ConfigError(f"TF_CONFIG: task type {kind!r} is not a job of the cluster "
                          f"({', '.join(sorted(cluster))}); use worker (or chief)")
    if not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(f"TF_CONFIG: task index {index!r} is out of range: the cluster has "
                          f"{plural(len(cluster[kind]), f'{kind} task')}, indices 0 to {len(cluster[kind]) - 1}")
    return spec


def _multi_worker(timeout_seconds: float) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy; its creation waits for every worker. After `timeout_seconds`,
    one line names the workers that do not answer, and the process ends (killed: status 137).

    The wait happens inside TensorFlow without releasing Python's lock, so no thread or signal
    handler of this process could end it: a small watchdog process does, unless told (its
    stdin closed) that the cluster assembled.
    """
    resolver = cluster_resolver()
    spec = resolver.cluster_spec().as_dict()
    own = spec[resolver.task_type][resolver.task_id]
    peers = [address for tasks in spec.values() for address in tasks if address != own]
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout_seconds), *peers],
                                stdin=subprocess.PIPE)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except tf.errors.OpError as e:
        raise ConfigError(f"distribute=multi_worker: this worker could not start at {own} "
                          f"({e.message.strip().splitlines()[0]}); is the port in use?") from None
    finally:
        watchdog.stdin.close()
        watchdog.wait()
    log.info("worker %s:%d of the cluster %s", resolver.task_type, resolver.task_id, json.dumps(spec))
    return strategy


# Waits for its stdin to close (the cluster assembled) for at most TIMEOUT seconds; else names the
# workers that do not accept connections and ends the waiting process. Arguments: PID TIMEOUT PEER...
_WATCHDOG = r"""
import os, select, signal, socket, sys, time
pid, timeout, peers = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
if select.select([sys.stdin], [], [], timeout)[0]:
    sys.exit(0)
def answers(address):
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return True
    except (OSError, ValueError):
        return False
silent = [a for a in peers if not answers(a)]
who = ", ".join(silent) if silent else ", ".join(peers) + " (they accept connections but did not join)"
sys.stderr.write(f"error: distribute=multi_worker: no answer within {timeout:g} s from {who}; start every "
                 "worker with the same TF_CONFIG cluster (or raise distribute.timeout_seconds)\n")
sys.stderr.flush()
os.kill(pid, signal.SIGTERM)
time.sleep(5)
os.kill(pid, signal.SIGKILL)  # TensorFlow catches SIGTERM while it waits for the cluster
"""
