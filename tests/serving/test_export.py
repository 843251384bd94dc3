"""mode=export and `python -m cnn.tools.predict`: a trained run as a SavedModel that needs only TensorFlow."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT
from helpers import env, run_in_process, train

from cnn import data as data_lib
from cnn.checkpointing.resume import restore_chosen
from cnn.config import compose
from cnn.errors import WriteError
from cnn.models import create_model
from cnn.serving import export
from cnn.tools import predict
from cnn.training import build


def write_png(path, image):
    tf.io.write_file(str(path), tf.io.encode_png(image))
    return path


@pytest.mark.slow
def test_eval_and_export_from_the_command_line_then_predict_in_a_fresh_process_give_the_checkpoints_classes(tmp_path, tiny_data):
    settings = [f"dataset.data_dir={tiny_data}", "epochs=2", "batch_size=36", "checkpoint.dir=ckpt"]
    trained = run_in_process(tmp_path, *settings, "progress=false", run_dir="train")
    train(tmp_path, *settings, "mode=eval", "hydra.run.dir=eval")  # the command line's mode=eval: the same test
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert (evaluated["test_accuracy"], evaluated["test_loss"]) == (trained["test_accuracy"], trained["test_loss"])
    proc = train(tmp_path, *settings, "mode=export", "hydra.run.dir=export")  # the command line's export
    out = tmp_path / "ckpt" / "export"
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "labels.txt", "model.keras", "saved_model"]
    assert not list(tmp_path.glob("ckpt/export.*"))  # no staging or previous export left over
    record = json.loads((out / "export.json").read_text())
    assert record["which"] == "best" and record["image_shape"] == [28, 28, 1]
    assert (out / "labels.txt").read_text().splitlines() == [str(i) for i in range(10)]
    assert "try: python -m cnn.tools.predict" in proc.stdout + proc.stderr

    data = data_lib.load("mnist", str(tiny_data), download=False)
    images = data.x_test[:8]
    paths = [write_png(tmp_path / f"{i}.png", image) for i, image in enumerate(images)]
    paths.append(write_png(tmp_path / "rgb.png", tf.image.grayscale_to_rgb(tf.constant(images[0]))))
    proc = subprocess.run([sys.executable, "-m", "cnn.tools.predict", str(out), *map(str, paths), "--json", "--top", "3"],
                          cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    predicted = json.loads(proc.stdout)
    assert [r["path"] for r in predicted] == [str(p) for p in paths]
    assert proc.stderr.strip() == f"note: {paths[-1]}: 3 channels converted to 1, as the model takes"

    # The checkpoint the export chose, on the same images, in this process.
    config = compose(*[s for s in settings if not s.startswith("checkpoint.dir")], f"checkpoint.dir={tmp_path / 'ckpt'}")
    build.setup(config)
    state = build.create_state(config, data)
    assert restore_chosen(state, tmp_path / "ckpt", None)[0].endswith(record["checkpoint"].split("ckpt", 1)[1])
    expected = tf.nn.softmax(state.model(images.astype(np.float32) / 255, training=False)).numpy()
    for row, probabilities in zip(predicted, [*expected, expected[0]]):
        best = np.argsort(-probabilities, kind="stable")[:3]
        assert [p["id"] for p in row["predictions"]] == best.tolist()
        np.testing.assert_allclose([p["probability"] for p in row["predictions"]], probabilities[best], atol=1e-6)
        assert row["predictions"][0]["class"] == data.class_names[best[0]]
    # The .keras file: the same model, uint8 in, probabilities out.
    reloaded = keras.saving.load_model(out / "model.keras")
    np.testing.assert_allclose(reloaded(images).numpy(), expected, atol=1e-6)


def test_an_ensemble_exports_as_one_model_of_its_summed_logits(tmp_path):
    keras.utils.set_random_seed(1)
    model = create_model("ensemble", (12, 10, 3), 4, members="book_cnn", size=3)
    out = export.write_export(model, (12, 10, 3), ["a", "b", "c", "d"], tmp_path / "export", {"run_name": "x"})
    serve = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    images = np.random.default_rng(0).integers(0, 256, (5, 12, 10, 3)).astype(np.uint8)
    served = serve(images=tf.constant(images))
    logits = tf.reduce_sum(model(images.astype(np.float32) / 255, training=False), axis=0)
    np.testing.assert_allclose(served["probabilities"].numpy(), tf.nn.softmax(logits).numpy(), atol=1e-6)
    assert served["class_ids"].numpy().tolist() == tf.argmax(logits, axis=-1).numpy().tolist()
    export.write_export(model, (12, 10, 3), ["a", "b", "c", "d"], tmp_path / "export", {"run_name": "y"})
    assert json.loads((out / "export.json").read_text())["run_name"] == "y"  # replaced, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    keras.utils.set_random_seed(0)
    directory = tmp_path_factory.mktemp("export")
    return export.write_export(create_model("book_cnn", (8, 8, 1), 3), (8, 8, 1), ["x", "y", "z"],
                               directory / "export", {})


def test_predict_prints_one_line_per_image(tmp_path, small_export, capsys):
    paths = [write_png(tmp_path / f"{i}.png", np.full((8, 8, 1), 40 * i, np.uint8)) for i in range(3)]
    big = tmp_path / "big.jpg"
    tf.io.write_file(str(big), tf.io.encode_jpeg(np.zeros((16, 20, 3), np.uint8)))
    assert predict.main([str(small_export), *map(str, paths), str(big), "--top", "2"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 4 and all(line.startswith(f"{p}\t") for line, p in zip(lines, [*paths, big]))
    assert all(len(line.split("\t")[1].split(", ")) == 2 for line in lines)
    assert f"note: {big}: 3 channels converted to 1" in err and f"note: {big}: resized from 20x16 to 8x8" in err


@pytest.mark.parametrize("case,message", [
    ("not-an-export", "not an export (it needs saved_model/ and labels.txt)"),
    ("missing", "no such file"),
    ("corrupt", "not a decodable image"),
])
def test_predict_bad_input_is_one_line_and_prints_no_prediction(tmp_path, small_export, capsys, case, message):
    good = write_png(tmp_path / "good.png", np.zeros((8, 8, 1), np.uint8))
    bad = tmp_path / "bad.png"
    if case == "corrupt":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    directory = tmp_path if case == "not-an-export" else small_export
    assert predict.main([str(directory), str(good), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith("error: ") and message in line
    if case != "not-an-export":
        assert str(bad) in line


@pytest.mark.slow
def test_export_without_a_trained_run_is_one_line(tmp_path, tiny_data):
    proc = train(tmp_path, f"dataset.data_dir={tiny_data}", "mode=export", "checkpoint.dir=nothing", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    (line,) = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
    assert "mode=export: no checkpoint in nothing; train first" in line


def test_a_dataset_written_out_as_class_folders_keeps_every_pixel(tmp_path, tiny_data, capsys):
    from cnn.tools import to_folder

    out = tmp_path / "folder"
    assert to_folder.main([str(out), "--dataset", "mnist", "--data-dir", str(tiny_data), "--limit", "30"]) == 0
    data = data_lib.load("mnist", str(tiny_data), download=False)
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        files = sorted((out / split).glob("*/*.png"))
        assert len(files) == 30 and sorted(p.name for p in (out / split).iterdir()) == sorted(data.class_names)
        for path in files:
            i = int(path.stem)
            assert path.parent.name == data.class_names[y[i]]
            np.testing.assert_array_equal(tf.io.decode_png(tf.io.read_file(str(path))).numpy(), x[i])
    assert "wrote 60 images of 10 classes" in capsys.readouterr().out
    assert to_folder.main([str(out), "--data-dir", str(tiny_data)]) == 1  # never into an existing directory
    assert "exists; give a new directory" in capsys.readouterr().err
    assert to_folder.folder_name("T-shirt/top") == "T-shirt-top"


def enospc_on_save(module, path, **kwargs):
    """tf.saved_model.save on a full disk: part of the SavedModel written, then TensorFlow's error."""
    Path(path, "variables").mkdir(parents=True)
    Path(path, "variables", "variables.data-00000-of-00001").write_bytes(b"\0" * 100)
    raise tf.errors.ResourceExhaustedError(None, None, f"{path}/variables/variables_temp/part-00000; "
                                           "No space left on device [Op:SaveV2]")


