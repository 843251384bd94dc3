"""What an evaluation is: the epoch's set (validation, or with none the test set) and the
test set, through the chapter's compiled `evaluate`."""

from __future__ import annotations

import numpy as np

from cnn import data as data_lib
from cnn.training.steps import make_evaluate


class Evaluator:
    """Evaluates a model on its run's sets.

    `split`: "val" when the run holds a validation set out (each epoch is scored on it, and it
    alone selects), else "test" (the book's protocol: the test set every epoch).
    """

    def __init__(self, model, data: data_lib.Data):
        self.test_ds = data_lib.test_dataset(data.x_test, data.y_test)
        self.validating = data.x_val is not None
        self.split = "val" if self.validating else "test"
        self.x_eval, self.y_eval = (data.x_val, data.y_val) if self.validating else (data.x_test, data.y_test)
        self.eval_ds = data_lib.test_dataset(self.x_eval, self.y_eval) if self.validating else self.test_ds
        self.element_spec = self.test_ds.element_spec
        self._evaluate = make_evaluate(model, self.element_spec)

    def evaluate(self) -> tuple[dict, np.ndarray]:
        """The epoch's evaluation: its split's metrics and the predicted class of every image."""
        return self._evaluate(self.eval_ds, self.split)

    def evaluate_test(self) -> dict:
        """The test metrics of the weights in memory."""
        return self._evaluate(self.test_ds, "test")[0]
