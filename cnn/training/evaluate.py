"""mode=eval: a checkpoint (the run's best or latest) evaluated on the test set, with its confusion
matrix, per-class accuracy and misclassified images. Reads checkpoint directories, never
changes them."""

from __future__ import annotations

import logging
from pathlib import Path

from cnn.runtime.console import default_logging, import_tensorflow

import_tensorflow()  # before the imports below load it: the Python API starts as quietly as train.py

import numpy as np  # noqa: E402

from cnn import data as data_lib  # noqa: E402
from cnn.checkpointing.directory import check_identity  # noqa: E402
from cnn.checkpointing.resume import restore_chosen, restore_given  # noqa: E402
from cnn.config import Config, weights_identity  # noqa: E402
from cnn.data.image_store import as_array  # noqa: E402
from cnn.reporting import history, plots  # noqa: E402
from cnn.training import build, ema  # noqa: E402
from cnn.training.steps import make_evaluate  # noqa: E402

log = logging.getLogger("cnn.evaluation")  # the name these lines have always carried


def restore_for_reading(config: Config, state, run: build.Prepared, mode: str) -> tuple[str, str]:
    """Restores what mode=eval and mode=export read: `resume=<path>`, else the run's best or
    latest checkpoint (`checkpoint.eval`; export always the run's own). Returns (path, "given", "best"
    or "latest"). With `ema.decay`, the model then holds the weights' averages: what is read."""
    if mode == "eval" and config.resume not in ("auto", "never"):
        restored = restore_given(state, config.resume, run.identity), "given"
    else:
        check_identity(run.directory, weights_identity(run.identity))  # the statistics are recomputed or as saved
        restored = restore_chosen(state, run.directory, config.checkpoint.eval, mode=mode)
    ema.use_averages(state)
    return restored


def evaluate_checkpoint(config: Config, workdir: str | Path) -> dict:
    """Restores the run's best or latest checkpoint (`checkpoint.eval`; or `resume=<path>`),
    recomputes its batch-norm statistics (precise_bn), evaluates it on the test set and writes
    results.json and the evaluation plots into `workdir`."""
    workdir = Path(workdir)
    default_logging()  # the Python API's lines, where nothing configured logging
    run = build.prepare(config)  # precise BN reads the training images that remain after the split
    build.setup(config)
    state = build.create_state(config, run.data)
    path, which = restore_for_reading(config, state, run, "eval")
    data = run.data
    test_ds = data_lib.test_dataset(data.x_test, data.y_test)
    build.recompute_statistics(config, state, data, test_ds.element_spec)  # in memory only
    evaluation, predictions = make_evaluate(state.model, test_ds.element_spec)(test_ds, "test")
    workdir.mkdir(parents=True, exist_ok=True)
    results = {"status": "evaluated", "checkpoint": path, "which": which, "steps": int(state.step.numpy()),
               **evaluation, **evaluation_plots(data, predictions, workdir)}
    log.info("%s (%s, step %d): test loss %.4f, test accuracy %.4f; plots in %s", path, which, results["steps"],
             results["test_loss"], results["test_accuracy"], workdir)
    history.write_json(workdir / "results.json", results)
    return results


def evaluation_plots(data: data_lib.Data, predictions: np.ndarray, workdir: Path) -> dict:
    """confusion_matrix.{png,csv}, per_class_accuracy.png and misclassified.png in `workdir`;
    returns the per-class accuracy."""
    matrix = plots.confusion_matrix(data.y_test, predictions, data.num_classes)
    np.savetxt(workdir / "confusion_matrix.csv", matrix, fmt="%d", delimiter=",",
               header=",".join(data.class_names))
    plots.plot_confusion_matrix(matrix, data.class_names, workdir / "confusion_matrix.png")
    plots.plot_per_class_accuracy(matrix, data.class_names, workdir / "per_class_accuracy.png")
    wrong = np.flatnonzero(predictions != data.y_test)[:32]
    titles = plots.misclassified_titles(wrong, predictions, data.y_test, data.class_names, data.test_names)
    plots.image_grid(as_array(data.x_test[wrong]), titles, workdir / "misclassified.png")
    per_class = np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)
    return {"per_class_accuracy": dict(zip(data.class_names, per_class.tolist()))}
