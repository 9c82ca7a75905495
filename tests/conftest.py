"""Shared test set-up: quiet TensorFlow, seeded Keras, the real Fashion-MNIST files."""

import gzip
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FASHION_MNIST_DIR = os.environ.get("TFGATED_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(1234)
    yield


def _read_idx(path, offset):
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


@pytest.fixture(scope="session")
def fashion_mnist_small():
    """2,000 real Fashion-MNIST training images in [0, 1], shape (N, 28, 28, 1), and labels."""
    images = os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")
    labels = os.path.join(FASHION_MNIST_DIR, "train-labels-idx1-ubyte.gz")
    if not os.path.exists(images):
        pytest.fail(f"Fashion-MNIST not found at {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist")
    x = _read_idx(images, 16).reshape(-1, 28, 28, 1)[:2000].astype("float32") / 255.0
    y = _read_idx(labels, 8)[:2000].astype("int64")
    return x, y
