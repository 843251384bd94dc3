"""Your own model from outside the repository, the Hydra way: a `_target_` builder found on
PYTHONPATH and a YAML found through `hydra.searchpath`, trained (with the default precise
batch norm), killed and resumed bitwise from the command line, evaluated and exported (in this
process, with the same overrides) for predict in a fresh process; and the one-line errors of a
bad `_target_` or option."""

import gzip
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from conftest import ROOT, SAMPLE
from helpers import env, run_in_process, sigkill_then_rerun

from cnn.config import compose, run_name
from cnn.errors import ConfigError
from cnn.models import MODELS, build_model
from cnn.optim import OPTIMIZERS

BUILDER = '''
import keras
from keras import layers


def build(input_shape, num_classes, *, width: int = 8, dropout: float = 0.1):
    """A small residual network with batch norm: conv-BN-ReLU, a residual block, pooling, dropout."""
    inputs = keras.Input(input_shape)
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(width, 3, padding="same", use_bias=False)(inputs)))
    y = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(width, 3, padding="same", use_bias=False)(x)))
    y = layers.BatchNormalization()(layers.Conv2D(width, 3, padding="same", use_bias=False)(y))
    x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.Dropout(dropout)(layers.GlobalAveragePooling2D()(layers.MaxPool2D()(x)))
    return keras.Model(inputs, layers.Dense(num_classes, dtype="float32")(x), name="my_resnet")


def not_a_model(input_shape, num_classes):
    return 42


NOT_CALLABLE = 3
'''


@pytest.fixture
def user_package(tmp_path):
    """my_models/resnet.py and conf/model/my_resnet.yaml, outside the repository."""
    (tmp_path / "src" / "my_models").mkdir(parents=True)
    (tmp_path / "src" / "my_models" / "__init__.py").write_text("")
    (tmp_path / "src" / "my_models" / "resnet.py").write_text(BUILDER)
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "my_resnet.yaml").write_text(textwrap.dedent("""\
        _target_: my_models.resnet.build
        width: 8
        dropout: 0.1
        """))
    return tmp_path


def user_env(tmp_path, package):
    return {**env(tmp_path), "PYTHONPATH": os.pathsep.join([str(package / "src"), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_a_user_model_trains_resumes_bitwise_evaluates_and_exports(tmp_path, user_package, monkeypatch):
    monkeypatch.setattr("helpers.env", lambda path: user_env(path, user_package))
    monkeypatch.syspath_prepend(str(user_package / "src"))  # in this process, what PYTHONPATH gives the command line
    common = [f"dataset.data_dir={SAMPLE}", "epochs=2", "batch_size=50", f"hydra.searchpath=[file://{user_package}/conf]",
              "model=my_resnet", "precise_bn.batches=4", "checkpoint.every_n_steps=5", "checkpoint.keep=2"]
    straight = sigkill_then_rerun(tmp_path, common)
    assert straight["run_name"] == "straight"  # checkpoint.dir names it here; by default, mnist-resnet-lr0.001-...
    identity = json.loads((tmp_path / "straight" / "run.json").read_text())["identity"]
    assert identity["model._target_"] == "my_models.resnet.build" and identity["model.width"] == 8

    evaluated = run_in_process(tmp_path, *common, "checkpoint.dir=straight", "mode=eval", run_dir="eval")
    assert (evaluated["test_accuracy"], evaluated["test_loss"]) == (straight["test_accuracy"], straight["test_loss"])
    run_in_process(tmp_path, *common, "checkpoint.dir=straight", "mode=export", run_dir="export")
    image = tmp_path / "digit.png"
    with gzip.open(SAMPLE / "t10k-images-idx3-ubyte.gz") as f:
        Image.fromarray(np.frombuffer(f.read(), np.uint8, offset=16)[:784].reshape(28, 28)).save(image)
    predicted = subprocess.run([sys.executable, "-m", "cnn.tools.predict", str(tmp_path / "straight" / "export"),
                                str(image), "--json"], cwd=ROOT, env=env(tmp_path), capture_output=True, text=True,
                               timeout=300)
    assert predicted.returncode == 0, predicted.stderr
    (answer,) = json.loads(predicted.stdout)
    assert answer["predictions"][0]["class"] in [str(i) for i in range(10)]  # needs only the export, not my_models


@pytest.mark.parametrize("target, message", [
    ("no_such_module.build", "model._target_=no_such_module.build: cannot use it"),
    ("my_models.resnet.NOT_CALLABLE", "model._target_=my_models.resnet.NOT_CALLABLE: cannot use it"),
    ("my_models.resnet.not_a_model", "returned int, not a keras.Model"),
])
def test_a_bad_target_is_one_line(tmp_path, user_package, monkeypatch, target, message):
    monkeypatch.syspath_prepend(str(user_package / "src"))
    with pytest.raises(ConfigError) as raised:
        build_model({"_target_": target}, (28, 28, 1), 10)
    assert str(raised.value).startswith(f"model._target_={target}: ") and message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_options_are_checked_against_the_builder(tmp_path, user_package, monkeypatch):
    monkeypatch.syspath_prepend(str(user_package / "src"))
    config = compose()
    config.model = {"_target_": "my_models.resnet.build", "width": 8}
    assert run_name(config, "x").startswith("mnist-resnet-lr0.001-bs100-seed0-")  # named after its module
    assert MODELS.check({"_target_": "my_models.resnet.build", "width": 4, "dropout": 0}) == {"width": 4, "dropout": 0.0}
    for spec, message in [({"_target_": "my_models.resnet.build", "depth": 3},
                           "model.depth=3: resnet does not take it (its options: width, dropout)"),
                          ({"_target_": "my_models.resnet.build", "width": "wide"}, "model.width='wide': must be int"),
                          ({"name": "bn_cnn", "bn_momentum": 1.0}, "model.bn_momentum=1.0: must be in [0, 1)"),
                          ({"name": "resnet9"}, "model.name=resnet9: unknown model; known: bn_cnn, book_cnn"),
                          ({"name": "sgd", "momentum": 1.5}, None)]:
        registry = OPTIMIZERS if spec.get("name") == "sgd" else MODELS
        with pytest.raises(ConfigError) as raised:
            registry.check(spec)
        assert message is None or str(raised.value).startswith(message), str(raised.value)
