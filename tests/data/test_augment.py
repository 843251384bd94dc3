"""The batch regularizers against hand-computed images and targets, their draws' ranges, and a
run with all of them (and an SGD recipe) resumed bitwise after a SIGKILL."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import SAMPLE_RUN, sigkill_then_rerun

from cnn.data import augment


def tiny_batch(n=4, size=6):
    """(n, size, size, 1) float32 images with distinct pixels, and labels 0..n-1."""
    images = (np.arange(n * size * size, dtype=np.float32).reshape(n, size, size, 1) + 1) / (n * size * size)
    return images, np.arange(n, dtype=np.int32)


def seed(a=3, b=5):
    return tf.constant([a, b], tf.int64)


def test_crop_is_a_crop_of_the_zero_padded_image():
    images, _ = tiny_batch()
    pad = 2
    out = augment.crop(tf.constant(images), seed(), pad, flip=False).numpy()
    padded = np.pad(images, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    for i in range(len(images)):  # each output is one of the (2 pad + 1)^2 crops, exactly
        crops = [padded[i, dy:dy + 6, dx:dx + 6] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
        assert any(np.array_equal(out[i], c) for c in crops), i
    # The same seed, the same crops; another seed, other ones.
    np.testing.assert_array_equal(out, augment.crop(tf.constant(images), seed(), pad, flip=False).numpy())
    assert not np.array_equal(out, augment.crop(tf.constant(images), seed(4), pad, flip=False).numpy())


def test_crop_with_flip_mirrors_some_images_and_no_pad_keeps_the_rest():
    images, _ = tiny_batch(n=16)
    out = augment.crop(tf.constant(images), seed(), 0, flip=True).numpy()
    mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    same = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(m != s for m, s in zip(mirrored, same))  # every image is one or the other
    assert 3 <= sum(mirrored) <= 13


def test_paste_replaces_exactly_the_box():
    images, _ = tiny_batch(n=2)
    boxes = tf.constant([[1, 2, 3, 5], [0, 0, 0, 0]], tf.int32)  # rows 1-2, columns 2-4; an empty box
    out = augment.paste(tf.constant(images), boxes, 0.0).numpy()
    expected = images.copy()
    expected[0, 1:3, 2:5] = 0.0
    np.testing.assert_array_equal(out, expected)


def test_erasing_boxes_have_the_drawn_area_and_aspect():
    n, size = 2000, 32
    boxes = augment.erasing_boxes(seed(), n, size, size, 0.5, (0.02, 0.4), (0.3, 3.3)).numpy()
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    erased = h * w > 0
    assert 0.4 < erased.mean() < 0.6  # the probability
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= size).all() and (boxes[:, 3] <= size).all()
    area = h[erased] * w[erased] / size**2
    assert area.min() > 0.01 and area.max() < 0.45  # [0.02, 0.4], up to rounding to whole pixels
    aspect = h[erased] / w[erased]
    assert aspect.min() > 0.25 and aspect.max() < 4.0


def test_cutout_boxes_are_squares_clipped_at_the_border():
    boxes = augment.cutout_boxes(seed(), 500, 10, 10, 4).numpy()
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (h <= 4).all() and (w <= 4).all() and (h >= 2).all() and (w >= 2).all()
    assert ((h == 4) & (w == 4)).mean() > 0.3  # most are whole
    assert (boxes >= 0).all() and (boxes[:, 2:] <= 10).all()


def test_mixup_blends_each_image_and_target_with_the_reversed_batch():
    images, labels = tiny_batch(n=3)
    targets = tf.one_hot(labels, 3)
    out, mixed = augment.mixup(tf.constant(images), targets, 0.7)
    np.testing.assert_allclose(out.numpy()[0], 0.7 * images[0] + 0.3 * images[2], rtol=1e-6)
    np.testing.assert_allclose(mixed.numpy(), [[0.7, 0, 0.3], [0, 1.0, 0], [0.3, 0, 0.7]], rtol=1e-6)


def test_cutmix_pastes_the_box_and_mixes_targets_by_the_pixels_kept():
    images, labels = tiny_batch(n=2)
    box = tf.constant([0, 0, 3, 4], tf.int32)  # 12 of 36 pixels
    out, mixed = augment.cutmix(tf.constant(images), tf.one_hot(labels, 2), box)
    expected = images.copy()
    expected[0, :3, :4], expected[1, :3, :4] = images[1, :3, :4], images[0, :3, :4]
    np.testing.assert_array_equal(out.numpy(), expected)
    np.testing.assert_allclose(mixed.numpy(), [[24 / 36, 12 / 36], [12 / 36, 24 / 36]], rtol=1e-6)


def test_cutmix_box_covers_one_minus_lambda_when_it_fits():
    box = augment.cutmix_box(seed(), 100, 100, tf.constant(0.75)).numpy()
    assert box[2] - box[0] <= 50 and box[3] - box[1] <= 50  # sqrt(0.25) of each side, or clipped


def test_mix_weight_is_beta_distributed_and_skipped_with_the_probability():
    draws = np.array([float(augment.mix_weight(seed(1, i), 0.4, 0.5)) for i in range(400)])
    assert 0.4 < (draws == 1.0).mean() < 0.6  # half the batches unmixed
    mixed = draws[draws < 1.0]
    assert abs(mixed.mean() - 0.5) < 0.08  # Beta(a, a) is symmetric about 1/2
    assert ((mixed < 0.1) | (mixed > 0.9)).mean() > 0.3  # alpha < 1: mostly near 0 or 1


def test_label_smoothing_targets_and_labels_left_alone_without_it():
    images, labels = tiny_batch(n=2)
    plain = augment.Regularizers(num_classes=4)
    assert not plain.active
    smooth = augment.Regularizers(num_classes=4, label_smoothing=0.2)
    out, targets = smooth(tf.constant(images), tf.constant(labels), seed())
    np.testing.assert_array_equal(out.numpy(), images)
    np.testing.assert_allclose(targets.numpy(), [[0.85, 0.05, 0.05, 0.05], [0.05, 0.85, 0.05, 0.05]], rtol=1e-6)


def test_soft_target_loss_is_the_mixed_cross_entropies():
    from cnn.models.outputs import cross_entropy, hard_labels

    logits = tf.constant([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    labels = tf.constant([0, 2])
    mixed = 0.7 * tf.one_hot(labels, 3) + 0.3 * tf.one_hot(tf.reverse(labels, [0]), 3)
    by_hand = tf.reduce_mean(0.7 * tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
                             + 0.3 * tf.nn.sparse_softmax_cross_entropy_with_logits(tf.reverse(labels, [0]), logits))
    np.testing.assert_allclose(cross_entropy(mixed, logits).numpy(), by_hand.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(hard_labels(mixed).numpy(), [0, 2])  # the larger share's class


@pytest.mark.slow
def test_every_regularizer_the_average_and_an_sgd_recipe_at_once_resume_bitwise_after_a_sigkill(tmp_path):
    """He et al.'s recipe in small (SGD with Nesterov momentum, weight decay, warmup and the rate
    divided at epoch 1.5) on the wide network with dropout, with every batch regularizer but
    cutmix (mixup's alternative: tests/training/test_training.py resumes it) and the average,
    precise statistics from a few batches; two epochs."""
    straight = sigkill_then_rerun(tmp_path, [*SAMPLE_RUN, "epochs=2", "precise_bn.batches=4",
                                             "model=wide_resnet", "model.depth=10", "model.widen=1",
                                             "model.dropout=0.2", "optimizer=sgd", "lr=0.05",
                                             "optimizer.nesterov=true", "optimizer.weight_decay=5e-4",
                                             "schedule.warmup_epochs=1", "schedule.name=step",
                                             "schedule.milestones=[1.5]", "dataset.pad=2",
                                             "dataset.flip=true", "erasing.probability=0.5", "cutout=6",
                                             "mixup.alpha=0.4", "mixup.probability=0.5", "label_smoothing=0.1",
                                             "ema.decay=0.9", "checkpoint.every_n_steps=5", "checkpoint.keep=2"])
    assert straight["test_accuracy"] > 0.2  # it learns through all of them
