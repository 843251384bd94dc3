"""Batch regularizers of the training pipeline: random crops after zero padding, random erasing,
cutout, mixup and cutmix, and the targets label smoothing makes.

Every draw is a stateless function of a seed pair (epoch seed, batch index), as the rotation
and shift of `pipeline.augment` are: a resumed run sees the same batches. Each regularizer is
two parts, a draw (`*_boxes`, `mix_weight`) and a pure function applying what was drawn, so
that tests can check the second against hand-computed images.

Shapes: images (B, H, W, C) float32 in [0, 1]; labels (B,) int; targets (B, classes) float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

ERASING_ATTEMPTS = 10  # Zhong et al. draw until the rectangle fits; 10 tries, as timm does


def crop(images, seed, pad: int, flip: bool):
    """A random crop of each image zero-padded by `pad` pixels per side (He et al.'s CIFAR
    augmentation), and with `flip` a left-right mirror of half of them.

    The crop is an integer translation by (dy, dx) in [-pad, pad]^2 with zeros shifted in,
    which is what cropping a padded image is; done as one exact nearest-pixel resampling."""
    n, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    shift_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shift = tf.cast(tf.random.stateless_uniform([n, 2], shift_seed, -pad, pad + 1, tf.int32), tf.float32)
    ones, zeros = tf.ones([n]), tf.zeros([n])
    a0, dx = ones, shift[:, 1]
    if flip:  # output x reads input (width - 1 - x) + dx
        mirrored = tf.random.stateless_uniform([n], flip_seed) < 0.5
        a0 = tf.where(mirrored, -ones, ones)
        dx = tf.where(mirrored, dx + (width - 1), dx)
    transforms = tf.stack([a0, zeros, dx, zeros, ones, shift[:, 0], zeros, zeros], axis=1)  # (B, 8)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=[height, width], fill_value=0.0,
        interpolation="NEAREST", fill_mode="CONSTANT")


def box_mask(boxes, height: int, width: int):
    """(B, H, W, 1) float32: 1 inside each image's box (top, left, bottom, right; bottom and
    right exclusive), 0 elsewhere."""
    rows = tf.range(height, dtype=boxes.dtype)[None, :, None]
    cols = tf.range(width, dtype=boxes.dtype)[None, None, :]
    top, left, bottom, right = (boxes[:, i, None, None] for i in range(4))
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    return tf.cast(inside, tf.float32)[..., None]


def paste(images, boxes, fill):
    """`images` with each box replaced by the same pixels of `fill` (B, H, W, C)."""
    mask = box_mask(boxes, images.shape[1], images.shape[2])
    return images * (1.0 - mask) + fill * mask


def erasing_boxes(seed, n, height: int, width: int, probability: float, area, aspect):
    """Zhong et al.'s random erasing: with `probability`, a rectangle of a uniform share of the
    image's `area` (low, high) and of aspect ratio (height / width) log-uniform in `aspect` (as
    timm draws it, symmetric in height and width; the paper draws it uniformly),
    placed uniformly where it fits; the first of ERASING_ATTEMPTS draws that fits, else none.
    Returns int32 (n, 4) boxes (top, left, bottom, right); an empty box erases nothing."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    shape = [n, ERASING_ATTEMPTS]
    target = tf.random.stateless_uniform(shape, seeds[0], area[0], area[1]) * (height * width)
    log_aspect = tf.random.stateless_uniform(shape, seeds[1], tf.math.log(float(aspect[0])),
                                             tf.math.log(float(aspect[1])))
    h = tf.round(tf.sqrt(target * tf.exp(log_aspect)))
    w = tf.round(tf.sqrt(target / tf.exp(log_aspect)))
    fits = (h >= 1) & (w >= 1) & (h <= height) & (w <= width)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)  # 0 when none fits
    pick = lambda t: tf.gather(t, first, batch_dims=1)  # noqa: E731
    h, w = pick(h), pick(w)
    keep = pick(tf.cast(fits, tf.float32)) * tf.cast(
        tf.random.stateless_uniform([n], seeds[2]) < probability, tf.float32)
    top = tf.floor(tf.random.stateless_uniform([n], seeds[3]) * (height - h + 1))
    left = tf.floor(tf.random.stateless_uniform([n], seeds[4]) * (width - w + 1))
    return tf.cast(tf.stack([top, left, top + h * keep, left + w * keep], axis=1), tf.int32)


def cutout_boxes(seed, n, height: int, width: int, size: int):
    """DeVries and Taylor's cutout: a `size` x `size` square centred on a uniformly drawn
    pixel, clipped at the borders. Returns int32 (n, 4) boxes."""
    centre = tf.random.stateless_uniform([n, 2], seed, 0, 2**31 - 1, tf.int32) % [height, width]
    top, left = centre[:, 0] - size // 2, centre[:, 1] - size // 2
    return tf.stack([tf.maximum(top, 0), tf.maximum(left, 0),
                     tf.minimum(top + size, height), tf.minimum(left + size, width)], axis=1)


