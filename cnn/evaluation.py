"""mode=eval: a checkpoint (the run's best or latest) evaluated on the test set, with its confusion matrix,
per-class accuracy and misclassified images. Reads checkpoint directories, never
changes them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from cnn import data as data_lib
from cnn import history, plots, precise_bn, run
from cnn.checkpoint import best_checkpoint, check_identity, restore, restore_latest
from cnn.config import Config, weights_identity
from cnn.errors import CheckpointError
from cnn.image_folder import as_array
from cnn.steps import make_evaluate

log = logging.getLogger(__name__)


def evaluate_checkpoint(config: Config, workdir: str | Path) -> dict:
    """Restores the run's best or latest checkpoint (`checkpoint.eval`; or `resume=<path>`),
    recomputes its batch-norm statistics (precise_bn), evaluates it on the test set and writes
    results.json and the evaluation plots into `workdir`."""
    workdir = Path(workdir)
    data = data_lib.load_dataset(config.dataset)
    directory, ident = run.checkpoint_dir_and_identity(config, data)
    data = data_lib.split_validation(data, config.dataset.validation_split)  # precise BN reads the rest
    run.setup(config)
    state = run.create_state(config, data)
    if config.resume not in ("auto", "never"):
        path, which = run.restore_given(state, config.resume, ident), "given"
    else:
        check_identity(directory, weights_identity(ident))  # the statistics are recomputed or as saved
        path, which = restore_chosen(state, directory, config.checkpoint.eval)
    test_ds = data_lib.test_dataset(data.x_test, data.y_test)
    statistics = precise_bn.create(state.model, config.precise_bn.batches, test_ds.element_spec)
    if statistics:  # in memory only: also for checkpoints written before precise statistics existed
        statistics.recompute(data_lib.statistics_dataset(data.x_train, data.y_train, config.batch_size,
                                                         config.seed, config.precise_bn.batches))
    evaluation, predictions = make_evaluate(state.model, test_ds.element_spec)(test_ds, "test")
    workdir.mkdir(parents=True, exist_ok=True)
    results = {"status": "evaluated", "checkpoint": path, "which": which, "steps": int(state.step.numpy()),
               **evaluation, **evaluation_plots(data, predictions, workdir)}
    log.info("%s (%s, step %d): test loss %.4f, test accuracy %.4f; plots in %s", path, which, results["steps"],
             results["test_loss"], results["test_accuracy"], workdir)
    history.write_json(workdir / "results.json", results)
    return results


def restore_chosen(state, directory: Path, choice: Optional[str], mode: str = "eval") -> tuple[str, str]:
    """Restores the run's best checkpoint (choice "best"), its latest ("latest"), or with None
    the best when the run keeps one, else the latest. Returns (path, "best" or "latest")."""
    best = best_checkpoint(directory) if directory.is_dir() else None
    if choice == "best" and best is None:
        raise CheckpointError(f"checkpoint.eval=best: {directory} has no best checkpoint (it is kept in best/ by "
                              "runs with dataset.validation_split > 0, from their first epoch on); pass "
                              "checkpoint.eval=latest")
    if best is not None and choice != "latest":
        restore(state.checkpoint, best)
        return best, "best"
    path = restore_latest(state.checkpoint, directory, repair=False) if directory.is_dir() else None
    if path is None:
        raise CheckpointError(f"mode={mode}: no checkpoint in {directory}; train first "
                              "(same settings, mode=train) or pass resume=<checkpoint path>")
    return path, "latest"


def evaluation_plots(data: data_lib.Data, predictions: np.ndarray, workdir: Path) -> dict:
    """confusion_matrix.{png,csv}, per_class_accuracy.png and misclassified.png in `workdir`;
    returns the per-class accuracy."""
    matrix = plots.confusion_matrix(data.y_test, predictions, data.num_classes)
    np.savetxt(workdir / "confusion_matrix.csv", matrix, fmt="%d", delimiter=",",
               header=",".join(data.class_names))
    plots.plot_confusion_matrix(matrix, data.class_names, workdir / "confusion_matrix.png")
    plots.plot_per_class_accuracy(matrix, data.class_names, workdir / "per_class_accuracy.png")
    wrong = np.flatnonzero(predictions != data.y_test)[:32]
    titles = [f"#{i} {data.class_names[predictions[i]]}\n(true {data.class_names[data.y_test[i]]})"
              for i in wrong]
    plots.image_grid(as_array(data.x_test[wrong]), titles, workdir / "misclassified.png")
    per_class = np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)
    return {"per_class_accuracy": dict(zip(data.class_names, per_class.tolist()))}
