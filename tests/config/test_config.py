"""Every config group composes; bad values and keys fail with a readable message."""

import dataclasses
import itertools
from pathlib import Path

import pytest
from conftest import ROOT
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from cnn.config import (Config, DatasetConfig, ImageFolderConfig, compose, identity, register_configs, run_name,
                        to_config)
from cnn.config.schema import CheckpointConfig, ScheduleConfig
from cnn.errors import ConfigError

CONF = str(ROOT / "conf")
register_configs()


def load(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def group_options(group):
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


@pytest.mark.parametrize("dataset,model", list(itertools.product(group_options("dataset"), group_options("model"))))
def test_every_group_composes(dataset, model):
    config = to_config(load(f"dataset={dataset}", f"model={model}"))
    assert config.dataset.name == dataset and config.model["name"] == model


def test_defaults_are_the_books():
    config = to_config(load())
    assert (config.dataset.name, config.model["name"], config.lr, config.batch_size) == ("mnist", "book_cnn", 0.001, 100)
    assert config.model["dropout"] == 0.4 and config.seed == 0


@pytest.mark.parametrize("override,message", [
    ("lr=abc", "could not be converted to Float"),
    ("batch_sise=10", "batch_sise"),
    ("dataset.data_dri=/x", "data_dri"),
    ("epochs=1.5", "could not be converted to Integer"),
])
def test_bad_overrides_are_rejected(override, message):
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        load(override)
    assert message in str(e.value) + str(e.value.__cause__)


@pytest.mark.parametrize("override,message", [
    ("batch_sise=10", "batch_sise: no such key (did you mean batch_size?)"),
    ("+batch_sise=10", "batch_sise: no such key (did you mean batch_size?)"),
    ("model.foo=1", "model.foo: no such option of this model"),
    ("lr=abc", "lr: Value 'abc' of type 'str' could not be converted to Float"),
    ("dataset=foo", "dataset=foo: no such option; available: cifar10, fashion_mnist, image_folder, mnist"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as e:
        compose(override)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_an_added_model_option_is_a_one_line_error_before_any_data_is_read():
    """`+model.foo=1` gets past composition (a model's options are open); the builder check that
    starts every run refuses it, in one line."""
    from cnn.training import build

    with pytest.raises(ConfigError) as e:
        build.check_builders(compose("+model.foo=1"))
    assert str(e.value).startswith("model.foo=1: book_cnn does not take it (its options: dropout)")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("override,message", [
    ("lr=0", "lr=0.0: must be > 0"),
    ("seed=-1", "seed=-1: must be in"),
    ("lr=-1", "must be > 0"),
    ("batch_size=0", "batch_size=0: must be >= 1"),
    ("epochs=0", "epochs=0: must be >= 1"),
    ("model.dropout=1.0", "model.dropout"),
    ("mode=fit", "mode=fit"),
    ("checkpoint.every_n_steps=0", "every_n_steps"),
])
def test_out_of_range_values(override, message):
    from cnn.training import build  # a model's options are checked by its builder, before any data is read

    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        build.check_builders(to_config(load(override)))


def test_the_yaml_is_the_only_source_of_values():
    """The schema holds types only: no default a Python-built config could pick up instead of conf/'s."""
    for schema in (Config, DatasetConfig, ImageFolderConfig, ScheduleConfig, CheckpointConfig):
        for f in dataclasses.fields(schema):
            assert f.default in (dataclasses.MISSING, None) and f.default_factory is dataclasses.MISSING, \
                (schema.__name__, f.name)


def test_every_dataset_option_sets_every_key_it_uses():
    """Each conf/dataset/<option>.yaml gives a value to every key of its schema (the image-folder
    keys with dataset=image_folder), and the composed config equals the file."""
    for option in group_options("dataset"):
        schema = ImageFolderConfig if option == "image_folder" else DatasetConfig
        written = OmegaConf.to_container(OmegaConf.load(Path(CONF) / "dataset" / f"{option}.yaml"))
        written.pop("defaults", None)  # the schema it composes with, not a key
        assert {f.name for f in dataclasses.fields(schema)} <= written.keys(), option
        composed = dataclasses.asdict(compose(f"dataset={option}").dataset)
        assert composed == written, option


def test_every_model_option_sets_every_key_it_uses():
    """Each conf/model/<option>.yaml gives a value to every option of its builder (so no default
    of the builder's is ever picked up instead of conf/'s), the builder takes them all, and the
    composed config equals the file."""
    import inspect

    from cnn.models import MODELS

    for option in group_options("model"):
        written = OmegaConf.to_container(OmegaConf.load(Path(CONF) / "model" / f"{option}.yaml"))
        builder = MODELS[written["name"]]
        options = {p.name for p in inspect.signature(builder).parameters.values()
                   if p.name not in MODELS.context and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        assert written.keys() - {"name"} == options, option
        MODELS.check(written)  # every value of the file is one its builder takes
        assert compose(f"model={option}").model == written, option


def test_keys_that_cannot_change_a_run_stay_out_of_its_name():
    base = compose()
    for override in ("dataset.max_rotation=3", "dataset.max_shift=1", "dataset.flip=true",
                     "schedule.decay_steps=7", "schedule.alpha=0.5", "epochs=3", "checkpoint.keep=9"):
        assert run_name(compose(override)) == run_name(base), override
    assert "model.size" not in identity(base) and "model.members" not in identity(base)
    augmented = compose("dataset.augment=true")
    assert run_name(compose("dataset.augment=true", "dataset.max_rotation=3")) != run_name(augmented)
    decaying = compose("schedule.name=exponential")
    assert run_name(compose("schedule.name=exponential", "schedule.decay_steps=7")) != run_name(decaying)
    assert run_name(compose("schedule.name=exponential", "schedule.alpha=0.5")) == run_name(decaying)
    ensemble = compose("model=ensemble")
    assert run_name(compose("model=ensemble", "model.size=3")) != run_name(ensemble)


def test_identity_ignores_epochs_and_places():
    a = to_config(load("epochs=1", "dataset.data_dir=/a", "checkpoint.every_n_steps=5"))
    b = to_config(load("epochs=20"))
    assert identity(a) == identity(b) and run_name(a) == run_name(b)
    assert "lr" in identity(a) and "epochs" not in identity(a)


def test_run_name_differs_with_the_hyperparameters():
    names = {run_name(to_config(load(o))) for o in ("lr=0.01", "lr=0.001", "batch_size=64", "seed=1",
                                                    "model.dropout=0.5", "dataset=fashion_mnist")}
    assert len(names) == 6
    assert run_name(to_config(load("lr=0.01"))).startswith("mnist-book_cnn-lr0.01-bs100-seed0-")


EXPERIMENT_MODELS = {"book_sequential": "book_cnn", "book_functional": "book_cnn_functional",
                     "book_subclass": "book_cnn_subclass", "book_ensemble": "ensemble", "book_best": "ensemble",
                     "cifar10_tutorial": "tutorial_cnn", "resnet20_cifar10": "resnet",
                     "resnet_fashion": "resnet"}


def test_every_experiment_is_listed():
    assert sorted(EXPERIMENT_MODELS) == group_options("experiment")


@pytest.mark.parametrize("experiment", sorted(EXPERIMENT_MODELS))
def test_every_experiment_composes(experiment):
    config = to_config(load(f"+experiment={experiment}", "dataset.data_dir=/data"))
    assert config.model["name"] == EXPERIMENT_MODELS[experiment]
    assert config.dataset.data_dir == "/data"  # command-line overrides still apply


def test_book_best_has_the_books_settings_and_each_datasets_augmentation():
    mnist = to_config(load("+experiment=book_best"))
    fashion = to_config(load("+experiment=book_best", "dataset=fashion_mnist"))
    for config in (mnist, fashion):
        assert (config.model["name"], config.model["members"], config.model["size"]) == ("ensemble", "bn_cnn", 5)
        assert config.dataset.augment and config.dataset.max_shift == 2.0
        assert config.lr == 0.005 and config.schedule.name == "exponential" and config.schedule.staircase
        assert (config.schedule.decay_rate, config.epochs) == (0.85, 25)
    # Digits: the book's rotation, never mirrored. Garments: upright, mirrored.
    assert (mnist.dataset.max_rotation, mnist.dataset.flip) == (15.0, False)
    assert (fashion.dataset.max_rotation, fashion.dataset.flip) == (0.0, True)
    # An override still wins over the dataset's choice.
    assert to_config(load("+experiment=book_best", "dataset=fashion_mnist", "dataset.max_rotation=10")
                     ).dataset.max_rotation == 10.0


def test_cifar10_tutorial_experiment():
    config = to_config(load("+experiment=cifar10_tutorial"))
    assert (config.dataset.name, config.model["name"], config.epochs, config.batch_size) == \
        ("cifar10", "tutorial_cnn", 10, 32)
