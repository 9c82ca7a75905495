"""TFDS datasets (CIFAR-10, CIFAR-100, ImageNet) from a ``data_dir`` prepared beforehand; never downloaded."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfgated.data.common import DatasetInfo, DatasetSplits, _pipelines, _select, _validation_mask

TFDS_DATASETS = ("cifar10", "cifar100", "imagenet2012")
KNOWN_DATASETS = ("fashion_mnist",) + TFDS_DATASETS

# Published per-channel training-set statistics of pixels scaled to [0, 1].
_TFDS_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# TFDS split used as the test set.
_TFDS_TEST_SPLIT = {"cifar10": "test", "cifar100": "test", "imagenet2012": "validation"}
_IMAGENET_DEFAULT_SIZE = 224

PREPARE_HINTS = {
    "cifar10": (
        "On a machine with internet access run `tfds build cifar10 --data_dir DIR` "
        "(or `tfds.builder('cifar10', data_dir=DIR).download_and_prepare()`), then copy DIR "
        "here and pass data_dir=DIR (on the command line --data-dir DIR)."
    ),
    "cifar100": (
        "On a machine with internet access run `tfds build cifar100 --data_dir DIR` "
        "(or `tfds.builder('cifar100', data_dir=DIR).download_and_prepare()`), then copy DIR "
        "here and pass data_dir=DIR (on the command line --data-dir DIR)."
    ),
    "imagenet2012": (
        "ImageNet cannot be downloaded automatically: place ILSVRC2012_img_train.tar and "
        "ILSVRC2012_img_val.tar in DIR/downloads/manual, run `tfds build imagenet2012 "
        "--data_dir DIR --manual_dir DIR/downloads/manual` once, then pass data_dir=DIR (on the command line --data-dir DIR)."
    ),
}

def _tfds_load(name: str, data_dir: str):
    """``tfds.load`` of the train and test splits without downloading; clear errors if absent."""
    import tensorflow_datasets as tfds  # heavy; only this path needs it

    try:
        (train, test), builder_info = tfds.load(
            name,
            split=["train", _TFDS_TEST_SPLIT[name]],
            data_dir=data_dir,
            download=False,
            as_supervised=True,
            with_info=True,
            shuffle_files=False,
        )
    except (AssertionError, OSError, tf.errors.NotFoundError) as err:
        # TFDS raises AssertionError("Dataset X: could not find data in DIR ...").
        raise FileNotFoundError(
            f"Dataset {name!r} is not prepared in data_dir={data_dir!r} and tfgated never "
            f"downloads data. {PREPARE_HINTS[name]} (TFDS said: {err})"
        ) from err
    return train, test, builder_info


def _cardinality(ds: tf.data.Dataset, what: str) -> int:
    n = int(ds.cardinality())
    if n < 0:  # unknown: count (TFDS normally knows its sizes, so this is rare)
        n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
    if n == 0:
        raise ValueError(f"The {what} split is empty.")
    return n


def _load_tfds(
    name, *, data_dir, batch_size, size, validation_split, train_on_validation, pixels, seed,
    limit, shuffle_buffer, one_hot, augment,
) -> DatasetSplits:
    if data_dir is None:
        raise ValueError(
            f"Dataset {name!r} needs data_dir= (on the command line --data-dir DIR), a TFDS data folder where it was prepared "
            f"(tfgated never downloads data). {PREPARE_HINTS[name]}"
        )
    train, test, builder_info = _tfds_load(name, os.fspath(data_dir))
    if limit is not None:
        train, test = train.take(limit), test.take(limit)
    num_train_all = _cardinality(train, f"{name} train")
    num_test = _cardinality(test, f"{name} {_TFDS_TEST_SPLIT[name]}")

    validation = None
    num_val = 0
    if validation_split > 0 and not train_on_validation:
        mask = _validation_mask(num_train_all, validation_split, seed)
        validation = _select(train, mask, keep=True)
        train = _select(train, mask, keep=False)
        num_val = int(mask.sum())
    num_train = num_train_all - num_val

    label_feature = builder_info.features["label"]
    num_classes = int(label_feature.num_classes)
    class_names = tuple(label_feature.names)
    channels = int(builder_info.features["image"].shape[-1])

    if name == "imagenet2012":
        # Variable-size images: resize each example (bilinear) before batching.
        size = size if size is not None else (_IMAGENET_DEFAULT_SIZE, _IMAGENET_DEFAULT_SIZE)

        def resize_one(image, label):
            image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")
            return tf.clip_by_value(image, 0.0, 255.0), label

        train = train.map(resize_one, num_parallel_calls=tf.data.AUTOTUNE)
        test = test.map(resize_one, num_parallel_calls=tf.data.AUTOTUNE)
        if validation is not None:
            validation = validation.map(resize_one, num_parallel_calls=tf.data.AUTOTUNE)
        batch_size_resize = None  # already at the final size
        h, w = size
    else:
        batch_size_resize = size
        native = builder_info.features["image"].shape
        h, w = size if size is not None else (int(native[0]), int(native[1]))

    if pixels == "normalized":
        mean, std = _TFDS_STATS[name]
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    train, validation, test = _pipelines(
        train, validation, test, size=batch_size_resize, mean=mean, std=std, num_classes=num_classes,
        one_hot=one_hot, augment=augment, batch_size=batch_size, shuffle_buffer=shuffle_buffer, seed=seed,
        pixels=pixels,
    )

    info = DatasetInfo(
        name=name,
        num_classes=num_classes,
        input_shape=(h, w, channels),
        class_names=class_names,
        num_train=num_train,
        num_validation=num_val,
        num_test=num_test,
        mean=tuple(mean),
        std=tuple(std),
        pixels=pixels,
        statistics=_TFDS_STATS[name],
    )
    return DatasetSplits(train=train, validation=validation, test=test, info=info)