def good_export(directory):
    """An export already there, as a previous `mode=export` left it."""
    (directory / "saved_model").mkdir(parents=True)
    (directory / "export.json").write_text('{"step": 18}\n')
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.parametrize("failing", ["saved_model", "model.keras", "rename"])
def test_an_export_that_cannot_write_keeps_the_previous_one_and_leaves_no_partial_one(tmp_path, monkeypatch,
                                                                                        failing):
    out = tmp_path / "export"
    before = good_export(out)
    if failing == "saved_model":
        monkeypatch.setattr(tf.saved_model, "save", enospc_on_save)
    else:  # the SavedModel written (quickly, for the test), then the .keras file or the final rename fails
        monkeypatch.setattr(tf.saved_model, "save", lambda module, path, **kwargs: Path(path).mkdir())
    if failing == "model.keras":
        monkeypatch.setattr(keras.Model, "save", lambda *a, **k: (_ for _ in ()).throw(
            OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    real_rename = Path.rename

    def rename(self, target):
        if failing == "rename" and self.name == "export.partial":
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    reason = r"permission denied \(EACCES\)" if failing == "rename" else r"no space left on the device \(ENOSPC\)"
    with pytest.raises(WriteError, match=f"^cannot write {out}: {reason}; the previous export there is kept. "):
        export.write_export(create_model("book_cnn", (8, 8, 1), 3), (8, 8, 1), ["x", "y", "z"], out, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no export.partial, no export.previous
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / "export.json").read_text() == '{"step": 18}\n'


def test_a_first_export_that_cannot_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(tf.saved_model, "save", enospc_on_save)
    with pytest.raises(WriteError, match=r"/export: no space left on the device \(ENOSPC\); no partial export is left"):
        export.write_export(create_model("book_cnn", (8, 8, 1), 3), (8, 8, 1), ["x", "y", "z"], tmp_path / "export", {})
    assert list(tmp_path.iterdir()) == []
