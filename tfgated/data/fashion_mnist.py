"""Fashion-MNIST from its genuine IDX files (Debian's ``dataset-fashion-mnist``), read with numpy.

The one Fashion-MNIST reader of tfgated (and of its tests): :func:`load_fashion_mnist_arrays`.
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from tfgated.data.common import DatasetInfo, DatasetSplits, _channel_stats, _pipelines, _validation_mask

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
        f"or point data_dir= (on the command line --data-dir DIR; or set {FASHION_MNIST_ENV_VAR}) to a folder holding "
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


def _load_fashion_mnist(
    *, data_dir, batch_size, size, validation_split, train_on_validation, pixels, seed,
    limit, shuffle_buffer, one_hot, augment,
) -> DatasetSplits:
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist_arrays(data_dir)
    statistics = _channel_stats(x_train)  # the full split (mean 0.28604, std 0.35302), before limit and carve-out
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
        x_test, y_test = x_test[:limit], y_test[:limit]

    x_val = y_val = None
    if validation_split > 0 and not train_on_validation:
        mask = _validation_mask(len(x_train), validation_split, seed)
        x_val, y_val = x_train[mask], y_train[mask]
        x_train, y_train = x_train[~mask], y_train[~mask]

    num_classes = len(FASHION_MNIST_CLASS_NAMES)
    if pixels == "normalized":
        mean, std = statistics
    else:
        mean, std = (0.0,), (1.0,)
    def from_arrays(x, y):
        return None if x is None else tf.data.Dataset.from_tensor_slices((x, y))

    train, validation, test = _pipelines(
        from_arrays(x_train, y_train), from_arrays(x_val, y_val), from_arrays(x_test, y_test),
        size=size, mean=mean, std=std, num_classes=num_classes, one_hot=one_hot, augment=augment,
        batch_size=batch_size, shuffle_buffer=shuffle_buffer, seed=seed, pixels=pixels,
    )

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
        pixels=pixels,
        statistics=statistics,
    )
    return DatasetSplits(train=train, validation=validation, test=test, info=info)
