"""Data pieces of the training recipes: augmentation policies and mixup.

:func:`augmentation_layer` names the Keras augmentation of a policy (the AutoAugment
policies are :class:`tfgated.autoaugment.AutoAugment`),
:func:`pad_crop_flip` is the ResNet CIFAR crop as a batch function and
:func:`mixup_batch` a ``tf.data`` map (:class:`tfgated.recipes.Recipe` ``augment``
and ``mixup``).
"""

from __future__ import annotations

import keras

from tfgated.autoaugment import AutoAugment

AUGMENT_POLICIES = (
    "none",
    "flip",
    "shift_flip",
    "pad2_crop_flip",
    "pad4_crop_flip",
    "random_resized_crop_flip",
    "randaugment",
    "augmix",
    "autoaugment_cifar10",
    "autoaugment_micronet",
    "autoaugment_micronet_crop_flip",
)


def augmentation_layer(policy, value_range=(0.0, 1.0), seed=None):
    """The Keras augmentation layer of a policy name (``None`` for ``"none"``).

    Policies: ``flip`` (random horizontal flip), ``shift_flip`` (random
    translation by up to 1/8 of the size, reflect padding, plus flip),
    ``pad{2,4}_crop_flip`` (zero-pad by 2/4 pixels, random crop back to size
    per example, random horizontal flip: the ResNet CIFAR augmentation),
    ``random_resized_crop_flip`` (random zoom-in up to 2x plus flip, an
    approximation of Inception's random-resized crop),
    ``randaugment`` (``keras.layers.RandAugment``, 2 ops, factor 0.5),
    ``augmix`` (``keras.layers.AugMix``, an AutoAugment-style mixture),
    ``autoaugment_cifar10`` (AutoAugment's CIFAR-10 policy, Cubuk et al. 2019) and
    ``autoaugment_micronet`` (the SIPA authors' policy searched on CIFAR-100), both
    :class:`tfgated.autoaugment.AutoAugment`, and ``autoaugment_micronet_crop_flip``, the
    authors' whole CIFAR-100 training augmentation: their policy, then a 4-pixel pad, random
    crop and flip (a batch function, like ``pad{2,4}_crop_flip``).
    Images are float in ``value_range`` (``tfgated.data`` augments in [0, 1]).
    """
    if policy not in AUGMENT_POLICIES:
        raise ValueError(f"Unknown augment policy {policy!r}. Expected one of {list(AUGMENT_POLICIES)}.")
    if policy == "none":
        return None
    if policy == "flip":
        return keras.layers.RandomFlip("horizontal", seed=seed, name="augment_flip")
    if policy == "shift_flip":
        return keras.Sequential(
            [
                keras.layers.RandomTranslation(0.125, 0.125, fill_mode="reflect", seed=seed),
                keras.layers.RandomFlip("horizontal", seed=seed),
            ],
            name="augment_shift_flip",
        )
    if policy in ("pad2_crop_flip", "pad4_crop_flip"):
        return pad_crop_flip(int(policy[3]), seed=seed)
    if policy == "random_resized_crop_flip":
        # An approximation of Inception's random-resized crop: zoom in by up to 2x.
        return keras.Sequential(
            [
                keras.layers.RandomZoom(height_factor=(-0.5, 0.0), fill_mode="reflect", seed=seed),
                keras.layers.RandomFlip("horizontal", seed=seed),
            ],
            name="augment_random_resized_crop_flip",
        )
    if policy == "autoaugment_micronet_crop_flip":
        return _then(AutoAugment("micronet", value_range=value_range, seed=seed, name="augment_autoaugment_micronet"),
                     pad_crop_flip(4, seed=seed))
    if policy.startswith("autoaugment_"):
        return AutoAugment(policy[len("autoaugment_"):], value_range=value_range, seed=seed, name=f"augment_{policy}")
    if policy == "randaugment":
        return keras.layers.RandAugment(value_range=value_range, seed=seed, name="augment_randaugment")
    return keras.layers.AugMix(value_range=value_range, seed=seed, name="augment_augmix")


def _then(layer, batch_fn):
    """A batch function: ``layer`` (in training mode), then ``batch_fn``."""

    def fn(images, training=True):
        if not training:
            return images
        return batch_fn(layer(images, training=True))

    return fn


def pad_crop_flip(pad, seed=None):
    """A batch function: zero-pad by ``pad``, crop back at a random offset per example, random flip.

    Vectorized with ``tf.gather(..., batch_dims=1)``; for the ``tf.data`` pipeline.
    """
    import tensorflow as tf  # data pipeline code, not a layer

    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 1:
        raise ValueError(f"Expected pad to be a positive integer. Received: pad={pad!r}")

    def fn(images, training=True):
        if not training:
            return images
        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        dy = tf.random.uniform([batch], 0, 2 * pad + 1, dtype=tf.int32, seed=seed)
        dx = tf.random.uniform([batch], 0, 2 * pad + 1, dtype=tf.int32, seed=None if seed is None else seed + 1)
        rows = dy[:, None] + tf.range(height)[None, :]
        cols = dx[:, None] + tf.range(width)[None, :]
        out = tf.gather(padded, rows, axis=1, batch_dims=1)
        out = tf.gather(out, cols, axis=2, batch_dims=1)
        flip = tf.random.uniform([batch], seed=None if seed is None else seed + 2) < 0.5
        return tf.where(flip[:, None, None, None], tf.reverse(out, axis=[2]), out)

    return fn


def mixup_batch(alpha, seed=None):
    """A ``tf.data`` map ``(images, one_hot_labels) -> mixed batch`` (Zhang et al. 2018).

    One ``lambda ~ Beta(alpha, alpha)`` per batch mixes the batch with a
    shuffled copy of itself: ``x = l x + (1 - l) x[perm]``, same for labels.
    Labels must be one-hot (float).
    """
    import tensorflow as tf  # data pipeline code, not a layer

    if not alpha > 0:
        raise ValueError(f"Expected mixup alpha > 0. Received: alpha={alpha}")

    def fn(images, labels):
        if labels.shape.rank is not None and labels.shape.rank < 2:
            raise ValueError("mixup needs one-hot labels: load the data with one_hot=True.")
        a = tf.random.gamma([], alpha, seed=seed)
        b = tf.random.gamma([], alpha, seed=None if seed is None else seed + 1)
        lam = a / (a + b)
        perm = tf.random.shuffle(tf.range(tf.shape(images)[0]), seed=seed)
        images = lam * images + (1.0 - lam) * tf.gather(images, perm)
        labels = tf.cast(labels, images.dtype)
        labels = lam * labels + (1.0 - lam) * tf.gather(labels, perm)
        return images, labels

    return fn
