"""Small hand-built gated models for the export tests."""

import keras
import numpy as np

import tfgated

L = keras.layers


def mbconv(x, expand, out, stride, name, granularity=2, kind="independent", se=True, force_open=False):
    """MobileNetV2/EfficientNet-style block: expand, channel gate, depthwise, SE, project, residual."""
    inp = x
    x = L.Conv2D(expand, 1, use_bias=False, name=f"{name}_expand")(x)
    x = L.BatchNormalization(name=f"{name}_expand_bn")(x)
    x = L.ReLU(6.0, name=f"{name}_expand_relu")(x)
    x, z = tfgated.channel_gate(x, granularity, kind=kind, name=f"{name}_expand", force_open=force_open)
    x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = L.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = L.Activation("swish", name=f"{name}_dw_act")(x)
    if se:
        s = L.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
        s = L.Conv2D(max(expand // 4, 1), 1, activation="relu", name=f"{name}_se_reduce")(s)
        s = L.Conv2D(expand, 1, activation="sigmoid", name=f"{name}_se_expand")(s)
        x = L.Multiply(name=f"{name}_se_mul")([x, s])
    x = L.Conv2D(out, 1, use_bias=False, name=f"{name}_project")(x)
    x = L.BatchNormalization(name=f"{name}_project_bn")(x)
    if stride == 1 and inp.shape[-1] == out:
        x = L.Add(name=f"{name}_add")([inp, x])
    return x, z


def mbconv_model(input_shape=(16, 16, 3), num_classes=10, kind="independent"):
    """Stem, a residual MBConv with SE, a strided MBConv (force_open, granularity 1), head."""
    inputs = keras.Input(input_shape, name="image")
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    x, z1 = mbconv(x, 32, 16, 1, "b1", granularity=2, kind=kind)
    x, z2 = mbconv(x, 48, 24, 2, "b2", granularity=1, kind=kind, force_open=True)
    x, z3 = tfgated.channel_gate(x, 4, kind=kind, name="b2_out")  # reaches the head conv
    x = L.Conv2D(32, 1, activation="relu", name="head_conv")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    outputs = L.Dense(num_classes, activation="softmax", name="predictions")(x)
    return tfgated.gated_model(inputs, outputs, gates=[z1, z2, z3], name="mbconv_gated")


def residual_model(input_shape=(12, 12, 3), num_classes=5, kinds=("independent", "independent", "dependent")):
    """A stem and three residual blocks with layer gates of the given kinds."""
    inputs = keras.Input(input_shape, name="image")
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    zs = []
    for i, kind in enumerate(kinds):
        b = L.Conv2D(8, 3, padding="same", name=f"r{i}_conv1")(x)
        b = L.BatchNormalization(name=f"r{i}_bn")(b)
        b = L.ReLU(name=f"r{i}_relu")(b)
        b = L.Conv2D(8, 3, padding="same", name=f"r{i}_conv2")(b)
        x, z = tfgated.residual_gate(x, b, kind=kind, name=f"r{i}")
        zs.append(z)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    outputs = L.Dense(num_classes, activation="softmax", name="predictions")(x)
    return tfgated.gated_model(inputs, outputs, gates=zs, name="residual_gated")


def randomize(model, seed=0, close_fraction=0.5):
    """Random batch-norm statistics, and negative logits for about ``close_fraction`` of the independent gates."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.3, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.3, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
    for gate in tfgated.gate_layers(model):
        if gate.kind == "independent":
            logits = np.full((gate.units,), 3.0, "float32")
            logits[rng.random(gate.units) < close_fraction] = -3.0
            gate.logits.assign(logits)
        else:
            w, b = gate.head.get_weights()
            gate.head.set_weights([rng.normal(0, 1.0, w.shape).astype("float32"), np.zeros_like(b)])
    return model


def close_gates(model, names, open_=False):
    """Set the logits of the named independent gates to closed (or open)."""
    for gate in tfgated.gate_layers(model):
        if gate.name in names:
            gate.logits.assign(np.full((gate.units,), 3.0 if open_ else -3.0, "float32"))
    return model


#: Largest side the preset tests build at (the ImageNet presets' 224 px would only cost time).
TEST_SIDE = 32


def representative_presets():
    """One gated zoo preset per (family, gate kind), from the registry's public listing.

    Fashion-MNIST presets are preferred, then the smallest input and depth, then the name, so
    the tests build the smallest model of each group.
    """
    from tfgated import zoo

    chosen = {}
    for name in zoo.list_models():
        preset = zoo.get_preset(name)
        gates = preset.get("gates")
        if not gates:
            continue
        group = (preset["family"], gates.get("kind", "independent"))
        h, w = preset["input_shape"][:2]
        rank = (preset.get("dataset") != "fashion_mnist", h * w, preset["arch"].get("depth", 0), name)
        if group not in chosen or rank < chosen[group][0]:
            chosen[group] = (rank, name)
    return sorted(name for _, name in chosen.values())


def load_preset(name):
    """The preset's model (no weights, not compiled) at an input no larger than ``TEST_SIDE``."""
    from tfgated import zoo

    shape = tuple(zoo.get_preset(name)["input_shape"])
    if shape[0] > TEST_SIDE:
        shape = (TEST_SIDE, TEST_SIDE) + shape[2:]
    return zoo.load(name, weights=None, input_shape=shape, compile=False)


def fashion_mnist_presets():
    """The representative presets of :func:`representative_presets` that read Fashion-MNIST."""
    from tfgated import zoo

    return [name for name in representative_presets() if zoo.get_preset(name).get("dataset") == "fashion_mnist"]
