"""The registry and the networks' shapes."""

import numpy as np
import pytest

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
    with pytest.raises(KeyError) as e:
        create_model("resnet", (28, 28, 1), 10)
    for name in MODELS:
        assert name in str(e.value)
