"""What every dataset source shares: the result types, the validation carve-out and the
``tf.data`` assembly (preprocess per batch, shuffle, batch, prefetch)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Facts about the datasets returned by :func:`load_dataset`.

    Attributes:
        name: Dataset name, e.g. ``"fashion_mnist"``.
        num_classes: Number of classes.
        input_shape: ``(height, width, channels)`` of one image after resizing.
        class_names: Class names, indexed by label.
        num_train: Examples in the ``train`` dataset.
        num_validation: Examples in the ``validation`` dataset (0 when it is ``None``).
        num_test: Examples in the ``test`` dataset.
        mean: Per-channel mean subtracted from images scaled to ``[0, 1]`` (zeros unless
            ``pixels="normalized"``).
        std: Per-channel standard deviation the centred images are divided by (ones unless
            ``pixels="normalized"``).
        pixels: What the images hold: ``"normalized"``, ``"unit"`` or ``"raw"`` (see
            :func:`load_dataset`).
        statistics: ``(mean, std)`` per channel of the dataset's FULL training split scaled to
            ``[0, 1]`` (never of a ``limit``-ed subset): the constants a model taking raw
            pixels normalizes with, whatever ``pixels`` is.
    """

    name: str
    num_classes: int
    input_shape: Tuple[int, int, int]
    class_names: Tuple[str, ...]
    num_train: int
    num_validation: int
    num_test: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    pixels: str = "normalized"
    statistics: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    """The pipelines returned by :func:`load_dataset`.

    Attributes:
        train: Shuffled (unless ``shuffle_buffer`` is 0), augmented, batched training data.
        validation: Batched validation data, or ``None`` with ``train_on_validation=True`` or
            ``validation_split=0``.
        test: Batched test data, in file order.
        info: A :class:`DatasetInfo`.
    """

    train: tf.data.Dataset
    validation: Optional[tf.data.Dataset]
    test: tf.data.Dataset
    info: DatasetInfo


def scaled_size(size: int, gamma: float) -> int:
    """Returns the input resolution scaled by a resolution coefficient: ``int(round(size * gamma))``.

    This is the resolution part of compound scaling (EfficientNet, SIPA). Python's ``round``
    rounds halves to even. Example: ``scaled_size(32, 1.4) == 45``, ``scaled_size(28, 1.4) == 39``.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"Expected size to be a positive integer. Received: size={size!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.number)) or not gamma > 0:
        raise ValueError(f"Expected gamma to be a positive number. Received: gamma={gamma!r}")
    return max(1, int(round(size * gamma)))


# --------------------------------------------------------------------------- splitting


def _validation_mask(num_examples: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the examples carved out for validation.

    Exactly ``round(num_examples * fraction)`` examples (at least one) are chosen by a
    permutation drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same
    split, and the rest stays for training.
    """
    num_val = max(1, int(round(num_examples * fraction)))
    if num_val >= num_examples:
        raise ValueError(
            f"validation_split={fraction} of {num_examples} training examples leaves none to "
            "train on. Use a smaller validation_split or a larger limit."
        )
    perm = np.random.default_rng(seed).permutation(num_examples)
    mask = np.zeros(num_examples, dtype=bool)
    mask[perm[:num_val]] = True
    return mask


def _select(ds: tf.data.Dataset, mask: np.ndarray, keep: bool) -> tf.data.Dataset:
    """Keeps the elements of ``ds`` whose position ``i`` has ``mask[i] == keep`` (streaming)."""
    mask_t = tf.constant(mask)
    count = int(mask.sum()) if keep else int((~mask).sum())
    ds = ds.enumerate().filter(lambda i, ex: tf.equal(tf.gather(mask_t, i), keep))
    ds = ds.map(lambda i, ex: ex)
    return ds.apply(tf.data.experimental.assert_cardinality(count))


# --------------------------------------------------------------------------- pipeline assembly


PIXELS = ("normalized", "unit", "raw")


def _preprocess_fn(size, resize_method, mean, std, num_classes, one_hot, augment=None, pixels="normalized"):
    """Returns a function mapping a batch ``(uint8 or float images, labels)`` to model inputs.

    Images are resized (if ``size``) and, for ``pixels="normalized"`` or ``"unit"``, scaled to
    ``[0, 1]``; ``augment`` sees ``[0, 1]`` images (raw ones are scaled back to ``[0, 255]``
    after it); ``"normalized"`` then applies ``(x - mean) / std``.
    """
    mean_t = tf.constant(mean, tf.float32)
    std_t = tf.constant(std, tf.float32)
    is_layer = isinstance(augment, keras.layers.Layer)

    def fn(images, labels):
        images = tf.cast(images, tf.float32)
        if size is not None:
            images = tf.image.resize(images, size, method=resize_method)
        if augment is not None or pixels != "raw":
            images = images / 255.0
        if augment is not None:
            images = augment(images, training=True) if is_layer else augment(images)
            images = tf.cast(images, tf.float32)
            if pixels == "raw":
                images = images * 255.0
        if pixels == "normalized":
            images = (images - mean_t) / std_t
        labels = tf.cast(labels, tf.int32)
        if one_hot:
            labels = tf.one_hot(labels, num_classes, dtype=tf.float32)
        return images, labels

    return fn


def _finish(ds, *, batch_size, preprocess, training, shuffle_buffer, seed):
    """Shuffles (training only), batches, preprocesses per batch and prefetches."""
    if training and shuffle_buffer:
        ds = ds.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(int(batch_size))
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _channel_stats(images: np.ndarray) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 NHWC images scaled to [0, 1] (float64 sums)."""
    channels = images.shape[-1]
    flat = images.reshape(-1, channels)
    n = flat.shape[0]
    s = flat.sum(axis=0, dtype=np.float64)
    sq = np.einsum("ij,ij->j", flat, flat, dtype=np.float64)  # no float copy of the images
    mean = s / n
    var = np.maximum(sq / n - mean**2, 0.0)
    mean, std = mean / 255.0, np.sqrt(var) / 255.0
    std = np.where(std > 0, std, 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _pipelines(train, validation, test, *, size, mean, std, num_classes, one_hot, augment, batch_size,
               shuffle_buffer, seed, pixels="normalized"):
    """Batched, preprocessed ``(train, validation, test)``; ``augment`` applies to ``train`` only."""
    common = dict(size=size, resize_method="nearest", mean=mean, std=std, num_classes=num_classes,
                  one_hot=one_hot, pixels=pixels)
    plain = _preprocess_fn(**common)
    finish = dict(batch_size=batch_size, shuffle_buffer=shuffle_buffer, seed=seed)
    train = _finish(train, preprocess=_preprocess_fn(**common, augment=augment), training=True, **finish)
    if validation is not None:
        validation = _finish(validation, preprocess=plain, training=False, **finish)
    test = _finish(test, preprocess=plain, training=False, **finish)
    return train, validation, test
