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

Normalization (``normalize=True``) maps pixels to ``[0, 1]`` and then applies the per-channel
``(x - mean) / std``:

- Fashion-MNIST: mean and std computed exactly from the training examples in use (after
  ``limit`` and the validation carve-out). On the full 60000-image training set they are
  mean 0.2860, std 0.3530.
- CIFAR-10: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616) -- the published
  training-set statistics (a full pass over TFDS data to recompute them would be slow).
- CIFAR-100: mean (0.5071, 0.4865, 0.4409), std (0.2673, 0.2564, 0.2762).
- ImageNet: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).

With ``normalize=False`` images stay in ``[0, 1]`` and ``info.mean``/``info.std`` record the
identity map (zeros and ones).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib
from typing import Callable, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "DatasetInfo",
    "DatasetSplits",
    "FASHION_MNIST_CLASS_NAMES",
    "KNOWN_DATASETS",
    "load_dataset",
    "load_fashion_mnist_arrays",
    "scaled_size",
]

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV_VAR = "TFGATED_FASHION_MNIST_DIR"
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

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
        "here and pass data_dir=DIR."
    ),
    "cifar100": (
        "On a machine with internet access run `tfds build cifar100 --data_dir DIR` "
        "(or `tfds.builder('cifar100', data_dir=DIR).download_and_prepare()`), then copy DIR "
        "here and pass data_dir=DIR."
    ),
    "imagenet2012": (
        "ImageNet cannot be downloaded automatically: place ILSVRC2012_img_train.tar and "
        "ILSVRC2012_img_val.tar in DIR/downloads/manual, run `tfds build imagenet2012 "
        "--data_dir DIR --manual_dir DIR/downloads/manual` once, then pass data_dir=DIR."
    ),
}

ImageSize = Union[int, Tuple[int, int], Sequence[int]]


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
        mean: Per-channel mean subtracted from images scaled to ``[0, 1]``.
        std: Per-channel standard deviation the centred images are divided by.
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


# --------------------------------------------------------------------------- Fashion-MNIST IDX


def _fashion_mnist_dir(data_dir: Optional[str]) -> str:
    """The folder to read Fashion-MNIST from: ``data_dir``, the env var, or Debian's folder."""
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.environ.get(FASHION_MNIST_ENV_VAR) or FASHION_MNIST_DEFAULT_DIR


def _find_idx_file(folder: str, stem: str) -> str:
    """Path of ``stem.gz`` (preferred) or uncompressed ``stem`` in ``folder``."""
    for candidate in (stem + ".gz", stem):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}.gz not found in {folder!r}. Install the data with "
        f"`apt-get install dataset-fashion-mnist` (files go to {FASHION_MNIST_DEFAULT_DIR}), "
        f"or pass data_dir= (or set {FASHION_MNIST_ENV_VAR}) to a folder holding "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
        "and t10k-labels-idx1-ubyte.gz."
    )


def _read_idx(path: str, expected_ndim: int) -> np.ndarray:
    """Parses an IDX file of unsigned bytes (gzip-compressed if it ends in ``.gz``).

    IDX layout: 2 zero bytes, a type code (0x08 = uint8), the number of dimensions, one
    big-endian uint32 per dimension, then the data in C order.

    Raises:
        ValueError: the file is not a valid uint8 IDX file with ``expected_ndim`` dimensions.
    """
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"Corrupt Fashion-MNIST file {path!r}: cannot decompress it ({err}).") from err
    if len(raw) < 4:
        raise ValueError(f"Corrupt IDX file {path!r}: only {len(raw)} bytes, no header.")
    magic = int.from_bytes(raw[:4], "big")
    expected_magic = 0x0800 + expected_ndim
    if magic != expected_magic:
        raise ValueError(
            f"Corrupt IDX file {path!r}: expected magic number 0x{expected_magic:08x} "
            f"(uint8, {expected_ndim} dimensions). Received: 0x{magic:08x}."
        )
    header_end = 4 + 4 * expected_ndim
    if len(raw) < header_end:
        raise ValueError(f"Corrupt IDX file {path!r}: truncated header ({len(raw)} bytes).")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(expected_ndim))
    expected_bytes = int(np.prod(dims, dtype=np.int64))
    got_bytes = len(raw) - header_end
    if got_bytes != expected_bytes:
        raise ValueError(
            f"Corrupt IDX file {path!r}: header says shape {dims} ({expected_bytes} bytes of "
            f"data) but the file holds {got_bytes} bytes of data."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_end).reshape(dims)


