"""Input pipelines: batched, prefetched ``tf.data`` datasets for training and evaluation.

One public entry point, :func:`load_dataset`, returns a :class:`DatasetSplits` with ``train``,
``validation`` and ``test`` datasets of ``(image, label)`` pairs, where ``image`` is float32 NHWC
and ``label`` is an int32 class index (or a float32 one-hot vector with ``one_hot=True``).

Data sources (never downloaded):

- ``"fashion_mnist"`` (default, works offline): the genuine IDX files that Debian's package
  ``dataset-fashion-mnist`` installs under ``/usr/share/datasets/fashion-mnist/``, read with
  numpy (:func:`load_fashion_mnist_arrays`). Another folder can be given with ``data_dir`` or the
  environment variable ``TFGATED_FASHION_MNIST_DIR``. TFDS' own ``fashion_mnist`` builder is
  not used: it refuses these (recompressed) files by checksum.
- ``"cifar10"``, ``"cifar100"``, ``"imagenet2012"``: ``tfds.load(..., download=False)`` from a
  ``data_dir`` prepared beforehand (see :data:`PREPARE_HINTS`). For ``imagenet2012`` the test
  split is TFDS' ``validation`` split (the real test labels are not public) and images are resized
  (bilinear) to ``image_size`` or 224.

Pixels (``pixels=``):

- ``"normalized"`` (default): pixels mapped to ``[0, 1]``, then the per-channel
  ``(x - mean) / std`` with the statistics of the dataset's FULL training split (never those of a
  ``limit``-ed subset or of the split left after the validation carve-out).
- ``"unit"``: pixels in ``[0, 1]``; ``info.mean``/``info.std`` record the identity map (zeros and ones).
- ``"raw"``: float32 pixel values in ``[0, 255]``, what a ``tfgated.zoo`` model takes: it scales
  and normalizes inside its graph (``Rescaling`` + ``Normalization`` layers).

``info.statistics`` holds the ``(mean, std)`` of the full training split whatever ``pixels`` is:

- Fashion-MNIST: computed exactly from the 60000 training images: mean 0.28604, std 0.35302.
- CIFAR-10: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616) -- the published
  training-set statistics (a full pass over TFDS data to recompute them would be slow).
- CIFAR-100: mean (0.5071, 0.4865, 0.4409), std (0.2673, 0.2564, 0.2762).
- ImageNet: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).

"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np

from tfgated.data.common import PIXELS, DatasetInfo, DatasetSplits, scaled_size
from tfgated.data.fashion_mnist import (
    FASHION_MNIST_CLASS_NAMES,
    FASHION_MNIST_DEFAULT_DIR,
    FASHION_MNIST_ENV_VAR,
    _load_fashion_mnist,
    load_fashion_mnist_arrays,
)
from tfgated.data.tfds_sources import PREPARE_HINTS, TFDS_DATASETS, _load_tfds

__all__ = [
    "DatasetInfo",
    "DatasetSplits",
    "FASHION_MNIST_CLASS_NAMES",
    "FASHION_MNIST_DEFAULT_DIR",
    "FASHION_MNIST_ENV_VAR",
    "KNOWN_DATASETS",
    "PIXELS",
    "PREPARE_HINTS",
    "TFDS_DATASETS",
    "load_dataset",
    "load_fashion_mnist_arrays",
    "scaled_size",
]

KNOWN_DATASETS = ("fashion_mnist",) + TFDS_DATASETS

ImageSize = Union[int, Tuple[int, int], Sequence[int]]


# --------------------------------------------------------------------------- argument checks


def _check_image_size(image_size) -> Optional[Tuple[int, int]]:
    if image_size is None:
        return None

    def positive_int(v):
        return not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v > 0

    if positive_int(image_size):
        return int(image_size), int(image_size)
    if (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(positive_int(v) for v in image_size)
    ):
        return int(image_size[0]), int(image_size[1])
    raise ValueError(
        "Expected image_size to be None, a positive int or a (height, width) pair of positive "
        f"ints. Received: image_size={image_size!r}"
    )


def _check_args(name, batch_size, validation_split, limit, shuffle_buffer, augment, pixels):
    if name not in KNOWN_DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}. Expected one of: {', '.join(KNOWN_DATASETS)}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"Expected batch_size to be a positive integer. Received: batch_size={batch_size!r}")
    if (
        isinstance(validation_split, bool)
        or not isinstance(validation_split, (int, float, np.number))
        or not 0 <= validation_split < 1
    ):
        raise ValueError(
            "Expected validation_split to be a number in [0, 1). "
            f"Received: validation_split={validation_split!r}"
        )
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0
    ):
        raise ValueError(f"Expected limit to be None or a positive integer. Received: limit={limit!r}")
    if shuffle_buffer is not None and (
        isinstance(shuffle_buffer, bool)
        or not isinstance(shuffle_buffer, (int, np.integer))
        or shuffle_buffer < 0
    ):
        raise ValueError(
            "Expected shuffle_buffer to be None or a non-negative integer (0 or None: no "
            f"shuffling). Received: shuffle_buffer={shuffle_buffer!r}"
        )
    if pixels not in PIXELS:
        raise ValueError(f"Expected pixels to be one of {PIXELS}. Received: pixels={pixels!r}")
    if augment is not None and not callable(augment):
        raise ValueError(
            "Expected augment to be None, a Keras layer or a callable on image batches. "
            f"Received: augment={augment!r}"
        )


def load_dataset(
    name: str = "fashion_mnist",
    *,
    data_dir: Optional[str] = None,
    batch_size: int = 128,
    image_size: Optional[ImageSize] = None,
    validation_split: float = 0.1,
    train_on_validation: bool = False,
    pixels: str = "normalized",
    seed: int = 42,
    limit: Optional[int] = None,
    shuffle_buffer: Optional[int] = 10000,
    one_hot: bool = False,
    augment: Optional[Callable] = None,
) -> DatasetSplits:
    """Builds batched, prefetched ``tf.data`` pipelines for one image-classification dataset.

    Args:
        name: One of :data:`KNOWN_DATASETS`: ``"fashion_mnist"`` (offline, Debian's IDX files),
            ``"cifar10"``, ``"cifar100"``, ``"imagenet2012"`` (TFDS, prepared ``data_dir``).
        data_dir: For Fashion-MNIST the folder of the IDX files (optional); for TFDS datasets
            the TFDS data folder where the dataset was prepared (required).
        batch_size: Examples per batch (the last batch may be smaller).
        image_size: ``None`` (native size; 224 for ImageNet), an int or ``(height, width)``.
            Fixed-size datasets are resized by nearest neighbour, so upscaling replicates
            pixels (SIPA's resolution scaling, see :func:`scaled_size`); ImageNet is resized
            bilinearly per example.
        validation_split: Fraction in ``[0, 1)`` of the training examples held out as
            validation, chosen with ``seed``; the same seed gives the same disjoint split.
        train_on_validation: Train on train + validation and return ``validation=None`` (the
            final run once hyperparameters are fixed).
        pixels: ``"normalized"`` (``(x / 255 - mean) / std`` with the full training split's
            statistics), ``"unit"`` (``x / 255``) or ``"raw"`` (float32 values in ``[0, 255]``, the
            input of every ``tfgated.zoo`` model, which normalizes inside its graph).
        seed: Seed of the validation carve-out and of the training shuffle.
        limit: Use only the first ``limit`` examples of the source train and test splits (the
            validation split is then carved from those). For tests and smoke runs; the
            normalization statistics still come from the full training split.
        shuffle_buffer: Shuffle buffer of the training data; 0 or ``None`` keeps file order.
        one_hot: Labels as float32 one-hot vectors instead of int32 class indices.
        augment: ``None``, or a Keras layer or callable applied to training batches only, on
            float32 images in ``[0, 1]`` after resizing and before normalization (raw pixels are
            scaled back to ``[0, 255]`` after it) (e.g.
            ``keras.layers.RandomFlip("horizontal")`` or ``keras.layers.RandAugment(value_range=(0, 1))``).
            A Keras layer is called with ``training=True``.

    Returns:
        A :class:`DatasetSplits` of ``(images float32 NHWC, labels)`` datasets and its info.

    Raises:
        ValueError: an unknown name or an invalid argument; TFDS dataset without ``data_dir``;
            a corrupt Fashion-MNIST file.
        FileNotFoundError: the data is not there (Fashion-MNIST files missing, or the TFDS
            dataset not prepared in ``data_dir``); the message says how to get it.
    """
    _check_args(name, batch_size, validation_split, limit, shuffle_buffer, augment, pixels)
    size = _check_image_size(image_size)
    kwargs = dict(
        data_dir=data_dir, batch_size=int(batch_size), size=size,
        validation_split=float(validation_split), train_on_validation=bool(train_on_validation),
        pixels=pixels, seed=int(seed), limit=None if limit is None else int(limit),
        shuffle_buffer=shuffle_buffer, one_hot=bool(one_hot), augment=augment,
    )
    if name == "fashion_mnist":
        return _load_fashion_mnist(**kwargs)
    return _load_tfds(name, **kwargs)
