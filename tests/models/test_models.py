"""The registry and the networks' shapes."""

import numpy as np
import pytest

from cnn.errors import ConfigError
from cnn.models import MODELS, create_model


def test_book_cnn_has_the_books_parameter_count():
    model = create_model("book_cnn", (28, 28, 1), 10)
    assert model.count_params() == 619_786
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 619_786


def test_tutorial_cnn_outputs_logits():
    model = create_model("tutorial_cnn", (32, 32, 3), 10)
    assert model.count_params() == 122_570  # the tutorial's figure
    logits = model(np.random.default_rng(0).random((4, 32, 32, 3), np.float32)).numpy()
    assert logits.shape == (4, 10)
    # A softmax output would be positive and sum to 1 in every row.
    assert (logits < 0).any() or not np.allclose(logits.sum(axis=1), 1.0)
    assert model.layers[-1].activation.__name__ == "linear"


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigError) as e:
        create_model("no_such_model", (28, 28, 1), 10)
    for name in MODELS:
        assert name in str(e.value)


BOOK_STYLES = ["book_cnn", "book_cnn_functional", "book_cnn_subclass"]


@pytest.mark.parametrize("name", BOOK_STYLES[1:])
def test_the_three_api_styles_are_one_network(name):
    reference = create_model("book_cnn", (28, 28, 1), 10)
    other = create_model(name, (28, 28, 1), 10)
    assert other.count_params() == 619_786
    assert [tuple(w.shape) for w in other.weights] == [tuple(w.shape) for w in reference.weights]
    other.set_weights(reference.get_weights())
    images = np.random.default_rng(1).random((8, 28, 28, 1), np.float32)
    np.testing.assert_array_equal(other(images).numpy(), reference(images).numpy())


def test_bn_cnn_has_batch_norm_everywhere():
    model = create_model("bn_cnn", (28, 28, 1), 10)
    norms = [l for l in model.layers if l.__class__.__name__ == "BatchNormalization"]
    assert len(norms) == 4  # three conv blocks and the dense layer
    assert model(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)


@pytest.mark.parametrize("shape", [(6, 5, 5, 3), (6, 4)])
def test_fused_batch_norm_computes_what_the_keras_layer_does(shape):
    import keras
    import tensorflow as tf

    from cnn.models.layers import BatchNormalization

    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(1.0, 3.0, shape), tf.float32)
    ours, keras_bn = BatchNormalization(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    for layer in (ours, keras_bn):
        layer.build(shape)
    for a, b in zip(ours.weights, keras_bn.weights):
        value = rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
        a.assign(value)
        b.assign(value)
    for training in (True, False):
        grads = []
        for layer in (ours, keras_bn):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=training)
                loss = tf.reduce_sum(y * tf.range(1.0, shape[-1] + 1.0))  # unequal weights per channel
            grads.append((y, *tape.gradient(loss, [x, layer.gamma, layer.beta])))
        for ours_value, keras_value in zip(*grads):
            np.testing.assert_allclose(ours_value.numpy(), keras_value.numpy(), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(ours.moving_mean.numpy(), keras_bn.moving_mean.numpy(), rtol=1e-6)
        np.testing.assert_allclose(ours.moving_variance.numpy(), keras_bn.moving_variance.numpy(), rtol=1e-6)


def test_fused_batch_norm_under_mixed_bfloat16_keeps_float32_statistics():
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = create_model("bn_cnn", (28, 28, 1), 10)
        images = np.random.default_rng(4).random((8, 28, 28, 1), np.float32)
        logits = model(images, training=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    norms = [l for l in model.layers if l.__class__.__name__ == "BatchNormalization"]
    assert logits.dtype == "float32" and np.isfinite(logits.numpy()).all()
    assert all(n.moving_mean.dtype == "float32" for n in norms)
    assert not np.array_equal(norms[0].moving_mean.numpy(), np.zeros(32))  # updated in training


def test_ensemble_stacks_independent_members():
    model = create_model("ensemble", (28, 28, 1), 10, members="book_cnn", size=3, dropout=0.4)
    images = np.random.default_rng(2).random((4, 28, 28, 1), np.float32)
    logits = model(images).numpy()
    assert logits.shape == (3, 4, 10)
    assert model.count_params() == 3 * 619_786
    assert not np.array_equal(logits[0], logits[1])  # members start apart
    np.testing.assert_array_equal(logits[2], model.members[2](images).numpy())
    assert len({v.path for v in model.weights}) == len(model.weights)  # unique names


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_variable_is_checkpointed(name, tmp_path):
    """Every variable, BatchNorm statistics and Dropout seeds included, survives a save and
    a restore into a fresh model: layers Keras tracks but tf.train.Checkpoint does not would not."""
    import keras

    from cnn.training.state import TrainState

    shape = (32, 32, 3) if name == "tutorial_cnn" else (28, 28, 1)
    options = {"members": "bn_cnn", "size": 2} if name == "ensemble" else {}
    keras.utils.set_random_seed(0)
    saved = TrainState(create_model(name, shape, 10, **options), keras.optimizers.Adam())
    saved.model(np.random.default_rng(0).random((4, *shape), np.float32), training=True)  # moves BN statistics
    for v in saved.model.variables:  # every variable gets a value a fresh model cannot have
        v.assign(np.full(v.shape, 7, v.dtype.name if hasattr(v.dtype, "name") else v.dtype))
    path = saved.checkpoint.write(str(tmp_path / "ckpt"))
    keras.utils.set_random_seed(1)
    fresh = TrainState(create_model(name, shape, 10, **options), keras.optimizers.Adam())
    fresh.checkpoint.read(path).assert_consumed()
    assert len(fresh.model.variables) == len(saved.model.variables)
    for v in fresh.model.variables:
        np.testing.assert_array_equal(np.asarray(v.numpy()), 7, err_msg=v.path)


def test_untracked_layers_are_refused():
    import keras

    from cnn.training.state import TrainState

    class Hidden(keras.Model):
        def __init__(self):
            super().__init__()
            # A list of models: Keras tracks it, tf.train.Checkpoint does not follow it.
            self.parts = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])]

        def call(self, x):
            return self.parts[0](x)

    model = Hidden()
    model(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="would not save"):
        TrainState(model, keras.optimizers.Adam())


