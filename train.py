"""Trains (or evaluates) one configured run: `python train.py dataset=mnist lr=0.001`.

The only Hydra entry point. It turns the composed config into a typed
`cnn.config.Config` and calls `cnn.training.train` (or `cnn.training.evaluate`, `cnn.serving.export`); TensorFlow
is imported only once a run starts, so `--help` is instant.
"""

import time

PROCESS_STARTED = time.time()  # before the imports: a single run's wait for its first steps counts them

import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from cnn.config import explain, register_configs, to_config  # noqa: E402
from cnn.runtime import outputs  # noqa: E402
from cnn.runtime.console import import_tensorflow  # noqa: E402
from cnn.errors import CnnError  # noqa: E402
from cnn.reporting.history import write_json  # noqa: E402
from cnn.runtime.stopping import Stopped  # noqa: E402

log = logging.getLogger("train")
register_configs()
EXISTING_RUN_DIRS = outputs.existing_run_dirs(sys.argv[1:])  # before Hydra makes them: kept if rejected


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Runs one job; returns its objective for sweepers: the selected checkpoint's validation
    `monitor` (with dataset.validation_split=0, the test accuracy; mode=eval: the test accuracy).

    In a multirun a failing job records its error in results.json and returns NaN,
    so the other jobs still run; the sweep's report then names it and the sweep
    exits non-zero.
    """
    hydra_config = HydraConfig.get()
    workdir = hydra_config.runtime.output_dir
    multirun = hydra_config.mode == RunMode.MULTIRUN
    # A single run counts Python's and TensorFlow's start-up; a multirun job, its own time.
    started = time.time() if multirun else PROCESS_STARTED
    try:
        config = to_config(cfg)
        import_tensorflow()  # without its C++ start-up lines
        from cnn.training.job import run_job

        results = run_job(config, workdir, started=started,  # a search's report, for a training job
                          actions=search_actions(hydra_config, config, workdir) if config.mode == "train" else ())
        if config.mode == "export":
            return float("nan")
        if config.mode == "eval":
            return results["test_accuracy"]
        if multirun and results.get("protocol") != "validation":
            log.warning("dataset.validation_split=0: this job's objective is its test accuracy; a sweep "
                        "that picks by it selects on the test set")
        return results.get("objective", results["test_accuracy"])
    except Stopped as e:  # a polite stop (SIGINT, SIGTERM): saved; a sweep stops too
        log.warning("%s", e)
        if e.chained is not None:  # a launcher's own handler (submitit: requeue the job)
            e.chained(e.signum, None)
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001  (a multirun goes on; a single run stops)
        if not multirun:
            message = str(e) if isinstance(e, CnnError) else outputs.write_failure(e)
            if message is not None:
                outputs.reject(message, hydra_config, EXISTING_RUN_DIRS)  # exits
            raise
        if isinstance(e, CnnError):  # the job's record stays: the sweep's report names it
            log.error("%s", e)
        else:
            log.exception("the job failed")
        try:
            write_json(Path(workdir) / "results.json", {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                                        "pid": os.getpid()})
        except CnnError as unwritten:  # a full disk: the sweep's report names the job as unfinished
            log.error("%s", unwritten)
        return float("nan")


def search_actions(hydra_config, config, workdir) -> list:
    """A search's epoch-end report to its trial, when this job is one (cnn/sweeps/trial.py);
    Optuna is imported only then (it is an optional dependency)."""
    sweeper = hydra_config.get("sweeper")
    if sweeper is None or sweeper.get("trial") is None:
        return []
    from cnn.sweeps.trial import search_actions as trial_actions

    return trial_actions(sweeper, config.monitor, workdir)


def run() -> None:
    """`main`, with Hydra's several-line composition errors (`batch_sise=10`, `lr=abc`,
    `dataset=foo`) and an output directory it cannot create turned into one line, as a job's
    own errors are; HYDRA_FULL_ERROR=1 shows Hydra's own report. A rejected multirun leaves
    no sweep directory."""
    own_report = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing
    try:
        main()
    except BrokenPipeError:  # a reader of stdout that stopped early: `python train.py --help | head`
        stdout_closed()
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (which stops politely)
        print("error: interrupted (Ctrl-C) outside the training loop; what was saved is kept; rerun the command "
              "to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001
        if isinstance(e, CnnError):  # from outside a job: a sweeper's (a search's study, its settings)
            message = str(e)
        else:
            message = None if own_report else explain(e) or outputs.setup_error(e, main.__wrapped__.__code__)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        outputs.remove_rejected_sweep(e, PROCESS_STARTED)
        sys.exit(1)


def stdout_closed() -> None:
    """Ends the command quietly when its stdout's reader has gone: stdout pointed at /dev/null,
    so that Python's last flush is not a second BrokenPipeError, and exit 1, as the Python
    documentation's recipe does (what was written was not all read)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)


if __name__ == "__main__":
    try:
        run()
    finally:
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # the last lines were still buffered when the reader stopped
            stdout_closed()