def mix_weight(seed, alpha: float, probability: float):
    """The share lambda of a batch's own images in a mix: Beta(alpha, alpha) with
    `probability`, else 1 (no mix). One per batch, as Zhang et al. and Yun et al. draw it."""
    g = tf.random.stateless_gamma([2], seed, alpha=alpha)
    lam = tf.math.divide_no_nan(g[0], g[0] + g[1])  # both draws can underflow to 0 for a small alpha
    used = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 1)) < probability
    return tf.where(used & (g[0] + g[1] > 0), lam, 1.0)


def mixup(images, targets, lam):
    """Each image and target mixed with the batch's reversed one: lam x + (1 - lam) x[::-1]."""
    return (lam * images + (1.0 - lam) * tf.reverse(images, [0]),
            lam * targets + (1.0 - lam) * tf.reverse(targets, [0]))


def cutmix_box(seed, height: int, width: int, lam):
    """Yun et al.'s box: a rectangle of (1 - lam) of the image, centred on a uniform pixel,
    clipped at the borders; int32 (4,)."""
    cut = tf.sqrt(1.0 - lam)
    h, w = tf.cast(cut * height, tf.int32), tf.cast(cut * width, tf.int32)
    centre = tf.random.stateless_uniform([2], seed, 0, 2**31 - 1, tf.int32) % [height, width]
    top, left = centre[0] - h // 2, centre[1] - w // 2
    return tf.stack([tf.maximum(top, 0), tf.maximum(left, 0),
                     tf.minimum(top + h, height), tf.minimum(left + w, width)])


def cutmix(images, targets, box):
    """The box of each image replaced by the reversed batch's; the targets mixed by the share
    of pixels each image keeps (the box after clipping, as Yun et al. correct lambda)."""
    n, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    boxes = tf.tile(box[None], [n, 1])
    kept = 1.0 - tf.cast((box[2] - box[0]) * (box[3] - box[1]), tf.float32) / (height * width)
    return (paste(images, boxes, tf.reverse(images, [0])),
            kept * targets + (1.0 - kept) * tf.reverse(targets, [0]))


@dataclass(frozen=True)
class Regularizers:
    """What the training pipeline applies after rotation and shift, from the config."""

    num_classes: int
    pad: int = 0
    flip: bool = False  # with pad: mirror half the images (when `augment` does not already)
    erasing: tuple = (0.0, (0.02, 0.4), (0.3, 3.3))  # probability, area, aspect
    cutout: int = 0
    mixup: tuple = (0.0, 1.0)  # alpha, probability
    cutmix: tuple = (0.0, 1.0)
    label_smoothing: float = 0.0

    @property
    def soft_targets(self) -> bool:
        """Whether batches carry (B, classes) targets instead of labels."""
        return bool(self.label_smoothing or self.mixup[0] or self.cutmix[0])

    def __call__(self, images, labels, seed):
        """(images, labels or targets) for one batch; `seed`: int64 (2,)."""
        seeds = tf.unstack(tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(
            seed, 7), 4))  # apart from the rotation's and shift's draws of the same batch
        n, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
        if self.pad:
            images = crop(images, seeds[0], self.pad, self.flip)
        if self.erasing[0]:
            boxes = erasing_boxes(seeds[1], n, height, width, *self.erasing)
            noise_seed = tf.random.experimental.stateless_fold_in(seeds[1], 1)  # apart from the boxes' draws
            images = paste(images, boxes, tf.random.stateless_uniform(tf.shape(images), noise_seed))
        if self.cutout:
            images = paste(images, cutout_boxes(seeds[2], n, height, width, self.cutout), 0.0)
        if not self.soft_targets:
            return images, labels
        targets = tf.one_hot(labels, self.num_classes)
        if self.mixup[0]:
            images, targets = mixup(images, targets, mix_weight(seeds[3], *self.mixup))
        if self.cutmix[0]:
            lam = mix_weight(seeds[3], *self.cutmix)
            box_seed = tf.random.experimental.stateless_fold_in(seeds[3], 2)
            images, targets = cutmix(images, targets, cutmix_box(box_seed, height, width, lam))
        eps = self.label_smoothing
        return images, targets * (1.0 - eps) + eps / self.num_classes

    @property
    def active(self) -> bool:
        return bool(self.pad or self.erasing[0] or self.cutout) or self.soft_targets


def from_config(config, num_classes: int) -> Regularizers:
    """The crops, erasing, cutout, mixup, cutmix and label smoothing a `cnn.config.Config` asks for."""
    d = config.dataset
    return Regularizers(
        num_classes, pad=d.pad, flip=d.flip and not d.augment,  # with augment, its resampling mirrors
        erasing=(config.erasing.probability, tuple(config.erasing.area), tuple(config.erasing.aspect)),
        cutout=config.cutout, mixup=(config.mixup.alpha, config.mixup.probability),
        cutmix=(config.cutmix.alpha, config.cutmix.probability), label_smoothing=config.label_smoothing)