def _read_fashion_mnist_split(folder: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    images_path = _find_idx_file(folder, _FASHION_MNIST_FILES[f"{split}_images"])
    labels_path = _find_idx_file(folder, _FASHION_MNIST_FILES[f"{split}_labels"])
    images = _read_idx(images_path, expected_ndim=3)
    labels = _read_idx(labels_path, expected_ndim=1)
    if images.shape[1:] != (28, 28):
        raise ValueError(
            f"Corrupt Fashion-MNIST file {images_path!r}: expected 28x28 images. "
            f"Received: shape {images.shape}."
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fashion-MNIST {split} files disagree: {images.shape[0]} images in {images_path!r} "
            f"but {labels.shape[0]} labels in {labels_path!r}."
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASS_NAMES):
        raise ValueError(
            f"Corrupt Fashion-MNIST file {labels_path!r}: labels must lie in [0, 9]. "
            f"Received: max label {int(labels.max())}."
        )
    return images[..., np.newaxis], labels


def load_fashion_mnist_arrays(
    data_dir: Optional[str] = None,
) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """Reads Fashion-MNIST from its IDX files into numpy arrays.

    Args:
        data_dir: Folder with the four ``*-ubyte.gz`` files (uncompressed files also work).
            Defaults to ``$TFGATED_FASHION_MNIST_DIR`` or ``/usr/share/datasets/fashion-mnist``.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: uint8 images of shape ``(N, 28, 28, 1)``
        and uint8 labels of shape ``(N,)``, in file order (60000 train, 10000 test).

    Raises:
        FileNotFoundError: a file is missing (install ``dataset-fashion-mnist``).
        ValueError: a file is corrupt.
    """
    folder = _fashion_mnist_dir(data_dir)
    return _read_fashion_mnist_split(folder, "train"), _read_fashion_mnist_split(folder, "test")


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


def _check_args(name, batch_size, validation_split, limit, shuffle_buffer, augment):
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
    if augment is not None and not callable(augment):
        raise ValueError(
            "Expected augment to be None, a Keras layer or a callable on image batches. "
            f"Received: augment={augment!r}"
        )


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


def _preprocess_fn(size, resize_method, mean, std, num_classes, one_hot, augment=None):
    """Returns a function mapping a batch ``(uint8 or float images, labels)`` to model inputs.

    Images are scaled to ``[0, 1]``, resized (if ``size``), augmented (if ``augment``, on the
    ``[0, 1]`` images), then normalized with ``(x - mean) / std``.
    """
    mean_t = tf.constant(mean, tf.float32)
    std_t = tf.constant(std, tf.float32)
    is_layer = isinstance(augment, keras.layers.Layer)

    def fn(images, labels):
        images = tf.cast(images, tf.float32) / 255.0
        if size is not None:
            images = tf.image.resize(images, size, method=resize_method)
        if augment is not None:
            images = augment(images, training=True) if is_layer else augment(images)
            images = tf.cast(images, tf.float32)
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


def _load_fashion_mnist(
    *, data_dir, batch_size, size, validation_split, train_on_validation, normalize, seed,
    limit, shuffle_buffer, one_hot, augment,
) -> DatasetSplits:
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist_arrays(data_dir)
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
        x_test, y_test = x_test[:limit], y_test[:limit]

    x_val = y_val = None
    if validation_split > 0 and not train_on_validation:
        mask = _validation_mask(len(x_train), validation_split, seed)
        x_val, y_val = x_train[mask], y_train[mask]
        x_train, y_train = x_train[~mask], y_train[~mask]

    num_classes = len(FASHION_MNIST_CLASS_NAMES)
    if normalize:
        mean, std = _channel_stats(x_train)
    else:
        mean, std = (0.0,), (1.0,)
    common = dict(size=size, resize_method="nearest", mean=mean, std=std,
                  num_classes=num_classes, one_hot=one_hot)
    plain = _preprocess_fn(**common)
    finish = dict(batch_size=batch_size, shuffle_buffer=shuffle_buffer, seed=seed)

    def from_arrays(x, y):
        return tf.data.Dataset.from_tensor_slices((x, y))

    train = _finish(from_arrays(x_train, y_train), preprocess=_preprocess_fn(**common, augment=augment),
                    training=True, **finish)
    validation = None
    if x_val is not None:
        validation = _finish(from_arrays(x_val, y_val), preprocess=plain, training=False, **finish)
    test = _finish(from_arrays(x_test, y_test), preprocess=plain, training=False, **finish)

    h, w = size if size is not None else (28, 28)
    info = DatasetInfo(
        name="fashion_mnist",
        num_classes=num_classes,
        input_shape=(h, w, 1),
        class_names=FASHION_MNIST_CLASS_NAMES,
        num_train=len(x_train),
        num_validation=0 if x_val is None else len(x_val),
        num_test=len(x_test),
        mean=mean,
        std=std,
    )
    return DatasetSplits(train=train, validation=validation, test=test, info=info)


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
    name, *, data_dir, batch_size, size, validation_split, train_on_validation, normalize, seed,
    limit, shuffle_buffer, one_hot, augment,
) -> DatasetSplits:
    if data_dir is None:
        raise ValueError(
            f"Dataset {name!r} needs data_dir=, a TFDS data folder where it was prepared "
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

    if normalize:
        mean, std = _TFDS_STATS[name]
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    common = dict(size=batch_size_resize, resize_method="nearest", mean=mean, std=std,
                  num_classes=num_classes, one_hot=one_hot)
    plain = _preprocess_fn(**common)
    finish = dict(batch_size=batch_size, shuffle_buffer=shuffle_buffer, seed=seed)
    train = _finish(train, preprocess=_preprocess_fn(**common, augment=augment), training=True, **finish)
    test = _finish(test, preprocess=plain, training=False, **finish)
    if validation is not None:
        validation = _finish(validation, preprocess=plain, training=False, **finish)

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
    )
    return DatasetSplits(train=train, validation=validation, test=test, info=info)


