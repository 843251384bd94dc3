"""The benchmark end to end on tiny sizes: every table filled from the loop's own calls."""

import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import ROOT, SAMPLE

from cnn.tools import bench, bench_measure
from cnn.tools.bench_contenders import train_flops_per_image


@pytest.mark.slow
def test_the_benchmark_runs_on_tiny_sizes(tmp_path, capsys):
    out = tmp_path / "bench.md"
    try:
        bench.main(["--dataset", "mnist", "--data-dir", str(SAMPLE), "--steps", "3", "--repeats", "1",
                    "--batch-size", "50", "--steps-per-loop", "3", "--out", str(out)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    report = out.read_text()
    assert re.search(r"Matmul peak measured in the same run: float32 \d+ GFLOP/s, mixed_bfloat16 \d+", report)
    for what in ("Keras `Model.fit` | float32", "our loop, steps_per_loop=3 | float32",
                 "our loop, steps_per_loop=3 | mixed_bfloat16", "keras.layers.BatchNormalization` | float32"):
        row = next(line for line in report.splitlines() if what in line)
        assert float(row.split("|")[3].replace(",", "")) > 0, row
    for duty in ("evaluation", "checkpoint", "logging", "learning_curves.png", "all"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {duty} |"))
        assert float(row.split("|")[2]) > 0, row
    statistics = re.search(r"bn_cnn's precise batch-norm statistics .*: (\d+\.\d+) s, ", report)
    assert statistics and float(statistics.group(1)) > 0
    first = re.search(r"done (\d+\.\d) s after the process started", report)
    assert first and float(first.group(1)) > 0
    epochs = [line.split("|") for line in report.splitlines() if re.match(r"\| \d \| ", line)]
    assert [int(cells[1]) for cells in epochs] == list(range(1, bench.RUN_EPOCHS + 1))
    for cells in epochs:  # training and wall time of every epoch of the real run
        assert float(cells[2].split()[0]) > 0 and float(cells[6].split()[0]) >= float(cells[2].split()[0])
    assert report in capsys.readouterr().out


@pytest.mark.slow
def test_the_replica_benchmark_runs_on_tiny_sizes(tmp_path):
    """`--replicas` splits the CPU into logical devices, which TensorFlow allows once per process,
    before anything runs: in its own process."""
    out = tmp_path / "replicas.md"
    proc = subprocess.run([sys.executable, "-m", "cnn.tools.bench", "--dataset", "mnist", "--data-dir", str(SAMPLE),
                           "--steps", "4", "--repeats", "1", "--batch-size", "50", "--steps-per-loop", "2",
                           "--replicas", "1", "2", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = out.read_text()
    assert re.search(r"Matmul peak measured in the same run: float32 \d+ GFLOP/s, bfloat16 \d+", report)
    for what in ("Keras `Model.fit`, one device", "our loop, `distribute=none`",
                 "`distribute=mirrored`, 1 replica (logical CPUs)", "`distribute=mirrored`, 2 replicas (logical CPUs)"):
        row = next(line for line in report.splitlines() if what in line)
        assert float(row.split("|")[2].replace(",", "")) > 0, row


@pytest.mark.slow
def test_the_image_folder_benchmark_runs_on_tiny_sizes(tmp_path):
    from cnn.tools import to_folder

    folder = tmp_path / "png"
    assert to_folder.main([str(folder), "--dataset", "mnist", "--data-dir", str(SAMPLE)]) == 0
    out = tmp_path / "folders.md"
    try:
        bench.main(["--dataset", "mnist", "--data-dir", str(SAMPLE), "--image-folder", str(folder), "--steps", "3",
                    "--repeats", "1", "--batch-size", "50", "--steps-per-loop", "3", "--out", str(out)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    report = out.read_text()
    assert "the first load of the 2,000 training images" in report
    for what in ("`dataset=mnist`, in memory", "dataset.cache=memory", "dataset.cache=disk", "dataset.cache=none"):
        row = next(line for line in report.splitlines() if what in line)
        assert re.fullmatch(r" \d+\.\d s ", row.split("|")[2]) and float(row.split("|")[3].replace(",", "")) > 0, row


def conv_flops(size, kernel, c_in, c_out):
    return 2 * size * size * kernel * kernel * c_in * c_out  # one image's convolution, 2 FLOP per multiply-add


def test_the_flop_count_is_the_networks_convolutions_and_matrix_products():
    """Counted from the traced graph: the same for the three ways of writing the book CNN, and
    right for a ResNet's strided convolutions and parameter-free shortcuts."""
    from cnn.models import create_model

    book = (conv_flops(28, 3, 1, 32) + conv_flops(14, 3, 32, 64) + conv_flops(7, 3, 64, 128)
            + 2 * (2048 * 256 + 256 * 10))
    for name in ("book_cnn", "book_cnn_functional", "book_cnn_subclass"):
        assert train_flops_per_image(create_model(name, (28, 28, 1), 10), (28, 28, 1)) == 3 * book == 47_867_904
    resnet8 = (conv_flops(28, 3, 1, 16) + 2 * conv_flops(28, 3, 16, 16) + conv_flops(14, 3, 16, 32)
               + conv_flops(14, 3, 32, 32) + conv_flops(7, 3, 32, 64) + conv_flops(7, 3, 64, 64) + 2 * 64 * 10)
    assert train_flops_per_image(create_model("resnet", (28, 28, 1), 10, depth=8), (28, 28, 1)) == 3 * resnet8


@pytest.mark.parametrize("argv, message", [
    (["--model-option", "depth"], "--model-option depth: must be KEY=VALUE"),
    (["--contenders", "epoch-end", "fit"], "--contenders epoch-end: needs loop and float32"),
    (["--contenders", "torch"], "--contenders: name fit or loop"),
    (["--model", "resnet", "--model-option", "depth=9"], "model.depth=9: resnet needs depth = 6n+2"),
    (["--model", "resnet", "--model-option", "size=3"], "model.size: no such option of this model"),
    (["--model", "resnet", "--contenders", "fit", "torch"], "--contenders torch: the PyTorch network is book_cnn's"),
    (["--model", "nonet"], "model=nonet: no such option"),
])
def test_bad_arguments_stop_with_one_line(argv, message):
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--dataset", "mnist", "--data-dir", str(SAMPLE), *argv])
    assert str(stopped.value.code).startswith(f"error: {message}") and "\n" not in str(stopped.value.code)


@pytest.mark.slow
def test_the_benchmark_times_any_model_with_its_options(tmp_path, monkeypatch):
    """--model resnet with depth 8, fit and our loop only: the table names the model and its FLOPs;
    both contenders train it as training does, batch norm included: after their warm-up steps
    (the same batches, from the same seed) their weights and moving averages are the same."""
    warmed = {}

    def keeping(prepare):
        def wrapped(*args, **kwargs):
            run = prepare(*args, **kwargs)
            warmed[prepare.__name__] = [w.numpy() for w in run.model.weights]
            moving = next(layer for layer in run.model.layers if isinstance(layer, keras.layers.BatchNormalization))
            assert np.abs(moving.moving_mean.numpy()).max() > 0  # from 0: trained in training mode
            return run
        return wrapped

    for name in ("prepare_fit", "prepare_loop"):
        monkeypatch.setattr(bench_measure, name, keeping(getattr(bench_measure, name)))
    out = tmp_path / "resnet.md"
    try:
        bench.main(["--dataset", "mnist", "--data-dir", str(SAMPLE), "--model", "resnet", "--model-option", "depth=8",
                    "--contenders", "fit", "loop", "--precisions", "float32", "--steps", "2", "--repeats", "1",
                    "--batch-size", "20", "--steps-per-loop", "2", "--no-startup", "--out", str(out)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    report = out.read_text()
    assert "`resnet` (depth=8, shortcut=pad, bn_momentum=0.9; 75,482 parameters), batch 20, mnist" in report
    assert "training step 54.9 MFLOP per image (3x the forward pass's convolutions" in report
    rows = [line.split("|") for line in report.splitlines() if line.startswith(("| Keras", "| our loop"))]
    assert [(cells[1].strip(), cells[2].strip()) for cells in rows] == [
        ("Keras `Model.fit`", "float32"), ("our loop, steps_per_loop=2", "float32")]
    assert all(float(cells[3].replace(",", "")) > 0 for cells in rows)
    assert "batch normalization" not in report and "Per-epoch overhead" not in report and "PyTorch" not in report
    for fit, loop in zip(warmed["prepare_fit"], warmed["prepare_loop"], strict=True):
        np.testing.assert_allclose(fit, loop, rtol=1e-5, atol=1e-6)
