"""mode=export: a trained run as a model that needs only TensorFlow to use.

`python train.py mode=export <the run's settings>` restores the run's checkpoint (the
best one when the run keeps one, as `mode=eval` chooses; `checkpoint.eval=latest` for
the latest), recomputes its batch-norm statistics as evaluation does, and writes
`<checkpoint dir>/export/`:

    saved_model/   a SavedModel; its `serving_default` signature takes a batch of images
                   as stored on disk, uint8 [N, H, W, C], and returns "probabilities"
                   [N, classes] (float32) and "class_ids" [N] (int64). The normalization
                   (/255) and an ensemble's sum of its members' logits are inside.
    model.keras    the same model as a Keras file (uint8 images in, probabilities out), when
                   Keras can save it and load it back (the subclassed and ensemble models'
                   classes live in this project: their .keras needs `import cnn.models`)
    labels.txt     the class names, one per line, in class-id order
    export.json    what was exported: run, checkpoint, step, image shape, classes

`python -m cnn.tools.predict <checkpoint dir>/export IMAGE...` uses it, and so can TensorFlow
Serving or any TensorFlow program (`tf.saved_model.load`). The directory is written
aside and then renamed into place: an interrupted export leaves the previous one whole, and
one that cannot write (a full disk) removes what it wrote and says so in one line.
"""

from __future__ import annotations

import datetime
import logging
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from cnn import data as data_lib
from cnn.config import Config
from cnn.errors import WriteError, errno_of
from cnn.models import outputs
from cnn.reporting import history
from cnn.training import build
from cnn.training.evaluate import restore_for_reading

log = logging.getLogger("cnn.export")  # the name these lines have always carried

EXPORT_DIR = "export"


def serving_model(model: keras.Model, image_shape: tuple) -> keras.Model:
    """uint8 images (N, H, W, C) -> class probabilities (N, classes), float32: the model with
    the normalization before it, its members' logits summed (an ensemble) and a softmax after."""
    images = keras.Input(image_shape, dtype="uint8", name="images")
    scaled = keras.layers.Rescaling(1 / 255, dtype="float32", name="normalize")(images)  # as cnn.data does
    logits = outputs.class_scores(model, model(scaled, training=False))  # an ensemble: its members' sum
    probabilities = keras.layers.Softmax(dtype="float32", name="probabilities")(keras.ops.cast(logits, "float32"))
    return keras.Model(images, probabilities, name="serving")


class Serving(tf.Module):
    """The SavedModel's object: the serving model and its uint8 signature."""

    def __init__(self, model: keras.Model, image_shape: tuple):
        super().__init__()
        self.model = model
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec([None, *image_shape], tf.uint8,
                                                                              name="images")])

    def _serve(self, images):
        probabilities = self.model(images, training=False)
        return {"probabilities": probabilities, "class_ids": tf.argmax(probabilities, axis=-1)}


def write_export(model: keras.Model, image_shape: tuple, class_names, directory: Path, record: dict) -> Path:
    """Writes the export of `model` into `directory` (replacing a previous one only once the
    new one is complete); returns `directory`. A write that fails (a full disk, no permission)
    leaves no partial export, keeps the previous one and raises WriteError."""
    directory = Path(directory)
    staging = directory.with_name(f"{directory.name}.partial")
    previous = directory.with_name(f"{directory.name}.previous")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if previous.is_dir() and not directory.exists():  # a kill between the two renames: put it back
            previous.rename(directory)
        staging.mkdir(parents=True)
        write_files(model, image_shape, class_names, staging, record)
        replace_directory(staging, directory, previous)
    except (OSError, tf.errors.OpError, WriteError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(e, (OSError, WriteError)) and errno_of(e) is None:
            raise  # not the file system's: a bug to see whole
        kept = ("the previous export there is kept" if (directory / "saved_model").is_dir()
                else "no partial export is left")
        raise WriteError.of(directory, e, kept) from None
    return directory


def write_files(model: keras.Model, image_shape: tuple, class_names, staging: Path, record: dict) -> None:
    """The export's files, into `staging`."""
    served = serving_model(model, image_shape)
    module = Serving(served, image_shape)
    tf.saved_model.save(module, str(staging / "saved_model"), signatures={"serving_default": module.serve})
    keras_file = "model.keras"
    try:  # kept only if it loads back
        served.save(staging / keras_file)
        keras.saving.load_model(staging / keras_file)
    except Exception as e:  # noqa: BLE001  (a model Keras cannot serialize: the SavedModel still serves)
        if isinstance(e, OSError) or errno_of(e) is not None:
            raise  # a full disk is not the model's fault
        (staging / keras_file).unlink(missing_ok=True)
        keras_file = None
        log.warning("model.keras left out: Keras cannot save and reload this model (%s); the SavedModel has it",
                    str(e).strip().splitlines()[0][:200])
    (staging / "labels.txt").write_text("".join(f"{name}\n" for name in class_names))
    history.write_json(staging / "export.json", {**record, "image_shape": list(image_shape),
                                                 "classes": list(class_names), "keras_file": keras_file,
                                                 "signature": "serving_default: images uint8 [N, H, W, C] -> "
                                                              "probabilities float32 [N, classes], class_ids int64 [N]"})


def replace_directory(staging: Path, directory: Path, previous: Path) -> None:
    """Renames `staging` to `directory`; a `directory` already there is moved to `previous` first
    and removed after, or put back if the rename fails."""
    had = directory.exists()
    if had:
        shutil.rmtree(previous, ignore_errors=True)
        directory.rename(previous)
    try:
        staging.rename(directory)
    except OSError:
        if had:
            previous.rename(directory)
        raise
    if had:
        shutil.rmtree(previous, ignore_errors=True)


def export_checkpoint(config: Config, workdir: str | Path) -> dict:
    """mode=export: the run's chosen checkpoint, exported next to its checkpoints."""
    run = build.prepare(config)
    build.setup(config)
    state = build.create_state(config, run.data)
    path, which = restore_for_reading(config, state, run, "export")
    data, directory = run.data, run.directory
    test_ds = data_lib.test_dataset(data.x_test, data.y_test)
    build.recompute_statistics(config, state, data, test_ds.element_spec)  # as evaluation does
    record = {"run_name": directory.name, "checkpoint": path, "which": which, "step": int(state.step.numpy()),
              "exported": datetime.datetime.now().isoformat(timespec="seconds")}
    out = write_export(state.model, data.image_shape, data.class_names, directory / EXPORT_DIR, record)
    results = {"status": "exported", "export": str(out), **record}
    history.write_json(Path(workdir) / "results.json", results)
    log.info("exported %s (%s, step %d) to %s; try: python -m cnn.tools.predict %s IMAGE...", path, which,
             record["step"], out, out)
    return results