def test_ensemble_of_an_unknown_member():
    with pytest.raises(ConfigError, match="model.members=no_such_model"):
        create_model("ensemble", (28, 28, 1), 10, members="no_such_model")


def test_an_option_the_model_does_not_take_is_an_error():
    with pytest.raises(ConfigError, match=r"model.size=3: book_cnn does not take it \(its options: dropout\)"):
        create_model("book_cnn", (28, 28, 1), 10, size=3)


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_resnets_have_the_papers_sizes():
    # ResNet-20 with option A shortcuts: 0.27M (He et al. Table 6), counted layer by layer:
    # stem 432 + stages 13,824 + 50,688 + 202,752 + batch norm 1,376 + logits 650.
    assert trainable_count(create_model("resnet", (32, 32, 3), 10)) == 269_722
    assert trainable_count(create_model("resnet", (32, 32, 3), 10, shortcut="projection")) == 272_474
    assert trainable_count(create_model("preact_resnet", (32, 32, 3), 10)) == 269_722
    assert round(trainable_count(create_model("resnet", (32, 32, 3), 10, depth=56)) / 1e6, 2) == 0.85  # ResNet-56
    wrn = create_model("wide_resnet", (32, 32, 3), 10, depth=16, widen=4)
    assert round(trainable_count(wrn) / 1e6, 1) == 2.7  # WRN-16-4 (Zagoruyko and Komodakis, Table 4)
    resnet20 = create_model("resnet", (28, 28, 1), 10)
    pooled = [l for l in resnet20.layers if "pooling" in l.name][0]
    assert tuple(pooled.input.shape) == (None, 7, 7, 64)  # 28 -> 14 -> 7 over three stages


@pytest.mark.parametrize("model,options,wanted", [("resnet", {"depth": 21}, "depth = 6n[+]2"),
                                                   ("wide_resnet", {"depth": 20}, "depth = 6n[+]4"),
                                                   ("preact_resnet", {"shortcut": "B"}, "pad .option A.")])
def test_a_depth_or_shortcut_the_network_cannot_have_is_one_line_before_building(model, options, wanted):
    from cnn.models import MODELS

    with pytest.raises(ConfigError, match=wanted):
        MODELS.check({"name": model, **options})


@pytest.mark.parametrize("name,options", [("resnet", {"depth": 8}),
                                          ("preact_resnet", {"depth": 8, "shortcut": "projection"}),
                                          ("wide_resnet", {"depth": 10, "widen": 2, "dropout": 0.3})])
def test_residual_networks_train_a_step_and_round_trip_through_an_export(name, options, tmp_path):
    import keras
    import tensorflow as tf

    from cnn.serving.export import write_export
    from cnn.training.state import TrainState
    from cnn.training.steps import train_step

    keras.utils.set_random_seed(0)
    state = TrainState(create_model(name, (28, 28, 1), 10, **options), keras.optimizers.SGD(0.1, momentum=0.9))
    rng = np.random.default_rng(0)
    images, labels = rng.random((8, 28, 28, 1), np.float32), rng.integers(0, 10, 8)
    before = [w.numpy().copy() for w in state.model.trainable_weights]
    loss, _, _ = train_step(state.model, state.optimizer, (images, labels))
    assert np.isfinite(float(loss))
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, state.model.trainable_weights))
    out = write_export(state.model, (28, 28, 1), [str(i) for i in range(10)], tmp_path / "export", {})
    served = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    pixels = (images * 255).astype(np.uint8)
    expected = tf.nn.softmax(state.model(pixels.astype(np.float32) / 255, training=False)).numpy()
    np.testing.assert_allclose(served(images=tf.constant(pixels))["probabilities"].numpy(), expected, atol=1e-5)
    assert keras.saving.load_model(out / "model.keras") is not None  # the option A shortcut serializes
