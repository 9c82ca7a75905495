"""What the command tests share: a tiny gated model saved as a ``.keras`` file."""

import keras
import pytest

import tfgated


def tiny_gated_model(name="tiny"):
    """conv -> BN -> ReLU -> dependent channel gate -> pool -> softmax head, for 28x28x1 images."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x, z = tfgated.channel_gate(x, 2, "dependent", name="conv1")
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(10, activation="softmax", name="head")(x)
    return tfgated.gated_model(inputs, out, [z], target=0.6, name=name)


@pytest.fixture
def model_file(tmp_path):
    """An untrained tiny gated model as ``tmp_path/tiny.keras``."""
    path = str(tmp_path / "tiny.keras")
    tiny_gated_model().save(path)
    return path
