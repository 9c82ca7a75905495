"""Tiny models the test rooms share (``tests/`` is on ``sys.path``: pytest puts the folder of the
root ``conftest.py`` there), so one definition serves the mechanism and the command tests."""

import keras

import tfgated

#: A tiny two-block SIPA network (28x28 -> 14 -> 7 -> 4) for real, fast search trials.
TINY_SIPA_ARCH = {
    "blocks": ["r1_k3_s2_e1_i8_o8_se0.2", "r1_k3_s2_e3_i8_o16_se0.2"],
    "stem_filters": 8,
    "head_filters": 16,
    "width": 1.0,
    "depth": 1.0,
    "resolution": 1.0,
    "resource": 1,
    "dropout": 0.0,
    "drop_connect": 0.0,
}
#: A search space around :data:`TINY_SIPA_ARCH` (width and channel multipliers only).
TINY_SIPA_SPACE = {
    "depth_range": [1.0, 1.0],
    "width_range": [0.5, 1.0],
    "resolution_range": [1.0, 1.0],
    "channel_multipliers": [0.5, 1.0],
}


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


def tiny_residual_gated_model(name="tiny_residual"):
    """conv -> BN -> ReLU -> one residual block behind a data-dependent gate (``block_gate``,
    one decision per image) -> pool -> softmax head, for 28x28x1 images."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="stem_bn")(x))
    branch = keras.layers.Conv2D(8, 3, padding="same", name="branch_conv")(x)
    branch = keras.layers.BatchNormalization(name="branch_bn")(branch)
    x, z = tfgated.residual_gate(x, branch, "dependent", name="block")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    out = keras.layers.Dense(10, activation="softmax", name="head")(x)
    return tfgated.gated_model(inputs, out, [z], target=0.6, name=name)
