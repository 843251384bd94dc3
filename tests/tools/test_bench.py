"""The benchmark end to end on tiny sizes: every table filled from the loop's own calls."""

import re
import subprocess
import sys

import keras
import pytest
from conftest import ROOT, SAMPLE

from cnn.tools import bench


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
