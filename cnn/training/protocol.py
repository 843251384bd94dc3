"""The test protocol: each epoch is evaluated on the validation set, which alone picks the best
checkpoint and stops early; the test set is evaluated once, at the end, on the selected
checkpoint (and on the last). With `dataset.validation_split=0` (the book's protocol) each
epoch is evaluated on the test set, so labeled, and nothing is selected."""

from __future__ import annotations

from pathlib import Path

from cnn.checkpointing.directory import keep_best, restore
from cnn.training import build, ema
from cnn.training.checkpointer import Checkpointer
from cnn.training.evaluator import Evaluator
from cnn.training.state import TrainState
from cnn.training.steps import make_evaluate


def final_evaluation(state: TrainState, evaluator: Evaluator, rows: list, last_evaluation: dict,
                     checkpointer: Checkpointer, directory: Path, steps_per_epoch: int, workers: int,
                     config, data) -> dict:
    """The test set, evaluated once: on the selected (best) checkpoint and on the last one.

    Returns {"selected": {...}, "last": {...}}: each the epoch, step, checkpoint and
    metrics. Without a validation set the last epoch is the one reported (the book's
    protocol), with the test metrics its epoch already measured. `config`: the run's (its monitor);
    `data`: to build a single-device copy when several workers trained (restoring their state is
    collective).
    """
    last_row = rows[-1] if rows else {}
    step = int(state.step.numpy())
    last = {"epoch": last_row.get("epoch", 0), "step": step, "checkpoint": checkpointer.latest}
    if not evaluator.validating:
        last.update(last_evaluation)  # test_loss, test_accuracy (member_test_accuracy)
        return {"selected": last, "last": last}
    last.update({k: v for k, v in last_row.items() if k.startswith("val_")})
    with ema.averaged(state):  # the weights in memory are the last checkpoint's
        last.update(evaluator.evaluate_test())
    best_step = int(state.best_step.numpy())
    path = keep_best(directory, best_step) if best_step >= 0 else None
    if path is None:
        return {"selected": last, "last": last}
    monitor = config.monitor
    best_row = next((r for r in rows if r["step"] == best_step),  # no metrics.csv: the state's record
                    {"epoch": -(-best_step // steps_per_epoch), monitor: float(state.best_value.numpy())})
    if workers == 1:
        restore(state.checkpoint, path)
        with ema.averaged(state):
            test = evaluator.evaluate_test()
        restore(state.checkpoint, checkpointer.latest)  # the state is the last one again
    else:  # restoring the shared state is collective, and the other workers are done: a copy of one's own
        copy = build.create_state(config, data)
        restore(copy.checkpoint, path)
        ema.use_averages(copy)
        test = make_evaluate(copy.model, evaluator.element_spec)(evaluator.test_ds, "test")[0]
    selected = {"epoch": best_row["epoch"], "step": best_step, "checkpoint": path,
                **{k: v for k, v in best_row.items() if k.startswith("val_")}, **test}
    return {"selected": selected, "last": last}
