"""What a command prints: TensorFlow's start-up lines as the user's TF_CPP_MIN_LOG_LEVEL says,
and our own lines through the Python API, where nothing configured logging."""

import logging
import subprocess
import sys

import pytest
from conftest import ROOT
from helpers import env

from cnn.runtime import console

IMPORTED = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796127081.588957   18843 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1796127081.655118   18843 cpu_feature_guard.cc:227] This TensorFlow binary is optimized
To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow.
W1201 12:00:01.655118   18843 trt_convert.cc:2] TF-TRT Warning: Could not find TensorRT
2025-01-01 12:00:00.000000: E tensorflow/core/util/port.cc:113] an error in the older format
E0000 00:00:1796127156.385183   19739 cuda_executor.cc:1228] failed call to cuInit: UNKNOWN ERROR (303)
/site-packages/some/module.py:3: UserWarning: Python's own warning
  import something
F0000 00:00:1796127156.385183   19739 cpu_feature_guard.cc:1] fatal
"""


def lines(level):
    return [line.split("]", 1)[-1].strip() for line in console.shown_lines(IMPORTED, level).splitlines()]


def test_each_level_hides_the_severities_it_names_and_keeps_other_lines():
    python = ["/site-packages/some/module.py:3: UserWarning: Python's own warning", "import something"]
    assert console.shown_lines(IMPORTED, 0) == IMPORTED  # everything
    assert lines(1) == [console.ABSL_PREAMBLE, "TF-TRT Warning: Could not find TensorRT",
                        "an error in the older format", "failed call to cuInit: UNKNOWN ERROR (303)", *python, "fatal"]
    assert lines(2) == [console.ABSL_PREAMBLE, "an error in the older format",
                        "failed call to cuInit: UNKNOWN ERROR (303)", *python, "fatal"]
    assert lines(3) == [*python, console.ABSL_PREAMBLE, "fatal"]
    assert lines(console.HIDE_ALL) == python  # unset: none of TensorFlow's


@pytest.mark.parametrize("value,level", [(None, None), ("0", 0), ("2", 2), (" 3 ", 3), ("9", 3), ("-1", 0),
                                         ("abc", 0)])
def test_the_users_level(monkeypatch, value, level):
    if value is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", value)
    assert console.user_log_level() == level


def test_the_python_api_with_level_2_prints_no_info_or_warning_start_up_line_and_its_progress(tmp_path, tiny_data):
    """The README's compose + train_and_evaluate, with TF_CPP_MIN_LOG_LEVEL=2 and logging not
    configured: TensorFlow's INFO and WARNING start-up lines hidden (it printed some: they are
    recorded), each of our lines shown once."""
    code = f"""
import sys
from cnn.runtime import console
raw = []
filtered = console.shown_lines
console.shown_lines = lambda text, level: raw.append(text) or filtered(text, level)
from cnn.config import compose
from cnn.training.train import train_and_evaluate
config = compose("dataset.data_dir={tiny_data}", "epochs=1", "batch_size=60", "checkpoint.dir=ckpt", "summaries=false")
train_and_evaluate(config, workdir="run")
print("".join(raw))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env(tmp_path), "PYTHONPATH": str(ROOT),
                          "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    severity = lambda line: (lambda m: m and (m.group(1) or m.group(2)))(console.ABSL_LINE.match(line))
    assert any(severity(line) == "I" for line in proc.stdout.splitlines()), "no start-up line to hide"
    for line in proc.stderr.splitlines():
        assert severity(line) not in ("I", "W") and line != console.ABSL_PREAMBLE, line
    (epoch,) = [line for line in proc.stderr.splitlines() if "epoch 1/1 " in line]  # once: not twice
    assert "[cnn.reporting][INFO] - epoch 1/1 " in epoch
    assert "[cnn.reporting][INFO] - selected epoch 1 of 1" in proc.stderr


def test_default_logging_only_where_nothing_configured_it(monkeypatch, capsys):
    root, ours = logging.getLogger(), logging.getLogger("cnn")
    monkeypatch.setattr(root, "handlers", [])  # as in a notebook (pytest's own are restored after)
    level = ours.level
    ours.setLevel(logging.NOTSET)
    try:
        console.default_logging()
        console.default_logging()  # once
        logging.getLogger("cnn.training").info("first steps done")
        logging.getLogger("elsewhere").info("not ours")
        assert capsys.readouterr().err.endswith("[cnn.training][INFO] - first steps done\n")
        theirs = logging.StreamHandler(sys.stdout)
        root.addHandler(theirs)  # the user configured logging afterwards: ours goes
        console.default_logging()
        assert root.handlers == [theirs] and ours.level == logging.NOTSET
    finally:
        ours.setLevel(level)
