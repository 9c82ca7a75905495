"""Shared set-up of the early-exit tests: a tiny residual network and real images."""

import keras
import pytest
import tensorflow as tf

import tfgated


def _tiny_model(gated=False, name="tiny"):
    """12x12 grey input, stem, three residual blocks named block{k}_*, a long skip, 4 classes."""
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem_conv")(inputs)
    stem = x
    zs = []
    for k in range(3):
        y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"block{k}_conv")(x)
        y = keras.layers.BatchNormalization(name=f"block{k}_bn")(y)
        if gated:
            y, z = tfgated.channel_gate(y, 4, "independent", name=f"block{k}", seed=k)
            zs.append(z)
        x = keras.layers.Add(name=f"block{k}_add")([x, y])
    x = keras.layers.Add(name="long_skip")([x, stem])  # crosses any split after block 0
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="predictions")(x)
    if gated:
        return tfgated.gated_model(inputs, outputs, zs, target=0.5, name=name)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture
def tiny_model():
    """The builder ``tiny_model(gated=False, name="tiny")`` of a fresh tiny network."""
    return _tiny_model


@pytest.fixture
def dataset():
    """``dataset(x, y, batch=32)``: a batched ``tf.data`` dataset of ``(x, y)``."""

    def make(x, y, batch=32):
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)

    return make


@pytest.fixture(scope="module")
def small_data(fashion_mnist_small):
    """256 real Fashion-MNIST images cropped to 12x12, labels folded to 4 classes."""
    x, y = fashion_mnist_small
    return x[:256, 8:20, 8:20, :].copy(), (y[:256] % 4).astype("int64")
