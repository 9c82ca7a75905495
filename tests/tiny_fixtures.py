"""Tiny models the test rooms share (``tests/`` is on ``sys.path``: pytest puts the folder of the
root ``conftest.py`` there), so one definition serves the mechanism and the command tests."""

import keras
import numpy as np

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


def residual_model(blocks=2, name="tiny_residual"):
    """conv stem, ``blocks`` residual blocks with data-dependent layer gates, softmax head
    (the same weights on every call)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)
    x = keras.layers.ReLU(name="stem_relu")(x)
    gates = []
    for i in range(blocks):
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"b{i}_conv1")(x)
        y = keras.layers.BatchNormalization(name=f"b{i}_bn1")(y)
        y = keras.layers.ReLU(name=f"b{i}_relu")(y)
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"b{i}_conv2")(y)
        x, z = tfgated.residual_gate(x, y, kind="dependent", name=f"b{i}", open_probability=0.5)
        gates.append(z)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(10, activation="softmax", name="head")(x)
    return tfgated.gated_model(inputs, out, gates, target=0.5, name=name)


def spread_gates(model, x):
    """Centre every gate's logit on ``x``: between a quarter and three quarters of the examples
    open each gate, the decision placed in the widest gap between two examples' logits (so that
    float rounding in another runtime cannot flip it)."""
    for gate in tfgated.gate_layers(model):
        context = keras.Model(model.inputs, gate._inbound_nodes[0].input_tensors[0])(x)
        kernel, bias = gate.head.get_weights()
        logits = np.sort((np.asarray(gate.compute_logits(context)) - bias)[:, 0])
        low, high = len(logits) // 4, 3 * len(logits) // 4
        cut = low + int(np.argmax(np.diff(logits[low:high + 1])))
        gate.head.set_weights([kernel, np.array([-(logits[cut] + logits[cut + 1]) / 2], "float32")])


def varied_images(n=64, seed=0):
    """``n`` random 28x28x1 images whose per-image brightness varies (x0.5 to x4), so a
    :func:`residual_model`'s gates open on some of them and not on others."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, 28, 28, 1)) * rng.uniform(0.5, 4, (n, 1, 1, 1))).astype("float32")
