"""Shared test set-up: quiet TensorFlow, seeded Keras, the real Fashion-MNIST files."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture(scope="session")
def fashion_mnist_small():
    """2,000 real Fashion-MNIST training images in [0, 1], shape (N, 28, 28, 1), and labels.

    Read by ``tfgated.data.load_fashion_mnist_arrays`` (``$TFGATED_FASHION_MNIST_DIR`` or
    Debian's ``/usr/share/datasets/fashion-mnist``), the library's one Fashion-MNIST reader.
    """
    from tfgated.data import load_fashion_mnist_arrays

    try:
        (x, y), _ = load_fashion_mnist_arrays()
    except FileNotFoundError as error:
        pytest.fail(f"Fashion-MNIST not found: {error}")
    return x[:2000].astype("float32") / 255.0, y[:2000].astype("int64")