def load_dataset(
    name: str = "fashion_mnist",
    *,
    data_dir: Optional[str] = None,
    batch_size: int = 128,
    image_size: Optional[ImageSize] = None,
    validation_split: float = 0.1,
    train_on_validation: bool = False,
    normalize: bool = True,
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
        normalize: Apply per-channel ``(x - mean) / std`` (see the module docstring for the
            values); otherwise images are in ``[0, 1]``.
        seed: Seed of the validation carve-out and of the training shuffle.
        limit: Use only the first ``limit`` examples of the source train and test splits (the
            validation split is then carved from those). For tests and smoke runs.
        shuffle_buffer: Shuffle buffer of the training data; 0 or ``None`` keeps file order.
        one_hot: Labels as float32 one-hot vectors instead of int32 class indices.
        augment: ``None``, or a Keras layer or callable applied to training batches only, on
            float32 images in ``[0, 1]`` after resizing and before normalization (e.g.
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
    _check_args(name, batch_size, validation_split, limit, shuffle_buffer, augment)
    size = _check_image_size(image_size)
    kwargs = dict(
        data_dir=data_dir, batch_size=int(batch_size), size=size,
        validation_split=float(validation_split), train_on_validation=bool(train_on_validation),
        normalize=bool(normalize), seed=int(seed), limit=None if limit is None else int(limit),
        shuffle_buffer=shuffle_buffer, one_hot=bool(one_hot), augment=augment,
    )
    if name == "fashion_mnist":
        return _load_fashion_mnist(**kwargs)
    return _load_tfds(name, **kwargs)
